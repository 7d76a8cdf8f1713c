# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Batch-1 decode and 128-token prefill of one checkpoint in bf16 and in torchao int8 / int4 weight-only, all through
the CPU fast path (olmo_hf.fast), measured interleaved (one step of each in turn, medians), next to the machine's
memory bandwidth (torch.sum over 1 GiB), for docs/quantization.md::

    OLMO_HF_NATIVE=force python scripts/benchmark_int8_decode.py --model-dir CHECKPOINT --threads 2 --rounds 5 \
        --formats bf16,int8,int4

With ``--llama-bench BIN --gguf FILE [--gguf FILE ...]`` each round also runs llama.cpp's ``llama-bench -p 128 -n 16
-r 1`` on each GGUF (same threads), so that its numbers see the same load as ours.

(OLMO_HF_NATIVE=force: both models run every native kernel, unmeasured; on a busy machine the per-process kernel
plan can switch a kernel off by noise, which would compare plan decisions instead of kernels.)

Each round first takes ``--prefills`` (3) prefills of each model, the models taking turns prefill by prefill (each
model first in one of the turns), so that
the prefill's ratio to bf16's compares prefills taken seconds apart (the host's speed drifts between rounds). The
prefill computes the last position's logits only (``logits_to_keep=1``), as ``generate()`` does and as
llama-bench's prompt processing does; runs before the seventh session computed all 128 rows of logits (on the 1B
shape the head's product over 128 rows is ~16 % of the bf16 prefill's work, and llama.cpp did not do it).

