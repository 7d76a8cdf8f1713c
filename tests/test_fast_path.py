"""olmo_hf.fast: the CPU inference fast path gives the outputs of the plain model, and is fully reversible.

Tiny checkpoints written by the built-in classes (tests/conftest.py). No timings here: speed is measured by
scripts/benchmark.py (docs/performance.md).

Tolerances: float32 logits within 1e-5 of the unoptimised model and identical greedy tokens (also identical to
the built-in class). bfloat16: the fast path's products accumulate (in fp32) in another order than F.linear /
sdpa, so its logits differ from the plain bf16 model's by bf16 rounding noise; the test holds it to being as
accurate as the plain bf16 model against the float32 model (BF16_ERROR_RATIO), and to |diff| <= BF16_RTOL *
max|logit| (docs/performance.md lists what the 1B shape shows).
"""

import copy
import io

import pytest
import torch
from safetensors.torch import load_file

import olmo_hf
from olmo_hf.fast import FastPathError, PackedLinear, is_optimized, optimize_for_cpu_inference, undo
from olmo_hf.compat import cache_kwargs

from conftest import VARIANT_IDS, VARIANTS, left_padded_batch

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn) CPU kernels")

FP32_ATOL = 1e-5
BF16_RTOL = 2**-5  # fast vs plain bf16 model: |diff| <= 8 bf16 ulps of the largest logit (measured: <= 1.8%)
BF16_ERROR_RATIO = 1.5  # error against float32: fast bf16 <= 1.5 x plain bf16
NEW_TOKENS = 10


def our_class(variant):
    return olmo_hf.Olmo2ForCausalLM if variant.family == "olmo2" else olmo_hf.OlmoForCausalLM


def load(variant, path, dtype=torch.float32, **kwargs):
    return our_class(variant).from_pretrained(path, dtype=dtype, **kwargs).eval()


def greedy(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
            pad_token_id=1, output_scores=True, return_dict_in_generate=True, **kwargs,
        )


def masked_logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits.float()[mask.bool()]


