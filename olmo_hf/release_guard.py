# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""What protects users from a Transformers release newer than the newest one olmo_hf was tested with.

Such a release can change how ``generate()`` hands the cache to a model (5.24 renamed ``past_key_values`` to
``cache``: a plugin that missed it decoded every step from an empty cache and printed garbage, with exit code 0).
pip will not resolve one for ``pip install olmo_hf`` (pyproject caps the range), but ``pip install -U
transformers`` installs it anyway. So, on a release past :data:`NEWEST_TESTED` only, ``import olmo_hf``
(:func:`check_release`):

1. warns once, naming the release and the tested range;
2. runs :func:`verify_release`: a tiny random OLMo 2 generates greedily from a left-padded batch without a cache,
   with a ``DynamicCache`` and with a static cache, and a cached forward step is compared with the uncached logits
   (~0.5 s, once per process). It runs at import, outside any ``from_pretrained`` (whose meta-device and
   skip-init contexts would distort a model built inside them). If anything disagrees or fails, every olmo_hf model
   construction then raises :class:`UnsupportedTransformersError` (:func:`ensure_release_verified`), so wrong tokens
   are never produced silently; code that builds no model (conversion tables, ``--help``) keeps working.
   ``OLMO_HF_SKIP_RELEASE_CHECK=1`` skips the check, at the user's own risk.

On the tested releases nothing runs. docs/compat.md states the policy.
"""

from __future__ import annotations

import os
import warnings

import transformers
from packaging.version import Version

from .compat import CACHE_ARG, output_cache

__all__ = [
    "OLDEST_TESTED",
    "NEWEST_TESTED",
    "UnsupportedTransformersError",
    "check_release",
    "ensure_release_verified",
    "is_tested_release",
    "verify_release",
]

# The range CI proves (.ci/run runs the suite on both ends); pyproject.toml's `transformers` range is the same.
OLDEST_TESTED = "5.21.0"
NEWEST_TESTED = "5.25.0"
SKIP_ENV = "OLMO_HF_SKIP_RELEASE_CHECK"

_state: dict = {"failure": None}  # the UnsupportedTransformersError of a failed check, if any


class UnsupportedTransformersError(RuntimeError):
    """The running Transformers release makes olmo_hf's models decode wrongly."""


def running_release() -> str:
    return transformers.__version__


def is_tested_release(version: str | None = None) -> bool:
    """Whether ``version`` (default: the running release) is at most the newest tested release."""
    return Version(version or running_release()).release <= Version(NEWEST_TESTED).release


def check_release() -> None:
    """At ``import olmo_hf``: nothing on a tested release; otherwise a warning, and the self-check unless skipped."""
    if is_tested_release():
        return
    warnings.warn(
        f"olmo_hf was tested with transformers {OLDEST_TESTED} to {NEWEST_TESTED}, not {running_release()}; it "
        "checks that cached decoding still agrees with uncached decoding before building models "
        f"(install 'transformers<={NEWEST_TESTED}' to be on the tested range).",
        UserWarning,
        stacklevel=3,
    )
    if os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return
    try:
        verify_release()
    except UnsupportedTransformersError as e:
        _state["failure"] = e
        warnings.warn(f"{e} olmo_hf's models will refuse to load.", UserWarning, stacklevel=3)


def ensure_release_verified() -> None:
    """Raise the failed self-check's error, if any. Called whenever an olmo_hf model is built."""
    failure = _state["failure"]
    if failure is not None:
        raise UnsupportedTransformersError(str(failure)) from failure


def verify_release() -> None:
    """Raise :class:`UnsupportedTransformersError` unless a tiny model decodes identically with and without caches
    on the running release (greedy tokens and the last position's logits)."""
    import torch

    from .configuration import Olmo2Config
    from .modeling import Olmo2ForCausalLM

    release = running_release()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(0)
            config = Olmo2Config(
                vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, eos_token_id=None, pad_token_id=0,
            )
            model = Olmo2ForCausalLM(config).to(torch.float32).eval()
            ids = torch.randint(1, 64, (2, 6))
            mask = torch.ones_like(ids)
            mask[0, :2] = 0  # left padding
            with torch.no_grad():
                runs = {
                    name: model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                                         do_sample=False, **options)
                    for name, options in {
                        "no cache": {"use_cache": False},
                        "DynamicCache": {"use_cache": True},
                        "static cache": {"use_cache": True, "cache_implementation": "static"},
                    }.items()
                }
                # (the padded row's mask is left out on purpose: both forwards see the same unmasked tokens)
                full = model(runs["no cache"], use_cache=False).logits[:, -1]
                first = model(runs["no cache"][:, :-1], use_cache=True)
                last = runs["no cache"][:, -1:]
                step = model(last, use_cache=True, **{CACHE_ARG: output_cache(first)}).logits[:, -1]
    except Exception as e:  # noqa: BLE001 - any failure here means the release breaks us
        raise UnsupportedTransformersError(
            f"transformers {release} is newer than the newest release olmo_hf was tested with ({NEWEST_TESTED}), "
            f"and olmo_hf's self-check fails on it ({type(e).__name__}: {e}); install "
            f"'transformers<={NEWEST_TESTED}' or a newer olmo_hf."
        ) from e
    differing = [name for name, tokens in runs.items() if not torch.equal(tokens, runs["no cache"])]
    if differing or not torch.allclose(step, full, atol=1e-4, rtol=1e-4):
        what = ", ".join(differing) if differing else "cached logits"
        raise UnsupportedTransformersError(
            f"transformers {release} is newer than the newest release olmo_hf was tested with ({NEWEST_TESTED}), "
            f"and on it olmo_hf's models decode differently with a cache than without ({what}); install "
            f"'transformers<={NEWEST_TESTED}' or a newer olmo_hf."
        )

