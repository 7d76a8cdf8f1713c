"""The embedded demo checkpoint (olmo_hf/demo/), the default model of `olmo-hf run`: complete, small,
tracked by git, documented, and loaded into olmo_hf's class. Its generations are checked in test_cli_run.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import olmo_hf

DEMO = Path(olmo_hf.__file__).parent / "demo"
REPO = Path(olmo_hf.__file__).parent.parent


def test_demo_checkpoint_is_complete_and_small():
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "training.json", "README.md"):
        assert (DEMO / name).is_file(), name
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert total < 8 * 2**20, f"{total / 2**20:.1f} MiB"
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model_type"] == "olmo2" and config["architectures"] == ["Olmo2ForCausalLM"]
    assert config["vocab_size"] == 4096


def test_demo_model_loads_into_our_class():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEMO)
    assert type(model) is olmo_hf.Olmo2ForCausalLM


def test_demo_readme_records_licence_and_provenance():
    readme = (DEMO / "README.md").read_text()
    for needle in ("PSF", "pydoc_data", "scripts/train_demo_model.py", "docs/demo_model_loss.png"):
        assert needle in readme, needle
    training = json.loads((DEMO / "training.json").read_text())
    assert training["corpus"]["sha256"] and training["settings"]["seed"] is not None
    assert (REPO / "docs" / "demo_model_loss.png").is_file()


def test_demo_weights_are_not_git_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", "olmo_hf/demo/model.safetensors"], cwd=REPO)
    assert result.returncode == 1, ".gitignore ignores the demo weights: they would not be committed"
