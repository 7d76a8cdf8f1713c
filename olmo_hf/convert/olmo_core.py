# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""OLMo-core (ai2-olmo-core 3.x) checkpoints: ``config.json`` + ``model_and_optim/`` (or ``model.pt``), both ways.

``config.json`` is an experiment config whose ``model`` section is ``TransformerConfig.as_config_dict()``.
``model_and_optim/`` is a torch.distributed.checkpoint directory written by
``olmo_core.distributed.checkpoint.save_model_and_optim_state``: a pickled ``.metadata`` plus
``__R_N.distcp`` files in which every tensor chunk is a plain ``torch.save`` blob at a recorded offset.

We read it without olmo_core: ``.metadata`` names ``olmo_core.distributed.checkpoint.filesystem._StorageInfo``,
which `_MetadataUnpickler` maps to a stand-in; only torch's DCP metadata classes, ``torch.Size`` and torch
dtypes are otherwise allowed. Chunks are loaded with ``weights_only=True`` and assembled by offset, so FSDP
(multi-rank) checkpoints work too.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .common import Checkpoint, ConversionError, load_torch_file, logger, read_json, rope_parameters
from ..layouts import PROGRESS_MIN_TENSORS, convert_state_dict, convert_state_dict_to_original

DOLMA2_VOCAB, DOLMA2_EOS, DOLMA2_PAD = 100278, 100257, 100277  # TokenizerConfig.dolma2() (checkpoints.md §3)
GPT_NEOX_VOCAB, GPT_NEOX_EOS, GPT_NEOX_PAD = 50280, 50279, 1

# ---------------------------------------------------------------------------------------------------
# torch.distributed.checkpoint reading


class _Stand_in:  # noqa: N801 - named so that reprs read "_Stand_in"
    """Any olmo_core class pickled into .metadata: keeps the pickled attributes, nothing else."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict_state, slots_state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state or {})


_STAND_INS: dict[tuple[str, str], type] = {}
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "olmo_core" or module.startswith("olmo_core."):
            return _STAND_INS.setdefault((module, name), type(name, (_Stand_in,), {"__module__": module}))
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in {
            ("torch", "Size"),
            ("torch.serialization", "_get_layout"),
            ("collections", "OrderedDict"),
            ("pathlib", "Path"),  # StorageMeta.checkpoint_id, when torch's own writer saved a Path
            ("pathlib", "PosixPath"),
            ("pathlib", "WindowsPath"),
        }:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANTS):
            return getattr(torch, name)
        raise ConversionError(f"the checkpoint metadata refers to {module}.{name}, which olmo_hf does not unpickle.")


def read_dcp_metadata(path: Path):
    meta_path = Path(path) / ".metadata"
    try:
        with open(meta_path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError as e:
        raise ConversionError(f"{path} is not a torch.distributed.checkpoint directory (no .metadata).") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as e:
        raise ConversionError(f"{meta_path} could not be read; it may be truncated or corrupt ({e}).") from e


def load_dcp(path: Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix`` in a DCP directory, with the prefix stripped, as full tensors."""
    path = Path(path)
    meta = read_dcp_metadata(path)
    chunks_by_fqn: dict[str, list] = defaultdict(list)
    for index, info in meta.storage_data.items():
        if index.fqn.startswith(prefix):
            chunks_by_fqn[index.fqn].append((index, info))
    fqns = [fqn for fqn in meta.state_dict_metadata if fqn.startswith(prefix)]
    if not fqns:
        raise ConversionError(f"{path} holds no tensors under {prefix!r}.")

    out: dict[str, torch.Tensor] = {}
    handles: dict[str, object] = {}
    try:
        bar = tqdm(fqns, desc="reading DCP", unit="tensor", disable=True if len(fqns) < PROGRESS_MIN_TENSORS else None)
        for fqn in bar:
            md = meta.state_dict_metadata[fqn]
            if not hasattr(md, "chunks"):
                raise ConversionError(f"{path}: {fqn} is stored as bytes, not as a tensor.")
            size, dtype = tuple(md.size), md.properties.dtype
            full = None
            filled = 0
            for index, info in chunks_by_fqn[fqn]:
                if getattr(info, "transform_descriptors", None):
                    raise ConversionError(
                        f"{path}: {fqn} is stored with DCP transforms {info.transform_descriptors}, not read here."
                    )
                rel = info.relative_path
                if rel not in handles:
                    try:
                        handles[rel] = open(path / rel, "rb")
                    except FileNotFoundError as e:
                        raise ConversionError(f"{path} is missing {rel}, named in its .metadata.") from e
                f = handles[rel]
                f.seek(info.offset)
                blob = f.read(info.length)
                if len(blob) != info.length:
                    raise ConversionError(
                        f"{path / rel} is truncated: {fqn} needs bytes {info.offset}..{info.offset + info.length}."
                    )
                try:
                    chunk = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                except Exception as e:  # noqa: BLE001
                    raise ConversionError(
                        f"{path / rel}: {fqn} could not be loaded; the file may be truncated or corrupt ({e})."
                    ) from e
                offsets = tuple(index.offset)
                if tuple(chunk.shape) == size and not any(offsets):
                    full = chunk.to(dtype)
                    filled = full.numel()
                    continue
                if full is None:
                    full = torch.empty(size, dtype=dtype)
                full[tuple(slice(o, o + s) for o, s in zip(offsets, chunk.shape))] = chunk
                filled += chunk.numel()
            if full is None or filled != math.prod(size):
                raise ConversionError(f"{path}: the stored chunks of {fqn} do not cover its shape {size}.")
            out[fqn[len(prefix) :]] = full
    finally:
        for f in handles.values():
            f.close()
    return out


