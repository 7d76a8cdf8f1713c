"""The CPU fast path on torchao int8 weight-only models (olmo_hf.fast.quantized; kernels.c: olmo_hf_gemv_int8 for one
scale per row, olmo_hf_gemv_int8_grouped for the default group-wise layout).

The optimised model is compared with the SAME quantized model without the fast path: prefill runs torchao's own
arithmetic (per row: x @ bf16(q)^T, rounded, then the scale; group-wise: x @ bf16(q * scale)^T), so its logits are
bit-identical; a decoding step runs the
native kernel (fp32 sum of x * q, one rounding after the scale) inside the bf16 fast path, whose other kernels
also round differently from the plain modules. Measured on the tiny model below, relative L2 of the 11 decode-step
logits: fast vs plain 0.008-0.014 (threshold 0.03); against an fp32 model holding the dequantized weights,
fast 0.006-0.015 (mean 0.011), plain 0.007-0.015 (mean 0.010): the fast path's mean must stay within 1.5x the plain
model's. (bf16 noise: the same model unquantized shows the same spread.)
"""

import copy
import ctypes
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import olmo_hf
from olmo_hf.fast import int8_layout, is_optimized, native, optimize_for_cpu_inference, quantized, status, undo
from olmo_hf.fast.quantized import Int8PackedLinear, int8_group_size, is_int8_embedding, is_int8_weight_only
from olmo_hf.quantization import int8_group_config, quantization_config

pytest.importorskip("torchao")

needs_kernels = pytest.mark.skipif(native.kernel_plan().isa is None, reason="no native kernels on this machine")
DECODE_LOGITS_REL = 0.03


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("olmo2_int8")
    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                                 pad_token_id=1, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(0)
    olmo_hf.Olmo2ForCausalLM(config).save_pretrained(directory)
    return directory


def load_int8(directory, group_size=32):
    """The model quantized by quantization_config("int8") (groups of 32), or with ``group_size`` (None: per row)."""
    config = quantization_config("int8", device="cpu", group_size=group_size)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, quantization_config=config).eval()


@pytest.fixture(params=[(32, True), (32, False), (None, False)],
                ids=["groups of 32, blocked", "groups of 32, torchao's layout", "per row"])
def group_size(request, monkeypatch):
    """The int8 layouts of the model tests: groups of 32 in the blocked layout (where this CPU runs it: AVX512-VNNI)
    and in torchao's layout (what the other CPUs get), and one scale per row."""
    group, blocked = request.param
    if not blocked:
        monkeypatch.setattr(quantized, "blocked_layout_for", lambda group: False)
    return group


def _dequantized(weight) -> torch.Tensor:
    """A torchao int8 weight's values in float64, unrounded (q * scale, per row or per group)."""
    scale = weight.scale.double().reshape(weight.qdata.shape[0], -1)
    return weight.qdata.double() * scale.repeat_interleave(weight.qdata.shape[1] // scale.shape[1], dim=1)


IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 77, 64, 12, 30, 101]])


# ----------------------------------------------------------------------------------------------- the kernels
@needs_kernels
@pytest.mark.parametrize("n, k", [(64, 64), (37, 100), (3, 33), (130, 2048 + 7), (4, 8), (8, 300)])
def test_int8_kernel_is_the_float64_product_up_to_rounding(n, k):
    gen = torch.Generator().manual_seed(n * k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) / 100
    for rows in range(1, 9):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        exact = (x.double() @ q.double().T) * scale.double()
        out = native._native_int8_matmul(x, q, scale).double()
        # x is rounded to int16 per block of 128 (at most half a step, max|x in block| / 32767 / 2, per element);
        # then fp32 sums (relative to sum |x q| s) and one bf16 rounding of the result
        xabs = x.double().abs()
        pad = torch.nn.functional.pad(xabs, (0, -k % 128))
        step = pad.view(rows, -1, 128).amax(-1).repeat_interleave(128, -1)[:, :k] / 32767
        magnitude = (xabs @ q.double().abs().T) * scale.double()
        bound = exact.abs() * 2**-8 + (step / 2 @ q.double().abs().T) * scale.double() + 1e-6 * magnitude
        assert ((out - exact).abs() <= bound).all(), (rows, n, k)


