# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``validate=True`` / ``--validate``: checks run on the written directory before it is renamed into place.

1. Always, without any original library: the written files are read back and must hold exactly the
   converted weights (bit for bit), and the model must give finite logits.
2. When the ORIGINAL library of the source format is importable in the current interpreter
   (``olmo`` from ai2-olmo for ``olmo_trainer`` / ``hf_olmo``, ``olmo_core`` from ai2-olmo-core 3.x for
   ``olmo_core`` and for `to_olmo_core` output), the source checkpoint is also built with that library
   and its logits are compared with ours on fixed random ids: max |diff| must be <= `logit_tolerance`.
   Otherwise that step is skipped with a warning naming the library; olmo_hf never installs it.

A failure raises `ConversionError`, so the destination is left untouched.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import torch

from .common import ConversionError, load_torch_file, logger, model_classes, read_json

N_IDS = (2, 16)  # the ids both models run on


def logit_tolerance(reference: torch.Tensor) -> float:
    """Float32 logits of a correct conversion differ by ~1e-6 on tiny models and ~1e-4 on deep ones; a wrong
    layout or norm differs by O(1). 1e-3 relative to the largest logit separates the two."""
    return 1e-3 * max(1.0, reference.abs().max().item())


def _ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, N_IDS, generator=torch.Generator().manual_seed(0))


def _library(module: str, distribution: str, min_major: int = 0) -> tuple[str | None, str]:
    """(version, "") if ``module`` from ``distribution`` (major version >= ``min_major``) is importable here,
    else (None, the reason)."""
    import sys

    if importlib.util.find_spec(module) is None:
        return None, f"{distribution} ({module}) is not importable in this interpreter ({sys.executable})"
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None, f"the importable {module!r} module is not from {distribution}"
    major = version.split(".")[0]
    if major.isdigit() and int(major) < min_major:
        return None, f"{distribution} {version} is importable here, but this format needs {min_major}.x or later"
    return version, ""


def _skip(what: str, reason: str) -> None:
    logger.warning(
        "--validate: the comparison with %s was skipped: %s; only the reload check ran. Install it (or run "
        "this command with its Python) to compare logits with the original implementation.", what, reason
    )


