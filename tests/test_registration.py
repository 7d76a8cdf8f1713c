"""`import olmo_hf` claims the OLMo model types in Transformers' Auto classes, reversibly."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import olmo_hf

PUBLIC = [
    "OlmoConfig", "Olmo2Config", "OlmoModel", "OlmoForCausalLM", "OlmoForSequenceClassification",
    "Olmo2Model", "Olmo2ForCausalLM", "Olmo2ForSequenceClassification",
    "Olmo3Config", "Olmo3Model", "Olmo3ForCausalLM", "Olmo3ForSequenceClassification",
]
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, eos_token_id=2)


def test_package_exports_the_public_classes_from_our_modules():
    for name in PUBLIC:
        assert getattr(olmo_hf, name).__module__.startswith("olmo_hf."), name


@pytest.mark.parametrize("model_type, config_name", [("olmo", "OlmoConfig"), ("olmo2", "Olmo2Config"), ("olmo_1124", "Olmo2Config"), ("olmo3", "Olmo3Config")])
def test_auto_config_resolves_model_types_to_our_configs(model_type, config_name, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, model_type=model_type)))
    assert type(AutoConfig.from_pretrained(tmp_path)) is getattr(olmo_hf, config_name)


@pytest.mark.parametrize(
    "auto_class, suffix", [(AutoModel, "Model"), (AutoModelForCausalLM, "ForCausalLM"), (AutoModelForSequenceClassification, "ForSequenceClassification")]
)
@pytest.mark.parametrize("family", ["Olmo", "Olmo2", "Olmo3"])
def test_auto_model_classes_build_our_classes(auto_class, suffix, family):
    config = getattr(olmo_hf, f"{family}Config")(**TINY)
    assert type(auto_class.from_config(config)) is getattr(olmo_hf, f"{family}{suffix}")


def test_prerelease_olmo_1124_checkpoint_loads_as_olmo2_and_saves_as_olmo2(tmp_path):
    olmo_hf.Olmo2ForCausalLM(olmo_hf.Olmo2Config(**TINY)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="olmo_1124", architectures=["Olmo1124ForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model) is olmo_hf.Olmo2ForCausalLM
    model.save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["model_type"] == "olmo2"


@pytest.mark.parametrize("family", ["Olmo2", "Olmo3"])
def test_checkpoint_we_save_loads_in_plain_transformers(family, tmp_path):
    ours = getattr(olmo_hf, f"{family}ForCausalLM")(getattr(olmo_hf, f"{family}Config")(**TINY)).eval()
    ours.save_pretrained(tmp_path)
    builtin = getattr(transformers, f"{family}ForCausalLM").from_pretrained(tmp_path).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(builtin(ids).logits, ours(ids).logits, atol=1e-6)


def test_restore_builtin_puts_transformers_classes_back_and_register_undoes_it():
    config = olmo_hf.Olmo2Config(**TINY)
    try:
        olmo_hf.restore_builtin()
        assert not olmo_hf.is_registered()
        assert AutoConfig.for_model("olmo2").__class__ is transformers.Olmo2Config
        assert type(AutoModelForCausalLM.from_config(transformers.Olmo2Config(**TINY))) is transformers.Olmo2ForCausalLM
    finally:
        olmo_hf.register()
    assert olmo_hf.is_registered()
    assert type(AutoModelForCausalLM.from_config(config)) is olmo_hf.Olmo2ForCausalLM


def test_environment_variable_disables_autoregistration():
    code = "import olmo_hf, transformers; print(olmo_hf.is_registered(), type(transformers.AutoConfig.for_model('olmo2')).__module__)"
    env = dict(os.environ, OLMO_HF_NO_AUTOREGISTER="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "transformers.models.olmo2.configuration_olmo2"]


def test_builtin_classes_in_transformers_namespace_are_untouched():
    assert transformers.Olmo2ForCausalLM.__module__.startswith("transformers.models.olmo2")