The checkpoint: any bf16 OLMo 2 directory (scripts/benchmark.py --shape 1b writes a random one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import DynamicCache

import olmo_hf
from olmo_hf.fast import optimize_for_cpu_inference, status
from olmo_hf.quantization import memory_footprint, quantization_config


def weight_bytes(model) -> dict:
    """Bytes of the matrices one decoding step reads: int8 data + scales, int4 nibbles + scales (+ offsets), bf16
    matrices (lm_head included)."""
    int8 = int4 = bf16 = 0
    for module in model.modules():
        packed = getattr(module, "_packed", None)
        if packed is None or getattr(module, "_rows", None) not in (None, (0, module.out_features)):
            continue  # count each fused matrix once, from its first member
        if hasattr(packed, "qdata"):  # int8 (torchao's layout or the blocked one)
            int8 += packed.nbytes()
        elif hasattr(packed, "nbytes"):
            int4 += packed.nbytes()
        else:
            bf16 += packed.tensor.numel() * packed.tensor.element_size()
    return {"int8": int8, "int4": int4, "bf16": bf16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="decoding steps per model per round")
    p.add_argument("--prefills", type=int, default=3,
                   help="prefills of 128 tokens per model per round, the models taking turns prefill by prefill")
    p.add_argument("--llama-bench", help="llama.cpp's llama-bench binary")
    p.add_argument("--gguf", action="append", default=[], help="a GGUF of the same weights (repeatable)")
    p.add_argument("--formats", default="bf16,int8", help="comma-separated: bf16, int8 (groups of 32), int8-row (one "
                   "scale per row: group_size=None), int4 (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    models, load_s = {}, {}
    for name in args.formats.split(","):
        t0 = time.perf_counter()
        config = (None if name == "bf16" else quantization_config("int8", device="cpu", group_size=None)
                  if name == "int8-row" else quantization_config(name, device="cpu"))
        models[name] = olmo_hf.Olmo2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16,
                                                                quantization_config=config)
        load_s[name] = time.perf_counter() - t0
    print("from_pretrained: " + ", ".join(f"{name} {s:.1f} s" for name, s in load_s.items()), flush=True)
    footprint = {name: memory_footprint(model) for name, model in models.items()}  # before: packed weights are
    for model in models.values():                                                     # no longer parameters
        optimize_for_cpu_inference(model.eval())
    print(status(models[list(models)[-1]]))
    gen = torch.Generator().manual_seed(0)
    vocab = next(iter(models.values())).config.vocab_size
    prompt = torch.randint(0, min(50000, vocab), (1, 128), generator=gen)
    big = torch.ones(2**28)  # 1 GiB of fp32
    steps = {name: [] for name in models}
    prefill = {name: [] for name in models}
    bandwidth, loads = [], []
    llama = {path: {"decode": [], "prefill": []} for path in args.gguf}
    with torch.no_grad():
        # one untimed pass per model first: the first pass over freshly loaded and repacked weights runs slower
        # (bf16 too: 6.3-6.6 against 7.5-8.3 tokens/s in the first rounds of two sixth-session runs)
        for model in models.values():
            cache = DynamicCache()
            token = model(prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
            for _ in range(args.steps):
                token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(args.rounds):
            names = list(models)
            for i in range(args.prefills):  # the models' prefills side by side: the host's speed drifts within seconds
                for name in names[i % len(names):] + names[:i % len(names)]:  # each model first in turn
                    model = models[name]
                    t0 = time.perf_counter()
                    model(prompt, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
                    prefill[name].append(time.perf_counter() - t0)
            for name, model in models.items():
                cache = DynamicCache()
                token = model(prompt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    out = model(token, cache=cache, use_cache=True)
                    steps[name].append(time.perf_counter() - t0)
                    token = out.logits[:, -1:].argmax(-1)
            for path in args.gguf if args.llama_bench else ():
                run = subprocess.run([args.llama_bench, "-m", path, "-t", str(args.threads), "-p", "128", "-n", "16",
                                      "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
                for entry in json.loads(run.stdout):
                    llama[path]["prefill" if entry["n_prompt"] else "decode"].append(entry["avg_ts"])
            t0 = time.perf_counter()
            big.sum()
            bandwidth.append(2**30 / (time.perf_counter() - t0) / 1e9)
            loads.append(os.getloadavg()[0])
    bw = statistics.median(bandwidth)
    print(f"threads {args.threads}, load average {min(loads):.1f}-{max(loads):.1f}; torch.sum over 1 GiB: "
          f"{bw:.1f} GB/s (median of {len(bandwidth)})")
    for name, model in models.items():
        step = statistics.median(steps[name])
        nbytes = weight_bytes(model)
        total = nbytes["int8"] + nbytes["int4"] + nbytes["bf16"]
        print(f"{name}: decode {1 / step:.2f} tok/s ({step * 1e3:.0f} ms/step, median of {len(steps[name])}), "
              f"prefill 128: {128 / statistics.median(prefill[name]):.0f} tok/s; weights read per step "
              f"{total / 1e9:.2f} GB (int8 {nbytes['int8'] / 1e9:.2f}, int4 {nbytes['int4'] / 1e9:.2f}, "
              f"bf16 {nbytes['bf16'] / 1e9:.2f}) = "
              f"{total / step / 1e9:.1f} GB/s ({total / step / 1e9 / bw:.0%} of torch.sum); "
              f"footprint {footprint[name] / 1e9:.2f} GB")
    for path, speeds in llama.items():
        if speeds["decode"]:
            print(f"llama.cpp {os.path.basename(path)}: decode {statistics.median(speeds['decode']):.2f} tok/s, prefill "
                  f"128: {statistics.median(speeds['prefill']):.0f} tok/s (medians of {len(speeds['decode'])}; "
                  f"decode per round {[round(v, 2) for v in speeds['decode']]})")
    for name in models:
        print(f"{name} decode per round (median step of each): " + str([
            round(1 / statistics.median(steps[name][i * args.steps:(i + 1) * args.steps]), 2)
            for i in range(args.rounds)]))
    if "bf16" in prefill:  # the prefill target is a ratio: taken prefill by prefill, side by side with bf16's
        for name in models:
            if name != "bf16":
                ratios = [b / t for b, t in zip(prefill["bf16"], prefill[name])]
                print(f"{name} prefill of bf16's: x{statistics.median(ratios):.2f} (median of {len(ratios)} side-by-side "
                      f"prefills; lowest x{min(ratios):.2f}, highest x{max(ratios):.2f})")


if __name__ == "__main__":
    main()
