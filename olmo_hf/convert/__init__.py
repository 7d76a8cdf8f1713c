# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Convert original OLMo checkpoints into standard Transformers directories loaded by olmo_hf's classes.

Formats (shared/reference/checkpoints.md §2, §4):

- ``olmo_trainer``: ai2-olmo (the old trainer) unsharded step directory, ``config.yaml`` + ``model.pt``.
- ``olmo_core``: OLMo-core step directory, ``config.json`` (``model`` section) + ``model_and_optim/``
  (torch.distributed.checkpoint) or ``model.pt``.
- ``hf_olmo``: legacy ``hf_olmo`` repo (allenai/OLMo-1B, OLMo-7B, ...), ``config.json`` with
  ModelConfig fields + ``pytorch_model.bin`` / ``model.safetensors``.

    from olmo_hf.convert import convert_checkpoint
    convert_checkpoint("ckpt/step1000-unsharded", "OLMo-1B-hf", tokenizer="tokenizer.json")

The output is ``config.json``, ``model.safetensors``, ``generation_config.json`` (+ tokenizer files). It is
built in a temporary directory next to ``dst`` and renamed into place, so on any error ``dst`` is untouched.
No code from ai2-olmo, OLMo-core or hf_olmo is imported (``validate=True`` uses them only if importable,
see `olmo_hf.convert.validate`).

The reverse, to continue training in OLMo-core, is `to_olmo_core`: a Transformers Olmo / Olmo2 model or
directory -> ``config.json`` (``{"model": TransformerConfig dict, "dataset": {...}}``) + ``model.pt``
(OLMo-core state-dict keys), optionally + ``model_and_optim/`` (torch.distributed.checkpoint).

    from olmo_hf.convert import to_olmo_core
    to_olmo_core("OLMo-2-0425-1B-hf", "OLMo-2-0425-1B-core")

The command line for both is ``olmo-hf convert`` / ``python -m olmo_hf.convert`` (`olmo_hf.convert.cli`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import hf_olmo, olmo_core, olmo_trainer, validate as _validation
from .common import Checkpoint, ConversionError, logger, model_classes, read_json

__all__ = ["FORMATS", "ConversionError", "convert_checkpoint", "detect_format", "to_olmo_core"]

FORMATS = {"olmo_trainer": olmo_trainer.read, "olmo_core": olmo_core.read, "hf_olmo": hf_olmo.read}
_ALIASES = {  # the names users (and the issue) use; "olmo" is the ai2-olmo trainer format
    "olmo": "olmo_trainer",
    "ai2-olmo": "olmo_trainer",
    "ai2_olmo": "olmo_trainer",
    "olmo-trainer": "olmo_trainer",
    "olmo-core": "olmo_core",
    "hf-olmo": "hf_olmo",
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def detect_format(src) -> str:
    """The format of the checkpoint at ``src``: "olmo_trainer", "olmo_core" or "hf_olmo".

    Raises `ConversionError` saying what was found when the directory matches none of them.
    """
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{src} does not exist.")
    if src.is_file():
        raise ConversionError(f"{src} is a file; pass the checkpoint directory that contains it.")
    if src.name == "model_and_optim" and (src.parent / "config.json").is_file():
        src = src.parent
    if (src / "config.yaml").is_file():
        return "olmo_trainer"
    if (src / "config.json").is_file():
        cfg = read_json(src / "config.json")
        if isinstance(cfg.get("model"), dict):
            return "olmo_core"
        if hf_olmo.is_hf_olmo_config(cfg):
            return "hf_olmo"
        if cfg.get("model_type") in ("olmo", "olmo2", "olmo3", "olmo_1124"):
            raise ConversionError(
                f"{src} is already a Transformers {cfg['model_type']!r} checkpoint; load it with "
                "AutoModelForCausalLM.from_pretrained instead of converting it."
            )
        raise ConversionError(
            f"{src}/config.json is neither an OLMo-core config (no `model` section) nor a legacy hf_olmo config "
            f"(model_type {cfg.get('model_type')!r})."
        )
    raise ConversionError(
        f"{src} is not a recognised OLMo checkpoint: expected config.yaml + model.pt (ai2-olmo), "
        "config.json + model_and_optim/ (OLMo-core) or an hf_olmo config.json + weights."
    )


def _resolve_format(src: Path, format: str) -> str:
    if format == "auto":
        return detect_format(src)
    fmt = _ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {format!r}; choose one of 'auto', {', '.join(map(repr, FORMATS))}.")
    return fmt


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ConversionError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16.")


# What the converters write into DST (save_pretrained, the tokenizer, to_olmo_core): with --overwrite, a DST holding
# anything else is refused, so that replacing DST never deletes what a conversion did not write.
_OUTPUT_NAMES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "model.pt",
    "model_and_optim", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "vocab.json", "merges.txt", "added_tokens.json",
})


