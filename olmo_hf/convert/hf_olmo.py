# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Legacy ``hf_olmo`` repos (allenai/OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T, OLMo-1.7-7B, DataDecide).

``config.json`` holds raw ai2-olmo ``ModelConfig`` fields with ``"model_type": "hf_olmo"`` (``"olmo"`` before
allenai/OLMo PR #631), ``"architectures": ["OLMoForCausalLM"]`` and an ``auto_map``; the weights hold ai2-olmo
keys under ``model.transformer.*`` (checkpoints.md §2). The tables are in `olmo_hf.ai2_olmo_format`, which the
load-time legacy loader (`olmo_hf.legacy`) uses too; this module only converts such a repo into a directory.
"""

from __future__ import annotations

from pathlib import Path

from ..ai2_olmo_format import (  # noqa: F401 - re-exported: the names conversion users know
    HF_OLMO_PREFIX,
    convert_hf_olmo_state_dict,
    hf_olmo_config_to_kwargs,
    is_hf_olmo_config,
    load_hf_olmo_weights,
    strip_prefix,
)
from ..layouts import convert_state_dict
from .common import Checkpoint, read_json


def read(src: Path, dtype=None) -> Checkpoint:
    src = Path(src)
    model_type, kwargs = hf_olmo_config_to_kwargs(read_json(src / "config.json"))
    sd = strip_prefix(load_hf_olmo_weights(src), HF_OLMO_PREFIX, f"the weights in {src}")
    hf_sd = convert_state_dict("olmo_trainer", sd, kwargs, dtype=dtype, desc="hf_olmo -> HF")
    return Checkpoint(model_type, kwargs, hf_sd, source=f"hf_olmo checkpoint {src}")
