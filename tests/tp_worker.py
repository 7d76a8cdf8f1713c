# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Tensor-parallel worker, launched by tests/test_tensor_parallel.py (and usable by hand)::

    torchrun --standalone --nproc-per-node 2 tests/tp_worker.py --out RESULTS_DIR CHECKPOINT_DIR [...]

Every rank loads every checkpoint through ``import olmo_hf`` + ``AutoModelForCausalLM.from_pretrained`` twice:
with ``distributed_config=DistributedConfig(tp_plan="auto")`` (the Transformers 5 API) and with the legacy
``tp_plan="auto"`` keyword. For each load it runs one float32 forward pass on fixed token ids and a greedy
``generate()``, and saves to ``RESULTS_DIR/<checkpoint name>-<api>-rank<R>.pt``: the logits, the generated ids,
the model class and the local (per-rank) shapes of a few weights, so the test can assert on them.

On CPU nothing needs to be set by hand: Transformers initialises torch.distributed with the gloo backend from
torchrun's RANK / LOCAL_RANK / WORLD_SIZE and builds a CPU device mesh of WORLD_SIZE ranks.
"""

import argparse
import os
import warnings
from pathlib import Path

import torch

import olmo_hf  # noqa: F401  (registers our classes with the Auto classes)
from transformers import AutoModelForCausalLM

# Fixed inputs shared with the test (which computes the single-process reference on the same ids).
INPUT_IDS = [[5, 17, 42, 99, 3, 64, 7, 120, 11, 250, 33, 8], [200, 4, 4, 19, 77, 150, 2, 90, 61, 13, 5, 240]]
MAX_NEW_TOKENS = 6
WATCHED = {  # weight -> recorded local shape
    "q_proj": "model.layers.0.self_attn.q_proj.weight",
    "k_proj": "model.layers.0.self_attn.k_proj.weight",
    "o_proj": "model.layers.0.self_attn.o_proj.weight",
    "gate_proj": "model.layers.0.mlp.gate_proj.weight",
    "down_proj": "model.layers.0.mlp.down_proj.weight",
    "lm_head": "lm_head.weight",
}


def local_shape(tensor: torch.Tensor) -> list[int]:
    to_local = getattr(tensor, "to_local", None)  # DTensor -> this rank's shard
    return list((to_local() if to_local else tensor).shape)


def load(checkpoint: Path, api: str):
    if api == "distributed_config":
        from transformers.distributed import DistributedConfig  # transformers >= 5.x with native parallelism

        return AutoModelForCausalLM.from_pretrained(
            checkpoint, distributed_config=DistributedConfig(tp_plan="auto"), dtype=torch.float32
        )
    with warnings.catch_warnings():  # "Passing `tp_plan` directly to `from_pretrained` is deprecated"
        warnings.simplefilter("ignore", FutureWarning)
        return AutoModelForCausalLM.from_pretrained(checkpoint, tp_plan="auto", dtype=torch.float32)


def main() -> None:
    torch.set_num_threads(1)  # here, not at import: the tests import this module for its constants
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--apis", nargs="+", default=["distributed_config", "tp_plan"])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    args.out.mkdir(parents=True, exist_ok=True)

    ids = torch.tensor(INPUT_IDS)
    for checkpoint in args.checkpoints:
        for api in args.apis:
            model = load(checkpoint, api).eval()
            params = dict(model.named_parameters())
            with torch.no_grad():
                logits = model(ids).logits
            generated = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            torch.save(
                {
                    "class": f"{type(model).__module__}.{type(model).__name__}",
                    "world_size": torch.distributed.get_world_size(),
                    "backend": torch.distributed.get_backend(),
                    "logits": logits.detach().to_local() if hasattr(logits, "to_local") else logits.detach(),
                    "generated": generated,
                    "local_shapes": {key: local_shape(params[name]) for key, name in WATCHED.items()},
                    "is_dtensor": {key: hasattr(params[name], "to_local") for key, name in WATCHED.items()},
                },
                args.out / f"{checkpoint.name}-{api}-rank{rank}.pt",
            )
            del model
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
