"""olmo_hf.convert refuses what it cannot convert, with one clear error, and never half-writes ``dst``.

Checkpoints here are synthetic (random tensors in the original key layouts, written with torch and
PyYAML only), so these specs run without the reference venvs.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

from olmo_hf.convert import ConversionError, convert_checkpoint, detect_format
from olmo_hf.convert.hf_olmo import hf_olmo_config_to_kwargs

from ai2_olmo_checkpoints import (
    AI2_OLMO1, AI2_OLMO2, D, HEADS, LAYERS, MLP, VOCAB, ai2_olmo_state_dict, write_ai2_olmo,
)


@pytest.fixture
def ai2_ckpt(tmp_path) -> Path:
    return write_ai2_olmo(tmp_path / "ckpt")


def olmo_core_model_config():
    norm = {"name": "rms", "eps": 1e-6, "bias": False}
    return {
        "d_model": D, "vocab_size": VOCAB, "n_layers": LAYERS, "tie_word_embeddings": False,
        "block": {
            "name": "reordered_norm",
            "sequence_mixer": {
                "name": "default", "n_heads": HEADS, "n_kv_heads": None, "bias": False,
                "rope": {"name": "default", "theta": 500000}, "qk_norm": norm, "use_head_qk_norm": False,
            },
            "layer_norm": norm,
            "feed_forward": {"hidden_size": MLP // 2, "name": "default", "bias": False},
        },
        "lm_head": {"name": "default", "layer_norm": norm, "bias": False},
    }


def write_olmo_core_dcp(path: Path) -> Path:
    """An OLMo-core step dir whose model_and_optim/ is written by torch.distributed.checkpoint itself."""
    import torch.distributed.checkpoint as dcp

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": olmo_core_model_config()}))
    g = torch.Generator().manual_seed(0)
    sd = {"embeddings.weight": torch.randn(VOCAB, D, generator=g), "lm_head.norm.weight": torch.ones(D),
          "lm_head.w_out.weight": torch.randn(VOCAB, D, generator=g)}
    for i in range(LAYERS):
        b = f"blocks.{i}."
        for w in ("w_q", "w_k", "w_v", "w_out"):
            sd[b + f"attention.{w}.weight"] = torch.randn(D, D, generator=g)
        for n in ("attention.q_norm", "attention.k_norm", "attention_norm", "feed_forward_norm"):
            sd[b + f"{n}.weight"] = torch.ones(D)
        sd[b + "feed_forward.w1.weight"] = torch.randn(MLP // 2, D, generator=g)
        sd[b + "feed_forward.w3.weight"] = torch.randn(MLP // 2, D, generator=g)
        sd[b + "feed_forward.w2.weight"] = torch.randn(D, MLP // 2, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... save in a single process"
        dcp.save({"model": sd}, checkpoint_id=str(path / "model_and_optim"), no_dist=True)
    return path


# --- format ---------------------------------------------------------------------------------------


def test_unknown_format_name_is_rejected(ai2_ckpt, tmp_path):
    with pytest.raises(ConversionError, match="unknown format 'megatron'"):
        convert_checkpoint(ai2_ckpt, tmp_path / "out", format="megatron")
    assert not (tmp_path / "out").exists()


def test_unrecognised_directory_is_rejected(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ConversionError, match="not a recognised OLMo checkpoint"):
        detect_format(tmp_path)


def test_missing_source_is_rejected(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out")


def test_transformers_checkpoint_is_not_converted_again(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "olmo2", "hidden_size": 16}))
    with pytest.raises(ConversionError, match="already a Transformers 'olmo2' checkpoint"):
        detect_format(tmp_path)


def test_wrong_explicit_format_is_a_clear_error(ai2_ckpt, tmp_path):
    with pytest.raises(ConversionError, match="config.json does not exist"):
        convert_checkpoint(ai2_ckpt, tmp_path / "out", format="olmo_core")


def test_each_format_is_detected(ai2_ckpt, tmp_path):
    core = write_olmo_core_dcp(tmp_path / "core")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({**AI2_OLMO1, "model_type": "hf_olmo"}))
    assert (detect_format(ai2_ckpt), detect_format(core), detect_format(core / "model_and_optim"),
            detect_format(legacy)) == ("olmo_trainer", "olmo_core", "olmo_core", "hf_olmo")


# --- truncated / corrupt files --------------------------------------------------------------------


def test_truncated_model_pt_is_a_clear_error(ai2_ckpt, tmp_path):
    data = (ai2_ckpt / "model.pt").read_bytes()
    (ai2_ckpt / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_checkpoint(ai2_ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_dcp_shard_is_a_clear_error(tmp_path):
    ckpt = write_olmo_core_dcp(tmp_path / "core")
    shard = max((ckpt / "model_and_optim").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_corrupt_dcp_metadata_is_a_clear_error(tmp_path):
    ckpt = write_olmo_core_dcp(tmp_path / "core")
    meta = ckpt / "model_and_optim" / ".metadata"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_checkpoint(ckpt, tmp_path / "out")


# --- destination ----------------------------------------------------------------------------------


def test_non_empty_dst_is_refused_and_left_untouched(ai2_ckpt, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty; pass overwrite=True"):
        convert_checkpoint(ai2_ckpt, dst)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # no temp dirs left behind


def test_overwrite_replaces_an_earlier_conversion(ai2_ckpt, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")  # an earlier (here: broken) conversion's output
    (dst / "model.pt").write_bytes(b"old")
    convert_checkpoint(ai2_ckpt, dst, overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


def test_overwrite_never_deletes_files_a_conversion_did_not_write(ai2_ckpt, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="holds notes.txt, which a conversion does not write"):
        convert_checkpoint(ai2_ckpt, dst, overwrite=True)
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "config.json").read_text() == "{}"


def test_failed_conversion_with_overwrite_leaves_dst_untouched(tmp_path):
    sd = ai2_olmo_state_dict()
    del sd["transformer.blocks.1.ff_out.weight"]
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=sd)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    with pytest.raises(ConversionError):
        convert_checkpoint(ckpt, dst, overwrite=True)
    assert [p.name for p in dst.iterdir()] == ["config.json"] and (dst / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


# --- weights that do not match the config ---------------------------------------------------------


def test_weights_of_another_width_are_a_clear_error(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=ai2_olmo_state_dict(d=2 * D))
    with pytest.raises(ConversionError, match=r"att_proj.weight has shape \(96, 32\) but the config implies 48"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_mlp_of_another_size_is_a_clear_error(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=ai2_olmo_state_dict(mlp=2 * MLP))
    with pytest.raises(ConversionError, match="fused up/gate rows"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_vocab_of_another_size_is_a_clear_error(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=ai2_olmo_state_dict(vocab=2 * VOCAB))
    expected = r"do not match its config \(shape .*model.embed_tokens.weight \(256, 16\) vs \(128, 16\)"
    with pytest.raises(ConversionError, match=expected):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_missing_layer_weight_is_a_clear_error(tmp_path):
    sd = ai2_olmo_state_dict()
    del sd["transformer.blocks.1.ff_out.weight"]
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=sd)
    with pytest.raises(ConversionError, match=r"missing: model.layers.1.mlp.down_proj.weight"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_extra_layer_is_a_clear_error(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=ai2_olmo_state_dict(layers=LAYERS + 1))
    with pytest.raises(ConversionError, match=r"unexpected: model.layers.2"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_unknown_original_key_is_a_clear_error(tmp_path):
    sd = {**ai2_olmo_state_dict(), "transformer.blocks.0.att_proj.bias": torch.zeros(3 * D)}
    ckpt = write_ai2_olmo(tmp_path / "ckpt", state_dict=sd)
    with pytest.raises(ConversionError, match=r"cannot map: blocks.0.att_proj.bias"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_tied_config_with_a_different_output_weight_is_a_clear_error(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", {**AI2_OLMO1, "weight_tying": True}, ai2_olmo_state_dict())
    with pytest.raises(ConversionError, match="ties the input and output embeddings"):
        convert_checkpoint(ckpt, tmp_path / "out")


# --- tokenizer ------------------------------------------------------------------------------------


def test_missing_tokenizer_path_is_a_clear_error(ai2_ckpt, tmp_path):
    with pytest.raises(ConversionError, match="tokenizer path .*nope.json does not exist"):
        convert_checkpoint(ai2_ckpt, tmp_path / "out", tokenizer=tmp_path / "nope.json")
    assert not (tmp_path / "out").exists()


def test_tokenizer_file_is_saved_with_the_config_special_tokens(ai2_ckpt, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer

    vocab = {f"t{i}": i for i in range(100)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(tmp_path / "tokenizer.json"))
    out = convert_checkpoint(ai2_ckpt, tmp_path / "out", tokenizer=tmp_path / "tokenizer.json")
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token) == ("t99", "t98")  # eos_token_id 99, pad_token_id 98 in the config
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_larger_than_the_embedding_is_a_clear_error(ai2_ckpt, tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB + 1)}, unk_token="t0")).save(str(tmp_path / "tok.json"))
    with pytest.raises(ConversionError, match="has 129 tokens but the model embeds only 128"):
        convert_checkpoint(ai2_ckpt, tmp_path / "out", tokenizer=tmp_path / "tok.json")


# --- options the Transformers classes cannot express (checkpoints.md §2) ---------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ({"activation_type": "gelu"}, "activation_type 'gelu' is not supported"),
        ({"alibi": True}, "alibi is not supported"),
        ({"rope": False}, "rope: false is not supported"),
        ({"block_type": "llama"}, "block_type 'llama' is not supported"),
        ({"block_group_size": 2}, "block_group_size > 1 is not supported"),
        ({"include_bias": True}, "include_bias: true is not supported"),
        ({"embedding_layer_norm": True}, "embedding_layer_norm is not supported"),
        ({"scale_logits": True}, "scale_logits is not supported"),
        ({"layer_norm_with_affine": True}, "an affine LayerNorm is not supported for OLMo v1"),
        ({"attention_layer_norm": True}, "qk-norm .* is not supported for OLMo v1"),
        ({"layer_norm_eps": 1e-6}, "layer_norm_eps 1e-06 is not supported for OLMo v1"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_unsupported_olmo1_option_is_rejected(override, message, tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", {**AI2_OLMO1, **override})
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_clip_qkv_is_rejected_for_olmo2(tmp_path):
    ckpt = write_ai2_olmo(tmp_path / "ckpt", {**AI2_OLMO2, "clip_qkv": 8.0})
    with pytest.raises(ConversionError, match="clip_qkv is not supported for OLMo 2"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_absent_config_fields_take_ai2_olmo_defaults(tmp_path):
    """ModelConfig's default include_bias is true, so a config that omits it has biases: refused."""
    cfg = {k: v for k, v in AI2_OLMO1.items() if k != "include_bias"}
    ckpt = write_ai2_olmo(tmp_path / "ckpt", cfg)
    with pytest.raises(ConversionError, match="include_bias: true is not supported"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_olmo_core_mixture_of_experts_is_rejected(tmp_path):
    ckpt = write_olmo_core_dcp(tmp_path / "core")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["block"]["feed_forward_moe"] = {"num_experts": 8}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="mixture-of-experts"):
        convert_checkpoint(ckpt, tmp_path / "out")


