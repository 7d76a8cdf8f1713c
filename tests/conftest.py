"""Shared fixtures: tiny OLMo / OLMo 2 checkpoints written by Transformers' BUILT-IN classes.

Every parity test loads the same directory twice, once into the built-in class and once into ours.
Weights are random but discriminating: a larger init std than the default and perturbed norm weights,
so a missing clip, a wrongly sized norm or a swapped projection shows up in the logits.
"""

import os
from dataclasses import dataclass, field

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every native kernel the machine builds, unmeasured: kernel tests must not depend on how busy the CI machine is
# when the fast path times its kernels (that decision is tested with given timings in test_fast_kernels.py).
os.environ.setdefault("OLMO_HF_NATIVE", "force")
torch.set_num_threads(1)  # tiny models: threads only add contention on the 2-core CI machines

VOCAB = 128
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    initializer_range=0.1,
    pad_token_id=1,
    eos_token_id=2,
    bos_token_id=None,
)


@dataclass(frozen=True)
class Variant:
    """One config variant of the parity matrix."""

    name: str
    family: str  # "olmo" or "olmo2"
    overrides: dict = field(default_factory=dict)

    @property
    def builtin_config_class(self):
        return transformers.OlmoConfig if self.family == "olmo" else transformers.Olmo2Config

    @property
    def builtin_model_class(self):
        return transformers.OlmoForCausalLM if self.family == "olmo" else transformers.Olmo2ForCausalLM

    def config_kwargs(self) -> dict:
        kwargs = dict(BASE)
        if self.family == "olmo2":
            kwargs.update(rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
        kwargs.update(self.overrides)
        return kwargs


VARIANTS = [
    Variant("olmo-tied-mha", "olmo", dict(tie_word_embeddings=True)),
    Variant("olmo-untied-clip_qkv", "olmo", dict(clip_qkv=0.3)),  # small enough to clamp these weights
    Variant("olmo-gqa", "olmo", dict(num_key_value_heads=2)),
    Variant("olmo-rope-linear", "olmo", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    Variant("olmo2-untied-mha", "olmo2"),
    Variant("olmo2-tied-gqa", "olmo2", dict(tie_word_embeddings=True, num_key_value_heads=2)),
    Variant("olmo2-head_dim", "olmo2", dict(head_dim=24)),  # head_dim != hidden / heads (OLMo-core presets)
    Variant(
        "olmo2-rope-yarn",
        "olmo2",
        dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 500000.0, "original_max_position_embeddings": 64}),
    ),
]
VARIANT_IDS = [v.name for v in VARIANTS]


# The small models of the loading, parallelism and training tests (GQA OLMo 2; OLMo with clip_qkv).
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.05,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=None,
)


# The 2-layer, 32-wide shape of the contract, compatibility and loading tests (fast enough to build per test).
TINY = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, eos_token_id=2, pad_token_id=1, max_position_embeddings=64,
)


def small_olmo2_config(**overrides):
    import olmo_hf

    return olmo_hf.Olmo2Config(**{**SMALL, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, **overrides})


def small_olmo_config(**overrides):
    import olmo_hf

    return olmo_hf.OlmoConfig(**{**SMALL, **overrides})


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights start at 1.0; move them away so that norms are actually tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))


def save_builtin_checkpoint(variant: Variant, path, seed: int = 0):
    """Build a random model with Transformers' built-in class and save it (safetensors) to ``path``."""
    torch.manual_seed(seed)
    config = variant.builtin_config_class(**variant.config_kwargs())
    model = variant.builtin_model_class(config).eval()
    perturb_norms(model, seed)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def builtin_checkpoints(tmp_path_factory):
    """{variant name: directory} of tiny checkpoints saved by the built-in classes (built once per session)."""
    root = tmp_path_factory.mktemp("builtin")
    return {v.name: save_builtin_checkpoint(v, root / v.name) for v in VARIANTS}


def left_padded_batch(seed: int = 0, lengths=(11, 7, 4)):
    """A (3, 11) left-padded batch of random ids and its attention mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), BASE["pad_token_id"], dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[row, width - n :] = 1
    return ids, mask


def check_cached_decoding(ref, ours, ids, mask, steps, atol):
    """Prefill a left-padded batch, then decode ``steps`` (batch, n) one token at a time, with a ``DynamicCache`` in
    each model: every step's logits equal the built-in model's and the uncached forward's. Returns our cache."""
    from transformers import DynamicCache

    from olmo_hf.compat import cache_kwargs

    def diff(a, b, keep=None):
        return ((a - b)[keep.bool()] if keep is not None else a - b).abs().max().item()

    full_ids = torch.cat([ids, steps], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(steps)], dim=1)
    with torch.no_grad():
        full = ours(full_ids, attention_mask=full_mask).logits
        caches = {m: DynamicCache(config=m.config) for m in (ref, ours)}
        outs = {m: m(ids, attention_mask=mask, **cache_kwargs(caches[m]), use_cache=True).logits for m in caches}
        assert diff(outs[ref], outs[ours], mask) <= atol
        for step in range(steps.shape[1]):
            step_mask = full_mask[:, : ids.shape[1] + step + 1]
            logits = {
                m: m(steps[:, step : step + 1], attention_mask=step_mask, **cache_kwargs(caches[m]), use_cache=True).logits
                for m in caches
            }
            assert diff(logits[ref], logits[ours]) <= atol
            assert diff(logits[ours][:, 0], full[:, ids.shape[1] + step]) <= atol
    return caches[ours]


@pytest.fixture
def restore_transformers_logging():
    """`olmo-hf run` sets Transformers' verbosity and progress bars for its process: give the next test the old
    state back."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    yield
    hf_logging.set_verbosity(verbosity)
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def enable_activation_checkpointing(model) -> None:
    """Transformers 5.23 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old
    name is deprecated there); 5.21 has only the old one."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def is_activation_checkpointing(model) -> bool:
    """``is_activation_checkpointing`` from 5.23 (``is_gradient_checkpointing`` deprecated there), else the old name."""
    return getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
