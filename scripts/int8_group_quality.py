# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Which int8 layout to default to, and which tensors carry the error: each variant quantizes the bf16 checkpoint's
projections, ``lm_head`` and input embedding with torchao's own quantizer for a layout, puts the dequantized values
back into the eager bf16 model (bit for bit what torchao's group-wise linear computes; within bf16 rounding of its
per-row one) and compares the logits with a reference saved by scripts/quant_quality.py (``--cache-dir``; its
bf16-eager file), over the same tokens and positions (prefill and one-token decode steps)::

    python scripts/int8_group_quality.py --model-dir CHECKPOINT --reference CACHE/ours-...-bf16-eager-....pt \\
        --variants row,proj=row,head=row,emb=row,q8_0,g32,g64,g32-bf16,g32-f16-nc,g64-nc

A variant is one layout for all three parts, or ``part=LAYOUT`` joined by ``/`` (parts ``proj``, ``head``, ``emb``;
the others stay bf16). Layouts: ``row`` (Int8WeightOnlyConfig(PerRow()): one fp32 scale per row), ``gN`` (groups of
N, IntxWeightOnlyConfig int8 SYMMETRIC with fp32 scales), ``gN-bf16`` / ``gN-f16`` (bf16 / fp16 scales), a ``-nc``
suffix (SYMMETRIC_NO_CLIPPING_ERR: the default of quantization_config("int8") is ``g32-f16-nc``), ``q8_0`` (llama.cpp
Q8_0's weight grid: fp16 scale amax / 127 per 32, q = round(w / scale)), ``bf16`` (unquantized).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from torchao.quantization import Int8Tensor, IntxWeightOnlyConfig, MappingType
from torchao.quantization.granularity import PerGroup, PerRow

import olmo_hf

_SPEC = importlib.util.spec_from_file_location("quant_quality", Path(__file__).with_name("quant_quality.py"))
quant_quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quant_quality)


def fake_quantize(w: torch.Tensor, layout: str) -> torch.Tensor:
    """``w`` (out, in) bf16 -> the bf16 values torchao's ``dequantize()`` gives for ``layout`` (see the module doc)."""
    if layout == "bf16":
        return w
    if layout == "row":
        return Int8Tensor.from_hp(w, PerRow()).dequantize()
    if layout == "q8_0":
        x = w.float().reshape(w.shape[0], -1, 32)
        d = (x.abs().amax(-1, keepdim=True) / 127).half().float()
        q = torch.where(d > 0, torch.round(x / torch.where(d > 0, d, 1)), 0).clamp(-127, 127)
        return (q * d).reshape(w.shape).to(torch.bfloat16)
    parts = layout.removeprefix("g").split("-")
    mapping = MappingType.SYMMETRIC_NO_CLIPPING_ERR if "nc" in parts else MappingType.SYMMETRIC
    dtype = torch.bfloat16 if "bf16" in parts else torch.float16 if "f16" in parts else torch.float32
    config = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(int(parts[0])), mapping_type=mapping,
                                  scale_dtype=dtype)
    from torchao.quantization.quant_api import _intx_weight_only_quantize_tensor

    return _intx_weight_only_quantize_tensor(w, config).dequantize()


def _part(name: str) -> str:
    return "emb" if "embed_tokens" in name else "head" if "lm_head" in name else "proj"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--reference", required=True, help="scripts/quant_quality.py's cached bf16-eager logits (.pt)")
    p.add_argument("--variants", default="row,q8_0,g32,g64,g128,g32-f16-nc")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = json.loads((Path(args.model_dir) / "config.json").read_text())
    seqs, source = quant_quality.pick_tokens(args.model_dir, config["vocab_size"], 4, 256, 0)  # quant_quality's
    reference = torch.load(args.reference)["logits"]
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}
    print(f"tokens: {source}")
    for variant in args.variants.split(","):
        layouts = dict(kv.split("=") for kv in variant.split("/")) if "=" in variant else dict.fromkeys(
            ("proj", "head", "emb"), variant)
        t0 = time.time()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in original:
                    param.copy_(fake_quantize(original[name], layouts.get(_part(name), "bf16")))
        logits = quant_quality._our_logits(model, seqs, 16)
        metrics = quant_quality._segments(reference, logits, 16)
        print(f"{variant:36s} " + " | ".join(f"{seg}: rel. L2 {100 * m['rel_l2']:.2f} % top-1 {100 * m['top1']:.2f} % "
                                             f"KL {m['kl']:.2e}" for seg, m in metrics.items())
              + f" ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
