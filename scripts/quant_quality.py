# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Quality of our quantized CPU formats next to llama.cpp's on the same weights (issue #13, item 3)::

    OLMO_HF_NATIVE=force python scripts/quant_quality.py --model-dir CHECKPOINT \\
        --gguf bf16=model-bf16.gguf --gguf q8_0=model-q8_0.gguf --gguf q4_0=model-q4_0.gguf

Every format sees the same token ids (``--sequences`` x ``--seq-len``: real English text, the CPython
documentation topics of ``pydoc_data.topics``, tokenized with the checkpoint's tokenizer when it has one, else
random ids with ``--seed``). The first ``seq_len - decode_steps`` tokens of each sequence go in as one prompt
(the prefill products), the last ``--decode-steps`` one token at a time with a KV cache (the decoding products:
our int8 matrix-vector kernel, llama.cpp's vector path), so both code paths are measured. Per position it
computes, against a reference:

- the relative L2 error of the logit vector, ``||l - l_ref|| / ||l_ref||`` (then the mean over positions);
- top-1 agreement: whether the arg-max token is the same (then the fraction of positions);
- KL(softmax(l_ref) || softmax(l)) in nats (then the mean), the measure llama.cpp's ``llama-perplexity
  --kl-divergence`` reports.

The reference of every row is our bf16 model in eager PyTorch (Transformers' forward, no fast path), its logits
taken as float32 (``--reference fp32``: the same bf16 weights computed in float32). llama.cpp's quantized GGUFs
are compared against llama.cpp's BF16 GGUF as well, to separate what the engine changes (a BF16 row near 0 means
the comparison is apples to apples) from what quantization changes.

Our formats: ``bf16`` (fast path; sanity), ``bf16-eager`` (the default reference), ``fp32`` (the bf16 weights
computed in float32, eager: how far the bf16 reference itself is from exact arithmetic), ``int8``
(``quantization_config("int8", device="cpu")`` + ``olmo_hf.fast.optimize_for_cpu_inference``), ``int4``
(``quantization_config("int4", device="cpu")`` + the fast path, skipped with the reason when the fast path
refuses it; ``int4-gN``: group size N; ``int8-gN``: int8 in groups of N (the default: 32); ``-eager``: without the
fast path; ``FORMAT@key=value+key=value`` passes options to ``quantization_config``, e.g.
``int8@quantize_embeddings=false``, ``int8@group_size=none`` (one scale per row)), ``int4-eager-gN`` (torchao
int4 group size N without the fast path: the numbers torchao's CPU layout gives, at any speed). llama.cpp's: one row per ``--gguf NAME=PATH``, evaluated
through llama-cpp-python (``pip install llama-cpp-python``; docs/quantization.md, "Quality against llama.cpp",
gives the CPU build flags).

Prints one markdown table, with what each row quantizes (read from the model's modules and the GGUF's tensor
types); ``--json PATH`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# ------------------------------------------------------------------------------------------------ pure metrics


@dataclass(frozen=True)
class LogitComparison:
    """Per-position comparison of candidate logits with reference logits (each field: shape ``(positions,)``)."""

    rel_l2: torch.Tensor  # ||cand - ref||_2 / ||ref||_2 over the vocabulary, float64
    top1: torch.Tensor  # bool: argmax(cand) == argmax(ref)
    kl: torch.Tensor  # KL(softmax(ref) || softmax(cand)) in nats, float64


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> LogitComparison:
    """Compare two logit matrices of the same tokens, position by position.

    Args:
        reference: ``(positions, vocab)`` logits of the reference model (any float dtype).
        candidate: ``(positions, vocab)`` logits of the model under test.

    Returns:
        The per-position relative L2 error, top-1 agreement and KL divergence (computed in float64).
    """
    if reference.shape != candidate.shape or reference.dim() != 2:
        raise ValueError(f"logits must be two matrices of one shape, got {tuple(reference.shape)} and "
                         f"{tuple(candidate.shape)}")
    ref = reference.double()  # (positions, vocab)
    cand = candidate.double()
    rel_l2 = (cand - ref).norm(dim=-1) / ref.norm(dim=-1)
    top1 = cand.argmax(dim=-1) == ref.argmax(dim=-1)
    log_p = torch.log_softmax(ref, dim=-1)
    log_q = torch.log_softmax(cand, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return LogitComparison(rel_l2=rel_l2, top1=top1, kl=kl)


def summarize(comparisons: list[LogitComparison]) -> dict:
    """Means over every position of several comparisons (e.g. one per sequence): ``rel_l2`` (mean relative L2
    error), ``rel_l2_max``, ``top1`` (fraction of positions whose top-1 token agrees), ``kl`` (mean, nats) and
    ``positions`` (how many)."""
    rel = torch.cat([c.rel_l2 for c in comparisons])
    top1 = torch.cat([c.top1 for c in comparisons])
    kl = torch.cat([c.kl for c in comparisons])
    return {
        "rel_l2": rel.mean().item(),
        "rel_l2_max": rel.max().item(),
        "top1": top1.double().mean().item(),
        "kl": kl.mean().item(),
        "positions": rel.numel(),
    }


# --------------------------------------------------------------------------------------------------- token ids


def pick_tokens(model_dir: str, vocab_size: int, sequences: int, seq_len: int,
                seed: int) -> tuple[list[list[int]], str]:
    """``sequences`` lists of ``seq_len`` token ids, and a sentence saying where they come from."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is not None:
        import pydoc_data.topics

        text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= sequences * seq_len:
            seqs = [ids[i * seq_len:(i + 1) * seq_len] for i in range(sequences)]
            return seqs, (f"the first {sequences} x {seq_len} tokens of pydoc_data.topics (Python "
                          f"{sys.version.split()[0]}, topics joined in key order), checkpoint's tokenizer")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (sequences, seq_len), generator=gen)
    return ids.tolist(), f"random token ids in [0, {vocab_size}), torch seed {seed}"


# ---------------------------------------------------------------------------------------------------- our side


def describe_weights(model: torch.nn.Module) -> str:
    """What a model stores for its matrices: e.g. ``q_proj,k_proj,...: Int8Tensor x16; lm_head: bfloat16``."""
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or weight is None:
            continue
        short = re.sub(r".*\.layers\.\d+\.(self_attn|mlp)\.", "", name).split(".")[-1]
        kind = type(weight).__name__ if type(weight) not in (torch.nn.Parameter, torch.Tensor) else str(weight.dtype)
        kind = kind.replace("torch.", "")
        kinds[kind][short] += 1
    parts = []
    for kind, names in kinds.items():
        parts.append(", ".join(f"{n}" + (f" x{c}" if c > 1 else "") for n, c in names.items()) + f": {kind}")
    return "; ".join(parts)


def _our_logits(model, seqs: list[list[int]], decode_steps: int) -> list[torch.Tensor]:
    """Float32 logits ``(seq_len, vocab)`` per sequence: a prompt of ``seq_len - decode_steps`` tokens, then one
    token per step through the cache."""
    from transformers import DynamicCache

    out = []
    with torch.no_grad():
        for seq in seqs:
            ids = torch.tensor([seq])
            split = len(seq) - decode_steps
            cache = DynamicCache()
            rows = [model(ids[:, :split], cache=cache, use_cache=True).logits[0].float()]
            for i in range(split, len(seq)):
                rows.append(model(ids[:, i:i + 1], cache=cache, use_cache=True).logits[0].float())
            out.append(torch.cat(rows))
    return out


def load_ours(model_dir: str, fmt: str):
    """Our model for format ``fmt``; returns (model, what it quantizes) or raises ``_Skip`` with the reason."""
    import olmo_hf  # noqa: F401  (registers our classes)
    from transformers import AutoModelForCausalLM

    from olmo_hf.fast import optimize_for_cpu_inference
    from olmo_hf.quantization import quantization_config

    if fmt in ("bf16", "bf16-eager"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        what = "nothing (bf16)"
        if fmt == "bf16":
            optimize_for_cpu_inference(model)
            what += ", fast path"
        return model, what
    if fmt == "fp32":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).float().eval()
        return model, "nothing (bf16 weights, float32 arithmetic, eager)"
    fmt, _, extra = fmt.partition("@")  # e.g. int8@modules_to_not_convert=lm_head+quantize_embeddings=false
    options = {}
    for item in filter(None, extra.split("+")):
        key, _, value = item.partition("=")
        options[key] = {"true": True, "false": False, "none": None}.get(value.lower(),
                                                                        int(value) if value.isdigit() else value)
    quant = re.fullmatch(r"(int8|int4)(-eager)?(?:-g(\d+))?", fmt)
    if quant:
        if quant.group(3):
            options["group_size"] = int(quant.group(3))
        config = quantization_config(quant.group(1), device="cpu", **options)
        fast = not quant.group(2)
        quant_type = getattr(config, "quant_type", None)  # one torchao config, or an FqnToConfig of several
        members = [quant_type, *getattr(quant_type, "fqn_to_config", {}).values()]
        sizes = [getattr(getattr(m, "granularity", None), "group_size", None) for m in members]
        group_size = max([size for size in sizes if size] or [None], key=lambda v: v or 0)
        dims = json.loads((Path(model_dir) / "config.json").read_text())
        odd = [d for d in (dims["hidden_size"], dims["intermediate_size"]) if group_size and d % group_size]
        if odd:  # torchao fails the load with a generic conversion error
            raise _Skip(f"in_features {odd[0]} is not a multiple of the group size {group_size}")
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                                         quantization_config=config).eval()
        except RuntimeError as e:  # Transformers' conversion report: torchao refused a weight
            raise _Skip(f"loading failed: {str(e).splitlines()[0]}") from None
        what = describe_weights(model)
        if fast:
            try:
                optimize_for_cpu_inference(model)
            except (TypeError, ValueError) as e:
                raise _Skip(f"the fast path refuses it: {e}") from None
            what += ", fast path"
        else:
            what += ", eager torchao (no fast path)"
        return model, what
    raise ValueError(f"unknown format {fmt!r}")


class _Skip(Exception):
    """A format that cannot run here; the message says why."""


# ------------------------------------------------------------------------------------------------ llama.cpp side


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        sys.exit("scripts/quant_quality.py: --gguf needs llama-cpp-python; install it with "
                 "`pip install llama-cpp-python` (CPU build flags: docs/quantization.md, 'Quality against llama.cpp').")
    return llama_cpp


def gguf_tensor_types(path: str) -> str:
    """The storage types of a GGUF's matrices, e.g. ``attn_q, ...: Q8_0 x16; output: Q6_K; token_embd: Q4_0``."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return "(install the gguf package to list the tensor types)"
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t in GGUFReader(path).tensors:
        if t.name.endswith("norm.weight") or len(t.shape) < 2:
            continue
        short = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        kinds[t.tensor_type.name][short.removesuffix(".weight")] += 1
    return "; ".join(", ".join(n + (f" x{c}" if c > 1 else "") for n, c in names.items()) + f": {kind}"
                     for kind, names in kinds.items())


def llama_logits(path: str, seqs: list[list[int]], decode_steps: int, threads: int) -> list[torch.Tensor]:
    """Float32 logits per sequence from llama.cpp (llama-cpp-python), split into prompt and steps as ours."""
    llama_cpp = _import_llama_cpp()
    seq_len = len(seqs[0])
    llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=seq_len, n_batch=seq_len, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    out = []
    for seq in seqs:
        llm.reset()
        split = len(seq) - decode_steps
        llm.eval(seq[:split])
        for token in seq[split:]:
            llm.eval([token])
        out.append(torch.from_numpy(llm.scores[:len(seq)].copy()))
    del llm
    gc.collect()
    return out


# -------------------------------------------------------------------------------------------------------- main


def _segments(reference: list[torch.Tensor], candidate: list[torch.Tensor], decode_steps: int) -> dict:
    """Metrics over the prompt positions and over the decoding steps, each against ``reference``."""
    vocab = min(reference[0].shape[-1], candidate[0].shape[-1])  # a GGUF may list fewer (or padded) tokens
    result = {}
    for segment, rows in (("prefill", slice(None, -decode_steps or None)), ("decode", slice(-decode_steps, None))):
        if segment == "decode" and not decode_steps:
            continue
        result[segment] = summarize([compare_logits(r[rows, :vocab], c[rows, :vocab])
                                     for r, c in zip(reference, candidate)])
    return result


def _cell(metrics: dict | None, key: str) -> str:
    if metrics is None:
        return "–"
    value = metrics[key]
    return f"{100 * value:.2f} %" if key in ("rel_l2", "top1") else f"{value:.2e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="a bf16 OLMo 2 checkpoint directory")
    p.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH",
                   help="a GGUF of the same weights (repeatable); NAME 'bf16' is the llama.cpp reference")
    p.add_argument("--formats", default="bf16,fp32,int8,int4,int4-eager-g32",
                   help="our formats, comma-separated (bf16, bf16-eager, fp32, int8, int8-gN, int8-eager-gN, "
                   "int8@group_size=none, int4, int4-gN, int4-eager-gN)")
    p.add_argument("--reference", choices=["bf16", "fp32"], default="bf16",
                   help="our model the rows are compared with: bf16 (eager) or fp32 (the bf16 weights in float32)")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=16, help="last tokens of each sequence fed one at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--cache-dir", help="keep each format's logits here (float32, about 0.4 GB per format for a "
                   "100k vocabulary x 1024 tokens) and reuse them when rerun with the same tokens and files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not 0 <= args.decode_steps < args.seq_len:
        p.error("--decode-steps must be in [0, --seq-len)")
    ggufs = {}
    for item in args.gguf:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"--gguf {item!r}: give NAME=PATH of an existing GGUF file")
        ggufs[name] = path
    if ggufs and not args.cache_dir:
        _import_llama_cpp()  # fail before loading anything

    config = json.loads((Path(args.model_dir) / "config.json").read_text())
    seqs, source = pick_tokens(args.model_dir, config["vocab_size"], args.sequences, args.seq_len, args.seed)
    print(f"tokens: {source}", file=sys.stderr)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    run_key = hashlib.sha256(json.dumps([seqs, args.decode_steps]).encode()).hexdigest()[:12]

    def cached(name: str, source: str, compute):
        """``compute()`` -> (logits, what), kept under --cache-dir for reruns with the same tokens and source."""
        if not args.cache_dir:
            return compute()
        stamp = os.stat(source)
        key = hashlib.sha256(f"{name}|{Path(source).resolve()}|{stamp.st_size}|{stamp.st_mtime_ns}".encode())
        path = Path(args.cache_dir) / f"{name}-{run_key}-{key.hexdigest()[:12]}.pt"
        if path.is_file():
            log(f"  from {path}")
            saved = torch.load(path)
            return saved["logits"], saved["what"]
        logits, what = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"logits": logits, "what": what}, path)
        return logits, what

    weights = str(Path(args.model_dir) / "model.safetensors")
    import olmo_hf  # the cache of our rows is per olmo_hf source (e.g. PYTHONPATH=another worktree, another commit)

    tree = Path(olmo_hf.__file__).resolve().parent
    code = hashlib.sha256()
    for file in sorted(tree.rglob("*")):
        if file.suffix in (".py", ".c"):
            code.update(str(file.relative_to(tree)).encode() + file.read_bytes())
    code = code.hexdigest()[:8]

    def ours(fmt: str):
        model, what = load_ours(args.model_dir, fmt)
        logits = _our_logits(model, seqs, args.decode_steps)
        del model
        gc.collect()
        return logits, what

    ref_fmt = {"bf16": "bf16-eager", "fp32": "fp32"}[args.reference]
    ref_name = f"ours {args.reference}"
    log(f"ours {ref_fmt} (the reference)")
    reference, _ = cached(f"ours-{code}-{ref_fmt}", weights, lambda: ours(ref_fmt))

    rows = []  # (engine, format, what it quantizes, {reference name: metrics} or skip reason)
    for fmt in [f for f in args.formats.split(",") if f]:
        log(f"ours {fmt}")
        try:
            logits, what = cached(f"ours-{code}-{fmt}", weights, lambda: ours(fmt))
        except _Skip as e:
            rows.append(("ours", fmt, "", str(e)))
            continue
        rows.append(("ours", fmt, what, {ref_name: _segments(reference, logits, args.decode_steps)}))
        del logits

    llama_ref = None
    for name in sorted(ggufs, key=lambda n: n != "bf16"):  # the BF16 GGUF first: the llama.cpp reference
        log(f"llama.cpp {name}")
        logits, _ = cached(f"llama-{name}", ggufs[name],
                           lambda: (llama_logits(ggufs[name], seqs, args.decode_steps, args.threads), ""))
        metrics = {ref_name: _segments(reference, logits, args.decode_steps)}
        if llama_ref is not None:
            metrics["llama.cpp bf16"] = _segments(llama_ref, logits, args.decode_steps)
        if name == "bf16":
            llama_ref = logits
        rows.append(("llama.cpp", name, gguf_tensor_types(ggufs[name]), metrics))

    segments = ["prefill"] + (["decode"] if args.decode_steps else [])
    head = ["engine", "format", "reference"]
    for segment in segments:
        head += [f"rel. L2 ({segment})", f"top-1 ({segment})", f"KL ({segment})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for engine, fmt, _, metrics in rows:
        if isinstance(metrics, str):
            lines.append(f"| {engine} | {fmt} | skipped: {metrics} |" + " |" * (len(head) - 3))
            continue
        for ref_name, by_segment in metrics.items():
            cells = [engine, fmt, ref_name]
            for segment in segments:
                m = by_segment.get(segment)
                cells += [_cell(m, "rel_l2"), _cell(m, "top1"), _cell(m, "kl")]
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    print("What each row stores quantized (matrices only; norms stay float):")
    for engine, fmt, what, metrics in rows:
        if not isinstance(metrics, str):
            print(f"- {engine} {fmt}: {what}")
    n_prefill = args.sequences * (args.seq_len - args.decode_steps)
    print(f"\n{args.sequences} sequences x {args.seq_len} tokens ({source}); prefill = the first "
          f"{args.seq_len - args.decode_steps} positions of each ({n_prefill}), decode = the last {args.decode_steps} "
          f"fed one token at a time ({args.sequences * args.decode_steps}); torch {torch.__version__}, "
          f"{args.threads} threads.")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": source, "rows": rows, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
