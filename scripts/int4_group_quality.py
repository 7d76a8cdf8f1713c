# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Which int4 layout to default to: torchao int4 weight-only (IntxWeightOnlyConfig) at group sizes 32 / 64 / 128,
symmetric and asymmetric, against the bf16 model: relative L2 error of the logits and top-1 agreement over the same
teacher-forced tokens (the fast path's prefill gives these very logits: bit-identical to the torchao model)::

    python scripts/int4_group_quality.py --model-dir olmo_hf/demo --tokens 512
    python scripts/int4_group_quality.py --model-dir /work/bench-1b/checkpoint --tokens 256
"""

from __future__ import annotations

import argparse
import time

import torch
from torchao.quantization import IntxWeightOnlyConfig, MappingType
from torchao.quantization.granularity import PerGroup
from transformers import TorchAoConfig

import olmo_hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--groups", default="32,64,128")
    p.add_argument("--text", help="a text file to tokenize (default: random token ids)")
    args = p.parse_args()
    bf16 = olmo_hf.Olmo2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).eval()
    if args.text:
        from transformers import AutoTokenizer
        ids = AutoTokenizer.from_pretrained(args.model_dir)(open(args.text).read(), return_tensors="pt").input_ids
        ids = ids[:, : args.tokens]
    else:
        ids = torch.randint(0, bf16.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = bf16(ids).logits.float()[0]
    del bf16
    print(f"{args.model_dir}: {ids.shape[1]} tokens")
    for group in (int(g) for g in args.groups.split(",")):
        for mapping in (MappingType.SYMMETRIC, MappingType.ASYMMETRIC):
            config = TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                                        mapping_type=mapping))
            t0 = time.perf_counter()
            model = olmo_hf.Olmo2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16,
                                                            quantization_config=config).eval()
            load = time.perf_counter() - t0
            with torch.no_grad():
                out = model(ids).logits.float()[0]
            rel = ((out - ref).norm() / ref.norm()).item()
            top1 = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
            # the fast path's layout: bf16 scale (+ int8 offset) per group (olmo_hf/fast/int4.py)
            bits = 4 + 16 / group + (8 / group if mapping == MappingType.ASYMMETRIC else 0)
            print(f"group {group:3d} {mapping.name.lower():10s}: relative L2 logit error {rel:.4f}, top-1 agreement "
                  f"{top1:.3f}; fast-path bits/weight {bits:.3f}; load {load:.1f} s", flush=True)
            del model


if __name__ == "__main__":
    main()
