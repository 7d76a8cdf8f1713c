"""OLMo 3: sliding-window attention on 3 of every 4 layers and RoPE scaling (YaRN) on the full-attention layers only.

Our classes give the same float32 numbers (<= 1e-5) as Transformers' built-in olmo3 classes on checkpoints the built-in
classes wrote, on sequences that run well past the window; every config form a published checkpoint or an older
Transformers release wrote ends with YaRN on the full-attention layers only; the released shapes are presets.
"""

import json
import logging

import pytest
import torch
import transformers
from conftest import check_cached_decoding, perturb_norms
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import olmo_hf
from olmo_hf.compat import cache_kwargs
from olmo_hf.presets import PRESETS, preset_config

FP32_ATOL = 1e-5
ATTN = ["eager", "sdpa"]
WINDOW = 8
SEQ = 72  # nine windows
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0}
TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, pad_token_id=1, eos_token_id=2,
    bos_token_id=None, rms_norm_eps=1e-6, sliding_window=WINDOW,
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}, "full_attention": {**YARN, "rope_theta": 10000.0}},
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny olmo3 checkpoint written by Transformers' built-in class: layers 0-2 sliding (window 8), layer 3 full
    with YaRN; GQA; perturbed norms."""
    path = tmp_path_factory.mktemp("olmo3")
    torch.manual_seed(0)
    model = transformers.Olmo3ForCausalLM(transformers.Olmo3Config(**TINY)).eval()
    perturb_norms(model)
    model.save_pretrained(path)
    return path


def load_pair(path, attn="sdpa"):
    ref = transformers.Olmo3ForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    assert type(ours) is olmo_hf.Olmo3ForCausalLM
    return ref, ours


def random_ids(shape, seed=1):
    return torch.randint(3, 128, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(lengths=(SEQ, 40, 13), seed=0):
    width = max(lengths)
    ids = torch.full((len(lengths), width), 1)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = random_ids((n,), seed + row)
        mask[row, width - n :] = 1
    return ids, mask


def max_diff(a, b, mask=None):
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("attn", ATTN)
def test_logits_past_the_window_match_builtin(checkpoint, attn):
    ref, ours = load_pair(checkpoint, attn)
    ids = random_ids((2, SEQ))
    with torch.no_grad():
        expected, actual = ref(ids).logits, ours(ids).logits
    assert expected.abs().max() > 0.1
    assert max_diff(expected, actual) <= FP32_ATOL


def test_flex_attention_logits_past_the_window_match_builtin_and_eager(checkpoint):
    """flex_attention takes the sliding window as a block mask (compiled on CPU: the slowest test here, ~15 s)."""
    ref, ours = load_pair(checkpoint, "flex_attention")
    eager = olmo_hf.Olmo3ForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    ids = random_ids((2, 40))
    with torch.no_grad():
        actual = ours(ids).logits
        assert max_diff(ref(ids).logits, actual) <= FP32_ATOL
        assert max_diff(eager(ids).logits, actual) <= FP32_ATOL


@pytest.mark.parametrize("attn", ATTN)
def test_left_padded_batch_logits_match_builtin_and_unpadded_rows(checkpoint, attn):
    ref, ours = load_pair(checkpoint, attn)
    ids, mask = left_padded()
    with torch.no_grad():
        expected, actual = ref(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
        assert max_diff(expected, actual, mask) <= FP32_ATOL
        row = 1  # 40 real tokens after 32 pads: the sliding mask must count from the real tokens
        alone = ours(ids[row][mask[row].bool()][None]).logits[0]
    assert max_diff(actual[row][mask[row].bool()], alone) <= FP32_ATOL


@pytest.mark.parametrize("attn", ATTN)
def test_cached_decoding_past_the_window_matches_builtin_and_full_forward(checkpoint, attn):
    ref, ours = load_pair(checkpoint, attn)
    ids, mask = left_padded(lengths=(20, 14, 5))
    check_cached_decoding(ref, ours, ids, mask, random_ids((3, 2 * WINDOW), seed=7), FP32_ATOL)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_greedy_generation_past_the_window_identical_to_builtin_and_uncached(checkpoint, cache_implementation):
    ref, ours = load_pair(checkpoint)
    ids, mask = left_padded(lengths=(12, 9, 4))
    kwargs = dict(attention_mask=mask, max_new_tokens=3 * WINDOW, do_sample=False, pad_token_id=1, eos_token_id=None)
    expected = ref.generate(ids, cache_implementation=cache_implementation, **kwargs)
    actual = ours.generate(ids, cache_implementation=cache_implementation, **kwargs)
    uncached = ours.generate(ids, use_cache=False, **kwargs)
    assert actual.shape == (3, ids.shape[1] + 3 * WINDOW)
    assert torch.equal(expected, actual)
    assert torch.equal(uncached, actual)


# ------------------------------------------------------------------------------------------------ sliding window


def test_sliding_layer_query_sees_exactly_window_keys_itself_included(checkpoint):
    _, ours = load_pair(checkpoint, "eager")
    with torch.no_grad():
        attentions = ours(random_ids((1, 20)), output_attentions=True).attentions  # 4 x (1, heads, 20, 20)
    seen = [(a[0, 0, 11] > 0).nonzero().flatten().tolist() for a in attentions]
    assert seen[0] == seen[1] == seen[2] == list(range(11 - WINDOW + 1, 12))  # sliding: keys 4..11
    assert seen[3] == list(range(12))  # full attention: every earlier key


def test_dynamic_cache_keeps_window_minus_one_keys_on_sliding_layers_only(checkpoint):
    _, ours = load_pair(checkpoint)
    cache = DynamicCache(config=ours.config)
    with torch.no_grad():
        ours(random_ids((1, 30)), **cache_kwargs(cache), use_cache=True)
    assert [type(layer) is DynamicSlidingWindowLayer for layer in cache.layers] == [True, True, True, False]
    assert [layer.keys.shape[2] for layer in cache.layers] == [WINDOW - 1] * 3 + [30]


def test_default_layer_types_put_full_attention_on_every_fourth_layer():
    config = olmo_hf.Olmo3Config(num_hidden_layers=8, hidden_size=64, num_attention_heads=4)
    assert [i for i, t in enumerate(config.layer_types) if t == "full_attention"] == [3, 7]
    model = olmo_hf.Olmo3Model(config)
    assert [layer.self_attn.sliding_window for layer in model.layers] == [4096, 4096, 4096, None] * 2


# ------------------------------------------------------------------------------------------------ RoPE / YaRN


def test_yarn_frequencies_and_scaling_on_full_layers_plain_rope_on_sliding_layers(checkpoint):
    _, ours = load_pair(checkpoint)
    rope, config = ours.model.rotary_emb, ours.config
    yarn_inv_freq, yarn_scaling = ROPE_INIT_FUNCTIONS["yarn"](config, None, layer_type="full_attention")
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    assert torch.equal(rope.full_attention_inv_freq, yarn_inv_freq)
    assert rope.full_attention_attention_scaling == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    assert yarn_scaling == rope.full_attention_attention_scaling
    assert torch.allclose(rope.sliding_attention_inv_freq, plain) and rope.sliding_attention_attention_scaling == 1.0
    assert not torch.allclose(yarn_inv_freq, plain)


def long_context_config(**rope_overrides):
    """OLMo 3's real RoPE (theta 5e5, YaRN x8 from 8192 positions, head_dim 128) on a tiny 4-layer model."""
    full = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 32.0,
            "beta_slow": 1.0, "attention_factor": 1.2079441541679836, "rope_theta": 500000.0}
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}, "full_attention": full}
    rope.update(rope_overrides)
    return dict(
        vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=4, num_attention_heads=1,
        max_position_embeddings=65536, initializer_range=0.1, pad_token_id=1, eos_token_id=2, rms_norm_eps=1e-6,
        sliding_window=16, rope_parameters=rope,
    )