# ---------------------------------------------------------------------------------------------------
# config translation


def _get(d: dict | None, key: str, default=None):
    if d is None:
        return default
    v = d.get(key)
    return default if v is None else v


def _norm(cfg: dict | None, what: str, reject) -> tuple[str, bool, float]:
    """(kind, affine, eps) of an OLMo-core LayerNormConfig, with olmo_core.nn.layer_norm.LayerNorm defaults."""
    if cfg is None:
        reject(f"{what} has no layer norm, which Transformers' Olmo classes always apply.")
    name = cfg.get("name") or "default"
    affine = _get(cfg, "elementwise_affine", True)
    if affine and _get(cfg, "bias", True):
        reject(f"{what} has a layer-norm bias, which Transformers' Olmo classes do not have.")
    if name in ("rms", "fused_rms", "cute_rms"):  # one formula, three kernels
        kind = "rms"
    elif name == "default":
        kind = "layer_norm"
    else:
        reject(f"{what} uses layer norm {name!r}; only 'rms' (OLMo 2) and non-affine 'default' (OLMo v1) map.")
    return kind, bool(affine), float(_get(cfg, "eps", 1e-5))


def _window_sizes(att: dict, n_layers: int, reject) -> list[int] | None:
    """Each layer's window (-1: full attention) under OLMo-core's ``SlidingWindowAttentionConfig``
    (``_get_window_size``: the pattern repeats, shifted by one when the first layer is forced full), or None."""
    swa = att.get("sliding_window")
    if not swa:
        return None
    pattern = [int(w) for w in swa.get("pattern") or ()]
    if not pattern or any(w <= 0 and w != -1 for w in pattern):
        reject(f"sliding-window pattern {pattern} is not a list of positive window sizes and -1 (full attention).")
    first = _get(swa, "force_full_attention_on_first_layer", True)
    last = _get(swa, "force_full_attention_on_last_layer", True)
    return [
        -1 if (first and i == 0) or (last and i == n_layers - 1) else pattern[(i - 1 if first else i) % len(pattern)]
        for i in range(n_layers)
    ]


def _yarn_to_hf(scaling: dict, reject) -> dict:
    """OLMo-core ``YaRNRoPEScalingConfig`` -> Transformers' yarn ``rope_parameters`` (its ``to_hf_config``)."""
    if not str(scaling.get("_CLASS_", "")).endswith("YaRNRoPEScalingConfig"):
        reject(f"RoPE scaling {scaling.get('_CLASS_', scaling)!r} is not supported; only YaRN (OLMo 3) maps.")
    factor = float(_get(scaling, "factor", 8.0))
    return {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": int(_get(scaling, "old_context_len", 8192)),
        "beta_fast": float(_get(scaling, "beta_fast", 32)),
        "beta_slow": float(_get(scaling, "beta_slow", 1)),
        "attention_factor": 0.1 * math.log(factor) + 1.0,  # YaRNRoPEScalingConfig.get_attention_rescale_factor
    }


