"""Legacy hf_olmo directories load straight into our classes, without ai2-olmo (synthetic checkpoints here;
tests/test_reference_parity.py does the same with directories written by ai2-olmo itself)."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import olmo_hf
from olmo_hf.modeling import MissingWeightsError

D_MODEL, N_HEADS, N_LAYERS, MLP_HIDDEN = 16, 2, 2, 64


def write_hf_olmo(path, *, vocab_size=1000, embedding_size=1024, weight_tying=False, eos=999, generation_eos=None):
    """An hf_olmo directory (raw ai2-olmo ModelConfig fields, fused model.transformer.* weights) and the
    equivalent weights in our layout, built from the same random tensors."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen) * 0.2  # noqa: E731
    legacy, ours = {}, {}
    legacy["model.transformer.wte.weight"] = ours["model.embed_tokens.weight"] = rand(embedding_size, D_MODEL)
    for layer in range(N_LAYERS):
        q, k, v = rand(D_MODEL, D_MODEL), rand(D_MODEL, D_MODEL), rand(D_MODEL, D_MODEL)
        up, gate = rand(MLP_HIDDEN // 2, D_MODEL), rand(MLP_HIDDEN // 2, D_MODEL)
        block, hf = f"model.transformer.blocks.{layer}.", f"model.layers.{layer}."
        legacy[block + "att_proj.weight"] = torch.cat([q, k, v])
        legacy[block + "attn_out.weight"] = ours[hf + "self_attn.o_proj.weight"] = rand(D_MODEL, D_MODEL)
        legacy[block + "ff_proj.weight"] = torch.cat([up, gate])  # ai2-olmo SwiGLU: up first
        legacy[block + "ff_out.weight"] = ours[hf + "mlp.down_proj.weight"] = rand(D_MODEL, MLP_HIDDEN // 2)
        ours.update({hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                     hf + "self_attn.v_proj.weight": v, hf + "mlp.up_proj.weight": up, hf + "mlp.gate_proj.weight": gate})
    if not weight_tying:
        legacy["model.transformer.ff_out.weight"] = ours["lm_head.weight"] = rand(embedding_size, D_MODEL)
    config = dict(
        model_type="hf_olmo", architectures=["OLMoForCausalLM"],
        auto_map={"AutoConfig": "configuration_olmo.OLMoConfig", "AutoModelForCausalLM": "modeling_olmo.OLMoForCausalLM"},
        d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS, mlp_hidden_size=MLP_HIDDEN, activation_type="swiglu",
        block_type="sequential", alibi=False, rope=True, rope_theta=10000, include_bias=False,
        layer_norm_type="default", layer_norm_with_affine=False, attention_layer_norm=False, weight_tying=weight_tying,
        vocab_size=vocab_size, embedding_size=embedding_size, max_sequence_length=128, eos_token_id=eos, pad_token_id=1,
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(legacy, path / "pytorch_model.bin")
    if generation_eos is not None:
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos, "pad_token_id": 1}))
    return ours


@pytest.mark.parametrize("weight_tying", [False, True])
def test_hf_olmo_directory_loads_into_our_class_with_every_weight_mapped(weight_tying, tmp_path):
    expected = write_hf_olmo(tmp_path, weight_tying=weight_tying)
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model) is olmo_hf.OlmoForCausalLM
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    state = model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key
    assert model.config.tie_word_embeddings is weight_tying
    assert (model.config.vocab_size, model.config.intermediate_size) == (1024, MLP_HIDDEN // 2)


def test_hf_olmo_config_is_translated_by_auto_config(tmp_path):
    write_hf_olmo(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is olmo_hf.OlmoConfig
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (D_MODEL, N_LAYERS, N_HEADS)


def test_hf_olmo_directory_loads_through_the_concrete_class_too(tmp_path):
    write_hf_olmo(tmp_path)
    assert type(olmo_hf.OlmoForCausalLM.from_pretrained(tmp_path)) is olmo_hf.OlmoForCausalLM


def test_gpt_neox_eos_of_zero_is_corrected_to_50279_with_a_warning(tmp_path, caplog):
    write_hf_olmo(tmp_path, vocab_size=50280, embedding_size=50304, eos=0, generation_eos=0)
    with caplog.at_level("WARNING"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.eos_token_id == 50279
    assert model.generation_config.eos_token_id == 50279
    assert "50279" in caplog.text


def test_hf_olmo_checkpoint_with_a_missing_block_raises(tmp_path):
    write_hf_olmo(tmp_path)
    weights = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del weights["model.transformer.blocks.1.ff_out.weight"]
    torch.save(weights, tmp_path / "pytorch_model.bin")
    with pytest.raises(MissingWeightsError, match=r"layers\.1\.mlp\.down_proj\.weight.*refusing"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_hf_olmo_config_with_an_unsupported_option_raises_one_clear_sentence(tmp_path):
    write_hf_olmo(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["alibi"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="alibi"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_hf_olmo_checkpoint_reloads_after_save_as_a_standard_olmo_checkpoint(tmp_path):
    write_hf_olmo(tmp_path / "legacy")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "legacy")
    model.save_pretrained(tmp_path / "standard")
    saved = json.loads((tmp_path / "standard" / "config.json").read_text())
    assert saved["model_type"] == "olmo" and "auto_map" not in saved and "d_model" not in saved
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "standard")
    ids = torch.tensor([[5, 17, 300, 999]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
