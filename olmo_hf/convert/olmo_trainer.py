# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""ai2-olmo (the original OLMo trainer) unsharded checkpoints: ``config.yaml`` + ``model.pt``.

``config.yaml`` has a ``model:`` section holding an ``olmo.config.ModelConfig``; ``model.pt`` holds
``transformer.*`` keys. What the ModelConfig fields mean (`model_config_to_hf`) is in `olmo_hf.ai2_olmo_format`,
shared with the legacy hf_olmo loader.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..ai2_olmo_format import model_config_to_hf, strip_prefix
from ..layouts import convert_state_dict
from .common import Checkpoint, ConversionError, load_torch_file


def read(src: Path, dtype=None) -> Checkpoint:
    src = Path(src)
    config_path, model_path = src / "config.yaml", src / "model.pt"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.yaml; an ai2-olmo checkpoint holds config.yaml and model.pt.")
    if not model_path.is_file():
        hint = " (a sharded checkpoint: unshard it with ai2-olmo's scripts/unshard.py first)" if (
            (src / "model").is_dir() or (src / "model_and_optim").is_dir() or any(src.glob("rank*.pt"))
        ) else ""
        raise ConversionError(f"{src} has no model.pt{hint}.")
    try:
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConversionError(f"{config_path} is not valid YAML, it may be truncated "
                              f"({' '.join(str(e).split())}).") from e
    except UnicodeDecodeError as e:
        raise ConversionError(f"{config_path} is not UTF-8 text, it may be corrupt (byte {e.start}).") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConversionError(f"{config_path} has no `model:` section.")
    model_type, kwargs = model_config_to_hf(cfg["model"], where=str(config_path))
    sd = strip_prefix(load_torch_file(model_path), "transformer.", str(model_path))
    hf_sd = convert_state_dict("olmo_trainer", sd, kwargs, dtype=dtype, desc="ai2-olmo -> HF")
    return Checkpoint(model_type, kwargs, hf_sd, source=f"ai2-olmo checkpoint {src}")
