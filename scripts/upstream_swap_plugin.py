# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""pytest plugin: run Hugging Face Transformers' own OLMo / OLMo 2 / OLMo 3 model tests against olmo_hf's classes.

Load it with ``-p upstream_swap_plugin`` (this folder on ``PYTHONPATH``); ``scripts/run_upstream_model_tests.py``
does that for the ``olmo_hf`` run. Before any test module is collected it imports the provider module (``olmo_hf``
by default, which also registers it with the Auto classes) and replaces, by name, the OLMo classes that the upstream
test modules pick up with ``from transformers import OlmoForCausalLM``:

- in the ``transformers`` top-level namespace,
- in the lazy packages ``transformers.models.olmo`` / ``transformers.models.olmo2`` (the top-level lazy module and the
  Auto mappings resolve names through them),
- in ``transformers.models.olmo{,2}.modeling_olmo{,2}`` and ``.configuration_olmo{,2}``.

Upstream's ``tests/test_pipeline_mixin.py`` calls ``transformers.utils.direct_transformers_import``, which re-executes
``transformers/__init__.py`` and puts a *fresh* lazy module into ``sys.modules["transformers"]`` half-way through the
import of the first test module. Two things keep the swap alive across that: the fresh module resolves names through
the patched sub-packages, and ``direct_transformers_import`` is wrapped to patch the fresh module again.

After collection the plugin checks that every collected test module and test class really sees the provider's classes
(module globals, ``all_model_classes``, ``pipeline_model_mapping``) and aborts the session if one does not, so a run
can never silently test the built-in classes.

Environment:
    UPSTREAM_SWAP_PROVIDER  module to take the classes from (default ``olmo_hf``). ``transformers`` swaps the built-in
                            classes in for themselves, a no-op that is useful to check the mechanism.
"""

import importlib
import os
import sys

import pytest


PROVIDER_ENV = "UPSTREAM_SWAP_PROVIDER"
DEFAULT_PROVIDER = "olmo_hf"

CONFIG_NAMES = {
    "olmo": ("OlmoConfig",),
    "olmo2": ("Olmo2Config",),
    "olmo3": ("Olmo3Config",),
}
MODEL_NAMES = {
    "olmo": (
        "OlmoPreTrainedModel",
        "OlmoModel",
        "OlmoForCausalLM",
        "OlmoForSequenceClassification",
    ),
    "olmo2": (
        "Olmo2PreTrainedModel",
        "Olmo2Model",
        "Olmo2ForCausalLM",
        "Olmo2ForSequenceClassification",
    ),
    "olmo3": (
        "Olmo3PreTrainedModel",
        "Olmo3Model",
        "Olmo3ForCausalLM",
        "Olmo3ForSequenceClassification",
    ),
}
SWAP_NAMES = tuple(name for names in (*CONFIG_NAMES.values(), *MODEL_NAMES.values()) for name in names)

_state = {"provider": None, "classes": None, "patched_modules": []}


def load_provider_classes(provider_name):
    """Import the provider module and return ``{name: class}`` for every name in ``SWAP_NAMES``."""
    provider = importlib.import_module(provider_name)
    missing = [name for name in SWAP_NAMES if not hasattr(provider, name)]
    if missing:
        raise pytest.UsageError(f"{PROVIDER_ENV}={provider_name!r} does not export {', '.join(missing)}")
    return {name: getattr(provider, name) for name in SWAP_NAMES}


def _set_names(module, names, classes):
    for name in names:
        setattr(module, name, classes[name])


def apply_swap(classes):
    """Put ``classes`` in place of Transformers' own OLMo classes. Idempotent; returns the patched module names."""
    patched = []
    for model_type in CONFIG_NAMES:
        package = importlib.import_module(f"transformers.models.{model_type}")
        configuration = importlib.import_module(f"transformers.models.{model_type}.configuration_{model_type}")
        modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        config_names, model_names = CONFIG_NAMES[model_type], MODEL_NAMES[model_type]
        _set_names(configuration, config_names, classes)
        _set_names(modeling, model_names, classes)
        _set_names(package, config_names + model_names, classes)
        patched += [configuration.__name__, modeling.__name__, package.__name__]
    # Whatever object sys.modules["transformers"] is right now (see the module docstring for why it can change).
    _set_names(sys.modules["transformers"], SWAP_NAMES, classes)
    patched.append("transformers")
    return patched


def _wrap_direct_transformers_import(classes):
    """Re-apply the swap whenever upstream test code re-executes transformers/__init__.py."""
    import transformers.utils
    import transformers.utils.import_utils as import_utils

    original = import_utils.direct_transformers_import
    if getattr(original, "_olmo_hf_swap_wrapper", False):
        return

    def direct_transformers_import(*args, **kwargs):
        module = original(*args, **kwargs)
        apply_swap(classes)
        return module

    direct_transformers_import._olmo_hf_swap_wrapper = True
    direct_transformers_import.__wrapped__ = original
    import_utils.direct_transformers_import = direct_transformers_import
    transformers.utils.direct_transformers_import = direct_transformers_import


def pytest_configure(config):
    provider_name = os.environ.get(PROVIDER_ENV, DEFAULT_PROVIDER)
    classes = load_provider_classes(provider_name)
    _state.update(provider=provider_name, classes=classes)
    _wrap_direct_transformers_import(classes)
    _state["patched_modules"] = apply_swap(classes)


def pytest_report_header(config):
    if _state["provider"] is None:
        return None
    return [
        f"upstream_swap_plugin: OLMo classes taken from {_state['provider']!r}",
        f"upstream_swap_plugin: patched {', '.join(_state['patched_modules'])}",
    ]


def pytest_collectstart(collector):
    # Cheap and idempotent: makes sure the current sys.modules["transformers"] is patched before each module imports.
    if _state["classes"] is not None and isinstance(collector, pytest.Module):
        apply_swap(_state["classes"])


def _foreign_classes(values, classes):
    """Names among ``values`` that carry an OLMo class name but are not the provider's class."""
    wrong = []
    for value in values:
        name = getattr(value, "__name__", None)
        if name in classes and value is not classes[name]:
            wrong.append(f"{name} from {value.__module__}")
    return wrong


def pytest_collection_modifyitems(session, config, items):
    classes = _state["classes"]
    if classes is None:
        return
    problems = set()
    seen_modules, seen_classes = set(), set()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__ not in seen_modules:
            seen_modules.add(module.__name__)
            for name in SWAP_NAMES:
                value = module.__dict__.get(name)
                if value is not None and value is not classes[name]:
                    problems.add(f"{module.__name__}.{name} is {value.__module__}.{value.__name__}")
        cls = getattr(item, "cls", None)
        if cls is not None and cls not in seen_classes:
            seen_classes.add(cls)
            values = list(getattr(cls, "all_model_classes", None) or ())
            values += list((getattr(cls, "pipeline_model_mapping", None) or {}).values())
            for wrong in _foreign_classes(values, classes):
                problems.add(f"{cls.__module__}.{cls.__name__} tests {wrong}")
    if problems:
        raise pytest.UsageError(
            "upstream_swap_plugin: the swap did not reach every test:\n  " + "\n  ".join(sorted(problems))
        )