def test_beyond_8192_positions_yarn_is_on_full_layers_and_not_on_sliding_ones(tmp_path):
    """8300 positions (past YaRN's original 8192): logits match the built-in class (which scales the full layers
    only since Transformers 5.13), and differ both from a model without YaRN and from one with YaRN on every layer."""
    torch.manual_seed(0)
    builtin = transformers.Olmo3ForCausalLM(transformers.Olmo3Config(**long_context_config())).eval()
    perturb_norms(builtin)
    builtin.save_pretrained(tmp_path)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids = random_ids((1, 8300)) % 64
    tail = slice(8192, None)
    with torch.no_grad():
        actual = ours(ids, logits_to_keep=8300 - 8192).logits
        assert max_diff(builtin(ids, logits_to_keep=8300 - 8192).logits, actual) <= FP32_ATOL
        for wrong in (
            dict(full_attention={"rope_type": "default", "rope_theta": 500000.0}),  # YaRN dropped
            dict(sliding_attention=long_context_config()["rope_parameters"]["full_attention"]),  # YaRN everywhere
        ):
            other = olmo_hf.Olmo3ForCausalLM.from_pretrained(tmp_path, rope_parameters=long_context_config(**wrong)["rope_parameters"]).eval()
            assert max_diff(other(ids, logits_to_keep=8300 - 8192).logits, actual) > 1e-3
    rope = ours.model.rotary_emb
    positions = torch.arange(8192, 8300)[None]
    cos_full, _ = rope(actual, positions, "full_attention")
    cos_sliding, _ = rope(actual, positions, "sliding_attention")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    assert torch.allclose(cos_sliding[0, :, :64], torch.cos(positions[0, :, None].float() * plain), atol=1e-6)
    assert cos_full.abs().max() > 1.2  # the YaRN attention factor 1.2079 scales the full layers' cos/sin


