# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Every difference between the Transformers releases olmo_hf supports, and every private API of Transformers,
torch and bitsandbytes that olmo_hf touches, in one place.

Each entry is decided by a feature check on the running libraries (does this function take that argument, does
this class have that field), never by comparing version strings; the version number is used only to tell a
release we have tested from one we have not (``olmo_hf.release_guard``). docs/compat.md lists the tested range.

Release differences handled here:

- **The cache argument.** Up to 5.23 ``generate()`` hands the cache to ``forward`` as ``past_key_values=`` and model
  outputs carry it in ``past_key_values``; from 5.24 both are called ``cache`` (the old name is deprecated, due for
  removal in 5.40). Our forwards are written with a ``cache`` parameter and decorated with :func:`cache_argument`,
  which exposes it under the running release's name and accepts the other one too.
- **Class attributes.** Up to 5.23 the built-in OLMo classes declare ``_skip_keys_device_placement`` and
  ``keys_to_ignore_at_inference`` as ``["past_key_values"]``; from 5.24 they declare nothing and inherit
  ``["cache"]`` (:data:`CACHE_KEYS_TO_DECLARE`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils.deprecation import deprecate_kwarg

__all__ = [
    "CACHE_ARG",
    "CACHE_FIELD",
    "CACHE_KEYS_TO_DECLARE",
    "cache_argument",
    "cache_kwargs",
    "mask_cache_kwargs",
    "output_cache",
]

OLD_CACHE_NAME, NEW_CACHE_NAME = "past_key_values", "cache"
# When Transformers announced it would stop accepting the old name (the built-ins' @deprecate_kwarg, 5.24).
CACHE_NAME_REMOVAL = "5.40.0"

# ---------------------------------------------------------------------------------------------- the cache argument


def _parameter_names(fn: Callable) -> set[str]:
    return set(inspect.signature(fn).parameters)


# The name the running release's mask helpers, generate() and layers use for the cache (5.24 renamed it).
CACHE_ARG: str = NEW_CACHE_NAME if NEW_CACHE_NAME in _parameter_names(create_causal_mask) else OLD_CACHE_NAME
# The field of model outputs that carries it (5.24 renamed it too; the old name is a deprecated alias there).
CACHE_FIELD: str = (
    NEW_CACHE_NAME if NEW_CACHE_NAME in BaseModelOutputWithPast.__dataclass_fields__ else OLD_CACHE_NAME
)
# What the built-in classes declare as `_skip_keys_device_placement` / `keys_to_ignore_at_inference`: the old
# cache name up to 5.23, nothing from 5.24 on (PreTrainedModel's default is then ["cache"]).
CACHE_KEYS_TO_DECLARE: list[str] | None = (
    [OLD_CACHE_NAME] if getattr(PreTrainedModel, "_skip_keys_device_placement", None) is None else None
)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the running release's argument name, for calling layers: Transformers'
    ``GradientCheckpointingLayer`` drops the cache under checkpointing only when it finds it under that name."""
    return {CACHE_ARG: cache}


def mask_cache_kwargs(cache: Any) -> dict[str, Any]:
    """The cache as the running release's ``create_causal_mask`` takes it."""
    return {CACHE_ARG: cache}


def output_cache(outputs: Any) -> Any:
    """The cache a model output carries, under whichever field name the running release uses."""
    return getattr(outputs, CACHE_FIELD)


def cache_argument(forward: Callable) -> Callable:
    """Decorate a ``forward`` written with a ``cache`` parameter so that it follows the running release.

    From 5.24 this is exactly what the built-in classes do (``@deprecate_kwarg("past_key_values", "5.40.0",
    new_name="cache")``): the signature says ``cache`` and ``past_key_values=`` still works, with Transformers'
    deprecation warning. Before 5.24 the signature says ``past_key_values`` (what those releases' ``generate()``
    and tests look for) and ``cache=`` is accepted too.
    """
    if "cache" not in _parameter_names(forward):
        raise TypeError(f"{forward.__qualname__} has no `cache` parameter to expose.")
    if CACHE_ARG == NEW_CACHE_NAME:
        return deprecate_kwarg(OLD_CACHE_NAME, CACHE_NAME_REMOVAL, new_name=NEW_CACHE_NAME)(forward)

    signature = inspect.signature(forward)
    parameters = [
        p.replace(name=OLD_CACHE_NAME) if p.name == NEW_CACHE_NAME else p for p in signature.parameters.values()
    ]

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        if OLD_CACHE_NAME in kwargs:
            kwargs[NEW_CACHE_NAME] = kwargs.pop(OLD_CACHE_NAME)
        return forward(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


# ------------------------------------------------------------------------------------- Transformers' private APIs


def attn_implementation(config) -> str | None:
    """The attention backend a config selects (``PreTrainedConfig._attn_implementation``: "eager", "sdpa", ...),
    the key of Transformers' attention interface, as its built-in models read it."""
    return config._attn_implementation


def auto_config_extra_content() -> dict:
    """The registry behind ``AutoConfig.register`` (``CONFIG_MAPPING._extra_content``): the only way to map a stale
    model type (an alias) to a class whose own ``model_type`` differs, and to undo a registration."""
    extra = getattr(CONFIG_MAPPING, "_extra_content", None)
    if not isinstance(extra, dict):
        raise RuntimeError("This Transformers release has no AutoConfig registry that olmo_hf knows how to edit.")
    return extra


def auto_model_extra_content(auto_class: type) -> dict:
    """The registry behind ``AutoModel*.register`` (``_model_mapping._extra_content``), to undo a registration."""
    extra = getattr(getattr(auto_class, "_model_mapping", None), "_extra_content", None)
    if not isinstance(extra, dict):
        raise RuntimeError(f"{auto_class.__name__} has no registry that olmo_hf knows how to edit.")
    return extra


def cached_file_or_none(path_or_repo_id: str, filename: str, **hub_kwargs) -> str | None:
    """``transformers.utils.cached_file`` returning None (instead of raising) when the file or the Hub is absent;
    the two ``_raise_exceptions_*`` switches are private arguments of that function."""
    from transformers.utils import cached_file

    return cached_file(
        path_or_repo_id,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


def no_init_weights():
    """Transformers' context manager that skips random initialisation (weights come from a checkpoint next)."""
    from transformers.initialization import no_init_weights as _no_init_weights

    return _no_init_weights()


def transformers_cli_app():
    """The Typer app behind the ``transformers`` command (``transformers serve`` / ``chat``)."""
    from transformers.cli.transformers import app

    return app


# -------------------------------------------------------------------------------------------- torch private APIs


def storage_use_count(t: torch.Tensor) -> int:
    """How many tensors share ``t``'s storage (``torch._C._storage_Use_Count``)."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def tensor_version(t: torch.Tensor) -> int:
    """The in-place modification counter of a tensor (``Tensor._version``), to invalidate derived copies."""
    return t._version


def non_persistent_buffer_names(module: torch.nn.Module) -> set[str]:
    """Names of ``module``'s own buffers that ``state_dict()`` leaves out (``Module._non_persistent_buffers_set``)."""
    return set(getattr(module, "_non_persistent_buffers_set", ()))


def load_state_dict_pre_hooks(module: torch.nn.Module) -> list[Callable]:
    """The hooks ``Module._load_from_state_dict`` runs first on ``module`` (``Module._load_state_dict_pre_hooks``),
    each called as ``hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)``."""
    return list(getattr(module, "_load_state_dict_pre_hooks", {}).values())


def has_forward_hooks(modules) -> bool:
    """Whether a forward (pre-)hook would run around any of ``modules`` (their own ``_forward_hooks`` /
    ``_forward_pre_hooks``, or torch's global module hooks). True where torch keeps them elsewhere (unknown: the
    caller must then call the modules)."""
    from torch.nn.modules import module as torch_module

    global_hooks = (getattr(torch_module, "_global_forward_hooks", None),
                    getattr(torch_module, "_global_forward_pre_hooks", None))
    if any(h is None or h for h in global_hooks):
        return True
    return any(getattr(m, "_forward_hooks", True) or getattr(m, "_forward_pre_hooks", True) for m in modules)


def has_int8_weight_only_mm() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def int8_weight_only_mm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(rows, in) activations x (out, in) int8 weight with per-row ``scales`` -> (rows, out), in x's dtype."""
    return torch._weight_int8pack_mm(x, qweight, scales)


# ------------------------------------------------------------------------------------ bitsandbytes private APIs


def bnb_unpack_cpu_weight(packed: torch.Tensor, quant_state) -> tuple[torch.Tensor, Any]:
    """Undo bitsandbytes' CPU repacking of a 4-bit weight (done at its first CPU forward): the packed data back to
    the layout ``state_dict()`` must save. Raises ``RuntimeError`` on bitsandbytes releases without it."""
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError as e:
        raise RuntimeError(
            "This bitsandbytes release repacks 4-bit weights on CPU in a way olmo_hf cannot undo; save the model "
            "before running it on CPU, or install the bitsandbytes release listed in docs/compat.md."
        ) from e
    return _convert_weight_packed_for_cpu_inverse(packed, quant_state)


def serve_model_loading_class() -> tuple[Any, str]:
    """(module, class name) of what loads models in ``transformers serve``: both have ``load_model_and_processor``.

    Up to 5.23 that is ``ModelManager``, in the server's own process. From 5.25 it is ``ModelLoader``, which the
    server pickles into a *spawned* model process: a fresh interpreter that has not run olmo_hf's set-up, so a
    replacement class must re-apply it there (``olmo_hf.cli.serve_loader``). ``Serve`` imports the class from this
    module at call time, so replacing the module attribute is enough.
    """
    from transformers.cli.serving import model_manager

    name = "ModelLoader" if hasattr(model_manager, "ModelLoader") else "ModelManager"
    if not hasattr(getattr(model_manager, name, None), "load_model_and_processor"):
        raise RuntimeError("This Transformers release loads served models in a way olmo_hf does not know.")
    return model_manager, name


def serve_app_factory() -> tuple[Any, str]:
    """(module, function name) of what builds ``transformers serve``'s FastAPI app: ``build_server(...) -> app``
    in ``transformers.cli.serving.server`` (5.21 to 5.25). ``Serve.run`` imports it at call time, so replacing the
    module attribute wraps every app it builds."""
    from transformers.cli.serving import server

    if not callable(getattr(server, "build_server", None)):
        raise RuntimeError("This Transformers release builds its serve app in a way olmo_hf does not know.")
    return server, "build_server"
