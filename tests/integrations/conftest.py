"""Fixtures of the integration suite: tiny checkpoints written by the built-in classes (see tiny_models.py).

tests/conftest.py (the parent directory's) is loaded too: HF_HUB_OFFLINE=1 and one torch thread.
"""

from __future__ import annotations

import pytest

from .tiny_models import FAMILIES, FAMILY_NAMES, save_builtin_checkpoint


@pytest.fixture(scope="session")
def causal_checkpoints(tmp_path_factory):
    """{family name: directory} of tiny causal-LM checkpoints saved by the built-in classes, with the demo tokenizer."""
    root = tmp_path_factory.mktemp("integrations-causal")
    return {name: save_builtin_checkpoint(FAMILIES[name], root / name) for name in FAMILY_NAMES}


@pytest.fixture(scope="session")
def classifier_checkpoints(tmp_path_factory):
    """{family name: directory} of tiny 3-label sequence classifiers saved by the built-in classes."""
    root = tmp_path_factory.mktemp("integrations-classifier")
    return {
        name: save_builtin_checkpoint(FAMILIES[name], root / name, classifier=True, seed=1) for name in FAMILY_NAMES
    }
