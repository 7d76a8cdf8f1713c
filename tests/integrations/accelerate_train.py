"""The training script that test_accelerate.py runs under ``accelerate launch``: a few AdamW steps with an
``Accelerator`` on one tiny checkpoint, once with our class (``import olmo_hf``, then the Auto class, as a user's
script does) and once with Transformers' built-in class, from the same weights and seed; writes both runs as JSON.

    accelerate launch --cpu --num_processes 1 accelerate_train.py CHECKPOINT OUT.json
"""

from __future__ import annotations

import argparse
import json

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

import olmo_hf  # noqa: F401  (registers our classes; every process of a launch needs it)

TEXTS = [
    "The import statement finds a module, loads it and binds a name in the local namespace.",
    "A tuple is an immutable sequence; a list can be changed in place.",
    "Exceptions propagate up the call stack until a handler catches them.",
    "The with statement wraps a block with methods defined by a context manager.",
]
STEPS = 4


def train(model, tokenizer, accelerator: Accelerator) -> list[float]:
    set_seed(0)
    features = [tokenizer(text) for text in TEXTS]
    loader = DataLoader(features, batch_size=2, shuffle=True, collate_fn=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    losses = []
    while len(losses) < STEPS:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(accelerator.gather(loss.detach()).mean().item())
            if len(losses) == STEPS:
                break
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    accelerator = Accelerator()
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    ours = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    builtin_class = getattr(transformers, ours.config.architectures[0])
    builtin = builtin_class.from_pretrained(args.checkpoint, dtype=torch.float32)
    runs = {
        "ours": {"class": f"{type(ours).__module__}.{type(ours).__name__}", "losses": train(ours, tokenizer, accelerator)},
        "builtin": {"class": f"{builtin_class.__module__}.{builtin_class.__name__}", "losses": train(builtin, tokenizer, accelerator)},
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(accelerator.device),
    }
    if accelerator.is_main_process:
        with open(args.out, "w") as f:
            json.dump(runs, f)


if __name__ == "__main__":
    main()
