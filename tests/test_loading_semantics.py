"""Loading follows Transformers' semantics, plus olmo_hf's promise that no weight is silently random.

The matrix: a checkpoint that lacks a body weight, one whose weights have another shape than its config implies,
a causal LM without its untied ``lm_head``, and a classifier loaded with another number of labels; each loaded
with the defaults, ``ignore_mismatched_sizes=True``, ``output_loading_info=True`` (which hands back the report of
missing weights, as in Transformers, but waives no shape mismatch) and the opt-out ``allow_missing_weights=True``,
for both families. What loads is compared tensor by tensor with the file.
"""

from __future__ import annotations

import io
import re
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import olmo_hf
from olmo_hf.cli import main
from olmo_hf.modeling import MismatchedWeightsError, MissingWeightsError

from conftest import TINY

FAMILIES = {
    "olmo": (olmo_hf.OlmoConfig, olmo_hf.OlmoForCausalLM, olmo_hf.OlmoForSequenceClassification),
    "olmo2": (olmo_hf.Olmo2Config, olmo_hf.Olmo2ForCausalLM, olmo_hf.Olmo2ForSequenceClassification),
}
OPTIONS = {
    "default": {},
    "ignore_mismatched_sizes": {"ignore_mismatched_sizes": True},
    "output_loading_info": {"output_loading_info": True},
    "allow_missing_weights": {"allow_missing_weights": True},
}
DROPPED = "model.layers.1.mlp.down_proj.weight"


def save(family: str, path: Path, classifier: bool = False, **overrides) -> Path:
    config_class, lm_class, clf_class = FAMILIES[family]
    torch.manual_seed(0)
    (clf_class if classifier else lm_class)(config_class(**{**TINY, **overrides})).save_pretrained(path)
    return path


def edit_weights(path: Path, edit) -> None:
    weights = load_file(path / "model.safetensors")
    edit(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def load(auto_class, path: Path, option: str, **kwargs):
    """The model (and the loading report when the option asks for it)."""
    result = auto_class.from_pretrained(path, **OPTIONS[option], **kwargs)
    return result if option == "output_loading_info" else (result, None)


def assert_equals_file_except(model, path: Path, reinitialised: set[str]) -> None:
    """Every tensor of the file is in the model unchanged, except the re-initialised ones (which keep the model's
    shape, not the file's)."""
    weights, state = load_file(path / "model.safetensors"), model.state_dict()
    for key, tensor in weights.items():
        if key in reinitialised:
            assert state[key].shape != tensor.shape or not torch.equal(state[key], tensor), key
        else:
            assert torch.equal(state[key], tensor), key


# ---------------------------------------------------------------------------------------- a missing body weight
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ["default", "ignore_mismatched_sizes"])
def test_a_missing_body_weight_raises(family, option, tmp_path):
    edit_weights(save(family, tmp_path), lambda w: w.pop(DROPPED))
    with pytest.raises(MissingWeightsError, match=rf"{DROPPED}.*refusing to initialise them randomly"):
        load(AutoModelForCausalLM, tmp_path, option)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_body_weight_loads_randomly_only_when_allowed_explicitly(family, tmp_path):
    edit_weights(save(family, tmp_path), lambda w: w.pop(DROPPED))
    model, _ = load(AutoModelForCausalLM, tmp_path, "allow_missing_weights")
    assert_equals_file_except(model, tmp_path, reinitialised=set())
    assert model.state_dict()[DROPPED].shape == (32, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_loading_info_hands_back_the_missing_weights_instead_of_raising(family, tmp_path):
    """As in Transformers (its own model tests read the report): the caller has the list to act on."""
    edit_weights(save(family, tmp_path), lambda w: w.pop(DROPPED))
    model, info = load(AutoModelForCausalLM, tmp_path, "output_loading_info")
    assert info["missing_keys"] == {DROPPED}
    assert_equals_file_except(model, tmp_path, reinitialised=set())


# ------------------------------------------------------------------------------------ weights of the wrong shape
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ["default", "output_loading_info", "allow_missing_weights"])
def test_a_misshaped_weight_raises_a_runtime_error_naming_it(family, option, tmp_path):
    edit_config(save(family, tmp_path), intermediate_size=48)
    with pytest.raises(MismatchedWeightsError, match=r"down_proj\.weight has shape \(32, 64\) in the checkpoint but "
                       r"\(32, 48\)") as raised:
        load(AutoModelForCausalLM, tmp_path, option)
    assert isinstance(raised.value, RuntimeError)  # what Transformers raises for a size mismatch


