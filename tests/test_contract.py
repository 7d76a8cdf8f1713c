"""The Transformers contract: what the built-in classes declare and what PreTrainedModel users rely on."""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, StaticCache

import olmo_hf
from olmo_hf.modeling import MissingWeightsError

from conftest import TINY, enable_activation_checkpointing, is_activation_checkpointing
from olmo_hf.compat import cache_kwargs

FAMILIES = {
    "olmo": (olmo_hf.OlmoConfig, olmo_hf.OlmoForCausalLM, transformers.OlmoForCausalLM),
    "olmo2": (olmo_hf.Olmo2Config, olmo_hf.Olmo2ForCausalLM, transformers.Olmo2ForCausalLM),
    # 4 layers: three sliding (window 4, shorter than most test sequences) and one full
    "olmo3": (
        lambda **kw: olmo_hf.Olmo3Config(**{"num_hidden_layers": 4, "sliding_window": 4, **kw}),
        olmo_hf.Olmo3ForCausalLM,
        transformers.Olmo3ForCausalLM,
    ),
}
CLASS_PAIRS = [
    (getattr(olmo_hf, f"{family}{suffix}"), getattr(transformers, f"{family}{suffix}"))
    for family in ("Olmo", "Olmo2", "Olmo3")
    for suffix in ("PreTrainedModel", "Model", "ForCausalLM", "ForSequenceClassification")
]
DECLARED = [
    "base_model_prefix", "supports_gradient_checkpointing", "_no_split_modules", "_skip_keys_device_placement",
    "_supports_flash_attn", "_supports_sdpa", "_supports_flex_attn", "_can_compile_fullgraph",
    "_supports_attention_backend", "_tied_weights_keys", "_tp_plan", "_pp_plan", "_fsdp_plan", "main_input_name",
    "_keep_in_fp32_modules",
]