def _full_layer_scaling(model: dict, block: dict, windows: list[int] | None, reject) -> dict | None:
    """The RoPE scaling OLMo-core's ``with_rope_scaling(full_attn_layers_only=True)`` puts on the full-attention
    layers as ``block_overrides`` (copies of the block that differ only in ``rope.scaling``), or None."""
    overrides = {int(k): v for k, v in (model.get("block_overrides") or {}).items()}
    if not overrides:
        return None
    full = [i for i, w in enumerate(windows or ()) if w == -1]
    if windows is None or sorted(overrides) != full:
        reject(f"block_overrides on layers {sorted(overrides)} are supported only as RoPE scaling on exactly the "
               f"full-attention layers {full} of a sliding-window model (OLMo 3).")

    def without_scaling(b: dict) -> dict:
        att = dict(b.get("sequence_mixer") or b.get("attention") or {})
        att["rope"] = {k: v for k, v in (att.get("rope") or {}).items() if k != "scaling"}
        return {**{k: v for k, v in b.items() if k not in ("sequence_mixer", "attention")}, "sequence_mixer": att}

    scalings = []
    for i, b in sorted(overrides.items()):
        if without_scaling(b) != without_scaling(block):
            reject(f"block_overrides[{i}] differs from the block in more than its RoPE scaling.")
        scalings.append(((b.get("sequence_mixer") or b.get("attention") or {}).get("rope") or {}).get("scaling"))
    if not scalings[0] or any(sc != scalings[0] for sc in scalings):
        reject("the full-attention layers' block_overrides do not share one RoPE scaling.")
    return _yarn_to_hf(scalings[0], reject)