@pytest.mark.parametrize("family", FAMILIES)
def test_ignore_mismatched_sizes_reinitialises_exactly_the_misshaped_weights(family, tmp_path):
    edit_config(save(family, tmp_path), intermediate_size=48)
    model, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, ignore_mismatched_sizes=True, output_loading_info=True
    )
    misshaped = {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")}
    assert {key for key, _, _ in info["mismatched_keys"]} == misshaped
    assert info["missing_keys"] == set()
    assert_equals_file_except(model, tmp_path, reinitialised=misshaped)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (32, 48)


# ------------------------------------------------------------------------------------- the untied output layer
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ["default", "ignore_mismatched_sizes"])
def test_a_causal_lm_without_its_untied_lm_head_raises(family, option, tmp_path):
    edit_weights(save(family, tmp_path), lambda w: w.pop("lm_head.weight"))
    with pytest.raises(MissingWeightsError, match="no lm_head.weight.*random output layer"):
        load(AutoModelForCausalLM, tmp_path, option)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ["allow_missing_weights", "output_loading_info"])
def test_a_new_lm_head_needs_the_opt_out_or_the_report(family, option, tmp_path):
    edit_weights(save(family, tmp_path), lambda w: w.pop("lm_head.weight"))
    model, info = load(AutoModelForCausalLM, tmp_path, option)
    assert_equals_file_except(model, tmp_path, reinitialised=set())
    assert info is None or info["missing_keys"] == {"lm_head.weight"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tied_causal_lm_needs_no_lm_head_in_the_file(family, tmp_path):
    save(family, tmp_path, tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ------------------------------------------------------------------------------ a classifier with other labels
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("option", ["default", "output_loading_info", "allow_missing_weights"])
def test_a_classifier_with_another_number_of_labels_raises_by_default(family, option, tmp_path):
    save(family, tmp_path, classifier=True, num_labels=3)
    with pytest.raises(RuntimeError, match=r"score\.weight has shape \(3, 32\) in the checkpoint but \(42, 32\)"):
        load(AutoModelForSequenceClassification, tmp_path, option, num_labels=42)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_classifier_fine_tunes_with_new_labels_under_ignore_mismatched_sizes(family, tmp_path):
    save(family, tmp_path, classifier=True, num_labels=3)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=42, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, _, _ in info["mismatched_keys"]} == {"score.weight"}
    assert model.score.weight.shape == (42, 32)
    assert_equals_file_except(model, tmp_path, reinitialised={"score.weight"})


@pytest.mark.parametrize("family", FAMILIES)
def test_a_causal_lm_checkpoint_gives_a_classifier_a_new_head(family, tmp_path):
    save(family, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    weights = load_file(tmp_path / "model.safetensors")
    for key, tensor in model.state_dict().items():
        if key != "score.weight":
            assert torch.equal(tensor, weights[key]), key


# --------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", f"does not contain 1 weight\\(s\\) of Olmo2ForCausalLM \\({DROPPED}\\)"),
        ("misshaped", r"does not fit its config: model\.layers\.0\.mlp\.down_proj\.weight has shape"),
        ("no_lm_head", "has no lm_head.weight"),
    ],
)
def test_the_cli_reports_each_as_one_line_with_exit_code_2(breakage, message, tmp_path, monkeypatch, capsys):
    from test_cli_run import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "tiny")
    if breakage == "missing":
        edit_weights(path, lambda w: w.pop(DROPPED))
    elif breakage == "misshaped":
        edit_config(path, intermediate_size=48)
    else:
        edit_weights(path, lambda w: w.pop("lm_head.weight"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("The import statement\n"))
    capsys.readouterr()
    code = main(["run", "--model", str(path), "--no-fast", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = [line for line in err.splitlines() if line.startswith("olmo-hf run: error:")]
    assert "Traceback" not in err
    assert re.search(message, line), line
