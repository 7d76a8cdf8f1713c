"""``accelerate launch`` of a small training script (accelerate_train.py: an ``Accelerator``, AdamW, a few steps) trains
our class, with the built-in class's losses on the same weights and seed (one CPU process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .tiny_models import TRAIN_ATOL

pytest.importorskip("accelerate")

SCRIPT = Path(__file__).with_name("accelerate_train.py")


def test_accelerate_launch_trains_our_class_like_builtin(causal_checkpoints, tmp_path):
    out = tmp_path / "runs.json"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # HF_HOME: no user's default accelerate config; every setting is given here.
    command = [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--cpu", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), str(causal_checkpoints["olmo2"]), str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert runs["ours"]["class"] == "olmo_hf.modeling.Olmo2ForCausalLM"
    assert runs["builtin"]["class"] == "transformers.models.olmo2.modeling_olmo2.Olmo2ForCausalLM"
    assert runs["num_processes"] == 1 and runs["device"] == "cpu"
    assert len(runs["ours"]["losses"]) == 4
    assert runs["ours"]["losses"] == pytest.approx(runs["builtin"]["losses"], abs=TRAIN_ATOL)
