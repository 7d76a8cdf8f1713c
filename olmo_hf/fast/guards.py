# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""All-or-nothing refusals of an optimised model: what its packed weights cannot follow is refused as a whole,
BEFORE any tensor, flag or module changes.

``nn.Module`` works child by child: ``.to()`` converts the embedding before it reaches the first packed layer, and
``load_state_dict`` copies every tensor it can before it raises. :func:`install_guards` therefore puts three checks
on every module of the optimised model (instance attributes, removed by ``undo()`` like the other patches):

- ``_apply`` (what ``.to()``, ``.half()``, ``.float()``, ``.cuda()``, ``.to_empty()`` ... call): the conversion is
  first tried on a one-element probe of each kind of weight the module holds (dtype, device, number of dims; a
  packed weight counts as a CPU matrix of its dtype). Unless it returns every probe itself (a no-op for that
  weight: ``.to`` the same dtype, ``.cpu()`` on CPU), it is refused. Buffers are not probed: a conversion that keeps
  every parameter and packed weight converts them as it would in a plain model (``.to(torch.bfloat16)`` of a bf16
  model casts the float32 RoPE buffers, as there).
- ``load_state_dict``: the whole dict is checked first (fused-projection keys, shapes, non-tensors, meta tensors,
  and under ``strict`` missing and unexpected keys, by the rules ``Module.load_state_dict`` applies); only a dict
  with no problem is handed to ``Module.load_state_dict``. ``assign=True`` is refused (it would replace the
  Parameter objects that ``undo()`` restores).
- ``requires_grad_(True)`` on a module that holds packed layers (their products are inference-only).

``model.train()`` is let through: it changes no tensor, and a forward that would need gradients through a packed
layer is refused where the product is computed (``_Packed.matmul``), before anything changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..compat import load_state_dict_pre_hooks, non_persistent_buffer_names
from .packing import FastPathError, PackedLinear

_UNDO = "call olmo_hf.fast.undo(model) first"
_EXTRA_STATE = "_extra_state"  # the key suffix of Module.get_extra_state() (torch.nn.modules.module)
_LISTED = 3  # problems / keys spelled out in one message


def install_guards(model: nn.Module, patch: Callable[[nn.Module, str, Any], None]) -> None:
    """Guard every module of ``model`` (after packing). ``patch(module, name, value)`` sets an instance attribute
    that ``undo()`` removes (``olmo_hf.fast._patch``)."""
    for module in model.modules():
        patch(module, "_apply", functools.partial(_guarded_apply, module))
        patch(module, "load_state_dict", functools.partial(_guarded_load_state_dict, module))
        patch(module, "requires_grad_", functools.partial(_guarded_requires_grad, module))


def _holds_packed(module: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in module.modules())


# ----------------------------------------------------------------------------------------------- conversions
def _weight_kinds(module: nn.Module, recurse: bool) -> set[tuple[torch.dtype, torch.device, int]]:
    """(dtype, device, dims) of every kind of weight a conversion of ``module`` would replace."""
    kinds = set()
    for m in module.modules() if recurse else (module,):
        for p in m.parameters(recurse=False):
            kinds.add((p.dtype, p.device, p.dim()))
        if isinstance(m, PackedLinear):
            kinds.add((m._packed.dtype, torch.device("cpu"), 2))  # packed weights live on the CPU
    return kinds


def _conversion_refusal(module: nn.Module, fn: Callable, recurse: bool) -> FastPathError | None:
    for dtype, device, dims in sorted(_weight_kinds(module, recurse), key=str):
        probe = torch.empty((1,) * dims, dtype=dtype, device=device)
        try:
            with torch.no_grad():
                out = fn(probe)
        except Exception as e:  # e.g. .cuda() without CUDA: the conversion would fail at its first tensor anyway
            error = FastPathError(
                f"Cannot convert a model optimised for CPU inference (olmo_hf.fast) to the requested device or dtype "
                f"({type(e).__name__}: {_first_line(e)}), nothing was changed; {_UNDO}."
            )
            error.__cause__ = e
            return error
        if out is probe:
            continue
        if isinstance(out, torch.Tensor) and (out.dtype, out.device) == (dtype, device):
            target = f"new {device.type}/{dtype} tensors"  # to_empty()
        elif isinstance(out, torch.Tensor):
            target = f"{out.device.type}/{out.dtype}"
        else:
            target = type(out).__name__
        return FastPathError(
            f"Cannot convert a model optimised for CPU inference (olmo_hf.fast) to {target}, nothing was changed; "
            f"{_UNDO}."
        )
    return None


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, without a final full stop (it goes inside one sentence)."""
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else ""


def _guarded_apply(module: nn.Module, fn: Callable, recurse: bool = True) -> nn.Module:
    """``module._apply(fn)`` only if ``fn`` leaves every parameter and packed weight of ``module`` as it is."""
    error = _conversion_refusal(module, fn, recurse)
    if error is not None:
        raise error
    return type(module)._apply(module, fn, recurse)


# ----------------------------------------------------------------------------------------------- gradients
def _guarded_requires_grad(module: nn.Module, requires_grad: bool = True) -> nn.Module:
    if requires_grad and _holds_packed(module):
        raise FastPathError(
            f"Cannot enable gradients on {type(module).__name__}: it holds packed linear layers of a model optimised "
            f"for CPU inference (olmo_hf.fast), which cannot be trained; {_UNDO}."
        )
    return type(module).requires_grad_(module, requires_grad)


# ----------------------------------------------------------------------------------------------- state dicts
def _modules_as_loaded(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(key prefix, module) in the order, and with the repetitions, of ``Module.load_state_dict``."""
    yield prefix, module
    for name, child in module.named_children():
        yield from _modules_as_loaded(child, f"{prefix}{name}.")


