# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The fast path's weights: ``_Packed`` (one weight matrix in the plain ``(out_features, in_features)`` layout, the
nn.Linear's own tensor or a fused ``[q; k; v]`` / ``[gate; up]`` matrix), :class:`PackedLinear` (the ``nn.Linear``
stand-in that reads it) and ``_Packer``, which swaps them into a model and gives the replaced weights' mmap pages
back."""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import storage_use_count
from . import native
from .native import _can_use_native_gemm, _native_gemm, _native_matmul


class FastPathError(RuntimeError):
    """An operation that an optimised model cannot do; :func:`undo` first."""


# ----------------------------------------------------------------------------------------------- packed linear
def refuse_gradients_and_export(x: torch.Tensor, bias: torch.Tensor | None) -> None:
    """What every fast-path product refuses (bf16 and int8 alike): gradients, and torch.export (so ONNX's dynamo
    exporter and ExecuTorch; torch.compile is fine)."""
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        raise FastPathError(
            "This model was optimised for CPU inference (olmo_hf.fast), whose packed linear layers cannot be trained "
            "or differentiated; call olmo_hf.fast.undo(model) first, or run under torch.no_grad()."
        )
    if torch.compiler.is_exporting():
        raise FastPathError(
            "This model was optimised for CPU inference (olmo_hf.fast), whose packed weights torch.export, ONNX and "
            "ExecuTorch cannot export; call olmo_hf.fast.undo(model) before exporting it."
        )


class _Packed:
    """One weight matrix of the fast path, shared by the PackedLinear(s) that read it (several for a fused matrix).

    The layout is the plain row-major ``(out_features, in_features)`` one that ``nn.Linear`` holds: a single
    linear layer's weight is kept as it is (the same tensor, not copied), a fused group is the concatenation of
    its members' rows. Products over a few rows (decoding) take the native matrix-vector kernel where the kernel
    plan enables it (``native.kernel_plan()``, measured per machine); larger ones (prefill) take the AMX matrix
    product where the plan measured it faster than ``F.linear`` (kernels.c ``olmo_hf_gemm_amx``: the same weight,
    read once per call without oneDNN's per-call reorder); all others are ``F.linear`` on the same tensor, i.e.
    exactly what the plain model runs (oneDNN's GEMM, with AMX where the CPU has it)."""

    __slots__ = ("tensor", "dtype", "out_features", "in_features", "__weakref__")

    def __init__(self, dense: torch.Tensor) -> None:
        dense = dense.detach()
        self.tensor = dense if dense.is_contiguous() else dense.contiguous()  # (out_features, in_features)
        self.dtype = dense.dtype
        self.out_features, self.in_features = dense.shape

    def dense(self) -> torch.Tensor:
        """The weight itself (not a copy)."""
        return self.tensor

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` over the last dimension of ``x`` (inference only: no autograd)."""
        refuse_gradients_and_export(x, bias)
        plan = native._PLAN
        if (
            plan is not None
            and plan.gemv_max_rows
            and self.dtype == x.dtype == torch.bfloat16
            and type(x) is torch.Tensor  # not a FakeTensor (torch.compile / torch.export / ONNX tracing)
            and x.device.type == "cpu"
            and x.numel() <= plan.gemv_max_rows * x.shape[-1]
            and not torch.compiler.is_compiling()
        ):
            amx = 0 < plan.gemv_amx_from_rows <= x.numel() // x.shape[-1]
            out = _native_matmul(x, self.tensor, amx=amx)
            return out if bias is None else out + bias
        if plan is not None and plan.gemm_amx and self.dtype == torch.bfloat16 and _can_use_native_gemm(x, x.shape[-1]):
            out = _native_gemm(x, self.tensor)  # prefill: AMX tiles reading the plain weight once
            return out if bias is None else out + bias
        return F.linear(x, self.tensor, bias)

    # copy.deepcopy / pickle (torch.save of a whole model): carry the dense weight
    def __getstate__(self):
        return {"dense": self.tensor}

    def __setstate__(self, state):
        self.__init__(state["dense"])


class PackedLinear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear`` whose weight the fast path holds (see ``_Packed``).

    When ``rows`` is given, the module is a VIEW on rows ``rows[0]:rows[1]`` of a fused packed matrix (q/k/v,
    gate/up): calling it runs the whole fused product and slices, which only code outside the fast path does (the
    fast attention and MLP call the fused matrix once). ``state_dict()`` writes ``weight`` (standard layout) and
    ``bias``; the original ``nn.Linear`` is kept, emptied, so that :func:`undo` can put it back with its very
    Parameter objects. ``.weight`` is the weight tensor itself for a single layer, a copy of its rows for a member
    of a fused matrix.
    """

    def __init__(self, source: nn.Linear, packed: _Packed, rows: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.in_features = source.in_features
        self.out_features = source.out_features
        self._packed = packed
        self._rows = rows
        # The original module, unregistered (not a child: no duplicate keys, no .to() of an emptied weight).
        self.__dict__["_source"] = source
        self.bias = source.bias  # same Parameter; registered so that state_dict() writes it as nn.Linear does

    # -- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            return self._packed.matmul(x, self.bias)
        out = self._packed.matmul(x)[..., self._rows[0] : self._rows[1]]
        return out if self.bias is None else out + self.bias

    @property
    def weight(self) -> torch.Tensor:
        """The weight in the standard ``(out_features, in_features)`` layout (a copy for a member of a fused
        matrix); not a Parameter."""
        dense = self._packed.dense()
        return dense if self._rows is None else dense[self._rows[0] : self._rows[1]].clone()

    # -- serialization: the standard nn.Linear keys
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        key = prefix + "weight"
        if key in state_dict:
            if self._rows is not None:
                errors.append(
                    f"{key}: loading into a fused projection of a model optimised by olmo_hf.fast is not supported; "
                    "call olmo_hf.fast.undo(model) first."
                )
            else:
                value = state_dict[key]
                if tuple(value.shape) != (self.out_features, self.in_features):
                    errors.append(
                        f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, the shape in the "
                        f"current model is {(self.out_features, self.in_features)}."
                    )
                else:
                    with torch.no_grad():  # in place, as nn.Linear loads: the model keeps its memory
                        self._packed.tensor.copy_(value)
        elif strict:
            missing_keys.append(key)
        if self.bias is not None:
            bkey = prefix + "bias"
            if bkey in state_dict:
                with torch.no_grad():
                    self.bias.copy_(state_dict[bkey])
            elif strict:
                missing_keys.append(bkey)

    # -- refuse moves that a packed weight cannot follow
    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(1, dtype=self._packed.dtype))
        if probe.dtype != self._packed.dtype or probe.device.type != "cpu":
            raise FastPathError(
                f"Cannot convert a model optimised for CPU inference (olmo_hf.fast) to {probe.device.type}/"
                f"{probe.dtype}; call olmo_hf.fast.undo(model) first."
            )
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        rows = "" if self._rows is None else f", rows={self._rows[0]}:{self._rows[1]} of a fused matrix"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={self._packed.dtype}{rows}"
        )


# ----------------------------------------------------------------------------------------------- page release
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _storage_use_count(t: torch.Tensor) -> int:
    return storage_use_count(t)


_SOLE_OWNER_COUNT = None


def _sole_owner_count() -> int:
    """The use count a storage reports when exactly one tensor holds it (the probe adds its own)."""
    global _SOLE_OWNER_COUNT
    if _SOLE_OWNER_COUNT is None:
        _SOLE_OWNER_COUNT = _storage_use_count(torch.empty(16))
    return _SOLE_OWNER_COUNT


class _FileMappings:
    """Address ranges of file-backed mappings of this process (Linux /proc/self/maps), read once."""

    def __init__(self, enabled: bool = True) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.libc = None
        if not enabled or not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[5].startswith("/") and parts[5].endswith(".safetensors"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            self.ranges, self.libc = [], None

    def trim_heap(self) -> None:
        """Hand the heap memory freed by the temporary copies back to the OS (glibc ``malloc_trim``)."""
        if self.libc is None:
            return
        try:
            self.libc.malloc_trim(0)
        except AttributeError:  # not glibc
            pass

    def release(self, tensor: torch.Tensor) -> int:
        """Drop the resident pages that lie wholly inside ``tensor``'s bytes, if they belong to a safetensors
        mmap and no other tensor can read them. Returns the number of bytes released."""
        if self.libc is None or not self.ranges or tensor.device.type != "cpu":
            return 0
        if _storage_use_count(tensor) != _sole_owner_count():
            return 0  # another tensor (a tied weight, a view someone kept) still reads these bytes
        start = tensor.untyped_storage().data_ptr()
        end = start + tensor.untyped_storage().nbytes()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return 0
        first = -(-start // _PAGE) * _PAGE
        last = end // _PAGE * _PAGE
        if last <= first:
            return 0
        if self.libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) != 0:
            return 0
        return last - first


# ----------------------------------------------------------------------------------------------- packer
class _Packer:
    """Packs groups of nn.Linears (one group = one packed matrix) and swaps in the PackedLinears.

    A copy runs on one core, so fused groups are concatenated by ``workers`` threads at once (the ops release the
    GIL); at most ``workers`` groups are in flight, which bounds the transient memory. Memory: each source of a
    fused group is detached from its Parameter before the copy and its mmap pages are released right after, so
    the model never exists twice; a single layer's weight is kept as it is.

    ``state`` is the record that undo() reads (``olmo_hf.fast._State``): each swapped-out nn.Linear goes to
    ``state.replaced``, the bytes of released pages are added to ``state.released_bytes``."""

    def __init__(self, state, pages: _FileMappings, workers: int) -> None:
        self.state, self.pages, self.workers = state, pages, max(1, workers)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="olmo_hf_pack") if self.workers > 1 else None
        self.pending: deque = deque()

    def submit(self, parent: nn.Module, names: list[str], dtype: torch.dtype, on_done=None) -> None:
        linears = [getattr(parent, n) for n in names]
        datas = [lin.weight.detach() for lin in linears]
        for lin in linears:
            lin.weight.data = torch.empty(0, dtype=lin.weight.dtype)  # the packed copy replaces the dense one
        job = (parent, names, linears, on_done)
        if self.pool is None:
            try:
                result = self._build(datas, dtype)
            except BaseException as e:
                self._restore(job, e)
                raise
            self._install(job, result)
            return
        self.pending.append((self.pool.submit(self._build, datas, dtype), job))
        del datas  # the worker holds the only references now (needed for the page release)
        while len(self.pending) >= self.workers:
            self._finish_one()

    def close(self) -> None:
        """Finish every group in flight (installed, or restored if it failed), then raise the first failure."""
        error = None
        try:
            while self.pending:
                try:
                    self._finish_one()
                except BaseException as e:  # keep draining: no group may be left with an emptied weight
                    error = error or e
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        self.pages.trim_heap()
        if error is not None:
            raise error

    def _finish_one(self) -> None:
        future, job = self.pending.popleft()
        try:
            result = future.result()
        except BaseException as e:
            self._restore(job, e)
            raise
        self._install(job, result)

    @staticmethod
    def _restore(job, error: BaseException) -> None:
        """A group failed to pack: put its dense weights back into its nn.Linears (emptied by submit)."""
        for lin, dense in zip(job[2], getattr(error, "olmo_hf_dense_sources", [])):
            if dense is not None:
                lin.weight.data = dense

    def _build(self, datas: list, dtype: torch.dtype) -> tuple[_Packed, int]:
        """Pack one group; if that fails, the dense values go back into the group's nn.Linears (through the
        exception, see _install) so that undo() can restore the whole model."""
        try:
            return self._pack(datas, dtype)
        except BaseException as e:
            if not hasattr(e, "olmo_hf_dense_sources"):  # failed before anything was released: the sources
                e.olmo_hf_dense_sources = list(datas)
            raise

    def _pack(self, datas: list, dtype: torch.dtype) -> tuple[_Packed, int]:
        with torch.no_grad():
            if len(datas) == 1:  # a single layer keeps its own weight tensor: no copy, no pages to give back
                return _Packed(datas[0].to(dtype)), 0
            # A fused group: its members' rows concatenated into one new matrix, then their sources released.
            rows_total, cols = sum(d.shape[0] for d in datas), datas[0].shape[1]
            dense = torch.empty((rows_total, cols), dtype=dtype)  # (sum of out_features, in_features)
            torch.cat([d.to(dtype) for d in datas], dim=0, out=dense)
            sizes = [d.shape[0] for d in datas]
            released = 0
            for i in range(len(datas)):
                released += self.pages.release(datas[i])
                datas[i] = None
            try:
                packed = _Packed(dense)
            except BaseException as e:  # the sources are gone: hand back copies of their rows
                e.olmo_hf_dense_sources = [rows.clone() for rows in dense.split(sizes)]
                raise
        return packed, released

    def _install(self, job, result) -> None:
        parent, names, linears, on_done = job
        packed, released = result
        self.state.released_bytes += released
        row = 0
        for name, lin in zip(names, linears):
            rows = None if len(linears) == 1 else (row, row + lin.out_features)
            row += lin.out_features
            setattr(parent, name, PackedLinear(lin, packed, rows))
            self.state.replaced.append((parent, name, lin))
        if on_done is not None:
            on_done(packed)