def test_hf_olmo_gpt_neox_eos_zero_becomes_50279_with_a_warning(caplog):
    raw = {**AI2_OLMO1, "model_type": "hf_olmo", "vocab_size": 50280, "embedding_size": 50304,
           "eos_token_id": 0, "pad_token_id": 1}
    with caplog.at_level(logging.WARNING, logger="olmo_hf.convert"):
        model_type, kwargs = hf_olmo_config_to_kwargs(raw)
    assert model_type == "olmo"
    assert (kwargs["eos_token_id"], kwargs["pad_token_id"], kwargs["vocab_size"]) == (50279, 1, 50304)
    assert "eos_token_id 0" in caplog.text


def test_hf_olmo_config_is_translated_with_every_field_explicit():
    raw = {**AI2_OLMO2, "model_type": "hf_olmo", "n_kv_heads": 2, "architectures": ["OLMoForCausalLM"]}
    model_type, kwargs = hf_olmo_config_to_kwargs(raw)
    assert model_type == "olmo2"
    assert kwargs == dict(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=MLP // 2, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=64,
        initializer_range=0.02, use_cache=True,
        pad_token_id=98, bos_token_id=None, eos_token_id=99, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, attention_bias=False, attention_dropout=0.0,
        rms_norm_eps=1e-6,
    )


def test_olmo_core_dcp_written_by_plain_torch_converts(tmp_path):
    """The DCP reader needs neither olmo_core nor its storage classes."""
    out = convert_checkpoint(write_olmo_core_dcp(tmp_path / "core"), tmp_path / "out", validate=True)
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["rms_norm_eps"]) == ("olmo2", VOCAB, 1e-6)


def test_wrapper_prefix_in_front_of_transformer_keys_is_accepted(tmp_path):
    sd = {f"_fsdp_wrapped_module.{k}": v for k, v in ai2_olmo_state_dict().items()}
    out = convert_checkpoint(write_ai2_olmo(tmp_path / "ckpt", state_dict=sd), tmp_path / "out")
    assert (out / "model.safetensors").is_file()


def test_command_line_reports_a_conversion_error_with_exit_code_2(ai2_ckpt, tmp_path, capsys):
    from olmo_hf.convert.__main__ import main

    assert main([str(ai2_ckpt), str(tmp_path / "out"), "--tokenizer", str(tmp_path / "nope.json")]) == 2
    assert "error: tokenizer path" in capsys.readouterr().err