@needs_kernels
def test_int8_kernel_reads_row_slices_and_strided_rows():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (40, 80), generator=gen, dtype=torch.int8)
    scale = torch.rand(40, generator=gen)
    x = torch.randn(3, 2, 160, generator=gen).to(torch.bfloat16)[..., ::2]  # (3, 2, 80), row stride 2
    ref = ((x.double() @ q[8:20].double().T) * scale[8:20].double())
    out = native._native_int8_matmul(x, q[8:20], scale[8:20].contiguous())
    assert out.shape == (3, 2, 12) and torch.allclose(out.double(), ref, rtol=2**-8, atol=1e-4)


@needs_kernels
def test_int8_to_bf16_widening_is_exact():
    q = torch.arange(-128, 128, dtype=torch.int8).repeat(3, 2)[:, :509]  # every value; a row tail
    assert torch.equal(native._native_int8_to_bf16(q), q.to(torch.bfloat16))


@needs_kernels
@pytest.mark.parametrize("n, k, group", [(64, 64, 32), (37, 96, 32), (3, 64, 32), (130, 2048, 32), (9, 256, 64),
                                         (8, 384, 128), (5, 512, 256)])
def test_grouped_int8_kernel_is_the_float64_product_up_to_rounding(n, k, group):
    gen = torch.Generator().manual_seed(n * k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // group, generator=gen) / 100).half()
    weight = q.double() * scale.double().repeat_interleave(group, dim=1)  # unrounded
    for rows in range(1, 9):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        exact = x.double() @ weight.T
        out = native._native_int8_grouped_matmul(x, q, scale).double()
        # x is rounded to int16 per unit of min(group, 128) values (at most half a step per element); fp32 sums;
        # one bf16 rounding of the result
        unit = min(group, 128)
        step = x.double().abs().view(rows, -1, unit).amax(-1).repeat_interleave(unit, -1) / 32767
        magnitude = x.double().abs() @ weight.abs().T
        bound = exact.abs() * 2**-8 + (step / 2) @ weight.abs().T + 1e-6 * magnitude
        assert ((out - exact).abs() <= bound).all(), (rows, n, k, group)


@needs_kernels
def test_grouped_int8_kernel_reads_row_slices_and_strided_rows():
    gen = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    scale = torch.rand(40, 3, generator=gen).half()
    x = torch.randn(3, 2, 192, generator=gen).to(torch.bfloat16)[..., ::2]  # (3, 2, 96), row stride 2
    ref = x.double() @ (q[8:20].double() * scale[8:20].double().repeat_interleave(32, dim=1)).T
    out = native._native_int8_grouped_matmul(x, q[8:20], scale[8:20].contiguous())
    assert out.shape == (3, 2, 12) and torch.allclose(out.double(), ref, rtol=2**-8, atol=1e-4)


@needs_kernels
def test_grouped_int8_widening_is_torchaos_dequantization_bit_for_bit():
    """bf16(q * scale) as IntxUnpackedToInt8Tensor.dequantize computes it (float16 scales: the product is exact in
    float32, rounded once); weights spanning 2^-14..2^4 so that products land on bf16 rounding ties, in many binades
    and on subnormal float16 scales."""
    from torchao.quantization.quant_api import _intx_weight_only_quantize_tensor

    gen = torch.Generator().manual_seed(3)
    hp = (torch.randn(48, 256, generator=gen) * 2.0 ** torch.randint(-14, 4, (48, 1), generator=gen)).bfloat16()
    weight = _intx_weight_only_quantize_tensor(hp, int8_group_config(32))
    assert int8_group_size(weight) == 32
    expected = weight.dequantize()
    assert torch.equal(native._native_int8_grouped_to_bf16(weight.qdata, weight.scale), expected)
    assert torch.equal(native.int8_grouped_reference(weight.qdata, weight.scale), expected)


# ----------------------------------------------------------------------------------------------- the blocked layout
needs_blocked = pytest.mark.skipif(not (native._native_kernel() and native._native_kernel().int8_blocked),
                                   reason="no blocked int8 kernel here (needs the AVX512 variant and AVX512-VNNI)")
BLOCKED_SHAPES = [(64, 64, 32), (37, 96, 32), (3, 64, 32), (130, 2048, 32), (6, 2528, 32), (9, 1216, 64),
                  (5, 96 * 17, 96), (8, 128 * 19, 128)]  # partial last blocks of 2, 3, 15, 3 (of 16) groups


@pytest.mark.parametrize("n, k, group", BLOCKED_SHAPES)
def test_blocked_int8_layout_unpacks_to_torchaos_data_exactly(n, k, group):
    gen = torch.Generator().manual_seed(n + k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.randn(n, k // group, generator=gen).half()
    blocks = int8_layout.pack_int8_blocked(q, scale, group)
    assert blocks.shape == (n, int8_layout.row_bytes(k, group)) and blocks.shape[1] % 64 == 0
    assert int8_layout.row_bytes(2048, 32) == 2048 + 2 * 64  # at real widths: torchao's bytes, scales included
    qdata, unpacked_scale = int8_layout.unpack_int8_blocked(blocks, k, group)
    assert torch.equal(qdata, q) and torch.equal(unpacked_scale, scale)


def test_blocked_int8_layout_puts_four_values_of_sixteen_groups_in_each_64_bytes():
    q = torch.arange(512).remainder(256).sub(128).to(torch.int8).view(1, 512)  # value i = i - 128 (mod 256)
    blocks = int8_layout.pack_int8_blocked(q, torch.ones(1, 16).half(), 32)
    first = blocks[0, 64:128].view(torch.uint8).long()  # after one header line: chunk 0 of block 0
    # group g, value j of the chunk: element 32 g + j, stored as u = q + 128 = (32 g + j) mod 256
    assert first.tolist() == [(32 * g + j) % 256 for g in range(16) for j in range(4)]


@needs_blocked
@pytest.mark.parametrize("n, k, group", BLOCKED_SHAPES)
def test_blocked_int8_kernel_is_the_float64_product_up_to_rounding(n, k, group):
    gen = torch.Generator().manual_seed(n * k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // group, generator=gen) / 100).half()
    blocks = int8_layout.pack_int8_blocked(q, scale, group)
    weight = q.double() * scale.double().repeat_interleave(group, dim=1)  # unrounded
    for rows in range(1, 9):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        exact = x.double() @ weight.T
        out = native._native_int8_blocked_matmul(x, blocks, k, group).double()
        # x is rounded to int16 per group, its largest magnitude to 32639 (at most half a step per element); exact
        # int32 group sums, fp32 from there; one bf16 rounding of the result
        step = x.double().abs().view(rows, -1, group).amax(-1).repeat_interleave(group, -1) / 32639
        magnitude = x.double().abs() @ weight.abs().T
        bound = exact.abs() * 2**-8 + (step / 2) @ weight.abs().T + 1e-6 * magnitude
        assert ((out - exact).abs() <= bound).all(), (rows, n, k, group)


@needs_blocked
def test_blocked_int8_kernel_reads_row_slices_and_strided_rows():
    gen = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (40, 96), generator=gen, dtype=torch.int8)
    scale = torch.rand(40, 3, generator=gen).half()
    blocks = int8_layout.pack_int8_blocked(q, scale, 32)
    x = torch.randn(3, 2, 192, generator=gen).to(torch.bfloat16)[..., ::2]  # (3, 2, 96), row stride 2
    ref = x.double() @ (q[8:20].double() * scale[8:20].double().repeat_interleave(32, dim=1)).T
    out = native._native_int8_blocked_matmul(x, blocks[8:20], 96, 32)
    assert out.shape == (3, 2, 12) and torch.allclose(out.double(), ref, rtol=2**-8, atol=1e-4)


@pytest.fixture(params=["vbmi", "without vbmi"])
def widening_path(request):
    """Groups of 32 widen through AVX512-VBMI byte permutes where the CPU has them, through a transpose and
    conversions elsewhere; each path in turn (the second forced through the library's switch)."""
    switch = ctypes.c_int.in_dll(native._native_kernel().lib, "olmo_hf_int8_blocked_vbmi")
    if request.param == "vbmi" and "avx512vbmi" not in native.cpu_flags():
        pytest.skip("no AVX512-VBMI on this CPU")
    switch.value = 1 if request.param == "vbmi" else 0
    yield request.param
    switch.value = -1


@needs_blocked
@pytest.mark.parametrize("n, k, group", BLOCKED_SHAPES)
def test_blocked_int8_widening_is_the_grouped_widening_bit_for_bit(n, k, group, widening_path):
    gen = torch.Generator().manual_seed(n - k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.randn(n, k // group, generator=gen) * 2.0 ** torch.randint(-14, 4, (n, 1), generator=gen)).half()
    blocks = int8_layout.pack_int8_blocked(q, scale, group)
    expected = native.int8_grouped_reference(q, scale)
    assert torch.equal(native._native_int8_blocked_to_bf16(blocks, k, group), expected)
    lib = native._native_kernel()
    if lib.amx and lib.gemm_amx is not None:  # the AMX prefill product widens each band from the blocked rows
        x = torch.randn(40, k, generator=gen).to(torch.bfloat16)
        assert torch.equal(native._native_gemm(x, blocks, None, int8_group=group, blocked_in_features=k),
                           native._native_gemm(x, q, scale, int8_group=group))


@needs_blocked
def test_amx_product_from_blocked_rows_is_unchanged_when_k_chunks_split_blocks_and_bands_pipeline(widening_path):
    """90 rows of x give k chunks of 2688 (5.25 blocks of 16 groups of 32), so widening starts and stops inside a
    block; 200 output rows give several bands per thread, each widened while the tiles multiply the one before it
    (and a last band of 8 rows). Bit for bit the product from torchao's layout."""
    lib = native._native_kernel()
    if not (lib.amx and lib.gemm_amx is not None):
        pytest.skip("no AMX prefill product here")
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-128, 128, (200, 4096), generator=gen, dtype=torch.int8)
    scale = (torch.rand(200, 128, generator=gen) / 64).half()
    blocks = int8_layout.pack_int8_blocked(q, scale, 32)
    x = torch.randn(90, 4096, generator=gen).to(torch.bfloat16)
    out = native._native_gemm(x, blocks, None, int8_group=32, blocked_in_features=4096)
    assert torch.equal(out, native._native_gemm(x, q, scale, int8_group=32))
    exact = x.double() @ native.int8_grouped_reference(q, scale).double().T
    torch.testing.assert_close(out.double(), exact, rtol=2**-7, atol=1e-3)


@needs_kernels
def test_kernel_plan_measures_the_int8_kernels():
    notes = {}
    lib = native._native_kernel()
    decided = native._measure_int8(lib, torch.Generator().manual_seed(0), notes)
    assert set(decided) == {"int8_gemv_max_rows", "int8_grouped_gemv_max_rows", "int8_convert"}
    assert notes["int8_gemv_1"].startswith("int8 matrix-vector (1 row): ")
    assert "torch._weight_int8pack_mm" in notes["int8_gemv_1"]
    assert decided["int8_grouped_gemv_max_rows"] == 8  # no PyTorch kernel to compare with: always on
    assert notes["int8_grouped_gemv"].startswith("int8 group-wise matrix-vector (1-8 rows): on")
    assert notes["int8_convert"].startswith("int8 -> bf16 widening before a GEMM: ")


# ----------------------------------------------------------------------------------------------- the model
def test_int8_linears_become_fast_path_layers_holding_torchao_data(checkpoint, group_size):
    model = load_int8(checkpoint, group_size)
    o_proj_qdata = model.model.layers[0].self_attn.o_proj.weight.qdata
    optimize_for_cpu_inference(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        assert type(layer) is Int8PackedLinear
    qkv = attn.__dict__["_fast_qkv"]
    if group_size and quantized.blocked_layout_for(group_size):  # one blocked matrix each, torchao's values inside
        assert attn.o_proj._packed.qdata is None and attn.o_proj._packed.blocks.shape == (64, 64 + 64)
        assert torch.equal(attn.o_proj.weight.qdata, o_proj_qdata)  # rebuilt from the blocked matrix
        assert qkv.blocks.shape == (64 + 2 * 32, 64 + 64)  # fused q/k/v: a header line of scales, 64 weights
        assert mlp.__dict__["_fast_gate_up"].blocks.dtype == torch.int8
    else:
        assert attn.o_proj._packed.qdata is o_proj_qdata  # a single layer keeps torchao's int8 tensor: no copy
        assert qkv.qdata.shape == (64 + 2 * 32, 64)  # fused q/k/v: one int8 matrix
        qkv_scale = qkv.scale  # float16 per group of 32, or float32 per row
        assert (qkv_scale.shape, qkv_scale.dtype) == (((128, 2), torch.float16) if group_size
                                                      else ((128,), torch.float32))
        assert mlp.__dict__["_fast_gate_up"].qdata.dtype == torch.int8
    assert model.lm_head._packed.group == (group_size or 0)
    assert type(model.lm_head) is Int8PackedLinear  # quantization_config("int8") quantizes lm_head too
    assert "forward" in model.model.embed_tokens.__dict__  # the int8 embedding's row-wise lookup
    assert "model optimised" in str(status(model))


def test_a_member_of_a_fused_int8_matrix_called_alone_gives_its_own_product(checkpoint, group_size):
    plain, fast = load_int8(checkpoint, group_size), optimize_for_cpu_inference(load_int8(checkpoint, group_size))
    x = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)  # 20 rows: prefill
    with torch.no_grad():
        for name in ("self_attn.k_proj", "mlp.up_proj"):
            member = fast.model.layers[1].get_submodule(name)
            assert member.extra_repr().count("of a fused matrix") == 1
            assert torch.equal(member(x), plain.model.layers[1].get_submodule(name)(x)), name


def test_int8_embedding_lookup_dequantizes_the_rows_as_torchao_does(checkpoint, group_size):
    model = load_int8(checkpoint, group_size)
    embedding = model.model.embed_tokens
    assert is_int8_embedding(embedding)
    with torch.no_grad():
        expected = embedding(IDS)  # torchao: the whole table dequantized, then F.embedding
        optimize_for_cpu_inference(model)
        assert torch.equal(embedding(IDS), expected)
        assert embedding(IDS).dtype == torch.bfloat16
    undo(model)
    assert "forward" not in embedding.__dict__


def test_lm_head_and_embedding_kept_in_bf16_take_the_bf16_fast_path(checkpoint):
    config = quantization_config("int8", device="cpu", quantize_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, quantization_config=config)
    optimize_for_cpu_inference(model)
    assert type(model.lm_head).__name__ == "PackedLinear"
    assert type(model.model.embed_tokens.weight) is torch.nn.Parameter
    assert "forward" not in model.model.embed_tokens.__dict__


def test_tied_int8_model_keeps_its_bf16_embedding_and_head_in_the_fast_path(tmp_path):
    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                 num_attention_heads=4, pad_token_id=1, eos_token_id=2, bos_token_id=None,
                                 tie_word_embeddings=True)
    olmo_hf.Olmo2ForCausalLM(config).save_pretrained(tmp_path)
    plain, fast = load_int8(tmp_path), optimize_for_cpu_inference(load_int8(tmp_path))
    assert fast.lm_head.weight is fast.model.embed_tokens.weight  # tied, bf16, not packed
    assert type(fast.model.layers[0].mlp.down_proj) is Int8PackedLinear
    with torch.no_grad():
        assert torch.equal(fast(IDS).logits, plain(IDS).logits)


@needs_kernels
def test_prefill_widening_the_int8_weight_in_slices_is_bit_identical(checkpoint, monkeypatch, group_size):
    plain, fast = load_int8(checkpoint, group_size), optimize_for_cpu_inference(load_int8(checkpoint, group_size))
    monkeypatch.setattr(olmo_hf.fast.quantized, "_WIDEN_MAX_ELEMENTS", 40 * 64)  # lm_head (128 x 64) in 4 slices
    plan = olmo_hf.fast.native.kernel_plan()  # the widening path, not the AMX product that reads int8 directly
    monkeypatch.setattr(olmo_hf.fast.native, "_PLAN", dataclasses.replace(plan, int8_gemm_amx=False))
    with torch.no_grad():
        assert torch.equal(fast(IDS).logits, plain(IDS).logits)


@needs_kernels
def test_int8_model_gives_the_quantized_models_tokens_and_logits(checkpoint, group_size):
    plain, fast = load_int8(checkpoint, group_size), optimize_for_cpu_inference(load_int8(checkpoint, group_size))
    with torch.no_grad():
        assert torch.equal(fast(IDS).logits, plain(IDS).logits)  # prefill: torchao's arithmetic, bit for bit
    kwargs = dict(max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True)
    out_fast, out_plain = fast.generate(IDS, **kwargs), plain.generate(IDS, **kwargs)
    assert torch.equal(out_fast.sequences, out_plain.sequences)
    exact = olmo_hf.Olmo2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, module in plain.named_modules():  # the fp32 model with the dequantized int8 weights
            if is_int8_weight_only(module) or is_int8_embedding(module):
                exact.get_submodule(name).weight.copy_(_dequantized(module.weight))
        reference = exact(out_plain.sequences).logits[0, IDS.shape[1]:]  # (decoding steps, vocab)
    fast_err, plain_err = [], []
    for i in range(1, len(out_fast.logits)):  # decoding steps: the native int8 kernel
        assert _rel(out_fast.logits[i], out_plain.logits[i]) < DECODE_LOGITS_REL
        fast_err.append(_rel(out_fast.logits[i][0], reference[i - 1]))
        plain_err.append(_rel(out_plain.logits[i][0], reference[i - 1]))
    assert sum(fast_err) <= 1.5 * sum(plain_err)


def test_undo_restores_the_torchao_model_exactly(checkpoint, group_size):
    model = load_int8(checkpoint, group_size)
    params = dict(model.named_parameters())
    before = {name: (p.qdata.clone(), p.scale.clone()) for name, p in params.items() if hasattr(p, "qdata")}
    with torch.no_grad():
        ref = model(IDS).logits
    undo(optimize_for_cpu_inference(model))
    assert not is_optimized(model)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys() and all(after[name] is p for name, p in params.items())
    for name, (qdata, scale) in before.items():
        assert torch.equal(after[name].qdata, qdata) and torch.equal(after[name].scale, scale), name
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert is_int8_weight_only(module) or is_int8_embedding(module)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref)


def test_save_pretrained_after_optimising_writes_the_torchao_checkpoint(checkpoint, tmp_path, group_size):
    plain, fast = load_int8(checkpoint, group_size), optimize_for_cpu_inference(load_int8(checkpoint, group_size))
    plain.save_pretrained(tmp_path / "plain")
    fast.save_pretrained(tmp_path / "fast")
    written = load_file(tmp_path / "fast" / "model.safetensors")
    expected = load_file(tmp_path / "plain" / "model.safetensors")
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], expected[key]) for key in expected)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fast")
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, plain(IDS).logits)


