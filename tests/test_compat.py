"""olmo_hf follows the running Transformers release (olmo_hf.compat), and guards against untested ones
(olmo_hf.release_guard). These run on every release CI tests (the oldest and the newest supported)."""

from __future__ import annotations

import inspect
import logging
import warnings

import pytest
import torch
import transformers
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

import olmo_hf
from olmo_hf import compat, release_guard
from olmo_hf.modules import Olmo2RMSNorm, apply_rotary_pos_emb

from conftest import TINY, enable_activation_checkpointing

FAMILIES = {
    "olmo": (olmo_hf.OlmoConfig, olmo_hf.OlmoForCausalLM, transformers.OlmoConfig),
    "olmo2": (olmo_hf.Olmo2Config, olmo_hf.Olmo2ForCausalLM, transformers.Olmo2Config),
    "olmo3": (olmo_hf.Olmo3Config, olmo_hf.Olmo3ForCausalLM, transformers.Olmo3Config),
}
OLMO3_EXTRA = dict(num_hidden_layers=4, sliding_window=4)  # three sliding layers, shorter than the test ids


def tiny(family: str = "olmo2"):
    config_class, model_class, _ = FAMILIES[family]
    torch.manual_seed(0)
    return model_class(config_class(**{**TINY, **(OLMO3_EXTRA if family == "olmo3" else {})})).eval()


def ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(3, 96, shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- the cache argument
def test_the_cache_argument_has_the_name_the_release_gives_it():
    release_name = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
    assert compat.CACHE_ARG == release_name
    for cls in (olmo_hf.Olmo2Model, olmo_hf.Olmo2ForCausalLM, olmo_hf.OlmoModel, olmo_hf.OlmoForCausalLM,
                olmo_hf.Olmo3Model, olmo_hf.Olmo3ForCausalLM):
        assert release_name in inspect.signature(cls.forward).parameters, cls.__name__


def test_the_sliding_window_mask_takes_the_cache_under_the_same_name():
    """mask_cache_kwargs serves both mask builders (OLMo 3): their cache arguments were renamed together (5.24)."""
    assert compat.CACHE_ARG in inspect.signature(create_sliding_window_causal_mask).parameters


def test_model_outputs_carry_the_cache_under_the_release_field():
    out = tiny()(ids(), use_cache=True)
    assert isinstance(out[compat.CACHE_FIELD], DynamicCache)
    assert compat.CACHE_FIELD in out.keys()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_either_cache_name_continues_from_the_cache(family, name):
    model, tokens = tiny(family), ids()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old name is deprecated from 5.24, as for the built-in classes
        full = model(tokens).logits[:, -1]
        prefix = model(tokens[:, :-1], use_cache=True)
        step = model(tokens[:, -1:], use_cache=True, **{name: compat.output_cache(prefix)}).logits[:, -1]
    assert (step - full).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_emits_no_deprecation_warning_from_our_code(family, caplog):
    model = tiny(family)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model.generate(ids(), max_new_tokens=4, do_sample=False)
        model(ids(), use_cache=True)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "deprecat" in m.lower()], messages


@pytest.mark.parametrize("family", FAMILIES)
def test_config_declares_what_the_builtin_config_declares(family):
    ours, _, builtin = FAMILIES[family]
    assert getattr(ours, "keys_to_ignore_at_inference", None) == getattr(builtin, "keys_to_ignore_at_inference", None)


def test_gradient_checkpointing_drops_the_cache_under_the_release_name():
    """GradientCheckpointingLayer clears the cache only under the name the release uses; ours hands it over so."""
    model = tiny().train()
    enable_activation_checkpointing(model)
    out = model(ids(), use_cache=True, labels=ids())
    out.loss.backward()
    assert compat.output_cache(out) is None or compat.output_cache(out).get_seq_length() == 0


