"""OlmoConfig / Olmo2Config: every documented field, legacy keys, round trips and clear validation errors."""

import json

import pytest
import transformers
from huggingface_hub.errors import StrictDataclassFieldValidationError

from olmo_hf import Olmo2Config, Olmo3Config, OlmoConfig
from olmo_hf.presets import PRESETS, preset_config

COMMON_FIELDS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters", "attention_bias",
    "attention_dropout", "head_dim",
}


def test_olmo_config_declares_every_documented_field():
    assert COMMON_FIELDS | {"clip_qkv"} <= set(OlmoConfig.__dataclass_fields__)


def test_olmo2_config_declares_rms_norm_eps_and_no_clip_qkv():
    fields = set(Olmo2Config.__dataclass_fields__)
    assert COMMON_FIELDS | {"rms_norm_eps"} <= fields
    assert "clip_qkv" not in fields


def test_defaults_match_the_builtin_configs():
    for ours, builtin in [(OlmoConfig(), transformers.OlmoConfig()), (Olmo2Config(), transformers.Olmo2Config())]:
        theirs = builtin.to_dict()
        for key, value in ours.to_dict().items():
            if key in theirs and key != "transformers_version":
                assert theirs[key] == value, key


def test_model_types():
    assert (OlmoConfig.model_type, Olmo2Config.model_type) == ("olmo", "olmo2")


def test_num_key_value_heads_defaults_to_num_attention_heads():
    assert OlmoConfig(num_attention_heads=8, hidden_size=64).num_key_value_heads == 8


def test_head_dim_defaults_to_hidden_over_heads_and_is_stored():
    config = Olmo2Config(hidden_size=64, num_attention_heads=4)
    assert config.head_dim == 16
    assert config.to_dict()["head_dim"] == 16


def test_explicit_head_dim_allows_heads_that_do_not_divide_hidden():
    assert Olmo2Config(hidden_size=12, num_attention_heads=4, head_dim=4).head_dim == 4  # OLMo-core olmo2_1M


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if PRESETS[n]["model_type"] != "olmo3"))  # olmo3: test_olmo3
def test_published_config_json_with_legacy_rope_keys_loads_and_round_trips(name, tmp_path):
    raw = dict(PRESETS[name], architectures=["X"], torch_dtype="float32", transformers_version="4.47.0")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(config).__module__ == "olmo_hf.configuration"
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": raw["rope_theta"]}
    assert config.hidden_size == raw["hidden_size"] and config.vocab_size == raw["vocab_size"]
    config.save_pretrained(tmp_path / "again")
    again = transformers.AutoConfig.from_pretrained(tmp_path / "again")
    assert again.to_diff_dict() == config.to_diff_dict()


