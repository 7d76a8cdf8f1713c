"""Tiny OLMo / OLMo 2 / OLMo 3 checkpoints written by Transformers' BUILT-IN classes, with the demo model's tokenizer,
and the pair (built-in model, our model) loaded from one of them.

Every integration test runs a tool twice on the same weights, once on the built-in class and once on ours (reached the
way users reach it: ``import olmo_hf``, then the Auto classes or a path), and compares what the tool returns.
The shapes follow tests/conftest.py's TINY (2 layers, 32 wide, GQA) with the demo tokenizer's 4096 tokens, so that
TRL, lm-eval and pipeline() get a real tokenizer and chat template offline; weights use a larger init std and perturbed
norms (tests/conftest.py's ``perturb_norms``) so that a wrong norm or projection shows up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import olmo_hf

DEMO = Path(olmo_hf.__file__).parent / "demo"

# float32 logits and losses of our classes are within 1e-5 of the built-in ones (tests/test_parity.py); a few
# optimizer steps amplify that little, so training comparisons get a slightly looser bound.
ATOL = 1e-5
TRAIN_ATOL = 1e-4


@dataclass(frozen=True)
class Family:
    """One model family: its built-in Transformers classes, ours, and the tiny config's extra fields."""

    name: str  # the model_type: "olmo", "olmo2", "olmo3"
    builtin_config: type
    builtin_causal_lm: type
    builtin_classifier: type
    ours_causal_lm: type
    ours_classifier: type
    overrides: dict = field(default_factory=dict)


FAMILIES = {
    "olmo": Family(
        "olmo", transformers.OlmoConfig, transformers.OlmoForCausalLM, transformers.OlmoForSequenceClassification,
        olmo_hf.OlmoForCausalLM, olmo_hf.OlmoForSequenceClassification,
        dict(clip_qkv=0.5),  # small enough to clamp these weights
    ),
    "olmo2": Family(
        "olmo2", transformers.Olmo2Config, transformers.Olmo2ForCausalLM, transformers.Olmo2ForSequenceClassification,
        olmo_hf.Olmo2ForCausalLM, olmo_hf.Olmo2ForSequenceClassification,
        dict(rms_norm_eps=1e-6),
    ),
    "olmo3": Family(
        "olmo3", transformers.Olmo3Config, transformers.Olmo3ForCausalLM, transformers.Olmo3ForSequenceClassification,
        olmo_hf.Olmo3ForCausalLM, olmo_hf.Olmo3ForSequenceClassification,
        # one sliding layer (a window shorter than the test sequences) and one full-attention layer
        dict(rms_norm_eps=1e-6, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    ),
}
FAMILY_NAMES = list(FAMILIES)


def tokenizer():
    """The demo model's byte-level BPE tokenizer (4096 tokens, `<|endoftext|>` = 0 = EOS, `<|padding|>` = 1, an
    OLMo-2-Instruct-style chat template)."""
    return AutoTokenizer.from_pretrained(DEMO)


def save_builtin_checkpoint(family: Family, path: Path, *, classifier: bool = False, seed: int = 0, **overrides) -> Path:
    """Build a random tiny model with the BUILT-IN class (causal LM, or a 3-label classifier) and save it with the
    demo tokenizer to ``path``."""
    tok = tokenizer()
    config = family.builtin_config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        **({"num_labels": 3} if classifier else {}), **family.overrides, **overrides,
    )
    torch.manual_seed(seed)
    model = (family.builtin_classifier if classifier else family.builtin_causal_lm)(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norm weights start at 1.0: move them so that norms are tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load_pair(family: Family, path: Path, *, classifier: bool = False):
    """(built-in model, our model), both float32 from ``path``; ours through the Auto class, as users load it."""
    if classifier:
        builtin = family.builtin_classifier.from_pretrained(path, dtype=torch.float32)
        ours = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        assert type(ours) is family.ours_classifier
    else:
        builtin = family.builtin_causal_lm.from_pretrained(path, dtype=torch.float32)
        ours = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert type(ours) is family.ours_causal_lm
    assert type(builtin).__module__.startswith("transformers.models.")
    return builtin, ours


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


TEXTS = [
    "The import statement finds a module, loads it and binds a name in the local namespace.",
    "A tuple is an immutable sequence; a list can be changed in place.",
    "Exceptions propagate up the call stack until a handler catches them.",
    "The with statement wraps a block with methods defined by a context manager.",
    "Generators produce their values lazily, one at a time.",
    "A dictionary maps hashable keys to arbitrary values.",
    "Decorators wrap a function or class and return a replacement.",
    "The garbage collector frees objects that are no longer reachable.",
]
