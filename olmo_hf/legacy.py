# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Loading legacy ``hf_olmo`` directories directly, without the ai2-olmo training package.

allenai/OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T, OLMo-1.7-7B and the DataDecide checkpoints store raw ai2-olmo
``ModelConfig`` fields (``d_model``, ``n_layers``, ...) with ``"model_type": "hf_olmo"`` (``"olmo"`` before
allenai/OLMo PR #631) and fused ai2-olmo weights under ``model.transformer.*``. Current Transformers loaded
them into random weights (allenai/OLMo PR #556). Here, at load time and in this one place:

- ``HfOlmoConfig.from_dict`` (registered with ``AutoConfig`` for "hf_olmo") translates the config into an
  ``OlmoConfig`` / ``Olmo2Config`` (``olmo_hf.ai2_olmo_format`` holds the field table);
- :func:`load_legacy_checkpoint` reads the weights and maps them to our layout (fused ``att_proj`` split into
  q/k/v, ``ff_proj`` into up/gate, ``ff_out`` to ``lm_head`` or tied), which ``from_pretrained`` then loads
  strictly: no missing, unexpected or newly initialised weights.
"""

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .ai2_olmo_format import (
    convert_hf_olmo_state_dict,
    hf_olmo_config_to_kwargs,
    is_hf_olmo_config,
    load_hf_olmo_weights,
)
from .compat import cached_file_or_none
from .configuration import Olmo2Config, OlmoConfig

logger = logging.getLogger(__name__)

__all__ = ["HfOlmoConfig", "config_from_hf_olmo", "load_legacy_checkpoint", "read_config_json"]

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _translate(raw: dict[str, Any]) -> tuple[type[OlmoConfig] | type[Olmo2Config], dict[str, Any]]:
    model_type, kwargs = hf_olmo_config_to_kwargs(raw)
    return (OlmoConfig if model_type == "olmo" else Olmo2Config), kwargs


def config_from_hf_olmo(raw: dict[str, Any]) -> OlmoConfig | Olmo2Config:
    """An hf_olmo config.json dict -> our config (OLMo 2 for "peteish"-style configs, else OLMo)."""
    config_class, kwargs = _translate(raw)
    return config_class(**kwargs)


class HfOlmoConfig:
    """What ``AutoConfig`` finds under "hf_olmo": not a config class itself, it builds ours."""

    model_type = "hf_olmo"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """Same contract as ``PreTrainedConfig.from_dict`` (``return_unused_kwargs`` included)."""
        config_class, translated = _translate(config_dict)
        return config_class.from_dict(translated, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> OlmoConfig | Olmo2Config:
        raw = read_config_json(pretrained_model_name_or_path, **kwargs)
        if raw is None:
            raise OSError(f"{pretrained_model_name_or_path} has no config.json.")
        return cls.from_dict(raw)


def read_config_json(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> dict[str, Any] | None:
    """The raw config.json of a local directory or Hub repository, or None if there is none."""
    import json

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
    try:
        path = cached_file_or_none(str(pretrained_model_name_or_path), "config.json", **hub_kwargs)
    except OSError:
        return None
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_legacy_checkpoint(
    pretrained_model_name_or_path: str | os.PathLike, **kwargs
) -> tuple[OlmoConfig | Olmo2Config, dict[str, torch.Tensor]] | None:
    """(config, state dict in our layout) for an hf_olmo checkpoint; None for any other checkpoint."""
    raw = read_config_json(pretrained_model_name_or_path, **kwargs)
    if raw is None or not is_hf_olmo_config(raw):
        return None
    config = config_from_hf_olmo(raw)
    directory = Path(pretrained_model_name_or_path)
    if not directory.is_dir():  # a Hub id: fetch the weight files only
        from huggingface_hub import snapshot_download

        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "revision", "local_files_only") if kwargs.get(k)}
        directory = Path(
            snapshot_download(
                str(pretrained_model_name_or_path),
                allow_patterns=["*.json", "*.bin", "*.safetensors"],
                **hub_kwargs,
            )
        )
    if kwargs.get("subfolder"):
        directory = directory / kwargs["subfolder"]
    logger.info("Loading legacy hf_olmo checkpoint %s without ai2-olmo.", pretrained_model_name_or_path)
    return config, convert_hf_olmo_state_dict(load_hf_olmo_weights(directory), config)