# ------------------------------------------------------------------------------------------------ config forms

NESTED = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
    "full_attention": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
}
YARN_8 = {"factor": 8.0, "original_max_position_embeddings": 8192}
CONFIG_FORMS = {
    "nested-v5": dict(rope_parameters=NESTED),
    "flat-v5 (transformers 5.0-5.12)": dict(rope_parameters={"rope_type": "yarn", **YARN_8, "rope_theta": 500000.0}),
    "flat-v5 legacy type": dict(rope_parameters={"type": "yarn", **YARN_8, "rope_theta": 500000.0}),
    "v4 rope_scaling rope_type": dict(rope_theta=500000.0, rope_scaling={"rope_type": "yarn", **YARN_8}),
    "v4 rope_scaling legacy type": dict(rope_theta=500000.0, rope_scaling={"type": "yarn", **YARN_8}),
    "nested with legacy type": dict(rope_parameters={**NESTED, "full_attention": {"type": "yarn", **YARN_8, "rope_theta": 500000.0}}),
}
SILENTLY_DROPPED_BY_TRANSFORMERS = ["flat-v5 (transformers 5.0-5.12)", "flat-v5 legacy type", "v4 rope_scaling legacy type"]


def write_config(path, form):
    raw = dict(model_type="olmo3", num_hidden_layers=4, hidden_size=64, num_attention_heads=4, max_position_embeddings=65536,
               sliding_window=WINDOW, **CONFIG_FORMS[form])
    (path / "config.json").write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("form", CONFIG_FORMS)
def test_every_config_form_ends_with_yarn_on_full_layers_only(form, tmp_path):
    config = AutoConfig.from_pretrained(write_config(tmp_path, form))
    assert type(config) is olmo_hf.Olmo3Config
    assert config.rope_parameters == NESTED


@pytest.mark.parametrize("form", CONFIG_FORMS)
def test_every_config_form_saves_nested_and_loads_with_yarn_in_the_builtin_class(form, tmp_path):
    AutoConfig.from_pretrained(write_config(tmp_path, form)).save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["rope_parameters"] == NESTED and "rope_scaling" not in saved
    assert transformers.Olmo3Config.from_pretrained(tmp_path / "saved").rope_parameters == NESTED


@pytest.mark.parametrize("form", SILENTLY_DROPPED_BY_TRANSFORMERS)
def test_forms_the_builtin_config_reads_without_yarn_are_read_with_it(form, tmp_path):
    """The trap this guards against (checked on 5.21-5.25): the built-in config loses YaRN on these forms."""
    write_config(tmp_path, form)
    assert transformers.Olmo3Config.from_pretrained(tmp_path).rope_parameters["full_attention"]["rope_type"] == "default"
    assert AutoConfig.from_pretrained(tmp_path).rope_parameters["full_attention"]["rope_type"] == "yarn"