def _compare(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    if ours.shape != theirs.shape:
        raise ConversionError(
            f"validation failed: logits of shape {tuple(ours.shape)} vs {what}'s {tuple(theirs.shape)}."
        )
    diff = (ours.float() - theirs.float()).abs().max().item()
    tol = logit_tolerance(theirs)
    if not diff <= tol:  # also catches NaN
        raise ConversionError(f"validation failed: max |logit diff| vs {what} is {diff:.3g} (tolerance {tol:.3g}).")
    logger.info("--validate: logits match %s, max |diff| %.3g (tolerance %.3g).", what, diff, tol)
    return diff


# ---------------------------------------------------------------------------------------------------
# 1. reload


def check_reload(model, out: Path) -> None:
    """Reload the written Transformers directory and check it reproduces the in-memory model."""
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
    logger.info("--validate: the written directory reloads with identical weights and finite logits.")


def _our_fp32_logits(out: Path, ids: torch.Tensor) -> torch.Tensor:
    model_type = read_json(out / "config.json")["model_type"]
    _, model_cls = model_classes(model_type)
    model = model_cls.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------------------------------
# 2. against the original library


def _rounded(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The reference's weights rounded to the output dtype, in float32: both sides then hold equal values."""
    return {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}


def _ai2_olmo_logits(fmt: str, src: Path, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import dataclasses

    import yaml
    from olmo.config import ModelConfig
    from olmo.model import OLMo

    from ..ai2_olmo_format import HF_OLMO_PREFIX, load_hf_olmo_weights, strip_prefix

    if fmt == "olmo_trainer":
        raw = yaml.safe_load((src / "config.yaml").read_text())["model"]
        sd = strip_prefix(load_torch_file(src / "model.pt"), "transformer.", "model.pt")
    else:
        raw = read_json(src / "config.json")
        sd = strip_prefix(load_hf_olmo_weights(src), HF_OLMO_PREFIX, "the hf_olmo weights")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    fields = {k: v for k, v in raw.items() if k in names}
    fields.update(init_device="cpu", flash_attention=False)
    cfg = ModelConfig.new(**fields) if hasattr(ModelConfig, "new") else ModelConfig(**fields)
    model = OLMo(cfg, init_params=False)
    model.load_state_dict({f"transformer.{k}": v for k, v in _rounded(sd, dtype).items()}, strict=True)
    with torch.no_grad():
        return model.float().eval()(ids).logits


def _olmo_core_model(model_config: dict):
    from olmo_core.nn.transformer import TransformerConfig

    return TransformerConfig.from_dict(model_config).build(init_device="cpu")


def _olmo_core_logits(src: Path, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from .olmo_core import load_dcp

    cfg = read_json(src / "config.json")
    if (src / "model_and_optim" / ".metadata").is_file():
        sd = load_dcp(src / "model_and_optim", prefix="model.")
    else:
        sd = load_torch_file(src / "model.pt")
        if sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items()}
    model = _olmo_core_model(cfg["model"])
    model.load_state_dict(_rounded(sd, dtype), strict=True)
    with torch.no_grad():
        return model.float().eval()(ids).float()


def check_against_original(fmt: str, src: Path, out: Path, dtype: torch.dtype) -> float | None:
    """Compare the written HF directory with the source built by its original library; None when skipped."""
    module, dist, what = {
        "olmo_trainer": ("olmo", "ai2-olmo", "ai2-olmo"),
        "hf_olmo": ("olmo", "ai2-olmo", "ai2-olmo (hf_olmo's model)"),
        "olmo_core": ("olmo_core", "ai2-olmo-core", "OLMo-core"),
    }[fmt]
    version, reason = _library(module, dist, min_major=2 if module == "olmo_core" else 0)
    if version is None:
        _skip(what, reason)
        return None
    if src.name == "model_and_optim":
        src = src.parent
    ids = _ids(read_json(out / "config.json")["vocab_size"])
    try:
        theirs = (_ai2_olmo_logits(fmt, src, ids, dtype) if module == "olmo" else _olmo_core_logits(src, ids, dtype))
    except Exception as e:  # noqa: BLE001 - the original library's own failure is not a conversion failure
        first = (str(e).strip().splitlines() or [""])[0]
        _skip(f"{what} {version}", f"it could not build this checkpoint ({type(e).__name__}: {first})")
        return None
    return _compare(_our_fp32_logits(out, ids), theirs, f"{what} {version}")


# ---------------------------------------------------------------------------------------------------
# to_olmo_core output


def check_olmo_core_export(model, out: Path, written: dict[str, torch.Tensor]) -> float | None:
    """For `to_olmo_core`: model.pt holds exactly ``written``; our own reader maps it back to the model's
    weights bit for bit; and, when OLMo-core is importable, its model built from config.json and loaded
    strictly from model.pt gives our logits."""
    from .olmo_core import read

    stored = load_torch_file(out / "model.pt")
    bad = sorted(set(stored) ^ set(written))
    bad += [k for k in stored if k in written and not torch.equal(stored[k], written[k])]
    if bad:
        raise ConversionError(f"validation failed: model.pt differs from the converted weights at {bad[:4]}.")
    back = read(out).state_dict
    tied = model.config.tie_word_embeddings
    ours = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    bad = sorted(set(back) ^ set(ours)) + [k for k in ours if k in back and not torch.equal(back[k], ours[k].cpu())]
    if bad:
        raise ConversionError(
            f"validation failed: reading the export back does not give the model's weights at {bad[:4]}."
        )
    logger.info("--validate: model.pt reads back to the model's weights bit for bit.")

    version, reason = _library("olmo_core", "ai2-olmo-core", min_major=2)
    if version is None:
        _skip("OLMo-core", reason)
        return None
    ids = _ids(model.config.vocab_size)
    try:
        core = _olmo_core_model(json.loads((out / "config.json").read_text())["model"])
        core.load_state_dict({k: v.float() for k, v in stored.items()}, strict=True)
    except Exception as e:  # noqa: BLE001 - a config OLMo-core refuses IS a failure of this export
        raise ConversionError(
            f"validation failed: OLMo-core {version} cannot load the export ({type(e).__name__}: {e})."
        ) from e
    with torch.no_grad():
        theirs = core.float().eval()(ids).float()
    return _compare(_our_fp32_logits_from_model(model, ids), theirs, f"OLMo-core {version}")


def _our_fp32_logits_from_model(model, ids: torch.Tensor) -> torch.Tensor:
    from ..compat import no_init_weights

    if model.dtype == torch.float32:
        fp32 = model
    else:
        config_cls, model_cls = model_classes(model.config.model_type)
        config = config_cls.from_dict(model.config.to_dict())
        config.dtype = torch.float32
        with no_init_weights():
            fp32 = model_cls(config).float()
        fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=True)
        if config.tie_word_embeddings:
            fp32.tie_weights()
    fp32.eval()
    with torch.no_grad():
        return fp32(ids.to(fp32.device)).logits.cpu()
