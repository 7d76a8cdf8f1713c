# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Quantized OLMo / OLMo 2: one call for the right Transformers config, safe saving, a CPU int8 kernel.

Our model classes need nothing special: every method below goes through ``from_pretrained(...,
quantization_config=...)`` and replaces (bitsandbytes) or re-types (torchao) the ``nn.Linear`` weights of the
attention and MLP blocks. ``"int8"`` (and ``"int4"`` on CPU) also quantize ``lm_head`` and the input embedding
(``"int8"``: in its own layout; ``"int4"``: int8 per row), as llama.cpp's Q8_0 files do, unless
``quantize_embeddings=False``; the
other methods keep both in full precision. A classifier's ``score`` is never quantized, and the norms are
untouched modules that compute in float32 (see ``olmo_hf.modules``)::

    import torch, olmo_hf
    from olmo_hf.quantization import quantization_config, save_quantized
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        "allenai/OLMo-2-0425-1B", dtype=torch.bfloat16, quantization_config=quantization_config("bnb-4bit")
    )
    save_quantized(model, "olmo2-1b-nf4")  # never writes a checkpoint that differs from `model`

Method names (case-insensitive; ``_`` and ``-`` are interchangeable), for :func:`quantization_config`:

======================  =====================================================================================
``"bnb-4bit"``          bitsandbytes 4-bit, NF4 + double quant, bf16 compute (CPU and CUDA). Aliases
                        ``"bnb-nf4"``, ``"nf4"``, ``"4bit"``; ``"bnb-fp4"`` / ``"fp4"`` select FP4.
``"bnb-8bit"``          bitsandbytes LLM.int8() (CPU and CUDA). Aliases ``"bnb-int8"``, ``"8bit"``, ``"llm-int8"``.
``"int8"``              torchao int8 weight-only in groups of 32 with float16 scales (llama.cpp Q8_0's layout,
                        8.5 bits per weight; CPU and CUDA), ``lm_head`` and the embedding too;
                        ``group_size=None``: one scale per row (alias ``"int8-row"``). Aliases
                        ``"int8_weight_only"``, ``"int8wo"``.
``"int8-dynamic"``      torchao int8 dynamic-activation int8-weight (CPU and CUDA). Aliases
                        ``"int8_dynamic_activation_int8_weight"``, ``"int8dq"``.
``"int4"``              torchao int4 weight-only, per-group. CUDA: ``Int4WeightOnlyConfig`` (group_size 128)
                        in the tinygemm ``"tile_packed_to_4d"`` layout (needs a bf16 model). CPU:
                        ``IntxWeightOnlyConfig(int4, PerGroup(64), ASYMMETRIC)``, the int4 layout that runs on
                        CPU (values stored one per int8 byte: no memory gain over ``"int8"`` until
                        ``olmo_hf.fast.optimize_for_cpu_inference`` repacks them two per byte, 4.375 bits per
                        weight); ``lm_head`` and the embedding int8 per row. Aliases ``"int4_weight_only"``,
                        ``"int4wo"``.
``"none"``              no quantization: returns ``None``. Alias ``"no"``.
======================  =====================================================================================

Which methods can be saved: all of the above (Transformers serializes bitsandbytes and torchao into
safetensors plus ``config.json["quantization_config"]``; a plain ``from_pretrained(dir)`` reloads them).
Methods Transformers cannot serialize (quanto, HQQ, ...) are refused by :func:`save_quantized` with a message.

