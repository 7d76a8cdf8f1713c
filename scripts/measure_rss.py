# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Resident memory of ONE model in this process, as a user sees it: load (optionally quantized), the CPU fast path,
a 128-token prefill and 8 decoding steps; prints the stored bytes (``memory_footprint``), VmRSS / RssAnon /
RssFile after the run and the peak (VmHWM), for docs/quantization.md. Run once per method (a fresh process each)::

    python scripts/measure_rss.py --model-dir CHECKPOINT --quantize none|int8|int4 [--keep-embeddings]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

import olmo_hf
from olmo_hf.fast import optimize_for_cpu_inference
from olmo_hf.quantization import memory_footprint, quantization_config


def status_gib() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in GiB (Linux /proc/self/status)."""
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(keys))
    return {key: int(fields[key].split()[0]) / 2**20 for key in keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--quantize", default="none")
    p.add_argument("--keep-embeddings", action="store_true", help="quantize_embeddings=False")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = {"quantize_embeddings": False} if args.keep_embeddings else {}
    config = quantization_config(args.quantize, device="cpu", **options)
    t0 = time.perf_counter()
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16, quantization_config=config)
    load_s = time.perf_counter() - t0
    stored = memory_footprint(model)
    optimize_for_cpu_inference(model.eval())
    prompt = torch.randint(0, 50000, (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = DynamicCache()
        token = model(prompt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(8):
            token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    mem = status_gib()
    print(f"{args.quantize}{' (embeddings kept)' if args.keep_embeddings else ''}: load {load_s:.1f} s, "
          f"memory_footprint {stored / 1e9:.2f} GB, RSS {mem['VmRSS']:.2f} GiB (anon {mem['RssAnon']:.2f}, "
          f"file {mem['RssFile']:.2f}), peak {mem['VmHWM']:.2f} GiB")


if __name__ == "__main__":
    main()
