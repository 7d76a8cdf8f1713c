# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""OLMo, OLMo 2 and OLMo 3 models: decoder layers, base models, causal-LM and sequence-classification heads.

The families share everything but their blocks (see the ``Olmo2*`` / ``Olmo3*`` class comments for the deltas).
The shared logic lives in three small mixins (``_DecoderStack``, ``_CausalLMHead``, ``_SequenceClassifierHead``)
so that the public classes declare exactly what Transformers' built-in classes declare: the same names,
bases (``GenerationMixin`` is a direct base of the causal-LM classes), class attributes, forward signatures,
state-dict keys and parallelism plans. Checkpoints are therefore interchangeable with the built-in classes.
"""

import os

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .compat import CACHE_FIELD, CACHE_KEYS_TO_DECLARE, cache_argument, cache_kwargs, mask_cache_kwargs, output_cache
from .configuration import Olmo2Config, Olmo3Config, OlmoConfig
from .legacy import load_legacy_checkpoint
from .release_guard import ensure_release_verified
from .modules import (
    Olmo2Attention,
    Olmo2RMSNorm,
    Olmo3Attention,
    Olmo3RotaryEmbedding,
    OlmoAttention,
    OlmoLayerNorm,
    OlmoMLP,
    OlmoRotaryEmbedding,
)

__all__ = [
    "OlmoPreTrainedModel",
    "OlmoModel",
    "OlmoForCausalLM",
    "OlmoForSequenceClassification",
    "Olmo2PreTrainedModel",
    "Olmo2Model",
    "Olmo2ForCausalLM",
    "Olmo2ForSequenceClassification",
    "Olmo3PreTrainedModel",
    "Olmo3Model",
    "Olmo3ForCausalLM",
    "Olmo3ForSequenceClassification",
    "MissingWeightsError",
    "MismatchedWeightsError",
]

logger = logging.get_logger(__name__)


class MissingWeightsError(ValueError):
    """A checkpoint lacks weights the model needs, which would otherwise be initialised randomly."""


class MismatchedWeightsError(RuntimeError):
    """A checkpoint weight has another shape than the config implies (Transformers raises a ``RuntimeError`` too)."""


# ----------------------------------------------------------------------------------------------- decoder layers
class OlmoDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``h = x + attn(LN(x)); out = h + mlp(LN(h))`` with parameter-free LayerNorms."""

    def __init__(self, config: OlmoConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = OlmoAttention(config=config, layer_idx=layer_idx)
        self.mlp = OlmoMLP(config)
        self.input_layernorm = OlmoLayerNorm(config.hidden_size)
        self.post_attention_layernorm = OlmoLayerNorm(config.hidden_size)

    @cache_argument
    def forward(
        self,
        hidden_states: torch.Tensor,  # (batch, seq, hidden)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Olmo2DecoderLayer(GradientCheckpointingLayer):
    """Identical to [`OlmoDecoderLayer`] except that the norms are applied to the sublayer OUTPUTS
    ("reordered norm", OLMo-core ``ReorderedNormTransformerBlock``) and are weighted RMSNorms:
    ``h = x + RMSNorm(attn(x)); out = h + RMSNorm(mlp(h))``. There is no ``input_layernorm``.
    """

    attention_class: type[nn.Module] = Olmo2Attention

    def __init__(self, config: Olmo2Config, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = self.attention_class(config=config, layer_idx=layer_idx)
        self.mlp = OlmoMLP(config)
        self.post_attention_layernorm = Olmo2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_feedforward_layernorm = Olmo2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @cache_argument
    def forward(
        self,
        hidden_states: torch.Tensor,  # (batch, seq, hidden)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = hidden_states + self.post_attention_layernorm(attn_out)
        return hidden_states + self.post_feedforward_layernorm(self.mlp(hidden_states))


class Olmo3DecoderLayer(Olmo2DecoderLayer):
    """Identical to [`Olmo2DecoderLayer`] except that its attention may be sliding-window (`Olmo3Attention`)."""

    attention_class = Olmo3Attention


# ----------------------------------------------------------------------------------------------- pretrained bases
class _OlmoFamilyPreTrainedModel(PreTrainedModel):
    """Capabilities both families declare (as the built-in classes do); not registered anywhere."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    if CACHE_KEYS_TO_DECLARE is not None:  # what the built-in classes declare on releases before 5.24
        _skip_keys_device_placement = CACHE_KEYS_TO_DECLARE
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True

    def post_init(self) -> None:
        ensure_release_verified()  # raises only if the self-check failed on an untested release (release_guard)
        super().post_init()

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes the model's tensors really hold. Unlike ``PreTrainedModel.get_memory_footprint`` this counts
        torchao int8 / int4 weights at their stored size (not their logical bf16 size) and includes
        bitsandbytes' quantization state; for an unquantized model the two agree."""
        from .quantization import memory_footprint

        return memory_footprint(self, include_buffers=return_buffers)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained`` with Transformers' semantics, plus one promise: no weight the checkpoint
        should provide is silently random.

        - A weight whose shape in the checkpoint differs from the config raises :class:`MismatchedWeightsError` (a
          ``RuntimeError``, as in Transformers) naming it, unless ``ignore_mismatched_sizes=True``: then exactly the
          mismatched weights are re-initialised and listed in Transformers' loading report (the standard way to
          fine-tune a classifier with another number of labels).
        - A weight of the model body that the checkpoint lacks raises :class:`MissingWeightsError`, and so does a
          missing ``lm_head`` of a causal LM whose config does not tie it to the embedding. A new classification
          head (``score``) is initialised as usual, with Transformers' report.
        - ``allow_missing_weights=True`` is the explicit opt-out: missing weights are initialised randomly (e.g. a new
          ``lm_head`` on a base-model checkpoint).
        - ``output_loading_info=True`` returns ``(model, info)`` as in Transformers: the caller gets the report of
          missing weights to act on instead of an error (Transformers' own model tests rely on this). It does not
          waive a shape mismatch.

        Loading from an explicit ``state_dict`` (``pretrained_model_name_or_path=None``) is not checked.
        """
        allow_missing = kwargs.pop("allow_missing_weights", False)
        want_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        source = pretrained_model_name_or_path
        legacy = load_legacy_checkpoint(source, **kwargs) if source is not None else None
        if legacy is not None:  # an hf_olmo directory: config and weights mapped to our layout, then loaded strictly
            config, state_dict = legacy
            given = kwargs.pop("config", None)
            config = given if isinstance(given, cls.config_class) else config
            if not isinstance(config, cls.config_class):
                raise ValueError(
                    f"{source} is a legacy hf_olmo {config.model_type!r} checkpoint, which {cls.__name__} cannot "
                    "load; use AutoModelForCausalLM (which picks the right class)."
                )
            for key in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies"):
                kwargs.pop(key, None)
            model, info = super().from_pretrained(
                None, *model_args, config=config, state_dict=state_dict, output_loading_info=True,
                ignore_mismatched_sizes=True, **kwargs,
            )
            _check_loaded_weights(model, info, source, ignore_mismatched, allow_missing or want_info, strict=True)
            _fix_legacy_generation_config(model, source)
            return (model, info) if want_info else model
        if getattr(kwargs.get("quantization_config"), "include_input_output_embeddings", False):
            # our int8 / int4 configs quantize lm_head and the embedding; a tied pair stays unquantized
            from .quantization import for_tied_embeddings

            tied = _ties_word_embeddings(cls, source, kwargs)
            kwargs["quantization_config"] = for_tied_embeddings(kwargs["quantization_config"], tied)
        model, info = super().from_pretrained(
            source,
            *model_args,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # checked below, with an error that names the first offending weight
            **kwargs,
        )
        if source is not None:
            _check_loaded_weights(model, info, source, ignore_mismatched, allow_missing or want_info)
        if getattr(model, "is_quantized", False):
            # bitsandbytes 4-bit on CPU repacks weights at the first forward; undo that before any state_dict() /
            # save_pretrained() so that a checkpoint never differs from the model in memory.
            from .quantization import check_int8_group_scales, protect_state_dict, release_checkpoint_pages

            check_int8_group_scales(model)  # no silently wrong weight: torchao's float16-scale limit
            protect_state_dict(model)
            release_checkpoint_pages(model)  # the bf16 pages read to quantize stay resident otherwise
        return (model, info) if want_info else model


def _ties_word_embeddings(cls, source, kwargs: dict) -> bool:
    """Whether the model ``from_pretrained(source, **kwargs)`` builds ties ``lm_head`` to the input embedding."""
    if "tie_word_embeddings" in kwargs:
        return bool(kwargs["tie_word_embeddings"])
    config = kwargs.get("config")
    if not isinstance(config, cls.config_class):
        hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
        if (config or source) is None:
            return False
        config = cls.config_class.from_pretrained(config or source, **{k: kwargs[k] for k in hub if k in kwargs})
    return bool(getattr(config, "tie_word_embeddings", False))


def _fix_legacy_generation_config(model: PreTrainedModel, source: str | os.PathLike) -> None:
    """Take generation_config.json from an hf_olmo checkpoint, with the eos id the model really uses."""
    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    if model.generation_config.eos_token_id == 0 and model.config.vocab_size == 50304:
        logger.warning(
            "%s: generation eos_token_id 0 is |||IP_ADDRESS||| in the GPT-NeoX-OLMo vocabulary; using 50279 "
            "(<|endoftext|>) as the model was trained with (allenai/OLMo #597).",
            source,
        )
        model.generation_config.eos_token_id = model.config.eos_token_id = 50279


def _check_loaded_weights(
    model: PreTrainedModel,
    info: dict,
    source: str | os.PathLike,
    ignore_mismatched_sizes: bool,
    allow_missing: bool,
    strict: bool = False,
) -> None:
    """Raise unless every weight the checkpoint should provide was loaded (see ``from_pretrained``)."""
    model_name = type(model).__name__
    if strict and info.get("unexpected_keys"):
        raise MissingWeightsError(
            f"{source} has weights that {model_name} does not use "
            f"({', '.join(sorted(info['unexpected_keys'])[:3])}); the checkpoint does not match its config."
        )
    mismatched = sorted(info.get("mismatched_keys", ()))
    if mismatched and not ignore_mismatched_sizes:
        key, in_checkpoint, in_model = mismatched[0]
        raise MismatchedWeightsError(
            f"{source} does not fit its config: {key} has shape {tuple(in_checkpoint)} in the checkpoint but "
            f"{tuple(in_model)} in {model_name} ({len(mismatched)} such weight(s)); fix config.json, or pass "
            "ignore_mismatched_sizes=True to re-initialise those weights randomly."
        )
    if allow_missing:
        return
    new_heads = () if strict else ("score.",)  # a new classifier head is the point of loading a body into one
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(new_heads))
    if not missing:
        return
    if missing == ["lm_head.weight"]:
        raise MissingWeightsError(
            f"{source} has no lm_head.weight and its config does not tie the output layer to the embedding, so "
            f"{model_name} would predict with a random output layer; load it with AutoModel for the base model, "
            "or pass allow_missing_weights=True to train a new head."
        )
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    unexpected = sorted(info.get("unexpected_keys", ()))
    hint = (
        "It looks like an original OLMo / hf_olmo / OLMo-core checkpoint: convert it with `olmo-hf convert SRC DST`."
        if any(".transformer." in k or k.startswith(("transformer.", "blocks.")) for k in unexpected)
        else "Check that the checkpoint matches its config.json (sizes, number of layers), "
        "or pass allow_missing_weights=True to initialise the missing weights randomly."
    )
    raise MissingWeightsError(
        f"{source} does not contain {len(missing)} weight(s) of {model_name} ({shown}); "
        f"refusing to initialise them randomly. {hint}"
    )


class OlmoPreTrainedModel(_OlmoFamilyPreTrainedModel):
    config: OlmoConfig
    config_class = OlmoConfig
    _no_split_modules = ["OlmoDecoderLayer"]
    _can_record_outputs = {"hidden_states": OlmoDecoderLayer, "attentions": OlmoAttention}


class Olmo2PreTrainedModel(_OlmoFamilyPreTrainedModel):
    config: Olmo2Config
    config_class = Olmo2Config
    _no_split_modules = ["Olmo2DecoderLayer"]
    _can_record_outputs = {"hidden_states": Olmo2DecoderLayer, "attentions": Olmo2Attention}


class Olmo3PreTrainedModel(_OlmoFamilyPreTrainedModel):
    config: Olmo3Config
    config_class = Olmo3Config
    _no_split_modules = ["Olmo3DecoderLayer"]
    _can_record_outputs = {"hidden_states": Olmo3DecoderLayer, "attentions": Olmo3Attention}

    def _init_weights(self, module: nn.Module) -> None:
        """As ``PreTrainedModel._init_weights``, plus the per-layer-type RoPE buffers (non-persistent, so never in a
        checkpoint: they are recomputed here after loading on the meta device)."""
        super()._init_weights(module)
        if isinstance(module, Olmo3RotaryEmbedding):
            for layer_type in module.layer_types:
                inv_freq, _ = module.compute_inv_freq(layer_type)
                init.copy_(getattr(module, f"{layer_type}_inv_freq"), inv_freq)
                init.copy_(getattr(module, f"{layer_type}_original_inv_freq"), inv_freq)


# ----------------------------------------------------------------------------------------------- base models
class _DecoderStack:
    """Embedding -> decoder layers -> final norm. Subclasses name their layer class and final norm."""

    decoder_layer_class: type[nn.Module]
    rotary_class: type[nn.Module] = OlmoRotaryEmbedding

    def __init__(self, config: OlmoConfig | Olmo2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [self.decoder_layer_class(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = self.make_final_norm(config)
        self.rotary_emb = self.rotary_class(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @staticmethod
    def make_final_norm(config) -> nn.Module:
        raise NotImplementedError

    @cache_argument
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (batch, seq)
        attention_mask: torch.Tensor | None = None,  # (batch, kv_seq), 1 = attend; or a 4D mask
        position_ids: torch.LongTensor | None = None,  # (batch, seq)
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (batch, seq, hidden)
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (batch, seq, hidden)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)  # (1, seq)

        mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, position_ids=position_ids)
        causal_masks = self.causal_masks(attention_mask, **mask_kwargs, **mask_cache_kwargs(cache))
        hidden_states = inputs_embeds
        position_embeddings = self.position_embeddings(hidden_states, position_ids)  # 2 x (batch, seq, head_dim) each
        for decoder_layer, layer_type in zip(self.layers[: self.config.num_hidden_layers], self.layer_types()):
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_masks[layer_type],
                position_embeddings=position_embeddings[layer_type],
                position_ids=position_ids,
                use_cache=use_cache,
                **cache_kwargs(cache),  # under the release's name: GradientCheckpointingLayer looks for it there
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), **{CACHE_FIELD: cache})

    def layer_types(self) -> list[str]:
        """The attention type of each layer: all full attention, unless the config says otherwise (OLMo 3)."""
        return ["full_attention"] * self.config.num_hidden_layers

    def causal_masks(self, attention_mask: torch.Tensor | None, **mask_kwargs) -> dict[str, torch.Tensor | None]:
        """{layer type: the mask the attention backend takes} for the layer types of this model."""
        return {"full_attention": create_causal_mask(attention_mask=attention_mask, **mask_kwargs)}

    def position_embeddings(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple]:
        """{layer type: float32 (cos, sin), each (batch, seq, head_dim)}."""
        return {"full_attention": self.rotary_emb(hidden_states, position_ids=position_ids)}


class OlmoModel(_DecoderStack, OlmoPreTrainedModel):
    """The bare OLMo decoder, returning the final (normalised) hidden states."""

    decoder_layer_class = OlmoDecoderLayer

    @staticmethod
    def make_final_norm(config: OlmoConfig) -> nn.Module:
        return OlmoLayerNorm(config.hidden_size)


class Olmo2Model(_DecoderStack, Olmo2PreTrainedModel):
    """Identical to [`OlmoModel`] except: OLMo 2 blocks and a weighted final RMSNorm."""

    decoder_layer_class = Olmo2DecoderLayer

    @staticmethod
    def make_final_norm(config: Olmo2Config) -> nn.Module:
        return Olmo2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class Olmo3Model(_DecoderStack, Olmo3PreTrainedModel):
    """Identical to [`Olmo2Model`] except: OLMo 3 blocks, a sliding-window causal mask for the
    ``"sliding_attention"`` layers (Transformers' ``create_sliding_window_causal_mask``; ``DynamicCache(config=...)``
    and ``StaticCache`` keep sliding layers' keys to the window) and one RoPE per layer type."""

    decoder_layer_class = Olmo3DecoderLayer
    rotary_class = Olmo3RotaryEmbedding
    make_final_norm = staticmethod(Olmo2Model.make_final_norm)

    def layer_types(self) -> list[str]:
        return self.config.layer_types

    def causal_masks(self, attention_mask, **mask_kwargs):
        if isinstance(attention_mask, dict):  # already prepared per layer type (e.g. by generate())
            return attention_mask
        builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        return {lt: builders[lt](attention_mask=attention_mask, **mask_kwargs) for lt in set(self.config.layer_types)}

    def position_embeddings(self, hidden_states, position_ids):
        return {lt: self.rotary_emb(hidden_states, position_ids, lt) for lt in self.rotary_emb.layer_types}


# ----------------------------------------------------------------------------------------------- causal LM heads
class _CausalLMHead:
    """Base model + ``lm_head`` (tied to the embedding when ``config.tie_word_embeddings``)."""

    base_model_class: type[PreTrainedModel]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    _fsdp_plan = {"lm_head": "keep_full_weight"}

    def __init__(self, config: OlmoConfig | Olmo2Config) -> None:
        super().__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @cache_argument
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # (batch, seq)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (batch, seq); -100 = ignored; shifted inside the loss
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,  # 0 = all positions, k = the last k, tensor = those indices
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        Example:

        ```python
        >>> import olmo_hf  # registers our classes for "olmo" / "olmo2"
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> model = AutoModelForCausalLM.from_pretrained("allenai/OLMo-2-0425-1B")
        >>> tokenizer = AutoTokenizer.from_pretrained("allenai/OLMo-2-0425-1B")
        >>> inputs = tokenizer("Language modeling is ", return_tensors="pt")
        >>> tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0])
        ```"""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # (batch, kept, hidden)
        logits = self.lm_head(hidden_states)  # (batch, kept, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: output_cache(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class OlmoForCausalLM(_CausalLMHead, OlmoPreTrainedModel, GenerationMixin):
    """OLMo with a language-modeling head; works with ``generate()``, ``pipeline()`` and every ``Cache``."""

    base_model_class = OlmoModel


class Olmo2ForCausalLM(_CausalLMHead, Olmo2PreTrainedModel, GenerationMixin):
    """Identical to [`OlmoForCausalLM`] except that it wraps an [`Olmo2Model`]."""

    base_model_class = Olmo2Model


class Olmo3ForCausalLM(_CausalLMHead, Olmo3PreTrainedModel, GenerationMixin):
    """Identical to [`Olmo2ForCausalLM`] except that it wraps an [`Olmo3Model`]."""

    base_model_class = Olmo3Model


# ----------------------------------------------------------------------------------------------- classification
class _SequenceClassifierHead(GenericForSequenceClassification):
    """Transformers' generic last-token classifier over our base model (built directly, not through AutoModel,
    so it works whether or not the Auto registration is active)."""

    base_model_class: type[PreTrainedModel]

    def __init__(self, config: OlmoConfig | Olmo2Config) -> None:
        PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = self.base_model_class(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


class OlmoForSequenceClassification(_SequenceClassifierHead, OlmoPreTrainedModel):
    base_model_class = OlmoModel


class Olmo2ForSequenceClassification(_SequenceClassifierHead, Olmo2PreTrainedModel):
    base_model_class = Olmo2Model


class Olmo3ForSequenceClassification(_SequenceClassifierHead, Olmo3PreTrainedModel):
    base_model_class = Olmo3Model