def test_legacy_rope_scaling_becomes_rope_parameters():
    config = OlmoConfig(rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


def test_saved_config_has_no_private_keys_and_loads_in_plain_transformers(tmp_path):
    preset_config("allenai/OLMo-2-0325-32B").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not [key for key in saved if key.startswith("_")]
    assert saved["model_type"] == "olmo2"
    builtin = transformers.Olmo2Config.from_pretrained(tmp_path)
    assert (builtin.num_key_value_heads, builtin.rms_norm_eps, builtin.head_dim) == (8, 1e-6, 128)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_size=65, num_attention_heads=4), "num_attention_heads"),
        (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
        (dict(hidden_act="swishy"), "hidden_act"),
        (dict(hidden_size=-64), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(hidden_size=64, num_attention_heads=4, head_dim=-8), "head_dim"),
        (dict(attention_dropout=1.5), "attention_dropout"),
    ],
)
@pytest.mark.parametrize("config_class", [OlmoConfig, Olmo2Config, Olmo3Config])
def test_invalid_combination_raises_value_error_naming_the_field(config_class, kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        config_class(**kwargs)


def test_non_positive_clip_qkv_is_rejected():
    with pytest.raises(ValueError, match="`clip_qkv`"):
        OlmoConfig(clip_qkv=0.0)


def test_non_positive_rms_norm_eps_is_rejected():
    with pytest.raises(ValueError, match="`rms_norm_eps`"):
        Olmo2Config(rms_norm_eps=-1e-6)


@pytest.mark.parametrize("kwargs", [dict(hidden_size="2048"), dict(clip_qkv="8"), dict(tie_word_embeddings="yes")])
def test_wrong_field_type_is_rejected_naming_the_field(kwargs):
    field = next(iter(kwargs))
    with pytest.raises(StrictDataclassFieldValidationError, match=field):
        OlmoConfig(**kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="allenai/OLMo-2-0425-1B"):
        preset_config("allenai/OLMo-3-7B")


def test_config_repr_names_the_class_and_key_fields():
    text = repr(Olmo2Config(hidden_size=64, num_attention_heads=4))
    assert "Olmo2Config" in text and '"hidden_size": 64' in text


# ---------------------------------------------------------------------------------------- RoPE and numeric fields
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


@pytest.mark.parametrize("config_class", [OlmoConfig, Olmo2Config])
@pytest.mark.parametrize(
    "rope_parameters, message",
    [
        ({"rope_type": "default", "rope_theta": 0.0}, "`rope_parameters.rope_theta` must be a positive number, got 0.0"),
        ({"rope_type": "default", "rope_theta": -1.0}, "`rope_parameters.rope_theta` must be a positive number"),
        ({"rope_type": "default", "rope_theta": float("nan")}, "`rope_parameters.rope_theta` must be a positive"),
        ({"rope_type": "default", "rope_theta": "1e4"}, "`rope_parameters.rope_theta` must be a positive number, "
                                                       "got '1e4'"),
        ({"rope_type": "nope", "rope_theta": 1e4}, "`rope_parameters.rope_type` 'nope' is not a RoPE type"),
        ({"rope_type": "linear", "rope_theta": 1e4, "factor": -2.0}, "`rope_parameters.factor` must be a positive"),
        ({"rope_type": "linear", "rope_theta": 1e4, "factor": 0}, "`rope_parameters.factor` must be a positive"),
        ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 64.5},
         "`rope_parameters.original_max_position_embeddings` must be a positive integer, got 64.5"),
        ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "beta_fast": "32"},
         "`rope_parameters.beta_fast` must be a finite number"),
        ({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.5},
         "`rope_parameters.partial_rotary_factor` must be a number in \\(0, 1\\]"),
    ],
)
def test_bad_rope_parameters_raise_value_error_naming_the_field(config_class, rope_parameters, message):
    with pytest.raises(ValueError, match=message):
        config_class(**TINY, rope_parameters=rope_parameters)


@pytest.mark.parametrize("config_class", [OlmoConfig, Olmo2Config])
def test_legacy_rope_theta_of_zero_is_rejected(config_class):
    with pytest.raises(ValueError, match="`rope_parameters.rope_theta` must be a positive number, got 0"):
        config_class(**TINY, rope_theta=0)


@pytest.mark.parametrize("rope_type", ["default", "linear", "dynamic", "yarn", "llama3"])
def test_every_known_rope_type_is_accepted(rope_type):
    extra = {"factor": 2.0} if rope_type != "default" else {}
    if rope_type == "llama3":
        extra.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    config = Olmo2Config(**TINY, rope_parameters={"rope_type": rope_type, "rope_theta": 1e4, **extra})
    assert config.rope_parameters["rope_type"] == rope_type


def test_non_finite_rms_norm_eps_is_rejected():
    with pytest.raises(ValueError, match="`rms_norm_eps` must be a positive number, got nan"):
        Olmo2Config(**TINY, rms_norm_eps=float("nan"))


def test_negative_initializer_range_is_rejected():
    with pytest.raises(ValueError, match="`initializer_range` must be a finite number >= 0, got -0.1"):
        OlmoConfig(**TINY, initializer_range=-0.1)


def test_a_config_json_with_a_bad_rope_theta_fails_to_load_naming_the_field(tmp_path):
    Olmo2Config(**TINY).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["rope_parameters"]["rope_theta"] = -10000.0
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="rope_theta` must be a positive number, got -10000.0"):
        Olmo2Config.from_pretrained(tmp_path)