# ----------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_float32_same_logits_and_greedy_tokens(builtin_checkpoints, variant):
    path = builtin_checkpoints[variant.name]
    ids, mask = left_padded_batch()
    ref = load(variant, path)
    fast = optimize_for_cpu_inference(load(variant, path))
    assert is_optimized(fast) and any(isinstance(m, PackedLinear) for m in fast.modules())

    torch.testing.assert_close(masked_logits(fast, ids, mask), masked_logits(ref, ids, mask), atol=FP32_ATOL, rtol=0)
    out_ref, out_fast = greedy(ref, ids, mask), greedy(fast, ids, mask)
    assert torch.equal(out_fast.sequences, out_ref.sequences)
    for s_fast, s_ref in zip(out_fast.scores, out_ref.scores):
        torch.testing.assert_close(s_fast, s_ref, atol=FP32_ATOL, rtol=0)
    # ... and the same greedy tokens as Transformers' built-in class
    builtin = variant.builtin_model_class.from_pretrained(path, dtype=torch.float32).eval()
    assert torch.equal(out_fast.sequences, greedy(builtin, ids, mask).sequences)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_bfloat16_as_accurate_as_the_plain_model(builtin_checkpoints, variant):
    """bf16 prefill and decoding steps (teacher-forced: every model sees the same tokens; batch 8, so decoding
    products take the native kernels when available). Both bf16 models are compared with the float32 model: the
    fast path's error must stay within BF16_ERROR_RATIO of the plain bf16 model's (measured: 0.9-1.15x)."""
    from transformers import DynamicCache

    path = builtin_checkpoints[variant.name]
    models = [load(variant, path, torch.float32), load(variant, path, torch.bfloat16),
              optimize_for_cpu_inference(load(variant, path, torch.bfloat16))]
    caches = [DynamicCache(config=m.config) for m in models]
    ids = torch.randint(3, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    err_plain = err_fast = 0.0
    with torch.no_grad():
        for step in [ids[:, :4], *ids[:, 4:].split(1, dim=1)]:
            ref, plain, fast = (
                m(step, **cache_kwargs(c), use_cache=True).logits.float() for m, c in zip(models, caches)
            )
            err_plain = max(err_plain, float((plain - ref).abs().max()))
            err_fast = max(err_fast, float((fast - ref).abs().max()))
            assert (fast - plain).abs().max() <= BF16_RTOL * ref.abs().max()
    assert err_fast <= BF16_ERROR_RATIO * err_plain + 1e-3


def test_native_kernels_match_float64_and_sdpa():
    """The native kernels: the matrix-vector product reads the plain nn.Linear weight (tails of K and N, 1..8 rows),
    the attention step reads strided key/value views (grouped-query heads, odd head sizes)."""
    import torch.nn.functional as F

    from olmo_hf import fast

    native = fast._native_kernel()
    if native is None:
        pytest.skip(f"no native kernels here: {fast.native.native_unavailable_reason()}")
    gen = torch.Generator().manual_seed(0)
    for n, k in ((64, 64), (100, 96), (7, 40), (130, 2048), (3072, 768)):
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        packed = fast._Packed(w)
        assert packed.tensor.data_ptr() == w.data_ptr()  # the weight itself, not a copy
        for m in range(1, 9):
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            ref = F.linear(x.double(), w.double())
            out = packed.matmul(x).double()  # <= 8 rows: the native kernel (OLMO_HF_NATIVE=force in conftest)
            torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-3 * k**0.5)
    if not native.full:
        return
    for b, h, g, s_len, d in ((1, 16, 16, 130, 128), (8, 4, 2, 37, 24), (3, 6, 3, 1, 64)):
        q = torch.randn(b, h, 1, d, generator=gen).to(torch.bfloat16)
        kv = torch.randn(2, b, g, s_len + 5, d, generator=gen).to(torch.bfloat16)[..., :s_len, :]  # a growing cache
        ref = F.scaled_dot_product_attention(q.double(), kv[0].double().repeat_interleave(h // g, 1),
                                             kv[1].double().repeat_interleave(h // g, 1)).transpose(1, 2)
        sdpa = F.scaled_dot_product_attention(q, kv[0], kv[1], enable_gqa=g != h).transpose(1, 2)
        out = fast.native._native_attention(native, q, kv[0], kv[1], d**-0.5)
        assert out.shape == sdpa.shape == (b, 1, h, d)
        # at least as close to the float64 result as sdpa's own bf16 kernel (plus one bf16 ulp of slack)
        assert (out.double() - ref).abs().max() <= (sdpa.double() - ref).abs().max() + 2**-8 * ref.abs().max()
    for b, h, g, s_len, d in ((1, 16, 16, 130, 128), (3, 4, 2, 37, 64), (2, 2, 1, 1, 32)):  # a whole prompt, causal
        q = torch.randn(b, s_len, h, d, generator=gen).to(torch.bfloat16).transpose(1, 2)
        k, v = torch.randn(2, b, g, s_len + 5, d, generator=gen).to(torch.bfloat16)[..., :s_len, :]
        ref = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(h // g, 1),
                                             v.double().repeat_interleave(h // g, 1), is_causal=True).transpose(1, 2)
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=g != h).transpose(1, 2)
        out = fast.native._native_prefill_attention(native, q, k, v, d**-0.5)
        assert out.shape == sdpa.shape == (b, s_len, h, d)
        assert (out.double() - ref).abs().max() <= (sdpa.double() - ref).abs().max() + 2**-8 * ref.abs().max()


def _bf16_ulps(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|out - ref| in units of ref's bf16 ulp (2^-7 of its magnitude, at least the smallest normal's)."""
    scale = ref.float().abs().clamp_min(2.0**-126) * 2.0**-7
    return (out.float() - ref.float()).abs() / scale


def test_native_elementwise_kernels_compute_what_the_pytorch_modules_compute():
    """RMSNorm, q/k norm + RoPE and SwiGLU's product in one native pass each: PyTorch's float32 arithmetic,
    rounding for rounding, except the order in which sums of squares are added (a bf16 ulp, rarely)."""
    import torch.nn.functional as F

    from olmo_hf.fast import native as nat
    from olmo_hf.modules import Olmo2RMSNorm, apply_rotary_pos_emb

    lib = nat._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("no AVX512-BF16 native kernels here (they need AVX512-BF16, a C compiler and GNU OpenMP in torch)")
    gen = torch.Generator().manual_seed(0)
    bsz, seq, nh, nkv, hd = 3, 5, 8, 2, 64  # grouped-query heads; cos/sin broadcast over the batch
    qkv = (3 * torch.randn(bsz, seq, (nh + 2 * nkv) * hd, generator=gen)).to(torch.bfloat16)
    q_norm, k_norm = Olmo2RMSNorm(nh * hd), Olmo2RMSNorm(nkv * hd)
    with torch.no_grad():
        q_norm.weight.copy_(torch.randn(nh * hd, generator=gen))
        k_norm.weight.copy_(torch.randn(nkv * hd, generator=gen))
    q_norm, k_norm = q_norm.to(torch.bfloat16), k_norm.to(torch.bfloat16)
    angles = torch.arange(seq, dtype=torch.float32)[None, :, None] * torch.rand(1, 1, hd, generator=gen)
    cos, sin = angles.cos(), angles.sin()  # (1, seq, head_dim)
    qk = qkv[..., : (nh + nkv) * hd]  # a strided view, as sliced from the fused projection
    with torch.no_grad():
        q = q_norm(qk[..., : nh * hd]).view(bsz, seq, nh, hd).transpose(1, 2)
        k = k_norm(qk[..., nh * hd :]).view(bsz, seq, nkv, hd).transpose(1, 2)
        q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
        norm_ref = q_norm(qk[..., : nh * hd])
    out = nat._native_qk_norm_rope(lib, qk, nh * hd, hd, q_norm.weight.float(), k_norm.weight.float(),
                                   q_norm.variance_epsilon, cos, sin)
    assert out.shape == (bsz, seq, nh + nkv, hd)
    for got, ref in ((out[:, :, :nh].transpose(1, 2), q_ref), (out[:, :, nh:].transpose(1, 2), k_ref)):
        assert (got != ref).float().mean() < 1e-3 and _bf16_ulps(got, ref).max() <= 1
    rotate_only = nat._native_qk_norm_rope(lib, qk, nh * hd, hd, None, None, 0.0, cos, sin)
    q_plain, k_plain = apply_rotary_pos_emb(qk[..., : nh * hd].reshape(bsz, seq, nh, hd).transpose(1, 2),
                                            qk[..., nh * hd :].reshape(bsz, seq, nkv, hd).transpose(1, 2), cos, sin)
    assert torch.equal(rotate_only[:, :, :nh].transpose(1, 2), q_plain)  # no sum involved: bit-identical
    assert torch.equal(rotate_only[:, :, nh:].transpose(1, 2), k_plain)

    normed = nat._native_rms_norm(lib, qk[..., : nh * hd], q_norm.weight.float(), q_norm.variance_epsilon)
    assert (normed != norm_ref).float().mean() < 1e-3 and _bf16_ulps(normed, norm_ref).max() <= 1

    gate_up = (4 * torch.randn(bsz, seq, 2 * 96, generator=gen)).to(torch.bfloat16)
    gate_up[0, 0, :4] = torch.tensor([-200.0, 100.0, float("inf"), 0.0])  # exp under- and overflow
    ref = F.silu(gate_up[..., :96]).mul_(gate_up[..., 96:])
    assert torch.equal(nat._native_silu_mul(lib, gate_up), ref)


@pytest.mark.parametrize("family", ["olmo2", "olmo"])
def test_bfloat16_with_every_native_kernel_as_accurate_as_the_plain_model(family, tmp_path, monkeypatch):
    """A bf16 model whose shapes every native kernel takes (head_dim 64, GQA): prefill, then decoding steps at
    batch 4; each kernel is called, and the result is as close to float32 as the plain bf16 model."""
    from transformers import DynamicCache

    from olmo_hf.fast import native as nat

    lib = nat._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("no AVX512-BF16 native kernels here (they need AVX512-BF16, a C compiler and GNU OpenMP in torch)")
    common = dict(vocab_size=128, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.05, pad_token_id=1, eos_token_id=2)
    if family == "olmo2":
        config, cls = olmo_hf.Olmo2Config(**common), olmo_hf.Olmo2ForCausalLM
    else:
        config, cls = olmo_hf.OlmoConfig(**common, clip_qkv=0.5), olmo_hf.OlmoForCausalLM
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path)
    models = [cls.from_pretrained(tmp_path, dtype=dtype).eval() for dtype in (torch.float32, torch.bfloat16,
                                                                               torch.bfloat16)]
    optimize_for_cpu_inference(models[2])
    calls = {}
    for name in ("gemv", "gemv_amx", "attention", "prefill_attention", "rms_norm", "qk_norm_rope", "silu_mul",
                 "decode_layer"):
        if not hasattr(lib, name):
            continue
        def counted(*args, _fn=getattr(lib, name), _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args)
        monkeypatch.setattr(lib, name, counted)

    caches = [DynamicCache(config=m.config) for m in models]
    ids = torch.randint(3, 128, (4, 10), generator=torch.Generator().manual_seed(0))
    err_plain = err_fast = 0.0
    with torch.no_grad():
        for step in [ids[:, :6], *ids[:, 6:].split(1, dim=1)]:
            ref, plain, fast = (m(step, **cache_kwargs(c)).logits.float() for m, c in zip(models, caches))
            err_plain = max(err_plain, float((plain - ref).abs().max()))
            err_fast = max(err_fast, float((fast - ref).abs().max()))
            assert (fast - plain).abs().max() <= BF16_RTOL * ref.abs().max()
    assert err_fast <= BF16_ERROR_RATIO * err_plain + 1e-3
    expected = {"prefill_attention", "qk_norm_rope", "silu_mul"}
    # OLMo 2: a decoding step of a layer is one native call (the same kernels inside); OLMo: module by module
    expected |= {"rms_norm", "decode_layer"} if family == "olmo2" else {"attention"}
    assert expected <= set(calls), calls
    assert calls.get("gemv", 0) + calls.get("gemv_amx", 0) > 0, calls  # the AVX512 or (batch > 1) the AMX product


@pytest.mark.parametrize("cache", ["beam", "static", "eager-attentions"])
def test_other_caches_and_backends(builtin_checkpoints, cache):
    """Beam search reorders the cache (the in-place growth must notice); a StaticCache takes the generic
    update; eager attention returns attention weights through the fast forward."""
    variant = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]
    path = builtin_checkpoints[variant.name]
    ids, mask = left_padded_batch()
    kwargs = {"beam": dict(num_beams=3), "static": dict(cache_implementation="static"), "eager-attentions": {}}[cache]
    load_kwargs = {"attn_implementation": "eager"} if cache == "eager-attentions" else {}
    ref = load(variant, path, **load_kwargs)
    fast = optimize_for_cpu_inference(load(variant, path, **load_kwargs))
    assert torch.equal(greedy(fast, ids, mask, **kwargs).sequences, greedy(ref, ids, mask, **kwargs).sequences)
    if cache == "eager-attentions":
        with torch.no_grad():
            att_ref = ref(ids, attention_mask=mask, output_attentions=True).attentions
            att_fast = fast(ids, attention_mask=mask, output_attentions=True).attentions
        for x, y in zip(att_fast, att_ref):
            torch.testing.assert_close(x, y, atol=FP32_ATOL, rtol=0)


def test_growing_kv_cache_matches_dynamic_cache_after_crop(builtin_checkpoints):
    from transformers import DynamicCache

    variant = VARIANTS[VARIANT_IDS.index("olmo2-tied-gqa")]
    path = builtin_checkpoints[variant.name]
    ref, fast = load(variant, path), optimize_for_cpu_inference(load(variant, path))
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    caches = {"ref": DynamicCache(config=ref.config), "fast": DynamicCache(config=fast.config)}
    steps = [ids, ids[:, :1], ids[:, 1:3], "crop", ids[:, 3:4], ids[:, 4:5]]
    with torch.no_grad():
        for step in steps:
            if isinstance(step, str):
                for c in caches.values():
                    c.crop(-2)
                continue
            out = {
                k: m(step, **cache_kwargs(caches[k]), use_cache=True).logits for k, m in (("ref", ref), ("fast", fast))
            }
            torch.testing.assert_close(out["fast"], out["ref"], atol=FP32_ATOL, rtol=0)
    for lr, lf in zip(caches["ref"].layers, caches["fast"].layers):
        assert lf.keys.shape == lr.keys.shape
        torch.testing.assert_close(lf.keys, lr.keys, atol=FP32_ATOL, rtol=0)
        torch.testing.assert_close(lf.values, lr.values, atol=FP32_ATOL, rtol=0)


def test_sequence_classification_and_base_model(builtin_checkpoints):
    variant = VARIANTS[VARIANT_IDS.index("olmo2-tied-gqa")]
    path = builtin_checkpoints[variant.name]
    ids, mask = left_padded_batch()
    for cls in (olmo_hf.Olmo2ForSequenceClassification, olmo_hf.Olmo2Model):
        ref = cls.from_pretrained(path, dtype=torch.float32, num_labels=3).eval() if "Sequence" in cls.__name__ \
            else cls.from_pretrained(path, dtype=torch.float32).eval()
        fast = copy.deepcopy(ref)
        optimize_for_cpu_inference(fast)
        with torch.no_grad():
            a, b = ref(ids, attention_mask=mask), fast(ids, attention_mask=mask)
        key = "logits" if "Sequence" in cls.__name__ else "last_hidden_state"
        torch.testing.assert_close(b[key], a[key], atol=FP32_ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------- reversibility
def test_undo_restores_modules_parameters_and_outputs_exactly(builtin_checkpoints):
    variant = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]
    model = load(variant, builtin_checkpoints[variant.name])
    ids, mask = left_padded_batch()
    before = masked_logits(model, ids, mask)
    params = dict(model.named_parameters())
    values = {k: v.detach().clone() for k, v in params.items()}
    flags = {k: v.requires_grad for k, v in params.items()}
    model.train()

    optimize_for_cpu_inference(model)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert undo(model) is model and not is_optimized(model)

    assert model.training  # train/eval mode restored
    model.eval()
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for k, p in after.items():
        assert p is params[k]  # the very Parameter objects (optimizers, hooks keep working)
        assert torch.equal(p, values[k]) and p.requires_grad == flags[k]
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(masked_logits(model, ids, mask), before)


def test_state_dict_and_save_pretrained_write_the_standard_layout(builtin_checkpoints, tmp_path):
    variant = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]
    path = builtin_checkpoints[variant.name]
    original = load_file(str(path / "model.safetensors"))
    model = optimize_for_cpu_inference(load(variant, path))

    sd = model.state_dict()
    assert sd.keys() == original.keys()
    assert all(torch.equal(sd[k], original[k]) for k in original)

    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in original)
    # a plain Transformers install loads it into the built-in class
    reloaded = variant.builtin_model_class.from_pretrained(tmp_path, dtype=torch.float32)
    assert all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items() if k in original)


def test_copy_and_pickle(builtin_checkpoints):
    variant = VARIANTS[VARIANT_IDS.index("olmo-untied-clip_qkv")]
    model = optimize_for_cpu_inference(load(variant, builtin_checkpoints[variant.name]))
    ids, mask = left_padded_batch()
    expected = masked_logits(model, ids, mask)
    clone = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    unpickled = torch.load(buf, weights_only=False)
    for other in (clone, unpickled):
        assert is_optimized(other)
        assert torch.equal(masked_logits(other, ids, mask), expected)
    undo(clone)
    assert torch.equal(masked_logits(clone, ids, mask), expected)


# ----------------------------------------------------------------------------------------------- refusals
def test_refuses_what_packed_weights_cannot_do(builtin_checkpoints):
    variant = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]
    path = builtin_checkpoints[variant.name]
    model = optimize_for_cpu_inference(load(variant, path))
    with pytest.raises(FastPathError, match="undo"):
        model.to(torch.bfloat16)
    with pytest.raises(FastPathError, match="undo"):
        model.half()
    model.to("cpu")  # a no-op move is fine
    x = torch.randn(1, 3, model.config.hidden_size, requires_grad=True)
    with pytest.raises(FastPathError, match="undo"):
        model.model.layers[0].self_attn.o_proj(x)
    with pytest.raises(RuntimeError, match="undo"):  # q/k/v are views of one fused matrix
        model.load_state_dict(load_file(str(path / "model.safetensors")))

    plain = load(variant, path)
    plain.hf_quantizer = object()  # what from_pretrained(quantization_config=...) leaves behind
    with pytest.raises(ValueError, match="quantized"):
        optimize_for_cpu_inference(plain)
    with pytest.raises(TypeError):
        optimize_for_cpu_inference(torch.nn.Linear(2, 2))


def test_mmapped_bf16_checkpoint_pages_are_released_without_corrupting_anything(tmp_path):
    """A bf16 checkpoint loaded in bf16 stays mmapped; the fast path gives the pages of the weights it packed
    back to the OS. The embedding (still mmapped) and every output must be unaffected."""
    config = olmo_hf.Olmo2Config(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        pad_token_id=1, eos_token_id=2, rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    olmo_hf.Olmo2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    original = load_file(str(tmp_path / "model.safetensors"))
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    kept = optimize_for_cpu_inference(olmo_hf.Olmo2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16),
                                      release_source_pages=False)
    model = optimize_for_cpu_inference(olmo_hf.Olmo2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16))
    state = model.__dict__["_olmo_hf_fast_state"]
    if state.released_bytes == 0:
        pytest.skip("the checkpoint was not memory-mapped on this platform")
    assert torch.equal(masked_logits(model, ids, mask), masked_logits(kept, ids, mask))
    undo(model)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fail_at", [1, 4])  # the lm_head (alone), a fused q/k/v group
def test_a_failure_half_way_leaves_the_model_exactly_as_it_was(builtin_checkpoints, monkeypatch, fail_at):
    """optimize_for_cpu_inference is all or nothing: if packing fails (out of memory, an interrupt), every module,
    Parameter value and flag is what it was before the call, and the error reaches the caller."""
    from olmo_hf.fast import packing

    variant = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]
    model = load(variant, builtin_checkpoints[variant.name])
    ids, mask = left_padded_batch()
    before = masked_logits(model, ids, mask)
    values = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    calls = {"n": 0}
    real_packed = packing._Packed

    def flaky(dense):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise MemoryError("simulated: out of memory while packing")
        return real_packed(dense)

    monkeypatch.setattr(packing, "_Packed", flaky)
    with pytest.raises(MemoryError, match="simulated"):
        optimize_for_cpu_inference(model)
    assert not is_optimized(model) and calls["n"] > fail_at - 1
    assert dict(model.named_modules()) == modules
    assert not any("forward" in vars(m) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, values[key]), key
    torch.testing.assert_close(masked_logits(model, ids, mask), before, atol=0, rtol=0)


def test_without_packing_the_fast_forwards_still_train(tmp_path):
    """optimize_for_cpu_inference(pack=False) keeps plain nn.Linears; if the caller turns gradients back on, for
    all weights or only the norms (activations then need no gradient: the native kernels must see the weight's
    flag), every weight gets the plain model's gradient."""
    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=256, intermediate_size=384, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    olmo_hf.Olmo2ForCausalLM(config).save_pretrained(tmp_path)
    plain, fast = (olmo_hf.Olmo2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16) for _ in range(2))
    optimize_for_cpu_inference(fast, pack=False)
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    for trained in ("", "norm"):  # every weight; only the norms
        for model in (plain, fast):
            model.zero_grad(set_to_none=True)
            for name, p in model.named_parameters():
                p.requires_grad_(trained in name)
            model(ids, labels=ids).loss.backward()
        for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
            if trained in name:
                assert q.grad is not None, name
                torch.testing.assert_close(q.grad, p.grad, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_with_a_static_cache_gives_the_eager_tokens(tmp_path, dtype):
    """generate() compiling the forward (static cache, fullgraph): each packed product is one opaque custom op in
    the graph (Inductor cannot lower a weight it did not pack itself), and the tokens are the eager ones."""
    from torch._dynamo.utils import counters
    from transformers.generation import CompileConfig

    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, pad_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    olmo_hf.Olmo2ForCausalLM(config).save_pretrained(tmp_path)
    model = optimize_for_cpu_inference(olmo_hf.Olmo2ForCausalLM.from_pretrained(tmp_path, dtype=dtype))
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static")
    eager = model.generate(ids, **kwargs)
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # generate() compiles on CUDA only unless told
    torch._dynamo.reset()
    counters.clear()
    compiled = model.generate(ids, compile_config=compile_config, **kwargs)
    assert counters["stats"]["unique_graphs"] >= 1
    assert torch.equal(compiled, eager)