def tiny(family: str, **overrides):
    config_class, model_class, _ = FAMILIES[family]
    torch.manual_seed(0)
    return model_class(config_class(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize("ours, builtin", CLASS_PAIRS, ids=lambda c: c.__name__)
def test_class_declares_what_the_builtin_class_declares(ours, builtin):
    for attribute in DECLARED:
        assert getattr(ours, attribute, None) == getattr(builtin, attribute, None), attribute
    recorded = {k: v.__name__ for k, v in (ours._can_record_outputs or {}).items()}
    assert recorded == {k: v.__name__ for k, v in (builtin._can_record_outputs or {}).items()}


@pytest.mark.parametrize("ours, builtin", CLASS_PAIRS, ids=lambda c: c.__name__)
def test_forward_signature_matches_the_builtin(ours, builtin):
    assert list(inspect.signature(ours.forward).parameters) == list(inspect.signature(builtin.forward).parameters)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_parallel_plans_match_the_builtin(family):
    _, model_class, builtin = FAMILIES[family]
    assert model_class.config_class.base_model_tp_plan == builtin.config_class.base_model_tp_plan
    assert model_class.config_class.base_model_pp_plan == builtin.config_class.base_model_pp_plan


def test_olmo2_keeps_qkv_replicated_under_tensor_parallelism():
    plan = olmo_hf.Olmo2Config.base_model_tp_plan
    assert {plan[f"layers.*.self_attn.{p}_proj"] for p in "qkv"} == {"colwise_gather_output"}


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_has_generation_mixin_as_direct_base(family):
    assert transformers.GenerationMixin in FAMILIES[family][1].__bases__


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_keys_and_shapes_equal_the_builtin(family):
    config_class, model_class, builtin_class = FAMILIES[family]
    config = config_class(**TINY)
    ours = model_class(config).state_dict()
    theirs = builtin_class(builtin_class.config_class(**config.to_dict())).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_round_trip_is_exact(family, max_shard_size, tmp_path):
    model = tiny(family)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(tmp_path, **kwargs)
    files = {p.name for p in tmp_path.iterdir()}
    assert ("model.safetensors.index.json" in files) == (max_shard_size is not None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_tied_model_saves_one_embedding_and_reloads_tied(tmp_path):
    model = tiny("olmo", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_with_labels_is_shifted_cross_entropy(family):
    model = tiny(family)
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 96), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_to_keep_int_and_tensor_select_positions(family):
    model = tiny(family)
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        assert model(ids, logits_to_keep=0).logits.shape == (2, 12, 96)
        assert torch.allclose(model(ids, logits_to_keep=1).logits, full[:, -1:], atol=1e-6)
        assert torch.allclose(model(ids, logits_to_keep=5).logits, full[:, -5:], atol=1e-6)
        picked = torch.tensor([0, 7, 11])
        assert torch.allclose(model(ids, logits_to_keep=picked).logits, full[:, picked], atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_and_attentions_have_one_entry_per_layer(family):
    model = tiny(family)
    model.set_attn_implementation("eager")
    ids = torch.randint(3, 96, (2, 7))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(h.shape == (2, 7, 32) for h in out.hidden_states)
    assert len(out.attentions) == TINY["num_hidden_layers"]
    assert all(a.shape == (2, 4, 7, 7) for a in out.attentions)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family):
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = tiny(family).train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert is_activation_checkpointing(model)
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_optimizer_step_lowers_the_loss(family):
    model = tiny(family).train()
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model(ids, labels=ids).loss
    before.backward()
    optimizer.step()
    assert model(ids, labels=ids).loss.item() < before.item()


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_token_embeddings_resizes_embedding_and_head(family):
    model = tiny(family)
    model.resize_token_embeddings(128)
    assert model.config.vocab_size == 128
    assert model.model.embed_tokens.weight.shape == (128, 32) and model.lm_head.weight.shape == (128, 32)
    assert model(torch.tensor([[120, 3]])).logits.shape == (1, 2, 128)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_give_the_same_logits_as_input_ids(family):
    model = tiny(family)
    ids = torch.randint(3, 96, (1, 6))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model(inputs_embeds=model.model.embed_tokens(ids)).logits, atol=1e-6)


def test_base_model_returns_final_hidden_states():
    model = AutoModel.from_config(olmo_hf.Olmo2Config(**TINY))
    assert type(model) is olmo_hf.Olmo2Model
    assert model(torch.tensor([[3, 4, 5]])).last_hidden_state.shape == (1, 3, 32)


def test_sequence_classification_scores_the_last_non_pad_token():
    config = olmo_hf.Olmo2Config(**TINY, num_labels=3)
    model = olmo_hf.Olmo2ForSequenceClassification(config).eval()
    ids = torch.tensor([[5, 6, 7, 1, 1], [5, 6, 7, 8, 9]])
    out = model(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.ndim == 0
    alone = model(ids[:1, :3]).logits
    assert torch.allclose(out.logits[:1], alone, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_static_cache_object_and_compiled_fullgraph_forward(family):
    """torch.compile(fullgraph=True) over forward with a StaticCache: no graph break, same tokens as eager."""
    model = tiny(family)
    ids = torch.tensor([[5, 9, 13, 17, 21]])
    eager = model.generate(ids, max_new_tokens=4, do_sample=False, cache_implementation="static")
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True)
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        logits = compiled(ids, **cache_kwargs(cache), use_cache=True, logits_to_keep=1).logits
        tokens = [logits.argmax(-1)]
        for step in range(3):
            position = torch.tensor([[ids.shape[1] + step]])
            logits = compiled(tokens[-1], **cache_kwargs(cache), use_cache=True, position_ids=position).logits
            tokens.append(logits.argmax(-1))
    assert torch.equal(torch.cat(tokens, dim=1), eager[:, ids.shape[1]:])


def test_hf_olmo_style_keys_raise_with_a_conversion_hint(tmp_path):
    tiny("olmo").save_pretrained(tmp_path)
    weights = {f"model.transformer.{k}": v for k, v in load_file(tmp_path / "model.safetensors").items()}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match="olmo-hf convert"):
        olmo_hf.OlmoForCausalLM.from_pretrained(tmp_path)


def test_loading_another_model_type_into_our_class_raises(tmp_path):
    tiny("olmo2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'olmo2' checkpoint, not 'olmo'"):
        olmo_hf.OlmoForCausalLM.from_pretrained(tmp_path)


def test_unknown_model_type_raises_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, model_type="olmo9")))
    with pytest.raises(ValueError, match="olmo9"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_missing_path_raises_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="does-not-exist"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "does-not-exist"))


def test_model_repr_shows_the_module_tree():
    text = repr(tiny("olmo2"))
    assert text.startswith("Olmo2ForCausalLM(") and "(q_norm): Olmo2RMSNorm((32,), eps=1e-05)" in text
