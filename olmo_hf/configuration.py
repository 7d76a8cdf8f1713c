# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Configurations for OLMo (v1, incl. OLMo 1.7 ``clip_qkv``), OLMo 2 and OLMo 3 / 3.1.

Both are strict ``PreTrainedConfig`` dataclasses with exactly the fields of Transformers' built-in
``OlmoConfig`` / ``Olmo2Config`` (so checkpoints stay interchangeable), plus an optional ``head_dim``
(OLMo-core models may use ``head_dim != hidden_size // num_attention_heads``) and validation that names the
offending field.

Defaults are the ones of the built-in classes (an OLMo-7B-like shape), NOT those of any released OLMo 2
model: real OLMo 2 checkpoints set ``rms_norm_eps=1e-6``, ``rope_theta=500000``, ``vocab_size=100352`` and
eos/pad ``100257/100277`` (see ``olmo_hf.presets``). Legacy ``rope_theta`` / ``rope_scaling`` keys, as found
in every published config.json, are converted to ``rope_parameters`` by ``PreTrainedConfig``.
"""

import copy
import math
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RopeParameters
from transformers.utils import logging

from .compat import CACHE_KEYS_TO_DECLARE

__all__ = ["OlmoConfig", "Olmo2Config", "Olmo3Config"]

logger = logging.get_logger(__name__)

# Shared by both families: attention is tensor-parallel along heads, the MLP along its hidden dimension.
_PP_PLAN = {
    "embed_tokens": (["input_ids"], ["inputs_embeds"]),
    "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
    "norm": (["hidden_states"], ["hidden_states"]),
}
# rope_parameters fields and what each must be: "positive" (a finite number > 0), "fraction" (in (0, 1]),
# "number" (finite), "positive int", "bool", "positive list" (a list of finite numbers > 0).
_ROPE_FIELDS = {
    "rope_theta": "positive",
    "factor": "positive",
    "attention_factor": "positive",
    "low_freq_factor": "positive",
    "high_freq_factor": "positive",
    "mscale": "number",
    "mscale_all_dim": "number",
    "beta_fast": "number",
    "beta_slow": "number",
    "partial_rotary_factor": "fraction",
    "original_max_position_embeddings": "positive int",
    "truncate": "bool",
    "short_factor": "positive list",
    "long_factor": "positive list",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rope_value(field: str, kind: str, value: Any) -> None:
    """Raise a ValueError naming ``field`` unless ``value`` is of ``kind`` (see `_ROPE_FIELDS`)."""
    ok = {
        "positive": lambda v: _is_number(v) and v > 0,
        "fraction": lambda v: _is_number(v) and 0 < v <= 1,
        "number": _is_number,
        "positive int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "bool": lambda v: isinstance(v, bool),
        "positive list": lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) and x > 0 for x in v),
    }[kind](value)
    if not ok:
        expected = {"positive": "a positive number", "fraction": "a number in (0, 1]", "number": "a finite number",
                    "positive int": "a positive integer", "bool": "true or false",
                    "positive list": "a list of positive numbers"}[kind]
        raise ValueError(f"`rope_parameters.{field}` must be {expected}, got {value!r}.")


def check_rope_parameters(rope_parameters: Any) -> None:
    """Raise a ValueError naming the field if ``rope_parameters`` (one dict, or one per layer type) is unusable:
    an unknown ``rope_type`` (Transformers' ``ROPE_INIT_FUNCTIONS`` or "default"), a non-positive or non-finite
    theta or factor, or a field of the wrong type."""
    if rope_parameters is None:
        return
    if not isinstance(rope_parameters, dict):
        raise ValueError(f"`rope_parameters` must be a dict, got {type(rope_parameters).__name__}.")
    if rope_parameters and all(isinstance(v, dict) for v in rope_parameters.values()):  # one per layer type
        for params in rope_parameters.values():
            check_rope_parameters(params)
        return
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    known = ("default", *sorted(ROPE_INIT_FUNCTIONS))
    if rope_type not in known:
        raise ValueError(f"`rope_parameters.rope_type` {rope_type!r} is not a RoPE type Transformers knows; use one of "
                         f"{', '.join(known)}.")
    for field, kind in _ROPE_FIELDS.items():
        if rope_parameters.get(field) is not None:
            _check_rope_value(field, kind, rope_parameters[field])


_MLP_TP_PLAN = {
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
}


@strict
class _OlmoFamilyConfig(PreTrainedConfig):
    """Fields and validation common to OLMo and OLMo 2 (not registered; use a subclass)."""

    if CACHE_KEYS_TO_DECLARE is not None:  # what the built-in configs declare on releases before 5.24
        keys_to_ignore_at_inference = CACHE_KEYS_TO_DECLARE
    base_model_pp_plan = _PP_PLAN

    vocab_size: int = 50304  # GPT-NeoX-OLMo vocabulary (50280) padded to a multiple of 128
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = None  # no OLMo checkpoint uses a BOS token (transformers PR #29890)
    eos_token_id: int | list[int] | None = 50279
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0

    # Other model types whose config.json this class reads as its own (stale names of the same architecture).
    accepted_model_types: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """As in ``PreTrainedConfig``, but a config.json of another architecture raises a clear ``ValueError``
        instead of Transformers' warning (loading it would build a model with the wrong layout)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        from .ai2_olmo_format import hf_olmo_config_to_kwargs, is_hf_olmo_config  # lazy: it imports torch

        if is_hf_olmo_config(config_dict):  # legacy ai2-olmo fields (d_model, n_layers, ...): translate
            model_type, translated = hf_olmo_config_to_kwargs(config_dict)
            config_dict = {**translated, "model_type": model_type}
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type not in (cls.model_type, *cls.accepted_model_types):
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {model_type!r} checkpoint, not {cls.model_type!r}; load it "
                "with AutoModelForCausalLM (which picks the right class) or with the class for that model type."
            )
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if (
            self.head_dim is None
            and isinstance(self.hidden_size, int)
            and isinstance(self.num_attention_heads, int)
            and self.num_attention_heads > 0
            and self.hidden_size % self.num_attention_heads == 0
        ):
            # Stored explicitly so that every reader (ours, Transformers' built-in classes, vLLM) agrees.
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        # Checked here too (not only in the @strict validator, which wraps errors in its own exception type)
        # so that a bad combination surfaces as a plain ValueError naming the field.
        self.check_architecture()

    def validate_architecture(self):
        """Part of ``@strict`` validation (also run by ``config.validate()`` after edits)."""
        super().validate_architecture()
        self.check_architecture()

    def check_architecture(self) -> None:
        """Raise a ``ValueError`` naming the field if the model cannot be built from this config."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.head_dim is None:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must divide `hidden_size` ({self.hidden_size}); "
                "set `head_dim` explicitly for models whose head size differs from hidden_size / num_attention_heads."
            )
        if self.head_dim <= 0:
            raise ValueError(f"`head_dim` must be a positive integer, got {self.head_dim}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_key_value_heads` ({self.num_key_value_heads}) must divide `num_attention_heads` "
                f"({self.num_attention_heads}) for grouped-query attention."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"`hidden_act` {self.hidden_act!r} is not a known activation; use one of Transformers' ACT2FN names "
                "such as 'silu' (the one every OLMo checkpoint uses)."
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"`attention_dropout` must be in [0, 1), got {self.attention_dropout}.")
        if not (_is_number(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"`initializer_range` must be a finite number >= 0, got {self.initializer_range}.")
        check_rope_parameters(self.rope_parameters)


@strict
class OlmoConfig(_OlmoFamilyConfig):
    r"""Configuration of an OLMo (v1) model: `allenai/OLMo-1B-hf`, `OLMo-7B-hf`, `OLMo-7B-0424-hf` (OLMo 1.7), ...

    Pre-norm blocks with a non-parametric LayerNorm (eps 1e-5), SwiGLU MLP, RoPE.

    Args:
        clip_qkv (`float`, *optional*):
            If set, queries, keys and values are clamped to ``[-clip_qkv, clip_qkv]`` right after their
            projections (before RoPE). OLMo 1.7 / 0424 / 0724 use 8.0; the original OLMo-1B/7B use ``None``.

    Example:

    ```python
    >>> from olmo_hf import OlmoConfig, OlmoForCausalLM
    >>> config = OlmoConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4)
    >>> model = OlmoForCausalLM(config)
    ```
    """

    model_type = "olmo"
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        **_MLP_TP_PLAN,
    }

    clip_qkv: float | None = None

    def check_architecture(self) -> None:
        super().check_architecture()
        if self.clip_qkv is not None and not (_is_number(self.clip_qkv) and self.clip_qkv > 0):
            raise ValueError(f"`clip_qkv` must be a positive number or None, got {self.clip_qkv}.")


@strict
class Olmo2Config(_OlmoFamilyConfig):
    r"""Configuration of an OLMo 2 model: `allenai/OLMo-2-0425-1B`, `OLMo-2-1124-7B`, `OLMo-2-1124-13B`,
    `OLMo-2-0325-32B`, ...

    Identical to [`OlmoConfig`] except:
    - ``rms_norm_eps`` for the (weighted) RMSNorms that replace OLMo's parameter-free LayerNorm;
    - no ``clip_qkv``: OLMo 2 normalises queries and keys instead (allenai/OLMo-core #498).

    Args:
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMSNorms. Released OLMo 2 checkpoints use 1e-6.
    """

    model_type = "olmo2"
    accepted_model_types = ("olmo_1124",)  # allenai/OLMo-7B-1024-preview; renamed by transformers PR #34551
    base_model_tp_plan = {
        # q/k/v stay replicated: q_norm / k_norm normalise over ALL heads at once, so a head-sharded
        # projection would normalise with the wrong statistics (dphnAI/sonar PR #966).
        "layers.*.self_attn.q_proj": "colwise_gather_output",
        "layers.*.self_attn.k_proj": "colwise_gather_output",
        "layers.*.self_attn.v_proj": "colwise_gather_output",
        "layers.*.self_attn.o_proj": "rowwise_split_input",
        **_MLP_TP_PLAN,
    }

    rms_norm_eps: float = 1e-5

    def check_architecture(self) -> None:
        super().check_architecture()
        if not (_is_number(self.rms_norm_eps) and self.rms_norm_eps > 0):
            raise ValueError(f"`rms_norm_eps` must be a positive number, got {self.rms_norm_eps}.")


# ------------------------------------------------------------------------------------------------------- OLMo 3
SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_TYPES = (SLIDING, FULL)


def _with_rope_type(params: dict, field: str) -> dict:
    """A copy of one RoPE dict with its type under ``rope_type``. Checkpoints written by Transformers 4.x may use the
    legacy key ``type``; Transformers >= 5.13 then keeps ``rope_type: default`` next to it and drops the scaling."""
    params = copy.deepcopy(dict(params))
    if "type" in params:
        legacy = params.pop("type")
        current = params.get("rope_type", "default")
        if current not in ("default", legacy):
            raise ValueError(f"`{field}` names two RoPE types: `type`={legacy!r} and `rope_type`={current!r}.")
        params["rope_type"] = legacy
    params.setdefault("rope_type", "default")
    return params


@strict
class Olmo3Config(Olmo2Config):
    r"""Configuration of an OLMo 3 / 3.1 model: `allenai/Olmo-3-1025-7B`, `Olmo-3-7B-Think`, `Olmo-3-7B-Instruct`,
    `Olmo-3-1125-32B`, `Olmo-3.1-32B-Think`, `Olmo-3.1-32B-Instruct`, ... (presets: ``olmo_hf.presets``).

    Identical to [`Olmo2Config`] except:
    - ``sliding_window``: layers of type ``"sliding_attention"`` see the last ``sliding_window`` keys, the query
      included (Transformers' convention; flash attention's window is one less, OLMo-core stores ``(W-1, 0)``);
    - ``layer_types``: by default layer ``i`` is full attention when ``(i + 1) % 4 == 0``, else sliding;
    - ``rope_parameters`` is nested by layer type, ``{"sliding_attention": {...}, "full_attention": {...}}``.
      Every form a published config.json uses ends there with the scaling (YaRN) on the full-attention layers
      only, never silently dropped: legacy ``rope_scaling`` (+ ``rope_theta``), the legacy key ``"type"``, and the
      flat ``rope_parameters`` written by Transformers 5.0-5.12 (read with a warning naming the field, since those
      releases applied it to every layer: allenai/OLMo-core #685). A form that cannot be read unambiguously raises
      a ``ValueError`` naming the field.
    """

    model_type = "olmo3"
    accepted_model_types = ()
    default_theta = 500000.0  # as the built-in Olmo3Config (OLMo 3 checkpoints use rope_theta 500000)

    sliding_window: int | None = 4096  # OLMo-core presets pattern [4096, 4096, 4096, -1]
    layer_types: list[str] | None = None

    def __post_init__(self, **kwargs):
        if self.layer_types is None and isinstance(self.num_hidden_layers, int):
            self.layer_types = [FULL if (i + 1) % 4 == 0 else SLIDING for i in range(self.num_hidden_layers)]
        super().__post_init__(**kwargs)

    def convert_rope_params_to_dict(self, **kwargs) -> dict[str, Any]:
        """Every RoPE form -> ``{"sliding_attention": {...}, "full_attention": {...}}`` with the scaling on full layers."""
        rope_scaling = kwargs.pop("rope_scaling", None)
        rope_theta = kwargs.pop("rope_theta", None)
        params = copy.deepcopy(dict(self.rope_parameters or {}))
        if params and not any(key in LAYER_TYPES for key in params):
            # Flat v5 form (Transformers 5.0-5.12). Those releases applied it to EVERY layer; OLMo 3 applies its
            # scaling to full-attention layers only (OLMo-core with_rope_scaling(full_attn_layers_only=True)).
            flat = _with_rope_type(params, "rope_parameters")
            if flat["rope_type"] != "default":
                logger.warning(
                    "`rope_parameters` is a flat dict (as Transformers 5.0-5.12 wrote OLMo 3 configs); applying its "
                    "%r scaling to the full-attention layers only, as OLMo 3 was trained. Save the config again to "
                    "write the nested form.",
                    flat["rope_type"],
                )
            theta = flat.get("rope_theta", rope_theta)
            params = {FULL: flat, SLIDING: {"rope_type": "default", **({"rope_theta": theta} if theta else {})}}
        elif params and (extra := sorted(set(params) - set(LAYER_TYPES))):
            raise ValueError(
                f"`rope_parameters` mixes per-layer-type entries with the flat keys {extra}; write either "
                f"{{'sliding_attention': ..., 'full_attention': ...}} or one flat dict."
            )
        params = {lt: _with_rope_type(params.get(lt) or {}, f"rope_parameters.{lt}") for lt in LAYER_TYPES}
        if rope_scaling:
            scaling = _with_rope_type(rope_scaling, "rope_scaling")
            if params[FULL]["rope_type"] not in ("default", scaling["rope_type"]):
                raise ValueError(
                    f"`rope_scaling` ({scaling['rope_type']!r}) conflicts with `rope_parameters.full_attention` "
                    f"({params[FULL]['rope_type']!r}); keep one of them."
                )
            params[FULL].update(scaling)  # legacy scaling belongs to the full-attention layers only
        if params[SLIDING]["rope_type"] != "default":
            logger.warning(
                "`rope_parameters.sliding_attention` asks for %r scaling on the sliding-window layers; released OLMo 3 "
                "models scale only the full-attention layers (vllm-project/vllm #43419).",
                params[SLIDING]["rope_type"],
            )
        for entry in params.values():
            entry.setdefault("rope_theta", rope_theta if rope_theta is not None else self.default_theta)
        self.rope_parameters = params
        self.standardize_rope_params()
        return kwargs

    def check_architecture(self) -> None:
        super().check_architecture()
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"`sliding_window` must be a positive integer or None, got {self.sliding_window}.")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"`layer_types` has {len(self.layer_types)} entries but `num_hidden_layers` is "
                    f"{self.num_hidden_layers}."
                )
            if unknown := sorted(set(self.layer_types) - set(LAYER_TYPES)):
                raise ValueError(f"`layer_types` may hold only {list(LAYER_TYPES)}, got {unknown}.")
            if SLIDING in self.layer_types and self.sliding_window is None:
                raise ValueError("`sliding_window` is None but `layer_types` has sliding_attention layers.")