# ---------------------------------------------------------------------------------------------------- hub kernels
def test_no_hub_kernel_replaces_olmo_norms_or_rotary():
    """Transformers 5.25 maps no Hub kernel onto OLMo (the Liger RMSNorm is Llama's, cast before the weight);
    neither do we, on any release."""
    assert not hasattr(Olmo2RMSNorm, "kernel_layer_name")
    assert not hasattr(apply_rotary_pos_emb, "kernel_layer_name")
    for module in tiny().modules():
        if type(module).__module__.startswith("olmo_hf"):
            assert not hasattr(type(module), "kernel_layer_name"), type(module).__name__


# -------------------------------------------------------------------------------------------- untested releases
@pytest.fixture
def fresh_guard(monkeypatch):
    monkeypatch.setattr(release_guard, "_state", {"failure": None})
    monkeypatch.delenv(release_guard.SKIP_ENV, raising=False)
    return release_guard


def simulate_release(monkeypatch, version: str) -> None:
    monkeypatch.setattr(release_guard, "running_release", lambda: version)


def test_a_tested_release_runs_no_check(fresh_guard, monkeypatch):
    monkeypatch.setattr(fresh_guard, "verify_release", lambda: pytest.fail("checked a tested release"))
    simulate_release(monkeypatch, release_guard.NEWEST_TESTED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh_guard.check_release()
    assert not fresh_guard.is_tested_release("5.26.0") and fresh_guard.is_tested_release("5.25.0")


def test_an_untested_release_warns_and_verifies_at_import(fresh_guard, monkeypatch):
    simulate_release(monkeypatch, "5.99.0")
    calls = []
    original = fresh_guard.verify_release
    monkeypatch.setattr(fresh_guard, "verify_release", lambda: calls.append(original()))
    with pytest.warns(UserWarning, match=r"tested with transformers 5\.21\.0 to 5\.25\.0, not 5\.99\.0"):
        fresh_guard.check_release()
    assert len(calls) == 1 and fresh_guard._state["failure"] is None


def test_models_load_normally_on_an_untested_release_that_passed_the_check(fresh_guard, monkeypatch, tmp_path):
    """from_pretrained builds the model under meta-device / skip-init contexts: nothing may be checked there."""
    simulate_release(monkeypatch, "5.99.0")
    with pytest.warns(UserWarning):
        fresh_guard.check_release()
    tiny().save_pretrained(tmp_path)
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(model.lm_head.weight, tiny().lm_head.weight)


def test_an_untested_release_that_breaks_cached_decoding_refuses_to_build_models(fresh_guard, monkeypatch):
    """The 5.24 failure mode: layers no longer receive the cache, so each step decodes from an empty one."""
    simulate_release(monkeypatch, "5.99.0")
    monkeypatch.setattr(olmo_hf.modeling, "cache_kwargs", lambda cache: {"not_the_cache_argument": cache})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh_guard.check_release()
    assert any("models will refuse to load" in str(w.message) for w in caught)
    with pytest.raises(olmo_hf.UnsupportedTransformersError, match=r"transformers 5\.99\.0 .* 'transformers<=5\.25\.0'"):
        tiny()


def test_the_check_can_be_skipped_explicitly(fresh_guard, monkeypatch):
    simulate_release(monkeypatch, "5.99.0")
    monkeypatch.setenv(release_guard.SKIP_ENV, "1")
    monkeypatch.setattr(fresh_guard, "verify_release", lambda: pytest.fail("checked although skipped"))
    with pytest.warns(UserWarning, match="not 5.99.0"):
        fresh_guard.check_release()
    tiny()


def test_pyproject_declares_exactly_the_tested_range():
    import re
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"transformers\b", d)]
    assert spec == f"transformers>={release_guard.OLDEST_TESTED},<={release_guard.NEWEST_TESTED}"


def test_the_running_release_is_in_the_tested_range():
    from packaging.version import Version

    running = Version(transformers.__version__)
    assert Version(release_guard.OLDEST_TESTED) <= running <= Version(release_guard.NEWEST_TESTED)
