"""FSDP: a 2-process FSDP2 run through Accelerate on CPU (gloo) trains our classes exactly like one process.

One torchrun launch (tests/fsdp_worker.py, 2 ranks, one thread each) trains a tiny OLMo 2 (GQA) and a tiny OLMo,
4 AdamW steps each, every rank on half of a fixed 4-row batch. The same steps are run here in one plain process on
the whole batch. The per-step global losses (mean over ranks == mean over the whole batch, since every row has the
same number of labels) and the loss after the last step must agree within 1e-5 (measured: <= ~1e-6).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_olmo2_config, small_olmo_config
import torch
from transformers import AutoModelForCausalLM

import olmo_hf  # noqa: F401  (registers our classes with the Auto classes)
from olmo_hf import Olmo2ForCausalLM, OlmoForCausalLM

pytest.importorskip("accelerate", reason="the FSDP run goes through Accelerate")
pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

WORKER = Path(__file__).with_name("fsdp_worker.py")
sys.path.insert(0, str(WORKER.parent))
import fsdp_worker  # noqa: E402  (for the batch only; importing it starts nothing)

WORLD_SIZE = 2
STEPS = 4
LR = 1e-3
LOSS_ATOL = 1e-5
TIMEOUT_S = 240
MODELS = {
    "olmo2-gqa": (Olmo2ForCausalLM, small_olmo2_config()),
    "olmo": (OlmoForCausalLM, small_olmo_config()),
}


def single_process_training(checkpoint: Path) -> dict:
    """The reference: the same AdamW steps on the whole global batch, no distribution at all."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    ids = fsdp_worker.global_batch()
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        final_loss = model(input_ids=ids, labels=ids, use_cache=False).loss.item()
    return {"losses": losses, "final_loss": final_loss}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    checkpoints = {}
    for name, (model_class, config) in MODELS.items():
        torch.manual_seed(0)
        model_class(config).save_pretrained(root / name)
        checkpoints[name] = root / name
    out = root / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD_SIZE}",
        str(WORKER), "--out", str(out), "--steps", str(STEPS), "--lr", str(LR), *map(str, checkpoints.values()),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in MODELS}
    references = {name: single_process_training(path) for name, path in checkpoints.items()}
    return results, references


@pytest.mark.parametrize("name", MODELS)
def test_accelerate_fsdp_shards_our_model_over_two_gloo_ranks(name, fsdp_run):
    result = fsdp_run[0][name]
    assert (result["world_size"], result["backend"]) == (WORLD_SIZE, "gloo")
    assert result["distributed_type"] == "DistributedType.FSDP"
    assert result["is_olmo_hf"] and result["model_class"] == f"FSDP{MODELS[name][0].__name__}"
    assert result["weight_is_dtensor"]
    assert result["weight_local_rows"] * WORLD_SIZE == result["weight_rows"]  # each rank holds half the rows


@pytest.mark.parametrize("name", MODELS)
def test_fsdp_step_losses_match_single_process_within_1e_5(name, fsdp_run):
    results, references = fsdp_run
    fsdp_losses, single_losses = results[name]["losses"], references[name]["losses"]
    assert len(fsdp_losses) == STEPS
    assert single_losses[-1] < single_losses[0]  # the steps do train
    assert max(abs(a - b) for a, b in zip(fsdp_losses, single_losses)) <= LOSS_ATOL, (fsdp_losses, single_losses)


@pytest.mark.parametrize("name", MODELS)
def test_fsdp_trained_model_matches_single_process_loss_within_1e_5(name, fsdp_run):
    results, references = fsdp_run
    assert abs(results[name]["final_loss"] - references[name]["final_loss"]) <= LOSS_ATOL