def _has_extra_state(module: nn.Module) -> bool:
    return type(module).get_extra_state is not nn.Module.get_extra_state


def _expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...] | None]:
    """{local key: shape} of what ``module`` itself loads (None: any value, e.g. extra state)."""
    if isinstance(module, PackedLinear):
        shapes: dict[str, tuple[int, ...] | None] = {"weight": (module.out_features, module.in_features)}
        if module.bias is not None:
            shapes["bias"] = tuple(module.bias.shape)
        return shapes
    skip = non_persistent_buffer_names(module)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False, remove_duplicate=False)}
    shapes.update(
        (n, tuple(b.shape)) for n, b in module.named_buffers(recurse=False, remove_duplicate=False) if n not in skip
    )
    if _has_extra_state(module):
        shapes[_EXTRA_STATE] = None
    return shapes


def _state_dict_problems(module: nn.Module, state_dict: Mapping, strict: bool, assign: bool) -> list[str]:
    """Everything that would stop ``module.load_state_dict(state_dict, strict)`` (or load only part of it), found
    without copying a tensor. Empty: it loads whole."""
    problems = ["assign=True would replace the Parameter objects that undo() restores"] if assign else []
    state_dict = dict(state_dict)  # pre-hooks may rename keys: they run on this copy, as the real load runs them
    missing: list[str] = []
    unexpected: list[str] = []
    fused: list[str] = []
    for prefix, m in _modules_as_loaded(module):
        if not isinstance(m, PackedLinear):  # PackedLinear._load_from_state_dict runs no pre-hooks
            for hook in load_state_dict_pre_hooks(m):
                hook(state_dict, prefix, {}, strict, missing, unexpected, problems)
        shapes = _expected_shapes(m)
        for name, shape in shapes.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing.append(key)
                continue
            value = state_dict[key]
            if isinstance(m, PackedLinear) and name == "weight" and m._rows is not None:
                fused.append(key)
            elif shape is None:
                continue
            elif not torch.overrides.is_tensor_like(value):
                problems.append(f"{key} is a {type(value).__name__}, not a tensor")
            elif value.is_meta:
                problems.append(f"{key} is a meta tensor (it has no data)")
            else:
                got = tuple(value.shape)
                if got != shape and not (shape == () and len(got) == 1):  # Module.load_state_dict takes x[0] for ()
                    problems.append(f"{key} has shape {got}, the model's is {shape}")
        if strict:
            children = {name for name, _ in m.named_children()}
            for key in state_dict:
                if key.startswith(prefix) and key != prefix + _EXTRA_STATE:
                    head = key[len(prefix) :].split(".", 1)[0]
                    if head not in children and head not in shapes:
                        unexpected.append(key)
    if fused:
        problems.append(f"key(s) of fused projections (q/k/v, gate/up) {_listed(fused)}")
    if missing:
        problems.append(f"missing key(s) {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s) {_listed(unexpected)}")
    return problems


def _listed(items: list[str], sep: str = ", ") -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return sep.join(items[:_LISTED]) + more


def _guarded_load_state_dict(module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True,
                             assign: bool = False):
    """``Module.load_state_dict`` only for a dict that loads whole; otherwise nothing is copied."""
    if isinstance(state_dict, Mapping):  # anything else: Module.load_state_dict raises its TypeError first
        problems = _state_dict_problems(module, state_dict, strict, assign)
        if problems:
            raise FastPathError(
                f"Cannot load this state dict into a model optimised for CPU inference (olmo_hf.fast), nothing was "
                f"loaded ({_listed(problems, '; ')}); {_UNDO}."
            )
    return type(module).load_state_dict(module, state_dict, strict=strict, assign=assign)
