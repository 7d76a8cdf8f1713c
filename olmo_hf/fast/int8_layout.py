# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The blocked layout of group-wise int8 weights: what ``kernels.c``'s ``olmo_hf_gemv_int8_blocked`` reads (its
comment there says why it is laid out so), packed from and unpacked to torchao's ``IntxUnpackedToInt8Tensor`` data.

Row ``n`` of an ``(out, in)`` matrix with ``ng = in / G`` groups is ``row_bytes(in, G)`` bytes:

- ``header_bytes(ng)`` bytes: the row's ``ng`` float16 group scales (torchao's, the same values), zero padded to a
  multiple of 64 (the weights start on a cache line);
- the ``in`` weights as ``u = q ^ 0x80`` (``q + 128``, unsigned), in blocks of 16 groups (the last block holds the
  ``ng % 16`` groups left, if any). Chunk ``c`` of a block (``0 <= c < G / 4``) holds bytes ``4c .. 4c + 3`` of each
  of the block's groups, group ``g`` of the block at ``4 g``: one 64-byte load is one 32-bit lane per group;
- zero padding to a multiple of 64.

Same bytes as torchao's per weight (1 + 2 / G with the scales), in one array. Packing and unpacking are exact
inverses (tests/test_fast_quantized.py); both run in PyTorch, once per matrix (packing at
``optimize_for_cpu_inference``, unpacking for ``state_dict`` / ``undo``); prefill widens from this layout natively.
"""

from __future__ import annotations

import torch

__all__ = ["BLOCKED_GROUPS", "header_bytes", "row_bytes", "pack_int8_blocked", "unpack_int8_blocked"]

BLOCKED_GROUPS = (32, 64, 96, 128)  # group sizes the kernel takes: a group's int32 sum must not overflow
_BLOCK = 16  # groups per block: one per 32-bit lane of a 512-bit register


def header_bytes(groups: int) -> int:
    """Bytes before a row's weights: its float16 scales, padded to a multiple of 64."""
    return (2 * groups + 63) // 64 * 64


def row_bytes(in_features: int, group: int) -> int:
    """Bytes per row of the blocked layout (a multiple of 64)."""
    return header_bytes(in_features // group) + (in_features + 63) // 64 * 64


def _lanes(n: int, k: int, group: int) -> tuple[int, int]:
    """(int32 words in the full blocks, groups in the last partial block) of a row of ``k`` values."""
    ng = k // group
    return ng // _BLOCK * _BLOCK * group // 4, ng % _BLOCK


def pack_int8_blocked(qdata: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """torchao's group-wise int8 ``qdata`` (out, in) and float16 ``scale`` (out, in / group) -> the blocked matrix,
    ``(out, row_bytes(in, group))`` int8."""
    n, k = qdata.shape
    if group not in BLOCKED_GROUPS or k % group or scale.shape != (n, k // group) or scale.dtype != torch.float16:
        raise ValueError(f"no blocked int8 layout for a {n}x{k} matrix in groups of {group} with {scale.dtype} scales")
    ng, hdr = k // group, header_bytes(k // group)
    out = torch.zeros(n, row_bytes(k, group), dtype=torch.int8)
    out[:, : 2 * ng] = scale.contiguous().view(torch.int8)  # (n, 2 ng): the float16 bytes as they lie in memory
    words = (qdata.contiguous().view(torch.uint8) ^ 0x80).view(torch.int32)  # (n, k / 4): 4 weights of a group each
    full, h = _lanes(n, k, group)
    body = out[:, hdr: hdr + k].view(torch.int32)  # hdr and k are multiples of 4: aligned words
    if full:  # (n, block, group in block, word in group) -> (n, block, word in group, group in block)
        body[:, :full] = words[:, :full].view(n, -1, _BLOCK, group // 4).transpose(2, 3).reshape(n, full)
    if h:
        body[:, full:] = words[:, full:].view(n, h, group // 4).transpose(1, 2).reshape(n, -1)
    return out


def unpack_int8_blocked(blocks: torch.Tensor, in_features: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocked matrix (rows of ``row_bytes(in_features, group)``) -> torchao's ``(qdata, scale)``: int8
    (out, in) and float16 (out, in / group), new contiguous tensors."""
    n, k = blocks.shape[0], in_features
    ng, hdr = k // group, header_bytes(k // group)
    scale = blocks[:, : 2 * ng].contiguous().view(torch.float16)
    body = blocks[:, hdr: hdr + k].contiguous().view(torch.int32)
    full, h = _lanes(n, k, group)
    words = torch.empty(n, k // 4, dtype=torch.int32)
    if full:
        words[:, :full] = body[:, :full].view(n, -1, group // 4, _BLOCK).transpose(2, 3).reshape(n, full)
    if h:
        words[:, full:] = body[:, full:].view(n, group // 4, h).transpose(1, 2).reshape(n, -1)
    return (words.view(torch.uint8) ^ 0x80).view(torch.int8), scale