def _is_output(name: str) -> bool:
    return name in _OUTPUT_NAMES or (name.startswith("model-") and name.endswith(".safetensors"))


def _check_dst(dst: Path, overwrite: bool, src: Path | None = None) -> None:
    """Refuse a DST that is a file, that is SRC or overlaps it, or that is not empty (without ``overwrite``), or,
    with ``overwrite``, that holds files a conversion does not write."""
    if src is not None:
        s, d = src.resolve(), dst.resolve()
        if d == s or s in d.parents or d in s.parents:
            relation = "is" if d == s else "lies inside" if s in d.parents else "contains"
            raise ConversionError(f"DST {dst} {relation} SRC {src}; writing there would destroy the checkpoint being "
                                  "converted: choose a DST outside SRC.")
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst} exists and is not a directory.")
    if not dst.is_dir():
        return
    entries = sorted(p.name for p in dst.iterdir())
    if entries and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    foreign = [name for name in entries if not _is_output(name)]
    if foreign:
        raise ConversionError(
            f"{dst} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which a conversion does not "
            "write; --overwrite only replaces an earlier conversion's output: move those files away or choose "
            "another DST."
        )


def _build_model(ckpt: Checkpoint, dtype: torch.dtype | None):
    """Our model class with the checkpoint's weights, loaded strictly: a key or shape mismatch is an error."""
    from transformers import GenerationConfig
    from ..compat import no_init_weights

    config_cls, model_cls = model_classes(ckpt.model_type)
    sd = ckpt.state_dict
    dtypes = {t.dtype for t in sd.values()}
    dtype = dtype or (dtypes.pop() if len(dtypes) == 1 else torch.float32)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    if dtype == torch.float16 and ckpt.model_type in ("olmo2", "olmo3"):
        logger.warning("OLMo 2 in float16 overflows (outputs '!!!!' or NaN); prefer bfloat16 or float32.")
    try:
        config = config_cls(**ckpt.config_kwargs)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"the config translated from the {ckpt.source} is invalid ({e}).") from e
    config.dtype = dtype
    with no_init_weights():  # the weights come from the checkpoint; skip the random init
        model = model_cls(config)
    if config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        expected = model.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(sd) & set(expected))
                      if sd[k].shape != expected[k].shape]
        found = [("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs config)", mismatched)]
        parts = [f"{name}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for name, v in found if v]
        raise ConversionError(
            f"the weights of the {ckpt.source} do not match its config ({'; '.join(parts) or e})."
        ) from None
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model


def _stop_at_end_of_turn(generation_config, tokenizer) -> None:
    """Generation eos ``[<|im_end|>, eos]`` when the tokenizer has the chat end-of-turn token, as OLMo-core's HF
    exporter writes it, so post-trained checkpoints stop at the end of their turn (``olmo_hf.presets``)."""
    from ..presets import end_of_turn_id

    eos = generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn is not None and eos and end_of_turn not in eos:
        generation_config.eos_token_id = [end_of_turn, *eos]


def _load_tokenizer(path: Path, config):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path.is_dir():
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    if len(tok) > config.vocab_size:
        raise ConversionError(
            f"the tokenizer at {path} has {len(tok)} tokens but the model embeds only {config.vocab_size}."
        )
    for name in ("eos", "pad", "bos"):
        token_id = getattr(config, f"{name}_token_id")
        if token_id is not None and getattr(tok, f"{name}_token_id") is None and token_id < len(tok):
            setattr(tok, f"{name}_token", tok.convert_ids_to_tokens(token_id))
    return tok


def _save_tokenizer(tok, out: Path) -> None:
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    if cfg_path.is_file():
        # A 5.x "TokenizersBackend" class name does not load in Transformers 4.x (checkpoints.md §3).
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _atomic_dir(dst: Path, overwrite: bool, src: Path | None = None):
    """Yield an empty temporary directory next to ``dst``; on success it replaces ``dst`` by rename.

    On any error or Ctrl-C (in the body or here) ``dst`` is left exactly as it was and the temporary directory is
    removed. The old ``dst`` (an earlier conversion's output, see `_check_dst`) is deleted only once the new one is
    in place.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like any new directory
    try:
        yield tmp
        _check_dst(dst, overwrite, src)  # again: something may have appeared meanwhile
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.replace(old / dst.name, dst)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_checkpoint(src, dst, format="auto", tokenizer=None, dtype=None, overwrite=False, validate=False) -> Path:
    """Convert the OLMo checkpoint at ``src`` into a Transformers directory at ``dst``; returns ``dst``.

    Args:
        src: checkpoint directory (see the module docstring for the formats).
        dst: output directory; must be absent or empty unless ``overwrite``.
        format: "auto" (see `detect_format`), "olmo_trainer" (alias "olmo"), "olmo_core" or "hf_olmo".
        tokenizer: optional ``tokenizer.json`` file or tokenizer directory to save alongside.
        dtype: output dtype ("float32", "bfloat16", "float16" or a torch.dtype); default: the checkpoint's.
        overwrite: replace a non-empty ``dst``.
        validate: reload the written directory and check it reproduces the converted weights; when the
            source format's original library (ai2-olmo / OLMo-core) is importable here, also compare logits
            with it (`olmo_hf.convert.validate`), else log a warning that that step was skipped.

    Raises:
        ConversionError: with a one-sentence reason; ``dst`` is then left as it was.
    """
    src, dst = Path(src), Path(dst)
    fmt = _resolve_format(src, format)
    torch_dtype = _resolve_dtype(dtype)
    tokenizer = Path(tokenizer) if tokenizer is not None else None
    if tokenizer is not None and not tokenizer.exists():
        raise ConversionError(f"tokenizer path {tokenizer} does not exist.")
    _check_dst(dst, overwrite, src)

    ckpt = FORMATS[fmt](src, dtype=torch_dtype)
    model = _build_model(ckpt, torch_dtype)
    tok = _load_tokenizer(tokenizer, model.config) if tokenizer is not None else None
    if tok is not None:
        _stop_at_end_of_turn(model.generation_config, tok)

    with _atomic_dir(dst, overwrite, src) as tmp:
        model.save_pretrained(str(tmp))
        if tok is not None:
            _save_tokenizer(tok, tmp)
        if validate:
            _validation.check_reload(model, tmp)
            _validation.check_against_original(fmt, src, tmp, model.dtype)
    logger.info("converted %s -> %s (%s, %s)", ckpt.source, dst, ckpt.model_type, model.dtype)
    return dst


# ---------------------------------------------------------------------------------------------------
# Transformers -> OLMo-core

_TRANSFORMERS_MODEL_TYPES = ("olmo", "olmo2", "olmo3", "olmo_1124")


def load_transformers_model(src, format="auto", dtype=None):
    """An Olmo / Olmo2 model (olmo_hf's classes) from a Transformers directory, or from any checkpoint
    `convert_checkpoint` reads (converted in memory). Used by `to_olmo_core`."""
    src = Path(src)
    torch_dtype = _resolve_dtype(dtype)
    config_path = src / "config.json"
    if format in ("auto", "hf", "transformers") and src.is_dir() and config_path.is_file():
        model_type = read_json(config_path).get("model_type")
        if model_type in _TRANSFORMERS_MODEL_TYPES:
            _, model_cls = model_classes("olmo2" if model_type == "olmo_1124" else model_type)
            from safetensors import SafetensorError

            try:
                return model_cls.from_pretrained(str(src), dtype=torch_dtype or "auto").eval()
            except (OSError, ValueError, SafetensorError) as e:
                raise ConversionError(f"{src} could not be loaded as a Transformers {model_type!r} model ({e}).") from e
    if format in ("hf", "transformers"):
        raise ConversionError(
            f"{src} is not a Transformers OLMo directory (config.json with model_type 'olmo', 'olmo2' or 'olmo3')."
        )
    fmt = _resolve_format(src, format)
    return _build_model(FORMATS[fmt](src, dtype=torch_dtype), torch_dtype)


def to_olmo_core(model_or_dir, dst, *, format="auto", dtype=None, overwrite=False, validate=False,
                 model_and_optim=False) -> Path:
    """Write an Olmo / Olmo2 model as an OLMo-core (ai2-olmo-core 3.x) checkpoint directory; returns ``dst``.

    ``dst`` receives:

    - ``config.json``: ``{"model": <TransformerConfig.as_config_dict()>, "dataset": {"sequence_length",
      "tokenizer": <TokenizerConfig>}}``; ``TransformerConfig.from_dict(cfg["model"])`` builds the model.
    - ``model.pt``: ``torch.save`` of the OLMo-core ``Transformer.state_dict()`` (``embeddings.weight``,
      ``blocks.L.attention.w_q`` ...), for ``model.load_state_dict(torch.load(...), strict=True)``.
    - with ``model_and_optim=True`` also ``model_and_optim/``: the same tensors as a torch.distributed.checkpoint
      (keys ``model.*``), for ``olmo_core.distributed.checkpoint.load_model_and_optim_state``.

    OLMo 2 maps to a ``reordered_norm`` block; OLMo 3 to the same block with OLMo-core's sliding-window pattern and
    its YaRN scaling as ``block_overrides`` on the full-attention layers; OLMo v1 (incl. ``clip_qkv``) to OLMo-core's ``default`` pre-norm
    block with a non-affine LayerNorm. Key mapping: the inverse of ``layouts.OLMO_CORE_LAYOUT``.

    Args:
        model_or_dir: an olmo_hf / Transformers Olmo or Olmo2 ``*ForCausalLM``, a Transformers directory, or an
            original checkpoint directory (converted in memory first; ``format`` as in `convert_checkpoint`).
        dst: output directory; must be absent or empty unless ``overwrite``. Written atomically.
        dtype: dtype of the saved tensors; default: the model's.
        validate: read ``model.pt`` back through olmo_hf's own OLMo-core reader and require the model's weights
            bit for bit; when OLMo-core is importable here, also build its model from ``config.json``, load
            ``model.pt`` strictly and compare logits.
    """
    from transformers import PreTrainedModel

    dst = Path(dst)
    torch_dtype = _resolve_dtype(dtype)
    src = Path(model_or_dir) if isinstance(model_or_dir, (str, os.PathLike)) else None
    _check_dst(dst, overwrite, src)
    if isinstance(model_or_dir, PreTrainedModel):
        model = model_or_dir
    elif src is not None:
        if not src.exists():
            raise ConversionError(f"{src} does not exist.")
        model = load_transformers_model(src, format=format, dtype=torch_dtype)
    else:
        raise ConversionError(f"expected a Transformers model or a directory, got {type(model_or_dir).__name__}.")
    kw = model.config.to_dict()
    kw["model_type"] = "olmo2" if kw.get("model_type") == "olmo_1124" else kw.get("model_type")
    where = f"the {kw['model_type']!r} model config"
    config = olmo_core.experiment_config_from_hf(kw, where=where)
    state_dict = olmo_core.state_dict_from_hf(model.state_dict(), kw, dtype=torch_dtype)

    with _atomic_dir(dst, overwrite, src) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        torch.save(state_dict, tmp / "model.pt")
        if model_and_optim:
            olmo_core.save_dcp(state_dict, tmp / "model_and_optim")
        if validate:
            _validation.check_olmo_core_export(model, tmp, state_dict)
    logger.info("wrote OLMo-core checkpoint %s (%s, %d tensors)", dst, kw["model_type"], len(state_dict))
    return dst