def test_flat_rope_parameters_warn_naming_the_field(caplog):
    with caplog.at_level(logging.WARNING, logger="olmo_hf.configuration"):
        olmo_hf.Olmo3Config(num_hidden_layers=4, **CONFIG_FORMS["flat-v5 (transformers 5.0-5.12)"])
    assert "`rope_parameters` is a flat dict" in caplog.text and "full-attention layers only" in caplog.text


def test_scaling_requested_on_sliding_layers_is_kept_with_a_warning(caplog):
    rope = {**NESTED, "sliding_attention": NESTED["full_attention"]}
    with caplog.at_level(logging.WARNING, logger="olmo_hf.configuration"):
        config = olmo_hf.Olmo3Config(num_hidden_layers=4, rope_parameters=rope)
    assert config.rope_parameters["sliding_attention"]["rope_type"] == "yarn"
    assert "`rope_parameters.sliding_attention`" in caplog.text


def test_legacy_rope_theta_alone_sets_plain_rope_on_both_layer_types():
    config = olmo_hf.Olmo3Config(num_hidden_layers=4, rope_theta=10000.0)
    assert config.rope_parameters == {lt: {"rope_type": "default", "rope_theta": 10000.0} for lt in NESTED}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(rope_parameters=NESTED, rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
        (dict(rope_parameters={**NESTED, "rope_type": "yarn"}), "rope_parameters"),
        (dict(rope_parameters={"type": "yarn", "rope_type": "linear", "factor": 2.0}), "rope_parameters"),
        (dict(layer_types=["full_attention"] * 3), "layer_types"),
        (dict(layer_types=["sliding_attention", "chunked_attention", "full_attention", "full_attention"]), "layer_types"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(sliding_window=None), "sliding_window"),
    ],
)
def test_ambiguous_or_invalid_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        olmo_hf.Olmo3Config(num_hidden_layers=4, **kwargs)


# ------------------------------------------------------------------------------------------------ presets

OLMO3_PRESETS = sorted(name for name in PRESETS if PRESETS[name]["model_type"] == "olmo3")


@pytest.mark.parametrize("name", OLMO3_PRESETS)
def test_olmo3_preset_has_the_released_shape(name):
    config = preset_config(name)
    size = "32B" if "32B" in name else "7B"
    expected = {"7B": (32, 4096, 32, 32, 11008), "32B": (64, 5120, 40, 8, 27648)}[size]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == expected
    assert (config.vocab_size, config.max_position_embeddings, config.sliding_window, config.head_dim) == (100278, 65536, 4096, 128)
    assert config.layer_types.count("full_attention") == config.num_hidden_layers // 4
    assert config.layer_types[-1] == "full_attention"
    assert config.rope_parameters["full_attention"]["rope_type"] == "yarn"
    assert config.rope_parameters["full_attention"]["factor"] == 8.0
    assert config.rope_parameters["sliding_attention"]["rope_type"] == "default"


@pytest.mark.parametrize("name", OLMO3_PRESETS[:2])
def test_olmo3_preset_config_json_round_trips_and_loads_in_the_builtin_class(name, tmp_path):
    preset_config(name).save_pretrained(tmp_path)
    builtin = transformers.Olmo3Config.from_pretrained(tmp_path)
    assert builtin.rope_parameters == preset_config(name).rope_parameters
    assert AutoConfig.from_pretrained(tmp_path).to_diff_dict() == preset_config(name).to_diff_dict()


# ------------------------------------------------------------------------------------------------ registration


def test_olmo3_model_types_resolve_to_our_classes_and_restore_builtin_undoes_it():
    config = olmo_hf.Olmo3Config(**TINY)
    assert type(AutoConfig.for_model("olmo3")) is olmo_hf.Olmo3Config
    assert type(transformers.AutoModel.from_config(config)) is olmo_hf.Olmo3Model
    assert type(transformers.AutoModelForSequenceClassification.from_config(config)) is olmo_hf.Olmo3ForSequenceClassification
    try:
        olmo_hf.restore_builtin()
        assert type(AutoConfig.for_model("olmo3")) is transformers.Olmo3Config
    finally:
        olmo_hf.register()
    assert type(AutoConfig.for_model("olmo3")) is olmo_hf.Olmo3Config


# ------------------------------------------------------------------------------------------------ CPU fast path

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn) CPU kernels")


