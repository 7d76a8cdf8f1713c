# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Turning ``olmo-hf run``'s model flags into a loaded model and tokenizer.

- which checkpoint: ``--model`` (a directory or a Hub id), else the embedded demo model in ``olmo_hf/demo/``;
- where: ``--device`` (4.x meaning: -1 = CPU, N = CUDA GPU N; also ``cpu``, ``cuda:1``, ``mps``, ``auto``);
- in which precision: ``--dtype`` (``auto`` = bf16 where the device supports it, else fp32; fp16 on an OLMo 2
  model works but warns, because OLMo 2 overflows in fp16: allenai/olmo-cookbook #60);
- quantized or not: ``--quantize NAME`` through ``olmo_hf.quantization.quantization_config`` when installed;
- the CPU fast path or not: ``--fast/--no-fast`` (:func:`resolve_fast`; default: on for an unquantized olmo_hf
  model on the CPU), applied by :func:`load_model_and_tokenizer` right after loading.

Every loading failure the user can fix (no such directory, a Hub id that is neither cached nor downloadable,
a bad revision, an unknown attention implementation) becomes a one-line :class:`CliError` naming the flag,
the model and the fix.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..modeling import MismatchedWeightsError
from .errors import CliError, warn
from .tasks import Task

__all__ = [
    "DEMO_MODEL_DIR",
    "LoadRequest",
    "resolve_device",
    "resolve_dtype",
    "resolve_quantization",
    "resolve_fast",
    "load_config",
    "load_model_and_tokenizer",
]

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo"

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
DTYPE_CHOICES = ("auto", *_DTYPES)


@dataclass(frozen=True)
class LoadRequest:
    """What to load, as given on the command line (``model`` None = the embedded demo)."""

    model: str | None
    config: str | None = None
    tokenizer: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @property
    def model_name(self) -> str:
        return self.model if self.model is not None else str(DEMO_MODEL_DIR)


# ------------------------------------------------------------------------------------------------ device / dtype
def resolve_device(spec: str) -> torch.device:
    """``--device``: -1 -> CPU, N -> CUDA GPU N (as in 4.x), or any torch device string, or ``auto``."""
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if index < -1:
            raise CliError(f"--device {spec}: use -1 for the CPU or a GPU number (0, 1, ...)")
        device = torch.device("cpu") if index == -1 else torch.device("cuda", index)
    else:
        try:
            device = torch.device(text)
        except RuntimeError as e:
            raise CliError(
                f"--device {spec!r} is not a device; use -1 (CPU), 0 (GPU 0), cpu, cuda:0, mps or auto"
            ) from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            found = f"only {count} CUDA GPU(s)" if count else "no CUDA GPU"
            raise CliError(
                f"--device {spec} asks for CUDA GPU {index}, but torch sees {found}; use --device -1 for the CPU"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {spec}: the MPS backend is not available here; use --device -1 for the CPU")
    return device


def _supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Native bf16 matmuls (AVX512-BF16 / AMX); elsewhere bf16 works but is emulated and slower than fp32.
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(check and check()) or bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def resolve_dtype(name: str, device: torch.device, model_type: str | None) -> torch.dtype:
    """``--dtype``: ``auto`` = bf16 where ``device`` supports it, else fp32 (never fp16 implicitly)."""
    if name == "auto":
        return torch.bfloat16 if _supports_bf16(device) else torch.float32
    dtype = _DTYPES[name]
    if dtype == torch.float16 and model_type in ("olmo2", "olmo3"):
        warn("OLMo 2 and 3 overflow in float16 and may print '!!!!' or NaN (allenai/olmo-cookbook #60); "
             "prefer --dtype bf16 or fp32")
    return dtype


def resolve_quantization(name: str | None, device: torch.device) -> Any:
    """``--quantize NAME``: ``olmo_hf.quantization.quantization_config(NAME)`` for ``device``; None without it."""
    if name is None:
        return None
    if importlib.util.find_spec("olmo_hf.quantization") is None:
        raise CliError(
            f"--quantize {name} is not available: this olmo_hf installation has no olmo_hf.quantization module; "
            "drop --quantize (or upgrade olmo_hf)"
        )
    module = importlib.import_module("olmo_hf.quantization")
    build = module.quantization_config
    kwargs = {"device": str(device)} if "device" in inspect.signature(build).parameters else {}
    try:
        return build(name, **kwargs)
    except ImportError as e:
        raise CliError(f"--quantize {name} needs a package that is not installed: {e}") from e
    except (ValueError, KeyError) as e:
        raise CliError(f"--quantize {name}: {e}") from e


def resolve_fast(fast: bool | None, device: torch.device, device_flag: str, quantization_config: Any) -> str:
    """``--fast/--no-fast`` -> ``"on"`` (asked for), ``"auto"`` (the default, where it can apply) or ``"off"``.

    The CPU fast path (:func:`olmo_hf.fast.optimize_for_cpu_inference`) packs plain weights of a model on the CPU,
    so the default leaves it off on other devices and with ``--quantize``; ``--fast`` there is a usage error,
    raised here, before anything is loaded. Whether the model is an olmo_hf OLMo / OLMo 2 model is only known
    after loading (:func:`load_model_and_tokenizer` checks it)."""
    if fast is False:
        return "off"
    if device.type != "cpu":
        if fast:
            raise CliError(f"--fast is a CPU fast path, but --device {device_flag} puts the model on {device}; "
                           "drop --fast, or use --device -1 for the CPU")
        return "off"
    taken = False  # the fast path takes torchao int8 and int4 weight-only models too (fast/quantized.py, fast/int4.py)
    if quantization_config is not None:  # only built when olmo_hf.quantization is installed
        from ..quantization import linear_config  # the projections' config (lm_head has its own)

        quant_type = linear_config(quantization_config)
        taken = type(quant_type).__name__ == "Int8WeightOnlyConfig" or (  # int8 per row; group-wise int8 and int4:
            type(quant_type).__name__ == "IntxWeightOnlyConfig"
            and getattr(quant_type, "weight_dtype", None) in (torch.int4, torch.int8))
    if quantization_config is not None and not taken:
        if fast:
            raise CliError("--fast cannot be combined with --quantize: the CPU fast path packs plain bf16/fp32 "
                           "weights and --quantize int8 / int4 only; drop one of the two flags")
        return "off"
    return "on" if fast else "auto"


# ------------------------------------------------------------------------------------------------ loading
def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a path shape is meant as a directory."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or name.endswith(("/", "\\"))
        or name.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:[\\/]", name))
    )


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _explain(error: BaseException, flag: str, name: str, revision: str | None) -> str:
    """One line saying why ``name`` (given to ``flag``) could not be loaded, and the fix."""
    from huggingface_hub import errors as hub_errors

    chain = list(_error_chain(error))
    kinds = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)

    def has(*types: type) -> bool:
        return any(isinstance(e, types) for e in chain)

    if os.path.isdir(os.path.expanduser(name)):
        if "does not appear to have a file named" in text or has(hub_errors.EntryNotFoundError):
            missing = re.search(r"file named ([\w.\-]+)", text)
            what = missing.group(1) if missing else "the files it needs"
            return (f"{flag} {name} is a directory but not a complete checkpoint: it has no {what}; "
                    "pass the directory that save_pretrained() wrote")
        return f"{flag} {name}: cannot load this checkpoint: {_first_line(error)}"
    if has(hub_errors.GatedRepoError):
        return f"{flag} {name} is a gated Hub repository: request access on its Hub page, then `hf auth login`"
    if has(hub_errors.RevisionNotFoundError):
        return f"--revision {revision} does not exist for {name}; use one of its branches, tags or commits"
    if has(hub_errors.RepositoryNotFoundError):
        return (f"{flag} {name} is neither a local directory nor a model on the Hugging Face Hub; check the "
                "spelling, or log in with `hf auth login` for a private repository")
    if has(hub_errors.HFValidationError):
        return f"{flag} {name} is neither an existing directory nor a valid Hub id (org/name)"
    unreachable = (
        has(hub_errors.OfflineModeIsEnabled) or "LocalEntryNotFoundError" in kinds or "couldn't connect" in text
    )
    if unreachable and _hub_offline():
        return (f"{flag} {name} is not a local directory and is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
                f"forbids downloading it; download it once with network access (`hf download {name}`) or pass a "
                "local checkpoint directory")
    if unreachable:
        return (f"{flag} {name} is neither a local directory nor cached, and the Hugging Face Hub could not be "
                "reached to download it; check the network connection, or pass a local checkpoint directory")
    return f"{flag} {name}: cannot load it: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _loading(flag: str, name: str, revision: str | None) -> Iterator[None]:
    """Translate a failure to load ``name`` (given to ``flag``) into a one-line CliError."""
    from safetensors import SafetensorError

    try:
        yield
    except CliError:
        raise
    except SafetensorError as e:  # a Hub-cached file (local directories are checked by _check_intact first)
        raise CliError(f"{flag} {name}: a .safetensors weights file is truncated or corrupt ({_first_line(e)}); "
                       "download the checkpoint again") from e
    except (OSError, ValueError, MismatchedWeightsError) as e:
        raise CliError(_explain(e, flag, name, revision)) from e