def test_other_quantization_and_other_int8_layouts_are_refused_naming_them(checkpoint):
    import torchao.quantization as ao
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, quantization_config=quantization_config("int8-dynamic", device="cpu"))
    with pytest.raises(ValueError, match="Int8DynamicActivationInt8WeightConfig.*int8 weight-only"):
        optimize_for_cpu_inference(model)
    assert not is_optimized(model)
    others = {  # torchao's own per-group Int8Tensor; group-wise int8 with bf16 scales (torchao's default dtype)
        "Int8Tensor": ao.Int8WeightOnlyConfig(granularity=PerGroup(32)),
        "IntxUnpackedToInt8Tensor": ao.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(32)),
    }
    for kind, config in others.items():
        other = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16,
                                                     quantization_config=TorchAoConfig(config))
        with pytest.raises(ValueError, match=rf"q_proj\.weight is a {kind} \(only torchao int8 weight-only weights, "
                                             r"per channel or per group of 32-128 with float16 scales"):
            optimize_for_cpu_inference(other)
        assert not is_optimized(other)


def test_deepcopy_of_an_optimised_int8_model_gives_the_same_logits(checkpoint):
    # (torch.save of a whole torchao model fails before and after optimising: torchao's tensors hold a partial)
    model = optimize_for_cpu_inference(load_int8(checkpoint))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(IDS).logits, model(IDS).logits)
    undo(twin)
    assert type(twin.model.layers[0].mlp.up_proj) is torch.nn.Linear
