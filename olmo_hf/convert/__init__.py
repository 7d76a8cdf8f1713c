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
No code from ai2-olmo, OLMo-core or hf_olmo is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import hf_olmo, olmo_core, olmo_trainer
from .common import Checkpoint, ConversionError, logger, model_classes, read_json

__all__ = ["FORMATS", "ConversionError", "convert_checkpoint", "detect_format"]

FORMATS = {"olmo_trainer": olmo_trainer.read, "olmo_core": olmo_core.read, "hf_olmo": hf_olmo.read}
_ALIASES = {
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
        if cfg.get("model_type") in ("olmo", "olmo2", "olmo_1124"):
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


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"{dst} exists and is not a directory.")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty; pass overwrite=True to replace it.")


def _build_model(ckpt: Checkpoint, dtype: torch.dtype | None):
    """Our model class with the checkpoint's weights, loaded strictly: a key or shape mismatch is an error."""
    from transformers import GenerationConfig
    from transformers.initialization import no_init_weights

    config_cls, model_cls = model_classes(ckpt.model_type)
    sd = ckpt.state_dict
    dtypes = {t.dtype for t in sd.values()}
    dtype = dtype or (dtypes.pop() if len(dtypes) == 1 else torch.float32)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    if dtype == torch.float16 and ckpt.model_type == "olmo2":
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


def _validate(model, out: Path) -> None:
    """Reload what was written and check it reproduces the in-memory model."""
    _, model_cls = model_classes(model.config.model_type)
    reloaded = model_cls.from_pretrained(str(out), dtype=model.dtype).eval()
    ours, theirs = model.state_dict(), reloaded.state_dict()
    bad = [k for k in ours if k not in theirs or not torch.equal(ours[k], theirs[k])]
    if bad:
        raise ConversionError(
            f"validation failed: the written checkpoint differs from the converted weights at {bad[:4]}."
        )
    ids = torch.arange(min(8, model.config.vocab_size)).unsqueeze(0)
    with torch.no_grad():
        logits = reloaded(ids).logits
    if not torch.isfinite(logits).all():
        raise ConversionError("validation failed: the converted model produces non-finite logits.")


def convert_checkpoint(src, dst, format="auto", tokenizer=None, dtype=None, overwrite=False, validate=False) -> Path:
    """Convert the OLMo checkpoint at ``src`` into a Transformers directory at ``dst``; returns ``dst``.

    Args:
        src: checkpoint directory (see the module docstring for the formats).
        dst: output directory; must be absent or empty unless ``overwrite``.
        format: "auto" (see `detect_format`), "olmo_trainer", "olmo_core" or "hf_olmo".
        tokenizer: optional ``tokenizer.json`` file or tokenizer directory to save alongside.
        dtype: output dtype ("float32", "bfloat16", "float16" or a torch.dtype); default: the checkpoint's.
        overwrite: replace a non-empty ``dst``.
        validate: reload the written directory and check it reproduces the converted weights.

    Raises:
        ConversionError: with a one-sentence reason; ``dst`` is then left as it was.
    """
    src, dst = Path(src), Path(dst)
    fmt = _resolve_format(src, format)
    torch_dtype = _resolve_dtype(dtype)
    tokenizer = Path(tokenizer) if tokenizer is not None else None
    if tokenizer is not None and not tokenizer.exists():
        raise ConversionError(f"tokenizer path {tokenizer} does not exist.")
    _check_dst(dst, overwrite)

    ckpt = FORMATS[fmt](src, dtype=torch_dtype)
    model = _build_model(ckpt, torch_dtype)
    tok = _load_tokenizer(tokenizer, model.config) if tokenizer is not None else None

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        model.save_pretrained(str(tmp))
        if tok is not None:
            _save_tokenizer(tok, tmp)
        if validate:
            _validate(model, tmp)
        _check_dst(dst, overwrite)  # again: something may have appeared meanwhile
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
    logger.info("converted %s -> %s (%s, %s)", ckpt.source, dst, ckpt.model_type, model.dtype)
    return dst