def _check_intact(flag: str, directory: str) -> None:
    """Every JSON file of a checkpoint directory must parse and every .safetensors header must be complete, so
    that a truncated or corrupt file is named before Transformers fails on it (or, for generation_config.json,
    silently ignores it)."""
    import json

    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(directory).iterdir()):
        try:
            if path.suffix == ".json" and path.is_file():
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors" and path.is_file():
                with safe_open(str(path), framework="pt"):
                    pass
        except (ValueError, SafetensorError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CliError(f"{flag} {directory}: {path.name} is truncated or corrupt ({_first_line(e)}); "
                           "download or save the checkpoint again") from e


def _check_exists(flag: str, name: str, required_file: str | None = None) -> None:
    """A path-shaped ``name`` must exist; a local directory must hold ``required_file`` (e.g. config.json)."""
    path = os.path.expanduser(name)
    if _looks_like_path(name) and not os.path.exists(path):
        raise CliError(
            f"{flag} {name} not found: there is no such directory; "
            "pass an existing checkpoint directory or a Hub id such as allenai/OLMo-2-0425-1B"
        )
    if required_file and os.path.isdir(path) and not os.path.isfile(os.path.join(path, required_file)):
        raise CliError(
            f"{flag} {name} is a directory but not a checkpoint: it has no {required_file}; "
            "pass the directory that save_pretrained() wrote"
        )
    if os.path.isdir(path):
        _check_intact(flag, name)


def load_config(request: LoadRequest) -> Any:
    """The model's config (from ``--config`` when given). Cheap, so it runs first and catches a bad --model early."""
    from transformers import AutoConfig

    if request.model is None and not (DEMO_MODEL_DIR / "config.json").is_file():
        raise CliError(f"the embedded demo model is missing from this installation ({DEMO_MODEL_DIR}); pass --model")
    flag, name = ("--config", request.config) if request.config else ("--model", request.model_name)
    _check_exists(flag, name, "config.json")
    if request.config is not None:
        _check_exists("--model", request.model_name)
    with _loading(flag, name, request.revision):
        return AutoConfig.from_pretrained(
            os.path.expanduser(name), revision=request.revision, trust_remote_code=request.trust_remote_code
        )


def load_model_and_tokenizer(
    request: LoadRequest,
    config: Any,
    task: Task,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
    fast: str = "off",
    debug: bool = False,
    verbose: bool = False,
) -> tuple[Any, Any]:
    """Load the model for ``task`` on ``device`` in ``dtype``, and its tokenizer (``--tokenizer`` or the model's).

    ``fast`` (from :func:`resolve_fast`): ``"on"`` / ``"auto"`` apply the CPU fast path right after loading;
    where it cannot apply, ``"on"`` is a :class:`CliError` and ``"auto"`` keeps the plain model (a note with
    ``debug``). ``verbose``: print :func:`olmo_hf.fast.status` (what the fast path runs, and why) on stderr."""
    import transformers

    auto_class = getattr(transformers, task.auto_class)
    name = os.path.expanduser(request.model_name)
    kwargs: dict[str, Any] = {
        "config": config,
        "revision": request.revision,
        "trust_remote_code": request.trust_remote_code,
        "dtype": dtype,
        "device_map": str(device),
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config

    with _loading("--model", request.model_name, request.revision):
        try:
            model = auto_class.from_pretrained(name, **kwargs)
        except ValueError as e:
            if attn_implementation is not None and "attn" in str(e).lower():
                raise CliError(f"--attn-implementation {attn_implementation}: {_first_line(e)}") from e
            raise
        except ImportError as e:  # e.g. flash_attention_2 without the flash-attn package
            raise CliError(f"cannot load {request.model_name}: {_first_line(e)}") from e
    model.eval()
    if quantization_config is not None and device.type == "cpu":
        from olmo_hf.quantization import use_cpu_int8_kernel

        use_cpu_int8_kernel(model)  # torchao int8 weight-only: PyTorch's fused CPU kernel instead of dequantising
    if fast != "off":
        _apply_fast_path(model, fast, request.model_name, debug)
    if verbose:
        from olmo_hf import fast as fast_path

        print(fast_path.status(model) if fast != "off" else "olmo_hf.fast: CPU fast path off for this run "
              "(--no-fast, not on the CPU, or quantized)", file=sys.stderr, flush=True)

    tok_flag, tok_name = ("--tokenizer", request.tokenizer) if request.tokenizer else ("--model", request.model_name)
    _check_exists(tok_flag, tok_name)
    with _loading(tok_flag, tok_name, request.revision):
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            os.path.expanduser(tok_name),
            revision=request.revision if request.tokenizer is None else None,
            trust_remote_code=request.trust_remote_code,
        )
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ CPU fast path
def _note(debug: bool, message: str) -> None:
    """A diagnostic line on stderr, with ``--debug`` only."""
    if debug:
        print(f"olmo-hf: {message}", file=sys.stderr, flush=True)


def _apply_fast_path(model: Any, mode: str, model_name: str, debug: bool) -> None:
    """Apply :func:`olmo_hf.fast.optimize_for_cpu_inference` to ``model`` (``mode`` ``"on"`` or ``"auto"``).

    It is all or nothing (a failure rolls the model back), so in ``"auto"`` mode a failure just leaves the plain
    model running; in ``"on"`` mode every failure is a :class:`CliError`."""
    from olmo_hf.modeling import _OlmoFamilyPreTrainedModel

    if not isinstance(model, _OlmoFamilyPreTrainedModel):
        if mode == "on":
            raise CliError(f"--fast needs an olmo_hf OLMo, OLMo 2 or OLMo 3 model, but {model_name} loaded as "
                           f"{type(model).__name__}; drop --fast")
        _note(debug, f"CPU fast path not applied: {type(model).__name__} is not an olmo_hf OLMo model")
        return

    from olmo_hf import fast as fast_path  # imported here: it is not needed to start the CLI

    start = time.perf_counter()
    try:
        fast_path.optimize_for_cpu_inference(model)
    except Exception as e:  # noqa: BLE001 - auto mode must never make a run fail that works without it
        if mode == "on":
            raise CliError(f"--fast: the CPU fast path cannot be applied to {model_name}: "
                           f"{type(e).__name__}: {_first_line(e)}; drop --fast") from e
        _note(debug, f"CPU fast path not applied ({type(e).__name__}: {_first_line(e)}); running the plain model")
        if debug:
            import traceback

            traceback.print_exception(e, file=sys.stderr)
        return
    _note(debug, f"CPU fast path applied in {time.perf_counter() - start:.2f} s (--no-fast skips it)")
