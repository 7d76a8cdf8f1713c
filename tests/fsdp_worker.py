# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""FSDP2 training worker using Accelerate, launched by tests/test_fsdp.py (and usable by hand)::

    torchrun --standalone --nproc-per-node 2 tests/fsdp_worker.py --out RESULTS_DIR CHECKPOINT_DIR [...]
    # or: accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 tests/fsdp_worker.py --out ... CKPT
    # (not `accelerate launch --cpu ...`: that starts ONE process; `--cpu` and `--use_fsdp` are mutually exclusive)

For each checkpoint, every rank loads it through ``import olmo_hf`` + ``AutoModelForCausalLM``, Accelerate shards it
with FSDP2 (one unit per decoder layer, from ``_no_split_modules``), and trains ``--steps`` AdamW steps on its half of a
fixed global batch (``batch_rows(rank, world_size)``). Rank 0 writes the global (all-rank mean) loss of every
step, then the loss after the last step, to ``RESULTS_DIR/<checkpoint name>.json``, with facts about the sharding.

CPU note (Accelerate 1.15): on CPU, Accelerate's state is ``MULTI_CPU`` and it silently ignores ``fsdp_plugin``
(``prepare`` returns a DDP model). ``force_fsdp_on_cpu`` switches the state to FSDP before ``prepare``; the rest is
plain Accelerate, and on GPUs (``accelerate launch --use_fsdp ...``) no such step is needed.
"""

import argparse
import json
from pathlib import Path

import torch

import olmo_hf  # noqa: F401  (registers our classes with the Auto classes)
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from transformers import AutoModelForCausalLM

GLOBAL_BATCH = 4
SEQ_LEN = 16
VOCAB_LOW, VOCAB_HIGH = 3, 128


def global_batch() -> torch.Tensor:
    """(GLOBAL_BATCH, SEQ_LEN) fixed token ids; no padding, so every row has the same number of labels."""
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(VOCAB_LOW, VOCAB_HIGH, (GLOBAL_BATCH, SEQ_LEN), generator=gen)


def batch_rows(rank: int, world_size: int) -> torch.Tensor:
    return global_batch()[rank::world_size]


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, one unit per decoder layer (the class named by the model's ``_no_split_modules``)."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap"
    )


def force_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """What ``AcceleratorState`` does for FSDP on GPUs, done for MULTI_CPU (which it leaves out)."""
    if accelerator.state.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin()
        # Every later AcceleratorState() call copies PartialState's fields over its own: keep them in agreement.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def main() -> None:
    torch.set_num_threads(1)  # here, not at import: the tests import this module for its constants
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()

    accelerator = Accelerator(cpu=True, fsdp_plugin=fsdp_plugin())
    force_fsdp_on_cpu(accelerator)
    args.out.mkdir(parents=True, exist_ok=True)
    for checkpoint in args.checkpoints:
        result = train(accelerator, checkpoint, args.steps, args.lr)
        if accelerator.is_main_process:
            (args.out / f"{checkpoint.name}.json").write_text(json.dumps(result, indent=2))
        accelerator.wait_for_everyone()
    accelerator.end_training()


def train(accelerator: Accelerator, checkpoint: Path, steps: int, lr: float) -> dict:
    # prepare() records the layer class to wrap in the plugin: a fresh plugin for every model (OLMo vs OLMo 2).
    accelerator.state.fsdp_plugin = fsdp_plugin()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)

    ids = batch_rows(accelerator.process_index, accelerator.num_processes).to(accelerator.device)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    with torch.no_grad():
        final = model(input_ids=ids, labels=ids, use_cache=False).loss
    final_loss = accelerator.reduce(final.detach(), reduction="mean").item()

    weight = accelerator.unwrap_model(model).model.layers[0].mlp.gate_proj.weight
    return {
        "world_size": accelerator.num_processes,
        "backend": torch.distributed.get_backend(),
        "distributed_type": str(accelerator.distributed_type),
        "model_class": type(model).__name__,  # FSDP2 makes an "FSDP<class>" subclass of the model class
        "is_olmo_hf": isinstance(model, (olmo_hf.OlmoForCausalLM, olmo_hf.Olmo2ForCausalLM)),
        "weight_is_dtensor": hasattr(weight, "to_local"),
        "weight_local_rows": (weight.to_local() if hasattr(weight, "to_local") else weight).shape[0],
        "weight_rows": weight.shape[0],
        "losses": losses,
        "final_loss": final_loss,
    }


if __name__ == "__main__":
    main()
