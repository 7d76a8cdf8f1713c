#!/usr/bin/env python
# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Memory, decode speed and logit error of quantized OLMo 2 on CPU (docs/quantization.md).

The model has the shape of allenai/OLMo-2-0425-1B (hidden 2048, 16 layers, 16 heads, intermediate 8192, vocab
100352; checkpoints.md §1) with random weights: it is built once from the config with ``olmo_hf.Olmo2ForCausalLM``
in bf16 and saved to a directory. Each method is then measured in a fresh subprocess (so that peak RSS is its
own), loading that directory through ``AutoModelForCausalLM`` with ``olmo_hf.quantization.quantization_config``:

- ``get_memory_footprint()`` and ``olmo_hf.quantization.memory_footprint()`` (the bytes actually stored; the former
  counts torchao weights at their logical bf16 size and leaves out bitsandbytes' absmax);
- peak process RSS (``VmHWM``) and RSS after loading;
- decode tokens/s: batch 1, an 8-token prompt, greedy; ``(n - 1) / (t(n tokens) - t(1 token))`` with n = 32, or
  fewer for a method too slow to fit ``--decode-budget`` seconds (the table says which n was used);
- logit error against the bf16 model on one fixed (1, 64) batch: relative L2 ``|q - ref| / |ref|``, max |diff|,
  top-1 agreement; and how many greedy tokens equal bf16's.

Usage (docs/quantization.md has the exact command used)::

    python scripts/benchmark_quantization.py --threads 2 --json /tmp/quant.json --plot docs/quantization.png
    python scripts/benchmark_quantization.py --small   # a minute-long smoke run on a tiny model

Importable: ``olmo2_1b_config()``, ``build_checkpoint(dir)``, ``measure(dir, method)`` (in this process),
``measure_in_subprocess(dir, method)``, ``run_benchmark(dir, methods)``, ``markdown_table(results)``, ``plot(results,
path)``; ``METHODS`` maps each benchmark row to an ``olmo_hf.quantization`` name (``None`` = bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Benchmark row -> (olmo_hf.quantization method or None for the bf16 baseline, use_cpu_int8_kernel?)
METHODS: dict[str, tuple[str | None, bool]] = {
    "bf16": (None, False),
    "bnb-4bit": ("bnb-4bit", False),
    "bnb-8bit": ("bnb-8bit", False),
    "int8": ("int8", False),
    "int8+cpu-kernel": ("int8", True),
    "int4": ("int4", False),
    "int8-dynamic": ("int8-dynamic", False),
}
DEFAULT_METHODS = ("bf16", "bnb-4bit", "bnb-8bit", "int8", "int8+cpu-kernel", "int4")
PROMPT_LEN, LOGITS_LEN, SEED = 8, 64, 0


def olmo2_1b_config(small: bool = False):
    """allenai/OLMo-2-0425-1B's published config (olmo_hf.presets), or a tiny one of the same kind for smoke runs."""
    from olmo_hf.presets import preset_config

    tiny = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=4096, eos_token_id=0, pad_token_id=1)
    return preset_config("allenai/OLMo-2-0425-1B", **(tiny if small else {}))


def build_checkpoint(directory: str | os.PathLike, small: bool = False, seed: int = SEED) -> Path:
    """Build the random-init bf16 model from the config with our class and save it (skipped if already there)."""
    import torch

    from olmo_hf import Olmo2ForCausalLM

    directory = Path(directory)
    marker = directory / ".benchmark_quantization"
    expected = "small" if small else "1b"
    if marker.exists() and marker.read_text() == expected:
        return directory
    torch.manual_seed(seed)
    model = Olmo2ForCausalLM._from_config(olmo2_1b_config(small), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    marker.write_text(expected)
    del model
    return directory


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _timed_generate(model, prompt, n: int) -> tuple[float, "torch.Tensor"]:  # noqa: F821
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return time.perf_counter() - start, out[0, prompt.shape[1] :]


def measure(model_dir: str | os.PathLike, method: str, *, threads: int = 2, new_tokens: int = 32,
            decode_budget: float = 120.0, logits_path: str | None = None) -> dict:
    """Load ``model_dir`` with benchmark row ``method`` in THIS process and measure it (see module docstring).
    Call it in a fresh process (``measure_in_subprocess``) for a meaningful peak RSS."""
    import torch

    torch.set_num_threads(threads)
    import olmo_hf  # noqa: F401  (registers our classes)
    from olmo_hf.quantization import memory_footprint, quantization_config, use_cpu_int8_kernel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rss_imports = _proc_status_bytes("VmRSS")
    quant_name, cpu_kernel = METHODS[method]
    start = time.perf_counter()
    kwargs = {"quantization_config": quantization_config(quant_name, device="cpu")} if quant_name else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kwargs).eval()
    switched = use_cpu_int8_kernel(model) if cpu_kernel else 0
    load_s = time.perf_counter() - start
    result = {
        "method": method,
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "threads": threads,
        "load_s": load_s,
        "cpu_kernel_modules": switched,
        "footprint_hf": model.get_memory_footprint(),
        "footprint_stored": memory_footprint(model),
        "rss_imports": rss_imports,
        "rss_loaded": _proc_status_bytes("VmRSS"),
    }

    generator = torch.Generator().manual_seed(SEED)
    vocab = model.config.vocab_size
    ids = torch.randint(0, min(vocab, 100278), (1, LOGITS_LEN), generator=generator)
    with torch.no_grad():
        logits = model(ids).logits[0].float()  # (LOGITS_LEN, vocab)
    if logits_path:
        torch.save(logits, logits_path)

    prompt = ids[:, :PROMPT_LEN]
    _timed_generate(model, prompt, 2)  # warm-up
    t1, _ = _timed_generate(model, prompt, 1)
    t4, tokens = _timed_generate(model, prompt, 4)
    per_token = max((t4 - t1) / 3, 1e-6)
    n = int(max(4, min(new_tokens, decode_budget // per_token + 1)))
    tn = t4
    if n > 4:
        tn, tokens = _timed_generate(model, prompt, n)
    result.update(
        prefill_s=t1,
        decode_tokens=n,
        decode_tok_s=(n - 1) / max(tn - t1, 1e-9),
        tokens=tokens.tolist(),
        rss_peak=_proc_status_bytes("VmHWM"),
    )
    return result


def interleaved_decode(model_dir, methods=("bf16", "int8+cpu-kernel"), *, threads: int = 2, rounds: int = 3,
                       new_tokens: int = 9, log=print) -> dict[str, list[float]]:
    """Decode tokens/s of several methods loaded side by side in THIS process and timed in alternation, so that
    a change in machine load hits them all alike (the per-method runs of ``run_benchmark`` happen minutes apart).
    Each round times ``generate`` of 1 and of ``new_tokens`` tokens per method; returns the rates per method."""
    import torch

    torch.set_num_threads(threads)
    import olmo_hf  # noqa: F401
    from olmo_hf.quantization import quantization_config, use_cpu_int8_kernel
    from transformers import AutoModelForCausalLM

    models = {}
    for method in methods:
        quant_name, cpu_kernel = METHODS[method]
        kwargs = {"quantization_config": quantization_config(quant_name, device="cpu")} if quant_name else {}
        models[method] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kwargs).eval()
        if cpu_kernel:
            use_cpu_int8_kernel(models[method])
    prompt = torch.randint(0, 100278, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(SEED))
    prompt = prompt % models[methods[0]].config.vocab_size
    for model in models.values():
        _timed_generate(model, prompt, 2)  # warm-up (bitsandbytes repacks, first-call allocations)
    rates: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for method, model in models.items():
            t1, _ = _timed_generate(model, prompt, 1)
            tn, _ = _timed_generate(model, prompt, new_tokens)
            rates[method].append((new_tokens - 1) / max(tn - t1, 1e-9))
            log(f"   round {r}: {method} {rates[method][-1]:.3f} tok/s, load {os.getloadavg()[0]:.1f}")
    return rates


def measure_in_subprocess(model_dir, method: str, *, threads: int = 2, new_tokens: int = 32,
                          decode_budget: float = 120.0, logits_path: str | None = None, timeout: float = 3600) -> dict:
    """``measure`` in a fresh Python process (``OMP_NUM_THREADS=threads``); returns its result dict."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    job = dict(model_dir=str(model_dir), method=method, threads=threads, new_tokens=new_tokens,
               decode_budget=decode_budget, logits_path=logits_path)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job), "--worker-out", out],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{method}: worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def run_benchmark(model_dir, methods=DEFAULT_METHODS, *, threads: int = 2, new_tokens: int = 32,
                  decode_budget: float = 120.0, log=print) -> list[dict]:
    """Measure every method (first must be "bf16", the reference) and add its logit error against bf16."""
    import torch

    methods = list(methods)
    if methods[0] != "bf16":
        methods.insert(0, "bf16")
    work = Path(tempfile.mkdtemp(prefix="quant_logits_"))
    results = []
    for method in methods:
        log(f"[{time.strftime('%H:%M:%S')}] measuring {method} ...")
        path = str(work / f"{method}.pt")
        result = measure_in_subprocess(model_dir, method, threads=threads, new_tokens=new_tokens,
                                       decode_budget=decode_budget, logits_path=path)
        logits, ref = torch.load(path), torch.load(work / "bf16.pt")
        ref_tokens = results[0]["tokens"] if results else result["tokens"]
        same = next((i for i, (a, b) in enumerate(zip(result["tokens"], ref_tokens)) if a != b),
                    min(len(result["tokens"]), len(ref_tokens)))
        result.update(
            rel_l2=((logits - ref).norm() / ref.norm()).item(),
            max_abs=(logits - ref).abs().max().item(),
            top1=(logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            greedy_prefix_equal=same,
        )
        results.append(result)
        log("   " + json.dumps({k: v for k, v in result.items() if k != "tokens"}))
    return results


def markdown_table(results: list[dict]) -> str:
    """One row per method; ratios are against the first (bf16) row."""
    base, gb = results[0], 1e9
    rows = [
        "| method | get_memory_footprint() (× bf16) | stored bytes (× bf16) | peak RSS | decode tok/s, n tokens "
        "(× bf16) | rel. L2 logit error vs bf16 | top-1 agreement | greedy tokens = bf16 | load s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['method']} | {r['footprint_hf'] / gb:.2f} GB ({r['footprint_hf'] / base['footprint_hf']:.2f}) "
            f"| {r['footprint_stored'] / gb:.2f} GB ({r['footprint_stored'] / base['footprint_stored']:.2f}) "
            f"| {r['rss_peak'] / gb:.2f} GB | {r['decode_tok_s']:.2f}, n={r['decode_tokens']} "
            f"({r['decode_tok_s'] / base['decode_tok_s']:.2f}) | {r['rel_l2']:.4f} | {r['top1']:.3f} "
            f"| {r['greedy_prefix_equal']}/{len(r['tokens'])} | {r['load_s']:.1f} |"
        )
    return "\n".join(rows)


def plot(results: list[dict], path: str | os.PathLike, title: str = "OLMo-2-0425-1B shape (random init)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = [
        ("Memory (GB)", [[r["footprint_hf"] / 1e9 for r in results], [r["footprint_stored"] / 1e9 for r in results],
                         [r["rss_peak"] / 1e9 for r in results]],
         ["get_memory_footprint()", "stored bytes", "peak RSS"]),
        ("Decode tokens/s (batch 1)", [[r["decode_tok_s"] for r in results]], ["greedy decode"]),
        ("Relative L2 logit error vs bf16", [[r["rel_l2"] for r in results]], ["rel L2"]),
    ]
    for ax, (panel, values, labels) in zip(axes, series):
        width = 0.8 / len(values)
        for i, (vals, label) in enumerate(zip(values, labels)):
            xs = [x + (i - (len(values) - 1) / 2) * width for x in range(len(names))]
            bars = ax.bar(xs, vals, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(panel)
        if len(values) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}, CPU, {results[0]['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {list(METHODS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--decode-budget", type=float, default=120.0, help="seconds of decoding per method at most")
    parser.add_argument("--model-dir", help="where to build (or reuse) the bf16 checkpoint; default: a temp dir")
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the plot (PNG) here")
    parser.add_argument("--interleave", help="instead: time these methods (comma-separated) side by side in one "
                        "process, alternating, e.g. bf16,int8+cpu-kernel")
    parser.add_argument("--rounds", type=int, default=3, help="rounds for --interleave")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        job = json.loads(args.worker)
        result = measure(job.pop("model_dir"), job.pop("method"), **job)
        Path(args.worker_out).write_text(json.dumps(result))
        return

    methods = [m.strip() for m in (args.interleave or args.methods).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    model_dir = args.model_dir or tempfile.mkdtemp(prefix="olmo2_1b_bf16_")
    print(f"[{time.strftime('%H:%M:%S')}] building/reusing checkpoint in {model_dir}", flush=True)
    build_checkpoint(model_dir, small=args.small)
    if args.interleave:
        rates = interleaved_decode(model_dir, methods, threads=args.threads, rounds=args.rounds,
                                   log=lambda s: print(s, flush=True))
        medians = {m: sorted(r)[len(r) // 2] for m, r in rates.items()}
        print("median decode tok/s: " + ", ".join(f"{m} {v:.3f} ({v / medians[methods[0]]:.2f}x)"
                                                  for m, v in medians.items()))
        if args.json:
            Path(args.json).write_text(json.dumps(rates, indent=1))
        return
    results = run_benchmark(model_dir, methods, threads=args.threads, new_tokens=args.new_tokens,
                            decode_budget=args.decode_budget, log=lambda s: print(s, flush=True))
    table = markdown_table(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        title = "tiny OLMo 2 (smoke run)" if args.small else "OLMo-2-0425-1B shape (random init)"
        plot(results, args.plot, title=title)


if __name__ == "__main__":
    main()