The one trap, bitsandbytes 0.50 4-bit on a CPU with AVX512-BF16: the first forward repacks every ``Linear4bit``
for the CPU kernel (transposed bf16 absmax), and bitsandbytes' own save path undoes that only approximately
(double quant: ~1 % drift) or not at all (no double quant / FP4: a corrupt checkpoint AND a corrupted model
in memory). :func:`save_quantized` (and :func:`bnb_cpu_layout_state_dict_pre_hook`, for ``state_dict()``)
restore the standard layout exactly first; see :func:`restore_bnb_cpu_layout`. Our ``from_pretrained`` calls
:func:`protect_state_dict` on every quantized model it loads, so ``state_dict()`` / ``save_pretrained`` are exact
too, whichever quantization config (ours or a plain ``BitsAndBytesConfig``) the user passed.
"""

from __future__ import annotations

import copy
import ctypes
import difflib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .compat import bnb_unpack_cpu_weight, has_int8_weight_only_mm, int8_weight_only_mm

__all__ = [
    "METHODS",
    "quantization_config",
    "available_methods",
    "save_quantized",
    "check_serializable",
    "restore_bnb_cpu_layout",
    "bnb_cpu_layout_state_dict_pre_hook",
    "protect_state_dict",
    "use_cpu_int8_kernel",
    "memory_footprint",
    "release_checkpoint_pages",
    "DEFAULT_MODULES_TO_NOT_CONVERT",
    "for_tied_embeddings",
    "linear_config",
    "int8_group_config",
    "INT8_GROUP_SIZE",
]

# Kept in full precision: the sequence-classification head by every method, the LM head by the bitsandbytes
# methods, "int8-dynamic" and CUDA "int4" (Transformers' own default); "int8" and CPU "int4" quantize lm_head to
# int8 as llama.cpp does (see _torchao_config). Matched as module-name suffixes.
DEFAULT_MODULES_TO_NOT_CONVERT = ("lm_head", "score")

_INT4_GROUP_SIZES = (32, 64, 128, 256)  # torchao Int4WeightOnlyConfig's supported group sizes
# "int8": one float16 scale per INT8_GROUP_SIZE consecutive weights of a row (8.5 bits per weight, llama.cpp Q8_0's
# layout), chosen by measured quality: the smallest group whose logits are no further from bf16 than llama.cpp's Q8_0
# on the demo model and on a random OLMo-2-1B-shaped one (groups of 64 were not; docs/quantization.md, "Group-wise
# int8")
INT8_GROUP_SIZE = 32
_INT4_CUDA_LAYOUTS = ("tile_packed_to_4d", "plain", "preshuffled", "plain_int32")
_INT4_CPU_LAYOUTS = ("unpacked_to_int8",)


@dataclass(frozen=True)
class _Method:
    backend: str  # "bitsandbytes" | "torchao" | "none"
    summary: str
    options: tuple[str, ...]  # keyword options accepted by quantization_config
    aliases: dict[str, dict] = field(default_factory=dict)  # alias -> preset options


METHODS: dict[str, _Method] = {
    "bnb-4bit": _Method(
        "bitsandbytes",
        "bitsandbytes 4-bit (NF4 + double quant, bf16 compute by default)",
        ("quant_type", "double_quant", "compute_dtype", "modules_to_not_convert"),
        {"bnb-nf4": {"quant_type": "nf4"}, "nf4": {"quant_type": "nf4"}, "bnb-fp4": {"quant_type": "fp4"},
         "fp4": {"quant_type": "fp4"}, "4bit": {}},
    ),
    "bnb-8bit": _Method(
        "bitsandbytes",
        "bitsandbytes LLM.int8() (8-bit weights, fp16 outlier decomposition)",
        ("threshold", "modules_to_not_convert"),
        {"bnb-int8": {}, "8bit": {}, "llm-int8": {}},
    ),
    "int8": _Method(
        "torchao",
        "torchao int8 weight-only (groups of 32 with float16 scales; group_size=None: one float32 scale per row)",
        ("group_size", "modules_to_not_convert", "quantize_embeddings"),
        {"int8-weight-only": {}, "int8wo": {}, "int8-row": {"group_size": None}},
    ),
    "int8-dynamic": _Method(
        "torchao",
        "torchao int8 dynamic-activation (per-token) int8-weight (per-channel)",
        ("modules_to_not_convert",),
        {"int8-dynamic-activation-int8-weight": {}, "int8dq": {}},
    ),
    "int4": _Method(
        "torchao",
        "torchao int4 weight-only, per-group (CUDA: tinygemm layout; CPU: IntxWeightOnlyConfig)",
        ("group_size", "packing_format", "symmetric", "modules_to_not_convert", "quantize_embeddings"),
        {"int4-weight-only": {}, "int4wo": {}},
    ),
    "none": _Method("none", "no quantization (returns None)", (), {"no": {}}),
}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _resolve(name: str) -> tuple[str, dict]:
    if not isinstance(name, str):
        raise TypeError(f"The quantization method must be a name such as 'bnb-4bit' or 'int8', got {name!r}.")
    key = _normalize(name)
    if key in METHODS:
        return key, {}
    for method, spec in METHODS.items():
        if key in spec.aliases:
            return method, dict(spec.aliases[key])
    known = [*METHODS, *(a for spec in METHODS.values() for a in spec.aliases)]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown quantization method {name!r}.{hint} Known methods: {', '.join(m for m in METHODS)} "
        f"(also accepted: {', '.join(a for spec in METHODS.values() for a in spec.aliases)})."
    )


def _device_type(device: str | torch.device | None) -> str:
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError):
        device_type = str(device)
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"olmo_hf.quantization supports device 'cpu' or 'cuda', got {str(device)!r}.")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but torch.cuda.is_available() is False; use device='cpu' "
            "(every method has a CPU variant; 'int4' then uses torchao's IntxWeightOnlyConfig)."
        )
    return device_type


def _require(package: str, method: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ImportError(
            f"Quantization method {method!r} needs `{package}`: pip install 'olmo_hf[quantization]' "
            f"(or pip install {package})."
        )


def _dtype(value: str | torch.dtype, option: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        dtype = value
    else:
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
                 "fp16": torch.float16, "float16": torch.float16}.get(str(value).lower().removeprefix("torch."))
    if dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise ValueError(f"`{option}` must be one of bfloat16, float32, float16; got {value!r}.")
    return dtype


def available_methods(device: str | torch.device | None = None) -> list[str]:
    """Canonical method names usable on ``device`` (default: cuda if available, else cpu) with the installed
    packages: a method is listed when its backend (bitsandbytes / torchao) is importable."""
    _device_type(device)
    names = []
    for name, spec in METHODS.items():
        if spec.backend == "none" or importlib.util.find_spec(spec.backend) is not None:
            names.append(name)
    return names


def quantization_config(name: str, *, device: str | torch.device | None = None, **options):
    """The Transformers quantization config for method ``name`` on the device the model will run on.

    Pass the result as ``from_pretrained(..., quantization_config=...)``; load with ``dtype=torch.bfloat16``
    (required for int4 on CUDA, recommended everywhere).

    Args:
        name: a method name or alias (case-insensitive, ``-`` == ``_``):

            - ``"bnb-4bit"`` (aliases ``"bnb-nf4"``, ``"nf4"``, ``"4bit"``; ``"bnb-fp4"``/``"fp4"``
              select FP4): ``BitsAndBytesConfig(load_in_4bit=True)``. Options ``quant_type`` ("nf4" | "fp4",
              default "nf4"), ``double_quant`` (default True), ``compute_dtype`` (default bfloat16).
            - ``"bnb-8bit"`` (aliases ``"bnb-int8"``, ``"8bit"``, ``"llm-int8"``): ``BitsAndBytesConfig(
              load_in_8bit=True)``. Option ``threshold`` (LLM.int8 outlier threshold, default 6.0).
            - ``"int8"`` (aliases ``"int8_weight_only"``, ``"int8wo"``): ``TorchAoConfig(FqnToConfig(...))``
              applying :func:`int8_group_config` (``IntxWeightOnlyConfig`` int8, ``PerGroup(32)``, symmetric
              without clipping, float16 scales) to the projections, ``lm_head`` and the input embedding. Options
              ``group_size`` (default 32, a multiple of 32; None: ``Int8WeightOnlyConfig(PerRow())`` for all three,
              one scale per output channel / per token), ``quantize_embeddings`` (default True; False keeps
              ``lm_head`` and the embedding in the load dtype; ``modules_to_not_convert=["lm_head"]`` keeps only the
              head). Groups of 32 were chosen by measured quality (docs/quantization.md, "Group-wise int8").
            - ``"int8-dynamic"`` (aliases ``"int8_dynamic_activation_int8_weight"``, ``"int8dq"``):
              ``TorchAoConfig(Int8DynamicActivationInt8WeightConfig())``.
            - ``"int4"`` (aliases ``"int4_weight_only"``, ``"int4wo"``): option ``group_size`` (32, 64, 128 or
              256; default 128 on CUDA, 64 on CPU). On CUDA ``Int4WeightOnlyConfig`` with ``packing_format``
              "tile_packed_to_4d" (default; torch's tinygemm kernel), "plain" (needs the mslk package),
              "preshuffled" (needs fbgemm-gpu-genai) or "plain_int32". On CPU ``IntxWeightOnlyConfig(
              weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=ASYMMETRIC)``,
              packing_format "unpacked_to_int8" (the only CPU layout), for the projections; option ``symmetric``
              (default False: asymmetric, a zero point per group). Group 64 asymmetric was chosen by measured
              quality: on the demo model and a random 1B-shaped one it is closer to bf16 than group 32 symmetric
              (llama.cpp Q4_0's grid) at fewer bits in the fast path's layout (4.375 against 4.5;
              docs/quantization.md). On CPU ``lm_head`` / the embedding as for ``"int8"`` (option
              ``quantize_embeddings``).
            - ``"none"`` (alias ``"no"``): returns ``None``.
        device: where the model will run: "cpu", "cuda" (or "cuda:N"), or None/"auto" for cuda when
            ``torch.cuda.is_available()`` else cpu.
        modules_to_not_convert: extra module names (suffixes or regexes) to keep unquantized, on top of
            ``DEFAULT_MODULES_TO_NOT_CONVERT`` (``lm_head``, ``score``; ``lm_head`` is quantized by "int8" and
            CPU "int4" unless named here). Accepted by every method.

    A model whose ``lm_head`` is tied to its embedding keeps both unquantized (:func:`for_tied_embeddings`).

    Raises:
        ValueError: unknown name, unknown or invalid option, or a layout that has no kernel on ``device``
            (the message names a working alternative).
        ImportError: the backend package (bitsandbytes / torchao) is not installed.
    """
    method, preset = _resolve(name)
    spec = METHODS[method]
    device_type = _device_type(device)
    unknown = set(options) - set(spec.options)
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for quantization method {method!r}; accepted: {accepted}."
        )
    for key, value in preset.items():
        if key in options and options[key] != value:
            raise ValueError(f"{name!r} fixes {key}={value!r}; use {method!r} with {key}={options[key]!r} instead.")
    options = {**preset, **options}
    if spec.backend == "none":
        return None
    _require(spec.backend, method)
    extra = options.pop("modules_to_not_convert", None) or []
    extra = [extra] if isinstance(extra, str) else list(extra)
    skip = list(dict.fromkeys([*DEFAULT_MODULES_TO_NOT_CONVERT, *extra]))

    if spec.backend == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        if method == "bnb-8bit":
            return BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=float(options.get("threshold", 6.0)), llm_int8_skip_modules=skip
            )
        quant_type = str(options.get("quant_type", "nf4")).lower()
        if quant_type not in ("nf4", "fp4"):
            raise ValueError(f"`quant_type` for 'bnb-4bit' must be 'nf4' or 'fp4', got {quant_type!r}.")
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=bool(options.get("double_quant", True)),
            bnb_4bit_compute_dtype=_dtype(options.get("compute_dtype", torch.bfloat16), "compute_dtype"),
            llm_int8_skip_modules=skip,
        )

    import torchao.quantization as ao
    from torchao.quantization.granularity import PerGroup, PerRow
    from transformers import TorchAoConfig

    quantize_embeddings = options.pop("quantize_embeddings", True)
    if not isinstance(quantize_embeddings, bool):
        raise ValueError(f"`quantize_embeddings` must be True or False, got {quantize_embeddings!r}.")
    if method == "int8":
        group_size = options.get("group_size", INT8_GROUP_SIZE)
        if group_size is None:  # one scale per row (the layout before group-wise scales)
            return _torchao_config(ao.Int8WeightOnlyConfig(granularity=PerRow()), extra, quantize_embeddings)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 32 or group_size % 32:
            raise ValueError(f"`group_size` for 'int8' must be a positive multiple of 32 (default {INT8_GROUP_SIZE}) "
                             f"or None for one scale per row, got {group_size!r}.")
        grouped = int8_group_config(group_size)
        return _torchao_config(grouped, extra, quantize_embeddings, embedding_config=grouped)
    if method == "int8-dynamic":
        return TorchAoConfig(ao.Int8DynamicActivationInt8WeightConfig(), modules_to_not_convert=skip)

    # int4
    group_size = int(options.get("group_size", 64 if device_type == "cpu" else 128))
    if group_size not in _INT4_GROUP_SIZES:
        raise ValueError(f"`group_size` for 'int4' must be one of {_INT4_GROUP_SIZES}, got {group_size}.")
    layout = str(options.get("packing_format", "tile_packed_to_4d" if device_type == "cuda" else "unpacked_to_int8"))
    layout = layout.lower()
    if device_type == "cpu":
        if layout in _INT4_CUDA_LAYOUTS:
            raise ValueError(
                f"int4 packing_format={layout!r} is a CUDA layout with no CPU kernel in torchao "
                f"{_version('torchao')}. On CPU use quantization_config('int4', device='cpu') (torchao "
                f"IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup({group_size})), layout "
                "'unpacked_to_int8'), or 'int8' / 'bnb-4bit' for a smaller or faster model."
            )
        if layout not in _INT4_CPU_LAYOUTS:
            raise ValueError(f"int4 packing_format on CPU must be one of {_INT4_CPU_LAYOUTS}, got {layout!r}.")
        mapping = ao.MappingType.SYMMETRIC if options.get("symmetric", False) else ao.MappingType.ASYMMETRIC
        return _torchao_config(
            ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=mapping),
            extra, quantize_embeddings,
        )
    if layout not in _INT4_CUDA_LAYOUTS:
        raise ValueError(
            f"int4 packing_format={layout!r} is not a CUDA layout; use one of {_INT4_CUDA_LAYOUTS} "
            "(default 'tile_packed_to_4d'), or device='cpu' for the CPU layout."
        )
    needs = {"plain": "mslk", "preshuffled": "fbgemm_gpu"}.get(layout)
    if needs and importlib.util.find_spec(needs) is None:
        raise ValueError(
            f"int4 packing_format={layout!r} needs the `{needs}` package, which is not installed; use the "
            "default packing_format='tile_packed_to_4d' (torch's built-in tinygemm kernel) instead."
        )
    packing_format = type(ao.Int4WeightOnlyConfig.int4_packing_format)(layout)  # torchao's Int4PackingFormat enum
    return TorchAoConfig(
        ao.Int4WeightOnlyConfig(group_size=group_size, int4_packing_format=packing_format),
        modules_to_not_convert=skip,
    )


# The module names (torchao FqnToConfig keys) of the decoder's projections, the LM head and the input embedding in
# every olmo_hf model class (`model.` prefix in the task models, none in the base OlmoModel / Olmo2Model).
_DECODER_LINEARS = r"re:(.*\.)?layers\.\d+\.(self_attn|mlp)\.\w+_proj"
_LM_HEAD = "lm_head"
_INPUT_EMBEDDING = r"re:(.*\.)?embed_tokens"
_EMBEDDINGS = ("lm_head", "embed_tokens")  # the names users (and Transformers' default skip list) give them


def _matches(name: str, patterns: list[str]) -> bool:
    return any(p == name or p.endswith("." + name) for p in patterns)


def int8_group_config(group_size: int = INT8_GROUP_SIZE):
    """torchao's group-wise int8 weight-only config of ``quantization_config("int8")``: ``IntxWeightOnlyConfig(
    weight_dtype=torch.int8, granularity=PerGroup(group_size), mapping_type=SYMMETRIC_NO_CLIPPING_ERR,
    scale_dtype=torch.float16)``. Symmetric with the largest magnitude of each group exactly representable (as
    llama.cpp's Q8_0 grid; plain SYMMETRIC maps it to 127.5 and clips it); float16 scales as Q8_0's (torchao then
    quantizes with the rounded scale, in float32 arithmetic: a bf16 model times a float16 scale promotes to float32;
    with bf16 scales it would compute w / scale in bf16, rounding it to 8 significant bits before rounding it to an
    integer: measured 10 % larger logit errors). A group whose largest magnitude is below ~127 * 2^-24 (6e-6) gets
    scale 0 and dequantizes to zeros (float16's range). torchao 0.18 computes ``1 / scale`` in float16, which
    overflows for scales of 2^-16 and below (a group whose largest magnitude is under ~1.9e-3): such a group's
    values would come out as +-its largest magnitude; :func:`check_int8_group_scales` refuses such a model after
    loading."""
    import torchao.quantization as ao
    from torchao.quantization.granularity import PerGroup

    return ao.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(group_size),
                                   mapping_type=ao.MappingType.SYMMETRIC_NO_CLIPPING_ERR, scale_dtype=torch.float16)


# torchao 0.18 quantizes a group as round(w * (1 / scale)) with 1 / scale in float16: infinite for scale <= 2^-16
_FP16_RECIPROCAL_OVERFLOW = 2.0**-16


def check_int8_group_scales(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first int8 weight with float16 group scales that torchao could not quantize:
    a group with a nonzero scale of 2^-16 or less (its largest magnitude under ~1.9e-3), whose values torchao 0.18
    turned into +-that magnitude (see :func:`int8_group_config`). Per-row int8 (``group_size=None``) has float32
    scales and no such limit."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        qdata, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
        if qdata is None or scale is None or scale.dtype != torch.float16 or qdata.dtype != torch.int8:
            continue
        scale = scale.reshape(qdata.shape[0], -1).float()
        tiny = (scale > 0) & (scale <= _FP16_RECIPROCAL_OVERFLOW)
        if not bool(tiny.any()):
            continue
        groups = qdata.reshape(*scale.shape, -1)
        bad = int((tiny & (groups != 0).any(-1)).sum())
        if bad:
            raise ValueError(
                f"{name}.weight has {bad} group(s) of {groups.shape[-1]} weights whose largest magnitude is below "
                "~1.9e-3, which torchao's float16 group scales cannot quantize (their values would come out as "
                "+-that magnitude); load with quantization_config(\"int8\", group_size=None) (olmo-hf: --quantize "
                "int8-row; a float32 scale per row) instead."
            )


def _torchao_config(linear_config, extra: list[str], quantize_embeddings: bool, embedding_config=None):
    """``TorchAoConfig`` quantizing the decoder's projections with ``linear_config`` and, unless kept (option
    ``quantize_embeddings=False`` or ``lm_head`` / ``embed_tokens`` in ``modules_to_not_convert``), ``lm_head``
    and the input embedding with ``embedding_config`` (default: int8 weight-only per output channel / per row,
    i.e. per token): llama.cpp's choice too (Q8_0 ``output.weight`` / ``token_embd.weight`` in a Q8_0 file, Q6_K
    output in a Q4_0 file).

    Expressed with torchao's ``FqnToConfig`` (module name -> config), so that each part gets its own config and
    anything else (norms, a classifier's ``score``) stays as loaded; Transformers' ``include_input_output_embeddings``
    lets it take the ``nn.Embedding``. A model whose ``lm_head`` is tied to its embedding keeps both unquantized
    (``from_pretrained`` of our classes, :func:`for_tied_embeddings`).
    """
    import torchao.quantization as ao
    from torchao.quantization.granularity import PerRow
    from transformers import TorchAoConfig

    per_row = embedding_config or ao.Int8WeightOnlyConfig(granularity=PerRow())
    parts = {_DECODER_LINEARS: linear_config}
    if quantize_embeddings and not _matches("lm_head", extra):
        parts[_LM_HEAD] = per_row
    if quantize_embeddings and not _matches("embed_tokens", extra):
        parts[_INPUT_EMBEDDING] = per_row
    embeddings = len(parts) > 1
    # Transformers drops the embeddings' names from this list when include_input_output_embeddings is set; what
    # is not in `parts` stays unquantized either way
    skip = [*DEFAULT_MODULES_TO_NOT_CONVERT, *extra]
    skip = list(dict.fromkeys(n for n in skip if not (embeddings and n in _EMBEDDINGS)))
    return TorchAoConfig(ao.FqnToConfig(parts), modules_to_not_convert=skip, include_input_output_embeddings=embeddings)


def for_tied_embeddings(quantization_config, tied: bool):
    """The quantization config to load a model with: ``quantization_config`` itself, or for a model whose
    ``lm_head`` shares its weight with the input embedding (``tie_word_embeddings``), a copy that keeps both
    unquantized. Quantizing the shared matrix once would serve both in memory, but Transformers 5.21-5.25 cannot
    reload such a checkpoint (re-tying compares the two with ``torch.equal``, which torchao tensors lack), and
    untying would add a matrix instead of saving one."""
    if not tied or not getattr(quantization_config, "include_input_output_embeddings", False):
        return quantization_config
    import torchao.quantization as ao

    config = copy.deepcopy(quantization_config)
    quant_type = config.quant_type
    if isinstance(quant_type, ao.FqnToConfig):
        for key in (_LM_HEAD, _INPUT_EMBEDDING):
            quant_type.fqn_to_config.pop(key, None)
    config.include_input_output_embeddings = False
    config.modules_to_not_convert = list(dict.fromkeys([*(config.modules_to_not_convert or []), *_EMBEDDINGS]))
    return config


def linear_config(quantization_config):
    """The torchao config applied to the decoder's projections by ``quantization_config`` (a ``TorchAoConfig``):
    its ``quant_type``, or the projections' entry of an ``FqnToConfig``; None for other configs."""
    quant_type = getattr(quantization_config, "quant_type", None)
    table = getattr(quant_type, "fqn_to_config", None)
    if table is None:
        return quant_type
    return table.get(_DECODER_LINEARS, next((c for c in table.values() if c is not None), None))


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


# ----------------------------------------------------------------------------------------------- saving
def check_serializable(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` is quantized with a method Transformers cannot save."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or quantizer.is_serializable():
        return
    method = getattr(quantizer.quantization_config, "quant_method", "?")
    method = getattr(method, "value", method)
    raise ValueError(
        f"This model is quantized with {method!r}, which Transformers {_version('transformers')} cannot save. "
        "Save the unquantized checkpoint and quantize at load time (from_pretrained(..., quantization_config=...)), "
        "or use a serializable method: " + ", ".join(m for m in METHODS if m != "none") + "."
    )


def _is_cpu_packed(module: nn.Module) -> bool:
    if type(module).__name__ != "Linear4bit":  # cheap check first: `weight` may be a computed property elsewhere
        return False
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def _restore_module(module: nn.Module) -> None:
    """Undo bitsandbytes' CPU repacking of one Linear4bit, exactly (see restore_bnb_cpu_layout)."""
    param = module.weight
    state = param.quant_state
    # The weight nibbles are a pure permutation: bitsandbytes' inverse restores them exactly. Run it on a copy
    # of the state with `original_nested=False`, so that it does not re-quantize absmax (its lossy step).
    scratch = copy.copy(state)
    scratch.original_nested = False
    qweight, _ = bnb_unpack_cpu_weight(param.data, scratch)
    # absmax was reshaped to (out_features, in_features / blocksize), transposed and cast to bf16. The bf16 values
    # are all the kernel uses from then on, so store exactly those (as float32, un-nested): repacking them on the
    # next CPU forward reproduces the same bf16 tensor, bit for bit.
    absmax = state.absmax.T.reshape(-1).to(torch.float32).contiguous()
    state.absmax = absmax
    state.dtype = state.original_dtype
    state.nested = False
    for attr in ("state2", "offset"):
        if hasattr(state, attr):
            delattr(state, attr)
    state.packing_format_for_cpu = False
    for attr in ("original_dtype", "original_nested", "original_qshape", "original_storage_type"):
        if hasattr(state, attr):
            delattr(state, attr)
    param.data = qweight


@torch.no_grad()
def restore_bnb_cpu_layout(model: nn.Module) -> int:
    """Put every bitsandbytes ``Linear4bit`` that a CPU forward repacked back into the standard layout.

    bitsandbytes 0.50 repacks a 4-bit weight on its first CPU forward (when the CPU has AVX512-BF16): the nibbles
    are re-tiled and absmax becomes a transposed bf16 tensor; double-quant absmax is de-nested. Its own
    ``_save_to_state_dict`` inverts this only for double-quant layers, re-quantizing absmax (~1 % logit drift),
    and for the others writes the transposed absmax as if it were not (a corrupt checkpoint, and a corrupt model
    in memory afterwards).

    This restores the weight exactly and stores the bf16 absmax the kernel actually uses as plain float32
    (a double-quant layer is therefore saved un-nested: 0.5 instead of ~0.13 extra bits per weight on disk).
    A checkpoint saved afterwards reloads to a model with bit-identical logits, and the in-memory model keeps
    giving the same logits (its next forward repacks the same values). Returns the number of layers restored.
    """
    restored = 0
    for module in model.modules():
        if _is_cpu_packed(module):
            _restore_module(module)
            restored += 1
    return restored


def bnb_cpu_layout_state_dict_pre_hook(module: nn.Module, prefix: str = "", keep_vars: bool = False) -> None:
    """``nn.Module.register_state_dict_pre_hook`` hook: run :func:`restore_bnb_cpu_layout` before any
    ``state_dict()`` (and so before ``save_pretrained``) of the module it is registered on."""
    restore_bnb_cpu_layout(module)


def protect_state_dict(model: nn.Module) -> bool:
    """Register :func:`bnb_cpu_layout_state_dict_pre_hook` on a model holding bitsandbytes 4-bit layers (once), so
    that its ``state_dict()`` never carries the CPU-repacked layout. Returns whether the model has such layers."""
    if not any(type(module).__name__ == "Linear4bit" for module in model.modules()):
        return False
    if getattr(model, "_olmo_hf_bnb_state_dict_hook", None) is None:
        model._olmo_hf_bnb_state_dict_hook = model.register_state_dict_pre_hook(bnb_cpu_layout_state_dict_pre_hook)
    return True


def save_quantized(model: nn.Module, save_directory: str | os.PathLike, **save_pretrained_kwargs) -> str:
    """``model.save_pretrained(save_directory, ...)`` that never writes a checkpoint that differs from ``model``.

    - Refuses (``ValueError``) methods Transformers cannot serialize, before writing anything.
    - Restores bitsandbytes 4-bit layers repacked by a CPU forward (:func:`restore_bnb_cpu_layout`), so saving
      after inference is exact.

    A plain ``AutoModelForCausalLM.from_pretrained(save_directory)`` (after ``import olmo_hf``) reloads it with the
    same quantization. Returns ``save_directory``.
    """
    check_serializable(model)
    restore_bnb_cpu_layout(model)
    model.save_pretrained(save_directory, **save_pretrained_kwargs)
    return str(save_directory)


# ----------------------------------------------------------------------------------------------- CPU int8 kernel
def _int8_weight_only_cpu_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32, torch.float16):
        return F.linear(x, weight, self.bias)  # torchao's own path
    # qdata: (out, in) int8; scale: (out, 1) -> (out,), in x's dtype as the kernel requires
    scales = weight.scale.reshape(-1).to(x.dtype)
    y = int8_weight_only_mm(x.reshape(-1, x.shape[-1]).contiguous(), weight.qdata, scales)
    y = y.reshape(*x.shape[:-1], y.shape[-1])  # (..., out)
    return y if self.bias is None else y + self.bias


def int8_embedding_forward(self: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    """``F.embedding`` on a symmetric int8 weight (one scale per row, or per group of a row), dequantizing only the
    rows looked up (torchao's own embedding dequantizes the whole table, ~200 M values for a 100 k vocabulary, on
    every call): the same values, since torchao's dequantization is element-wise (``q.to(dtype) * scale``)."""
    weight = self.weight
    if type(input_ids) is not torch.Tensor or input_ids.device.type != "cpu" or self.max_norm is not None:
        return F.embedding(input_ids, weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
    dtype = weight.dtype
    vocab, hidden = weight.qdata.shape
    scale = weight.scale.reshape(vocab, -1)[input_ids]  # (..., groups): 1 per row, or hidden / group size
    rows = weight.qdata[input_ids].to(dtype)  # (..., hidden) int8 -> model dtype (exact)
    rows = rows.view(*rows.shape[:-1], scale.shape[-1], -1) * scale.unsqueeze(-1)  # in the scale's own dtype
    return rows.view(*input_ids.shape, hidden).to(dtype)  # torchao's dequantize_affine: (q.to(dtype) * scale).to(dtype)


def use_cpu_int8_kernel(model: nn.Module) -> int:
    """Run torchao int8 weight-only linears with one scale per row (method ``"int8"`` with ``group_size=None``; the
    default group-wise layout is left as it is: ``olmo_hf.fast`` runs it) through PyTorch's fused CPU kernel
    ``torch._weight_int8pack_mm`` instead of torchao's eager path, which converts the whole int8 weight to the
    activation dtype on every call and is several times slower than the bf16 model on CPU.

    Only each module's ``forward`` changes (weights stay torchao ``Int8Tensor`` s, so saving is unaffected; a
    reloaded model needs this call again). Inputs not on CPU fall back to torchao's path. Outputs match
    torchao's to bf16 rounding (the kernel accumulates in float32). An int8 per-row input embedding gets
    :func:`int8_embedding_forward` (only the looked-up rows dequantized; the same values). Returns the number of
    modules switched.
    """
    try:
        from torchao.quantization import Int8Tensor
    except ImportError:  # torchao missing or too old: nothing to do
        return 0
    if not has_int8_weight_only_mm():  # a torch without the fused kernel: torchao's own path stays
        return 0
    switched = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not (isinstance(module, (nn.Linear, nn.Embedding)) and isinstance(weight, Int8Tensor)):
            continue
        per_channel = list(weight.block_size) == [1, weight.qdata.shape[-1]]  # one scale per row
        weight_only = weight.act_quant_kwargs is None and weight.act_pre_scale is None
        zero_point = getattr(weight, "zero_point", None)
        symmetric = zero_point is None or not bool(zero_point.any())
        if per_channel and weight_only and symmetric:
            forward = _int8_weight_only_cpu_forward if isinstance(module, nn.Linear) else int8_embedding_forward
            module.forward = types.MethodType(forward, module)
            switched += 1
    return switched


# ----------------------------------------------------------------------------------------------- memory
_MADV_DONTNEED = 4  # <sys/mman.h> (Linux): drop the pages; file-backed ones are read again on the next access


def _live_ranges(model: nn.Module) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the storages of every CPU tensor ``model`` holds (parameters and buffers, the
    inner tensors of torchao / bitsandbytes weights included)."""
    ranges = []

    def add(t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.is_meta:
            return
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
            names, _ = t.__tensor_flatten__()
            for name in names:
                add(getattr(t, name))
            return
        storage = t.untyped_storage()
        ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
        for inner in (getattr(state, "absmax", None), getattr(state, "code", None), getattr(t, "SCB", None)):
            add(inner)

    for t in [*model.parameters(), *model.buffers()]:
        add(t)
    return ranges


def release_checkpoint_pages(model: nn.Module) -> int:
    """Give back to the OS the resident pages of the checkpoint's memory map that no tensor of ``model`` reads.

    A quantized ``from_pretrained`` reads every bf16 weight from the safetensors memory map to quantize it, and the
    few tensors loaded as they are (norms, a kept ``lm_head``) keep the whole map alive: the pages read stay
    counted in the process's resident memory (2.9 GB for the 1B model, more than the int8 model itself). Only
    the maps that hold one of ``model``'s tensors are touched, and within them only whole pages outside every
    one of its tensors (``madvise(MADV_DONTNEED)``; the file is unchanged, so a page read again holds the same
    bytes). Linux only; returns the bytes of the ranges given back, resident or not (0 elsewhere). Our
    ``from_pretrained`` calls it on every quantized model it loads."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open("/proc/self/maps") as f:
            maps = [line.split() for line in f]
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    mappings = [tuple(int(x, 16) for x in parts[0].split("-")) for parts in maps
                if len(parts) >= 6 and parts[5].endswith(".safetensors")]
    live = sorted(_live_ranges(model))
    released = 0
    for lo, hi in mappings:
        inside = [(max(a, lo), min(b, hi)) for a, b in live if a < hi and b > lo]
        if not inside:  # not this model's map (another model's, or one it no longer reads at all)
            continue
        cursor = lo
        for a, b in [*inside, (hi, hi)]:
            first, last = -(-cursor // page) * page, a // page * page  # whole pages in the gap [cursor, a)
            if last > first and madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) == 0:
                released += last - first
            cursor = max(cursor, b)
    return released


def memory_footprint(model: nn.Module, include_buffers: bool = True) -> int:
    """Bytes actually held by the model's parameters (and buffers), counting what each quantized weight stores.

    ``PreTrainedModel.get_memory_footprint()`` multiplies ``numel()`` by ``element_size()``: for a torchao
    weight that reports the *logical* dtype (bf16), so int8 / int4 models look as big as bf16, and for
    bitsandbytes it leaves out the quantization state (absmax, ...). This walks the inner tensors of torchao
    tensor subclasses, adds bitsandbytes' ``quant_state`` / ``SCB`` tensors, and counts shared storage once.
    """
    seen: set[int] = set()

    def size(t) -> int:
        if t is None or not isinstance(t, torch.Tensor):
            return 0
        if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
            names, _ = t.__tensor_flatten__()
            if names:
                return sum(size(getattr(t, name)) for name in names)
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        total = storage.nbytes()
        state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
        if state is not None:
            total += size(state.absmax) + size(state.code)
            if getattr(state, "nested", False):
                total += size(state.state2.absmax) + size(state.state2.code) + size(state.offset)
        return total + size(getattr(t, "SCB", None))  # bitsandbytes Int8Params row scales

    tensors = list(model.parameters()) + (list(model.buffers()) if include_buffers else [])
    return sum(size(t) for t in tensors)
