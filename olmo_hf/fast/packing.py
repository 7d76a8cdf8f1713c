# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Packed weights: ``_Packed`` (one oneDNN-prepacked matrix), :class:`PackedLinear` (the ``nn.Linear`` stand-in
that reads it) and ``_Packer``, which swaps them into a model and gives the dense weights' mmap pages back."""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..compat import mkldnn_linear, mkldnn_pack_linear_weight, storage_use_count
from .native import _NATIVE_MAX_ROWS, _native_kernel, _native_layout_ptr, _native_matmul


class FastPathError(RuntimeError):
    """An operation that an optimised model cannot do; :func:`undo` first."""


# ----------------------------------------------------------------------------------------------- packed linear
_PACKED_BY_HANDLE: dict[int, weakref.ref] = {}  # handle -> _Packed, for the custom op that torch.compile sees
_HANDLES = itertools.count()


@torch.library.custom_op("olmo_hf::packed_matmul", mutates_args=())
def _packed_matmul_op(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """``x @ W.T`` for the _Packed registered under ``handle``. Under torch.compile the product is this opaque op:
    the compiled graph calls it, and it runs eagerly (native kernel or oneDNN), because Inductor cannot lower a
    oneDNN-prepacked weight it did not pack itself."""
    packed = _PACKED_BY_HANDLE[handle]()
    if packed is None:
        raise RuntimeError("olmo_hf.fast: a compiled graph outlived the packed weight it reads; compile again")
    return packed.eager_matmul(x)


@_packed_matmul_op.register_fake
def _(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    # torch.export (and so ONNX's dynamo exporter and ExecuTorch) traces through this fake kernel: refuse there, since
    # the weight behind ``handle`` lives in this process, not in the exported graph (torch.compile is unaffected).
    if torch.compiler.is_exporting():
        raise FastPathError(
            "This model was optimised for CPU inference (olmo_hf.fast), whose packed weights torch.export, ONNX and "
            "ExecuTorch cannot export; call olmo_hf.fast.undo(model) before exporting it."
        )
    return x.new_empty((*x.shape[:-1], out_features))


class _Packed:
    """One oneDNN-prepacked weight, shared by the PackedLinear(s) that read it (several for a fused matrix)."""

    __slots__ = ("tensor", "dtype", "out_features", "in_features", "native_ptr", "handle", "__weakref__")

    def __init__(self, dense: torch.Tensor) -> None:
        self.dtype = dense.dtype
        self.out_features, self.in_features = dense.shape
        # The batch-size hint only steers oneDNN's choice of blocked layout; 1 favours decoding.
        self.tensor = mkldnn_pack_linear_weight(dense.detach())
        # Address of the packed bytes for the native decode kernel, if it can read this weight's layout.
        self.native_ptr = _native_layout_ptr(self.tensor, dense) if _native_kernel() is not None else None
        self.handle = next(_HANDLES)
        _PACKED_BY_HANDLE[self.handle] = weakref.ref(self, lambda _, h=self.handle: _PACKED_BY_HANDLE.pop(h, None))

    def dense(self) -> torch.Tensor:
        return self.tensor.to_dense()

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` over the last dimension of ``x`` (inference only: no autograd)."""
        if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
            raise FastPathError(
                "This model was optimised for CPU inference (olmo_hf.fast); its packed linear layers cannot be "
                "trained or differentiated. Call olmo_hf.fast.undo(model) first, or run under torch.no_grad()."
            )
        if torch.compiler.is_compiling():
            out = torch.ops.olmo_hf.packed_matmul(x, self.handle, self.out_features)
            return out if bias is None else out + bias
        return self.eager_matmul(x, bias)

    def eager_matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.native_ptr is not None and x.dtype == torch.bfloat16 and x.numel() <= _NATIVE_MAX_ROWS * x.shape[-1]:
            out = _native_matmul(x, self.native_ptr, self.out_features, self.in_features)
            return out if bias is None else out + bias
        return mkldnn_linear(x, self.tensor, bias)

    # copy.deepcopy / pickle (torch.save of a whole model): carry the dense weight, repack on the other side
    def __getstate__(self):
        return {"dense": self.dense()}

    def __setstate__(self, state):
        self.__init__(state["dense"])


class PackedLinear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear`` whose weight is oneDNN-prepacked.

    When ``rows`` is given, the module is a VIEW on rows ``rows[0]:rows[1]`` of a fused packed matrix (q/k/v,
    gate/up): calling it runs the whole fused product and slices, which only code outside the fast path does (the
    fast attention and MLP call the fused matrix once). ``state_dict()`` writes ``weight`` (dense, standard layout)
    and ``bias``; the original ``nn.Linear`` is kept, emptied, so that :func:`undo` can put it back with its very
    Parameter objects. Reading ``.weight`` materialises a dense copy each time (correct, not free).
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
        """A dense COPY of the weight (standard ``(out_features, in_features)`` layout); not a Parameter."""
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
                    self._packed = _Packed(value.to(self._packed.dtype))
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
            f"dtype={self._packed.dtype}, oneDNN-prepacked{rows}"
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

    oneDNN's reorder runs on one core, so groups are packed by ``workers`` threads at once (the ops release the
    GIL); at most ``workers`` groups are in flight, which bounds the transient memory. Memory: each dense source
    is detached from its Parameter before the copy and its mmap pages are released right after, so the model
    never exists twice.

    ``state`` is the record that undo() reads (``olmo_hf.fast._State``): each swapped-out nn.Linear goes to
    ``state.replaced``, the bytes of released pages are added to ``state.released_bytes``."""

    def __init__(self, state, pages: _FileMappings, workers: int) -> None:
        self.state, self.pages, self.workers = state, pages, max(1, workers)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="olmo_hf_pack") if self.workers > 1 else None
        self.pending: deque = deque()
        self.local = threading.local()

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
            self.local = None
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
        released = 0
        with torch.no_grad():
            if len(datas) == 1:
                packed = _Packed(datas[0].to(dtype))
            else:
                rows_total, cols = sum(d.shape[0] for d in datas), datas[0].shape[1]
                # One scratch buffer per worker for every fused group: fresh memory costs a page fault per 4 KiB
                # on first touch, which makes a new temporary per layer slower than the copy itself.
                scratch = getattr(self.local, "scratch", None)
                if scratch is None or scratch.dtype != dtype or scratch.numel() < rows_total * cols:
                    scratch = self.local.scratch = None
                    scratch = self.local.scratch = torch.empty(rows_total * cols, dtype=dtype)
                dense = scratch[: rows_total * cols].view(rows_total, cols)
                torch.cat([d.to(dtype) for d in datas], dim=0, out=dense)
                sizes = [d.shape[0] for d in datas]
                for i in range(len(datas)):
                    released += self.pages.release(datas[i])
                    datas[i] = None
                try:
                    packed = _Packed(dense)
                except BaseException as e:  # the sources are gone: hand back copies of their rows
                    e.olmo_hf_dense_sources = [rows.clone() for rows in dense.split(sizes)]
                    raise
                del dense
            for i, data in enumerate(datas):
                if data is not None:
                    released += self.pages.release(data)
                    datas[i] = None
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