@needs_onednn
def test_fast_path_float32_same_logits_and_greedy_tokens_past_the_window(checkpoint):
    from olmo_hf.fast import PackedLinear, optimize_for_cpu_inference

    ref, plain = load_pair(checkpoint)
    fast = optimize_for_cpu_inference(olmo_hf.Olmo3ForCausalLM.from_pretrained(checkpoint).eval())
    assert any(isinstance(m, PackedLinear) for m in fast.modules())
    ids, mask = left_padded(lengths=(30, 21, 9))
    with torch.no_grad():
        assert max_diff(fast(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits, mask) <= FP32_ATOL
    kwargs = dict(attention_mask=mask, max_new_tokens=2 * WINDOW, do_sample=False, pad_token_id=1, eos_token_id=None)
    assert torch.equal(fast.generate(ids, **kwargs), ref.generate(ids, **kwargs))


@needs_onednn
def test_fast_path_bfloat16_native_kernels_respect_the_window(tmp_path, monkeypatch):
    """bf16 with the native kernels: an unpadded prompt longer than the window (sliding layers must not take the
    window-less native prefill kernel), then decoding steps over the windowed cache (where they may take the native
    decode kernel). As accurate against float32 as the plain bf16 model (the bound of tests/test_fast_path.py)."""
    from olmo_hf.fast import native as nat
    from olmo_hf.fast import optimize_for_cpu_inference

    lib = nat._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("no AVX512-BF16 native kernels here (they need AVX512-BF16, a C compiler and GNU OpenMP in torch)")
    config = olmo_hf.Olmo3Config(**{**TINY, "hidden_size": 256, "intermediate_size": 384, "initializer_range": 0.05})
    torch.manual_seed(0)
    olmo_hf.Olmo3ForCausalLM(config).save_pretrained(tmp_path)
    models = [olmo_hf.Olmo3ForCausalLM.from_pretrained(tmp_path, dtype=d).eval() for d in (torch.float32, torch.bfloat16, torch.bfloat16)]
    optimize_for_cpu_inference(models[2])
    calls = {}
    for name in ("attention", "prefill_attention", "decode_layer"):
        def counted(*args, _fn=getattr(lib, name), _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args)
        monkeypatch.setattr(lib, name, counted)
    caches = [DynamicCache(config=m.config) for m in models]
    ids = random_ids((2, 3 * WINDOW + 8))
    err_plain = err_fast = 0.0
    with torch.no_grad():
        for step in [ids[:, : 2 * WINDOW], *ids[:, 2 * WINDOW :].split(1, dim=1)]:
            ref, plain, fast = (m(step, **cache_kwargs(c), use_cache=True).logits.float() for m, c in zip(models, caches))
            err_plain = max(err_plain, float((plain - ref).abs().max()))
            err_fast = max(err_fast, float((fast - ref).abs().max()))
            assert (fast - plain).abs().max() <= 2**-5 * ref.abs().max()
    assert err_fast <= 1.5 * err_plain + 1e-3
    assert calls.get("prefill_attention") == 1  # the full-attention layer only
    # at least the full layer's decoding steps: the decode attention kernel, or inside the one-call layer step
    assert calls.get("attention", 0) + calls.get("decode_layer", 0) >= ids.shape[1] - 2 * WINDOW


@needs_onednn
def test_native_attention_is_refused_to_sliding_layers_whose_keys_exceed_the_window(checkpoint):
    """The native kernels are causal without a window: even unmasked, a sliding layer takes them only while every
    key is inside its window."""
    from olmo_hf.fast import native as nat

    if nat._native_kernel() is None or not nat._native_kernel().full:
        pytest.skip("no AVX512-BF16 native kernels here")
    model = olmo_hf.Olmo3ForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    sliding, full = model.model.layers[0].self_attn, model.model.layers[3].self_attn

    def qkv(n):  # (batch, heads, n, head_dim=32): a head size the prefill kernel takes
        return [torch.zeros(1, 2, n, 32, dtype=torch.bfloat16) for _ in range(3)]

    with torch.no_grad():
        assert nat._can_use_native_attention(sliding, *qkv(WINDOW), None, {})
        assert not nat._can_use_native_attention(sliding, *qkv(WINDOW + 1), None, {})
        assert nat._can_use_native_attention(full, *qkv(WINDOW + 1), None, {})