def model_config_to_hf(model: dict, *, where: str = "the model config") -> tuple[str, dict]:
    """``TransformerConfig.as_config_dict()`` -> ``("olmo" | "olmo2" | "olmo3", HF config kwargs)`` (special ids
    excluded). A reordered-norm model with sliding windows is OLMo 3: OLMo-core's window W (flash ``(W-1, 0)``) is
    Transformers' ``sliding_window`` W, and a YaRN scaling on the full-attention layers only (``block_overrides``)
    becomes ``rope_parameters["full_attention"]``."""

    def reject(msg: str):
        raise ConversionError(f"{where}: {msg}")

    if (model.get("name") or "default") != "default":
        reject(f"model type {model.get('name')!r} is not supported; only the 'default' transformer maps to Olmo.")
    for key, what in [
        ("block_pattern", "a block pattern (mixed block types)"),
        ("embedding_norm", "an embedding norm"),
        ("embed_scale", "an embedding scale"),
    ]:
        if model.get(key):
            reject(f"{what} ({key}) is not supported; every Olmo layer is the same and embeddings are used as is.")
    block = model.get("block")
    if not isinstance(block, dict) or not (block.get("sequence_mixer") or block.get("attention")):
        reject("the model has no single `block` config with attention (mixed block types are not supported).")
    if block.get("feed_forward_moe"):
        reject("mixture-of-experts feed-forward layers are not supported by Olmo / Olmo2.")
    block_name = block.get("name") or "default"
    if block_name == "reordered_norm":
        model_type = "olmo2"
    elif block_name == "default":
        model_type = "olmo"
    else:
        reject(f"block type {block_name!r} is not supported; 'reordered_norm' maps to Olmo2 and 'default' to Olmo.")

    att = block.get("sequence_mixer") or block.get("attention")
    if not isinstance(att, dict) or att.get("type", "attention") != "attention":
        reject("the block's sequence mixer is not attention.")
    if (att.get("name") or "default") != "default":
        reject(f"attention type {att.get('name')!r} is not supported; only 'default' (separate w_q/w_k/w_v) is.")
    if _get(att, "bias", True):
        reject("attention biases are not supported; the Transformers classes have no linear-layer biases.")
    if att.get("gate"):
        reject("attention gate is not supported by Olmo / Olmo2 / Olmo3.")
    for key in ("scalable_softmax", "attention_sinks", "qk_norm_per_head_gains"):
        if att.get(key):
            reject(f"attention {key} is not supported by Olmo / Olmo2.")
    rope = att.get("rope")
    if not rope:
        reject("attention without RoPE is not supported; Olmo / Olmo2 use rotary position embeddings.")
    if (rope.get("name") or "default") not in ("default", "fused", "complex"):  # same rotation, three kernels
        reject(f"RoPE type {rope.get('name')!r} is not supported.")
    if rope.get("scaling"):
        reject("RoPE scaling on every layer is not supported; OLMo 3 scales only the full-attention layers "
               "(OLMo-core with_rope_scaling(full_attn_layers_only=True)), and Olmo / Olmo2 take no scaling here.")
    windows = _window_sizes(att, int(model["n_layers"]), reject)
    if windows is not None and any(w > 0 for w in windows):
        if model_type != "olmo2":
            reject("sliding-window attention is supported for reordered-norm (OLMo 3) blocks only.")
        if len({w for w in windows if w > 0}) != 1:
            reject(f"sliding windows {sorted({w for w in windows if w > 0})} differ; Olmo3 takes one window size.")
        model_type = "olmo3"
    elif model.get("block_overrides"):
        reject("per-layer block overrides (block_overrides) are supported only for OLMo 3 RoPE scaling.")
    full_scaling = _full_layer_scaling(model, block, windows, reject) if model_type == "olmo3" else None
    if float(_get(rope, "partial_rotary_factor", 1.0)) != 1.0:
        reject("partial rotary embeddings are not supported by Olmo / Olmo2.")

    ff = block.get("feed_forward")
    if not isinstance(ff, dict):
        reject("the block has no feed-forward config.")
    if (ff.get("name") or "default") != "default" or (ff.get("activation") or "silu") != "silu":
        reject("only the default SwiGLU feed-forward (silu) is supported.")
    if _get(ff, "bias", True):
        reject("feed-forward biases are not supported; the Transformers classes have no linear-layer biases.")

    lm_head = model.get("lm_head") or {}
    if (lm_head.get("name") or "default") != "default" or _get(lm_head, "bias", True):
        reject("only the default LM head without bias is supported.")
    kind, affine, eps = _norm(block.get("layer_norm"), "the block", reject)
    if _norm(lm_head.get("layer_norm"), "the LM head", reject) != (kind, affine, eps):
        reject("the LM head's layer norm differs from the blocks'; Olmo / Olmo2 use one norm type and eps.")

    d, heads = int(model["d_model"]), int(att["n_heads"])
    kv = int(att.get("n_kv_heads") or heads)
    head_dim = int(att.get("head_dim") or d // heads)
    qk_norm = att.get("qk_norm")
    clip_qkv = att.get("clip_qkv")
    if model_type != "olmo":
        if (kind, affine) != ("rms", True):
            reject("a reordered_norm (OLMo 2) block needs an affine RMSNorm.")
        if qk_norm is None:
            reject("a reordered_norm (OLMo 2) block without qk-norm is not supported; Olmo2 always applies q/k norms.")
        if _norm(qk_norm, "the qk-norm", reject) != (kind, affine, eps):
            reject("the qk-norm differs from the block norm; Olmo2 uses one RMSNorm type and eps.")
        if att.get("use_head_qk_norm"):
            reject("per-head qk-norm (use_head_qk_norm) is not supported; Olmo2 normalises the full q/k projections.")
        if clip_qkv is not None:
            reject("clip_qkv is not supported for OLMo 2; Transformers' Olmo2 uses qk-norm instead of clipping.")
    else:
        if (kind, affine) != ("layer_norm", False):
            reject("a pre-norm ('default') block maps to OLMo v1 only with a non-affine LayerNorm.")
        if not math.isclose(eps, 1e-5):
            reject(f"layer norm eps {eps} is not supported for OLMo v1; Transformers' Olmo hard-codes 1e-5.")
        if qk_norm is not None:
            reject("qk-norm is not supported for OLMo v1 (a pre-norm 'default' block).")

    kwargs = dict(
        vocab_size=int(model["vocab_size"]),  # OLMo-core's vocab_size is the padded embedding size
        hidden_size=d,
        intermediate_size=int(ff["hidden_size"]),
        num_hidden_layers=int(model["n_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        hidden_act="silu",
        initializer_range=float(model.get("init_std") or 0.02),
        use_cache=True,
        tie_word_embeddings=bool(model.get("tie_word_embeddings", False)),
        rope_parameters=rope_parameters(_get(rope, "theta", 500_000)),
        attention_bias=False,
        attention_dropout=0.0,
    )
    if head_dim != d // heads or d % heads:
        kwargs["head_dim"] = head_dim
    if model_type == "olmo3":
        theta = _get(rope, "theta", 500_000)
        full = full_scaling or {"rope_type": "default"}
        kwargs.update(
            sliding_window=next(w for w in windows if w > 0),
            layer_types=["sliding_attention" if w > 0 else "full_attention" for w in windows],
            rope_parameters={"sliding_attention": rope_parameters(theta), "full_attention": {**full, "rope_theta": float(theta)}},
        )
    if model_type != "olmo":
        kwargs["rms_norm_eps"] = eps
    else:
        kwargs["clip_qkv"] = None if clip_qkv is None else float(clip_qkv)
    return model_type, kwargs


def special_ids_and_length(cfg: dict, model_type: str, vocab_size: int, where: str) -> dict:
    """eos / pad / bos and max_position_embeddings from the experiment config's tokenizer and dataset sections."""
    dataset = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    tok = dataset.get("tokenizer") or cfg.get("tokenizer")
    out: dict = {}
    if isinstance(tok, dict) and tok.get("eos_token_id") is not None:
        out.update(
            eos_token_id=tok["eos_token_id"], pad_token_id=tok.get("pad_token_id"), bos_token_id=tok.get("bos_token_id")
        )
    elif model_type != "olmo" and vocab_size >= DOLMA2_VOCAB:
        logger.warning("%s: no tokenizer section; assuming dolma2 ids (eos %d, pad %d).", where, DOLMA2_EOS, DOLMA2_PAD)
        out.update(eos_token_id=DOLMA2_EOS, pad_token_id=DOLMA2_PAD, bos_token_id=None)
    elif model_type == "olmo" and vocab_size >= GPT_NEOX_VOCAB:
        logger.warning(
            "%s: no tokenizer section; assuming GPT-NeoX-OLMo ids (eos %d, pad %d).", where, GPT_NEOX_EOS, GPT_NEOX_PAD
        )
        out.update(eos_token_id=GPT_NEOX_EOS, pad_token_id=GPT_NEOX_PAD, bos_token_id=None)
    else:
        logger.warning("%s: no tokenizer section and no known vocabulary; eos / pad are left unset.", where)
        out.update(eos_token_id=None, pad_token_id=None, bos_token_id=None)

    train_module = cfg.get("train_module") if isinstance(cfg.get("train_module"), dict) else {}
    length = (
        dataset.get("sequence_length") or dataset.get("max_sequence_length") or train_module.get("max_sequence_length")
    )
    if not length:
        # the published OLMo 3 / OLMo 2 / OLMo-1B values (olmo_hf.presets; checkpoints.md §1)
        length = {"olmo3": 65536, "olmo2": 4096}.get(model_type, 2048)
        logger.warning("%s: no sequence length in the config; writing max_position_embeddings %d.", where, length)
    out["max_position_embeddings"] = int(length)
    return out


def read(src: Path, dtype=None) -> Checkpoint:
    src = Path(src)
    if src.name == "model_and_optim":
        src = src.parent
    config_path = src / "config.json"
    cfg = read_json(config_path)
    if not isinstance(cfg.get("model"), dict):
        raise ConversionError(f"{config_path} has no `model` section, which an OLMo-core step's config.json has.")
    model_type, kwargs = model_config_to_hf(cfg["model"], where=str(config_path))
    kwargs.update(special_ids_and_length(cfg, model_type, kwargs["vocab_size"], str(config_path)))

    dcp_dir, model_pt = src / "model_and_optim", src / "model.pt"
    if (dcp_dir / ".metadata").is_file():
        sd = load_dcp(dcp_dir, prefix="model.")
    elif model_pt.is_file():
        sd = load_torch_file(model_pt)
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
    else:
        raise ConversionError(f"{src} has neither model_and_optim/.metadata nor model.pt.")
    hf_sd = convert_state_dict("olmo_core", sd, kwargs, dtype=dtype, desc="OLMo-core -> HF")
    return Checkpoint(model_type, kwargs, hf_sd, source=f"OLMo-core checkpoint {src}")


# ---------------------------------------------------------------------------------------------------
# HF -> OLMo-core (olmo_hf.convert.to_olmo_core)

_CLASSES = {  # the `_CLASS_` names OLMo-core's Config.as_config_dict writes and Config.from_dict resolves
    "model": "olmo_core.nn.transformer.config.TransformerConfig",
    "block": "olmo_core.nn.transformer.config.TransformerBlockConfig",
    "attention": "olmo_core.nn.attention.AttentionConfig",
    "rope": "olmo_core.nn.rope.RoPEConfig",
    "norm": "olmo_core.nn.layer_norm.LayerNormConfig",
    "feed_forward": "olmo_core.nn.feed_forward.FeedForwardConfig",
    "lm_head": "olmo_core.nn.lm_head.LMHeadConfig",
    "tokenizer": "olmo_core.data.tokenizer.TokenizerConfig",
    "sliding_window": "olmo_core.nn.attention.SlidingWindowAttentionConfig",
    "yarn": "olmo_core.nn.rope.YaRNRoPEScalingConfig",
}
# HF fields that must round-trip through model_config_to_hf unchanged (the self-check in model_config_from_hf)
_ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "tie_word_embeddings", "rope_parameters", "rms_norm_eps", "clip_qkv",
                "sliding_window", "layer_types")


def _rope_theta(kw: dict, reject) -> int | float:
    rope = kw.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default":
        reject(f"RoPE type {rope.get('rope_type')!r} (scaling) is not supported; OLMo-core gets the default RoPE only.")
    theta = float(rope.get("rope_theta", 10_000.0))
    return int(theta) if theta.is_integer() else theta  # RoPEConfig.theta is an int field


def _olmo3_rope(kw: dict, reject) -> tuple[int | float, dict | None]:
    """(theta, OLMo-core YaRN scaling config or None) of an Olmo3 config: plain RoPE on the sliding layers, optional
    YaRN on the full-attention layers (what OLMo-core's ``with_rope_scaling(full_attn_layers_only=True)`` builds)."""
    rope = kw.get("rope_parameters") or {}
    sliding, full = rope.get("sliding_attention") or {}, rope.get("full_attention") or {}
    if (sliding.get("rope_type") or "default") != "default":
        reject("RoPE scaling on the sliding-window layers is not supported; OLMo-core scales full-attention layers only.")
    theta = _rope_theta({"rope_parameters": sliding}, reject)
    if float(full.get("rope_theta", theta)) != float(theta):
        reject("rope_theta differs between layer types; OLMo-core has one RoPE theta.")
    if (full.get("rope_type") or "default") == "default":
        return theta, None
    if full["rope_type"] != "yarn" or full.get("mscale") or full.get("mscale_all_dim") or full.get("truncate") is False:
        reject(f"full-attention RoPE {full.get('rope_type')!r} is not supported; OLMo-core takes YaRN (truncated, no mscale).")
    factor = float(full["factor"])
    if not math.isclose(float(full.get("attention_factor") or 0.1 * math.log(factor) + 1.0), 0.1 * math.log(factor) + 1.0):
        reject(f"YaRN attention_factor {full['attention_factor']} is not OLMo-core's 0.1 * ln(factor) + 1.")
    as_int = lambda x: int(x) if float(x).is_integer() else float(x)  # noqa: E731 - YaRNRoPEScalingConfig int fields
    scaling = {"factor": as_int(factor), "beta_fast": as_int(full.get("beta_fast", 32)),
               "beta_slow": as_int(full.get("beta_slow", 1)),
               "old_context_len": int(full.get("original_max_position_embeddings") or kw["max_position_embeddings"]),
               "_CLASS_": _CLASSES["yarn"]}
    return theta, scaling


def model_config_from_hf(kw: dict, *, where: str = "the Transformers config") -> dict:
    """Olmo / Olmo2 config kwargs (``config.to_dict()``) -> ``TransformerConfig.as_config_dict()``.

    The inverse of `model_config_to_hf`, and checked against it: the returned dict, read back by
    `model_config_to_hf`, must give the same architecture, else this raises `ConversionError`.

    - OLMo 2 -> a ``reordered_norm`` block, RMSNorm (``rms_norm_eps``) on the sublayer outputs, on q/k
      (over all heads: ``use_head_qk_norm`` false) and before the LM head.
    - OLMo 3 -> the OLMo 2 block with a ``SlidingWindowAttentionConfig`` giving each layer's window (-1: full), and
      the full-attention layers' YaRN as ``block_overrides`` (``with_rope_scaling(full_attn_layers_only=True)``).
    - OLMo v1 -> a ``default`` (pre-norm) block with a non-affine ``default`` LayerNorm (eps 1e-5, no
      weights) and ``clip_qkv``: exactly what ai2-olmo-core 3.0 builds for such a config.
    """

    def reject(msg: str):
        raise ConversionError(f"{where}: {msg}")

    model_type = kw.get("model_type")
    if model_type not in ("olmo", "olmo2", "olmo3"):
        reject(f"model_type {model_type!r} is not supported; only 'olmo', 'olmo2' and 'olmo3' map to OLMo-core.")
    if kw.get("hidden_act", "silu") != "silu":
        reject(f"hidden_act {kw['hidden_act']!r} is not supported; OLMo-core's default feed-forward is SwiGLU (silu).")
    if kw.get("attention_bias"):
        reject("attention_bias is not supported; olmo_hf converts only bias-free OLMo models.")
    if kw.get("attention_dropout"):
        logger.warning("%s: attention_dropout %s is not carried over to OLMo-core.", where, kw["attention_dropout"])
    d, heads = int(kw["hidden_size"]), int(kw["num_attention_heads"])
    kv = int(kw.get("num_key_value_heads") or heads)
    head_dim = int(kw.get("head_dim") or d // heads)
    theta, scaling = _olmo3_rope(kw, reject) if model_type == "olmo3" else (_rope_theta(kw, reject), None)

    if model_type != "olmo":
        norm = {"name": "rms", "eps": float(kw.get("rms_norm_eps", 1e-5)), "bias": False, "dtype": "float32",
                "_CLASS_": _CLASSES["norm"]}
        block_name = "reordered_norm"
    else:
        norm = {"name": "default", "eps": 1e-5, "elementwise_affine": False, "bias": False, "_CLASS_": _CLASSES["norm"]}
        block_name = "default"
    attention = {"name": "default", "n_heads": heads, "n_kv_heads": kv}
    if head_dim != d // heads or d % heads:
        attention["head_dim"] = head_dim
    attention.update(
        bias=False,
        rope={"name": "default", "theta": theta, "full_precision": True, "no_global_rope": False,
              "partial_rotary_factor": 1.0, "_CLASS_": _CLASSES["rope"]},
    )
    if model_type != "olmo":
        attention.update(qk_norm=dict(norm), use_head_qk_norm=False)
    if model_type == "olmo3":
        attention["sliding_window"] = {  # one pattern entry per layer: exact for any layer_types
            "pattern": [int(kw["sliding_window"]) if t == "sliding_attention" else -1 for t in kw["layer_types"]],
            "force_full_attention_on_first_layer": False, "force_full_attention_on_last_layer": False,
            "_CLASS_": _CLASSES["sliding_window"],
        }
    elif kw.get("clip_qkv") is not None:
        attention["clip_qkv"] = float(kw["clip_qkv"])
    attention.update(dtype="float32", scalable_softmax=False, attention_sinks=False, _CLASS_=_CLASSES["attention"],
                     type="attention")
    model = {
        "d_model": d,
        "vocab_size": int(kw["vocab_size"]),  # the (padded) embedding rows, as in OLMo-core
        "n_layers": int(kw["num_hidden_layers"]),
        "block": {
            "sequence_mixer": attention,
            "layer_norm": dict(norm),
            "feed_forward": {"hidden_size": int(kw["intermediate_size"]), "name": "default", "bias": False,
                             "dtype": "float32", "activation": "silu", "_CLASS_": _CLASSES["feed_forward"]},
            "name": block_name,
            "_CLASS_": _CLASSES["block"],
        },
        "lm_head": {"name": "default", "layer_norm": dict(norm), "bias": False, "dtype": "float32",
                    "loss_implementation": "default", "_CLASS_": _CLASSES["lm_head"]},
        "name": "default",
        "dtype": "float32",
        "init_method": "normal",
        "init_seed": 0,
        "init_std": float(kw.get("initializer_range") or 0.02),
        "tie_word_embeddings": bool(kw.get("tie_word_embeddings", False)),
        "_CLASS_": _CLASSES["model"],
    }
    if scaling is not None:
        scaled = copy.deepcopy(model["block"])
        scaled["sequence_mixer"]["rope"]["scaling"] = scaling
        model["block_overrides"] = {
            str(i): copy.deepcopy(scaled) for i, t in enumerate(kw["layer_types"]) if t == "full_attention"
        }

    back_type, back = model_config_to_hf(model, where=where)
    expected = {"head_dim": head_dim, "num_key_value_heads": kv, "rope_parameters": rope_parameters(theta)}
    if model_type == "olmo3":
        full = {**_yarn_to_hf(scaling, reject), "rope_theta": float(theta)} if scaling else rope_parameters(theta)
        expected["rope_parameters"] = {"sliding_attention": rope_parameters(theta), "full_attention": full}
    if model_type == "olmo":
        expected["clip_qkv"] = None if kw.get("clip_qkv") is None else float(kw["clip_qkv"])
    back.setdefault("head_dim", d // heads)
    diff = [f for f in _ARCH_FIELDS if f in back and back[f] != expected.get(f, kw.get(f))]
    if back_type != model_type or diff:
        reject(f"the OLMo-core config does not reproduce {', '.join(diff) or 'model_type'}; this is a bug in olmo_hf.")
    return model


def experiment_config_from_hf(kw: dict, *, where: str = "the Transformers config") -> dict:
    """``{"model": TransformerConfig dict, "dataset": {"sequence_length", "tokenizer": TokenizerConfig dict}}``.

    The ``dataset`` part is the subset of an OLMo-core experiment config that carries the special token ids
    and the sequence length (what `read` takes them from); ``TokenizerConfig.vocab_size`` is the embedding size
    since the HF config does not record the tokenizer's own size.
    """
    eos = kw.get("eos_token_id")
    if isinstance(eos, list):
        logger.warning("%s: eos_token_id is a list %s; OLMo-core takes one id, writing %s.", where, eos, eos[0])
        eos = eos[0] if eos else None
    tokenizer = {"vocab_size": int(kw["vocab_size"]), "eos_token_id": eos, "pad_token_id": kw.get("pad_token_id"),
                 "bos_token_id": kw.get("bos_token_id"), "_CLASS_": _CLASSES["tokenizer"]}
    return {
        "model": model_config_from_hf(kw, where=where),
        "dataset": {"sequence_length": int(kw["max_position_embeddings"]),
                    "tokenizer": {k: v for k, v in tokenizer.items() if v is not None}},
    }


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], kw: dict, *, dtype=None) -> dict[str, torch.Tensor]:
    """HF Olmo / Olmo2 weights -> OLMo-core ``Transformer.state_dict()`` keys (`inverse_layout` of OLMO_CORE_LAYOUT).

    A tied OLMo-core model lists the shared tensor under both ``embeddings.weight`` and ``lm_head.w_out.weight``,
    so both are written (one storage). A tensor that is a view into a larger storage is copied, so that
    ``torch.save`` stores only its own elements; the others are saved as they are (no extra memory).
    """
    sd = convert_state_dict_to_original("olmo_core", hf_sd, kw, dtype=dtype, desc="HF -> OLMo-core")
    sd = {k: _own_storage(v.detach().to("cpu").contiguous()) for k, v in sd.items()}
    if kw.get("tie_word_embeddings"):
        sd["lm_head.w_out.weight"] = sd["embeddings.weight"]
    return sd


def save_dcp(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """``state_dict`` as a single-process torch.distributed.checkpoint directory with ``model.*`` keys, the
    layout of OLMo-core's ``save_model_and_optim_state`` (without optimizer state)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    unique: dict[int, str] = {}
    sd = {}
    for k, v in state_dict.items():  # DCP stores every name; a tied weight is saved twice, read back equal
        sd[k] = v.clone() if id(v) in unique else v
        unique.setdefault(id(v), k)
    from torch.distributed.checkpoint.api import CheckpointException

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... save in a single process"
        try:
            dcp.save({"model": sd}, checkpoint_id=str(path), no_dist=True)
        except CheckpointException as e:  # DCP wraps every failure, Ctrl-C and a full disk included
            raise _unwrapped(e) from None


def _unwrapped(error) -> BaseException:
    """The KeyboardInterrupt or OSError inside a DCP ``CheckpointException`` (else the exception itself), so that
    Ctrl-C and I/O faults are reported as such instead of as a multi-traceback message."""
    inner = [failure[0] if isinstance(failure, tuple) else failure for failure in error.failures.values()]
    for kind in (KeyboardInterrupt, OSError):
        for exc in inner:
            if isinstance(exc, kind):
                return exc
    return error
