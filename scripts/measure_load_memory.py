#!/usr/bin/env python
# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Measure the peak resident memory of ``from_pretrained`` for an OLMo-2-0425-1B-shaped checkpoint.

What it does:

1. Writes, once, a bf16 checkpoint with the exact shape of ``allenai/OLMo-2-0425-1B`` (hidden 2048, 16 layers,
   16 heads, intermediate 8192, vocab 100352, untied) and random weights, as ~1 GB safetensors shards, into
   ``--checkpoint`` (default: ``$TMPDIR/olmo_hf_load_memory/olmo2-0425-1b-shape``). Later runs reuse it.
   ``--shape small`` writes a ~270 MB model of the same structure instead (a quick check; the tests use it).
2. For each requested loading mode, starts a FRESH Python process that imports torch/transformers/olmo_hf,
   records its resident set size (the baseline), calls ``AutoModelForCausalLM.from_pretrained``, then reads
   every weight once and runs a 4-token forward pass. bf16 safetensors are memory-mapped, so right after
   ``from_pretrained`` most weight pages are not resident yet; touching them makes the peak cover the whole
   model in memory. A thread samples ``/proc/self/status`` every 2 ms; the reported peak is the kernel's
   high-water mark ``VmHWM`` (exact peak RSS, baseline included), with the sampled peaks of anonymous and
   file-backed (mmap'd safetensors) memory.
3. Prints a table and checks ``peak RSS <= --max-ratio x bf16 weight bytes`` (default 1.2); exits 1 if a mode
   fails the check (2 if something broke). ``--json FILE`` writes the raw numbers.

Linux only (reads /proc). Needs ~3 GB of disk and ~4 GB of free memory per mode::

    python scripts/measure_load_memory.py                      # default mode: plain from_pretrained(dtype=bf16)
    python scripts/measure_load_memory.py --modes default device_map_cpu device_map_auto naive --json mem.json

``naive`` (eager random init on CPU, then ``load_state_dict``) is a comparison point only; it does not count
towards the exit status.
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

PRESET = "allenai/OLMo-2-0425-1B"  # olmo_hf.presets: the published config.json
SHAPES = {
    "olmo2-0425-1b": {},
    # A ~270 MB bf16 model with the same structure, for a quick check (the test suite uses it).
    "small": dict(vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, pad_token_id=1, eos_token_id=2),
}

MODES = {
    # name -> extra from_pretrained kwargs (dtype is always bf16, the checkpoint's dtype)
    "default": {},
    "device_map_cpu": {"device_map": "cpu"},
    "device_map_auto": {"device_map": "auto"},
    "naive": None,  # comparison: eager init on CPU + load_state_dict (no meta device); not a from_pretrained mode
}

SHARD_BYTES = 1 << 30
DONE_MARKER = ".olmo_hf_complete"


def default_checkpoint_dir(shape: str) -> Path:
    return Path(tempfile.gettempdir()) / "olmo_hf_load_memory" / f"{shape}-shape"


def write_checkpoint(path: Path, shape: str) -> int:
    """Write the bf16 checkpoint (random weights) shard by shard; return the weights' total bytes."""
    import torch
    from safetensors.torch import save_file

    from olmo_hf import Olmo2ForCausalLM
    from olmo_hf.presets import preset_config

    config = preset_config(PRESET, **SHAPES[shape])
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        skeleton = Olmo2ForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}

    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shards, current, current_bytes, total = [], {}, 0, 0

    def flush():
        nonlocal current, current_bytes
        if current:
            shards.append(current)
            save_file(current, str(path / f"shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            current, current_bytes = {}, 0

    for name, dims in shapes.items():
        if "norm" in name:
            tensor = torch.ones(dims, dtype=torch.bfloat16)
        else:
            tensor = torch.empty(dims, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)
        nbytes = tensor.numel() * tensor.element_size()
        if current and current_bytes + nbytes > SHARD_BYTES:
            flush()
        current[name] = tensor
        current_bytes += nbytes
        total += nbytes
    flush()

    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        (path / f"shard-{i:05d}.tmp").rename(path / final)
        weight_map.update(dict.fromkeys(shard, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(path)
    (path / DONE_MARKER).write_text(str(total))
    return total


def fail(message: str) -> None:
    """Exit with status 2 (status 1 means: measured, but over the limit)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def ensure_checkpoint(path: Path, shape: str) -> int:
    marker = path / DONE_MARKER
    if marker.exists():
        return int(marker.read_text())
    print(f"writing the {shape}-shaped bf16 checkpoint to {path} (once) ...", flush=True)
    start = time.perf_counter()
    # In a child process so that this process stays small and the generator's memory is returned.
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run(
        [sys.executable, __file__, "--_write", str(path), shape], capture_output=True, text=True, env=env
    )
    if out.returncode:
        fail(f"writing the checkpoint failed:\n{out.stderr[-4000:]}")
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return int(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- child process
def _status_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0])
    return values


def measure_child(checkpoint: str, mode: str) -> dict:
    """Runs in a fresh interpreter: load once, report memory in bytes."""
    import gc
    import threading

    import torch

    torch.set_num_threads(1)
    import transformers  # noqa: F401

    import olmo_hf  # noqa: F401  (registers our classes)
    from transformers import AutoModelForCausalLM

    gc.collect()
    base = _status_kib()
    peaks = {"VmRSS": base["VmRSS"], "RssAnon": base["RssAnon"], "RssFile": base["RssFile"]}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            now = _status_kib()
            for key in peaks:
                peaks[key] = max(peaks[key], now[key])
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    if mode == "naive":
        # For comparison only: what loading costs WITHOUT meta-device init (weights allocated and randomly
        # initialised first, then overwritten from the checkpoint).
        from safetensors.torch import load_file

        config = transformers.AutoConfig.from_pretrained(checkpoint)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        for shard in sorted(Path(checkpoint).glob("*.safetensors")):
            model.load_state_dict(load_file(shard), strict=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, **MODES[mode])
    load_seconds = time.perf_counter() - start
    loaded = _status_kib()
    load_peaks = dict(peaks)

    # safetensors weights of the checkpoint's dtype are memory-mapped, not read: right after from_pretrained
    # most pages have not been faulted in yet. Touch every weight once (what the first forward pass does) so
    # that the peak covers the whole model being resident, then run one short forward pass.
    start = time.perf_counter()
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
        model(torch.tensor([[1, 2, 3, 4]]))
    touch_seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    after = _status_kib()

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kib = 1024
    return {
        "mode": mode,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "param_dtype": str(next(model.parameters()).dtype),
        "param_device": str(next(model.parameters()).device),
        "param_bytes": param_bytes,
        "load_seconds": round(load_seconds, 2),
        "touch_seconds": round(touch_seconds, 2),
        "baseline_rss": base["VmRSS"] * kib,
        # kernel high-water marks (exact; include the baseline)
        "peak_rss_from_pretrained": loaded["VmHWM"] * kib,
        "peak_rss": after["VmHWM"] * kib,  # over from_pretrained + touching every weight + one forward
        # sampled every 2 ms: anonymous (heap) vs file-backed (mmap'd safetensors) memory
        "peak_anon_from_pretrained": load_peaks["RssAnon"] * kib,
        "peak_file_from_pretrained": load_peaks["RssFile"] * kib,
        "peak_anon": peaks["RssAnon"] * kib,
        "peak_file": peaks["RssFile"] * kib,
        "rss_after": after["VmRSS"] * kib,
    }


# ----------------------------------------------------------------------------------------------- driver
def run_mode(checkpoint: Path, mode: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--_child", str(checkpoint), mode], capture_output=True, text=True, env=env
    )
    if out.returncode:
        fail(f"measuring mode {mode!r} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="olmo2-0425-1b")
    parser.add_argument("--checkpoint", type=Path, help="default: $TMPDIR/olmo_hf_load_memory/SHAPE-shape")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["default"])
    parser.add_argument("--max-ratio", type=float, default=1.2, help="allowed peak RSS / bf16 weight bytes")
    parser.add_argument("--json", type=Path, help="write the raw measurements here")
    parser.add_argument("--_write", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._write:
        print(write_checkpoint(Path(args._write[0]), args._write[1]))
        return 0
    if args._child:
        print(json.dumps(measure_child(*args._child)))
        return 0

    checkpoint = args.checkpoint or default_checkpoint_dir(args.shape)
    weight_bytes = ensure_checkpoint(checkpoint, args.shape)
    print(f"checkpoint: {checkpoint}  bf16 weights: {weight_bytes:,} bytes ({gib(weight_bytes)})")
    print(f"limit: peak RSS <= {args.max_ratio} x weights = {gib(int(args.max_ratio * weight_bytes))}\n")
    results, ok = [], True
    for mode in args.modes:
        r = run_mode(checkpoint, mode)
        r["weight_bytes"] = weight_bytes
        r["peak_ratio"] = round(r["peak_rss"] / weight_bytes, 3)
        r["peak_minus_baseline_ratio"] = round((r["peak_rss"] - r["baseline_rss"]) / weight_bytes, 3)
        r["passed"] = r["peak_rss"] <= args.max_ratio * weight_bytes
        if mode != "naive":  # a comparison point, not something olmo_hf users run
            ok &= r["passed"]
        results.append(r)
        print(
            f"{mode:16s} peak RSS {gib(r['peak_rss'])} = {r['peak_ratio']:.3f} x weights "
            f"[{'OK' if r['passed'] else ('over' if mode == 'naive' else 'FAIL')}]\n"
            f"{'':16s}   baseline after imports {gib(r['baseline_rss'])}; peak - baseline = "
            f"{r['peak_minus_baseline_ratio']:.3f} x weights\n"
            f"{'':16s}   during from_pretrained alone: peak RSS {gib(r['peak_rss_from_pretrained'])} "
            f"(anon {gib(r['peak_anon_from_pretrained'])}, file-backed {gib(r['peak_file_from_pretrained'])}), "
            f"{r['load_seconds']} s\n"
            f"{'':16s}   after touching every weight: anon {gib(r['peak_anon'])}, file-backed "
            f"{gib(r['peak_file'])} (peaks), {r['touch_seconds']} s",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
