"""The CPU fast path on torchao int4 weight-only models (olmo_hf.fast.int4; kernels.c: olmo_hf_gemv_int4 and
olmo_hf_int4_to_bf16).

The optimised model is compared with the SAME torchao model without the fast path: prefill widens the nibbles to
bf16 with torchao's own arithmetic and runs F.linear on them, so its logits are bit-identical; a decoding step
runs the native kernel (x rounded to int16 per group, exact int32 group sums, fp32 accumulation, one bf16
rounding) inside the bf16 fast path, whose other kernels also round differently from the plain modules: the
decode-step logits agree to bf16 noise (relative L2 < 0.03, as for int8 in test_fast_quantized.py).
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, TorchAoConfig

import olmo_hf
from olmo_hf.fast import is_optimized, native, optimize_for_cpu_inference, quantized, status, undo
from olmo_hf.fast import int4
from olmo_hf.fast.int4 import (Int4PackedLinear, blocked_row_bytes, is_int4_weight_only, pack_int4_blocked, pack_nibbles,
                               unpack_int4_blocked, unpack_nibbles, widen_reference)
from olmo_hf.quantization import quantization_config

torchao = pytest.importorskip("torchao")
from torchao.quantization import IntxWeightOnlyConfig, MappingType  # noqa: E402
from torchao.quantization.granularity import PerGroup  # noqa: E402

needs_kernels = pytest.mark.skipif(native.kernel_plan().isa is None, reason="no native kernels on this machine")
DECODE_LOGITS_REL = 0.03
IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 77, 64, 12, 30, 101]])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("olmo2_int4")
    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                                 pad_token_id=1, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(0)
    olmo_hf.Olmo2ForCausalLM(config).save_pretrained(directory)
    return directory


def int4_config(group: int, asymmetric: bool) -> TorchAoConfig:
    mapping = MappingType.ASYMMETRIC if asymmetric else MappingType.SYMMETRIC
    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group),
                                              mapping_type=mapping))


def load_int4(directory, group: int = 32, asymmetric: bool = False):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16,
                                                quantization_config=int4_config(group, asymmetric)).eval()


LAYOUTS = [(32, False), (32, True), (64, False), (64, True)]


def _random_int4(n: int, k: int, group: int, asymmetric: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // group, generator=gen) / 64 + 1e-3).to(torch.bfloat16)
    zero = torch.randint(-8, 8, (n, k // group), generator=gen, dtype=torch.int8) if asymmetric else None
    return q, scale, zero, gen


# ----------------------------------------------------------------------------------------------- the layout
def test_nibble_layout_round_trips_and_halves_the_bytes():
    q, *_ = _random_int4(7, 96, 32, False, 0)
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 64)  # 96 values padded to 128, two per byte
    assert torch.equal(unpack_nibbles(packed, 96), q)
    assert (packed[0, 0] & 15).item() == q[0, 0] + 8 and (packed[0, 0] >> 4).item() == q[0, 32] + 8


# ----------------------------------------------------------------------------------------------- the kernels
@needs_kernels
@pytest.mark.parametrize("n, k, group, asymmetric", [(64, 64, 64, False), (37, 96, 32, True), (3, 128, 32, False),
                                                     (130, 2048, 128, True), (5, 256, 64, False), (9, 320, 64, True)])
@pytest.mark.parametrize("vnni", [True, False], ids=["x-int8-vnni", "x-int16"])
def test_int4_kernel_is_the_float64_product_up_to_rounding(n, k, group, asymmetric, vnni):
    """Both products of the loaded variant: the VNNI one (x rounded to int8, where the CPU has AVX512-VNNI) and the
    one with x rounded to int16 (the others)."""
    lib = native._native_kernel()
    if vnni and not lib.int4_vnni:
        pytest.skip("the CPU (or the loaded variant) has no VNNI int4 product")
    if not vnni and lib.int4_vnni:
        lib.int4_set_vnni(0)
    try:
        _check_int4_product(n, k, group, asymmetric, x_levels=127 if vnni else 32767)
    finally:
        lib.int4_set_vnni(1)


def _check_int4_product(n: int, k: int, group: int, asymmetric: bool, x_levels: int, blocked: bool = False) -> None:
    q, scale, zero, gen = _random_int4(n, k, group, asymmetric, n * k)
    offset = None if zero is None else zero + 8
    packed = pack_nibbles(q)
    blocks = pack_int4_blocked(q, scale, offset, group) if blocked else None
    zp = torch.zeros(n, k // group, dtype=torch.float64) if zero is None else zero.double()
    exact_w = (q.double().view(n, -1, group) - zp[..., None]) * scale.double()[..., None]  # unrounded weights
    exact_w = exact_w.view(n, k)
    for rows in range(1, 9):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        exact = x.double() @ exact_w.T
        out = (native._native_int4_matmul(x, packed, scale, offset, k, group) if blocks is None
               else native._native_int4_blocked_matmul(x, blocks, asymmetric, k, group)).double()
        # x is rounded per group, to int8 on the VNNI product, int16 elsewhere (at most half a step, max|x in
        # group| / 127 or / 32767, per element); fp32 sums of terms as large as |x| s (u + offset), u + offset <= 31;
        # one bf16 rounding of the result
        xabs = x.double().abs()
        step = xabs.view(rows, -1, group).amax(-1).repeat_interleave(group, -1) / x_levels
        magnitude = xabs @ (scale.double().repeat_interleave(group, -1) * 31).T
        bound = exact.abs() * 2**-8 + (step / 2) @ exact_w.abs().T + 1e-5 * magnitude
        assert ((out - exact).abs() <= bound).all(), (rows, n, k, group)


BLOCKED_SHAPES = [(64, 64, 64, False), (37, 96, 32, True), (3, 128, 32, False), (130, 2048, 128, True),
                  (5, 256, 64, False), (9, 320, 64, True), (6, 64 * 19, 64, True), (4, 32 * 35, 32, False)]
needs_blocked = pytest.mark.skipif(not (native._native_kernel() and native._native_kernel().int4_blocked),
                                   reason="no blocked int4 kernel here (needs the AVX512 variant and AVX512-VNNI)")


@pytest.mark.parametrize("n, k, group, asymmetric", BLOCKED_SHAPES)
def test_blocked_int4_layout_unpacks_to_the_values_scales_and_offsets_exactly(n, k, group, asymmetric):
    q, scale, zero, _ = _random_int4(n, k, group, asymmetric, n + k)
    offset = None if zero is None else zero + 8
    blocks = pack_int4_blocked(q, scale, offset, group)
    assert blocks.shape == (n, blocked_row_bytes(k, group, asymmetric)) and blocks.shape[1] % 64 == 0
    values, unpacked_scale, unpacked_offset = unpack_int4_blocked(blocks, k, group, asymmetric)
    assert torch.equal(values, q) and torch.equal(unpacked_scale, scale)
    assert unpacked_offset is None if offset is None else torch.equal(unpacked_offset, offset)
    # at real widths the same bytes as the nibbles with their scales (and offsets) beside them
    assert blocked_row_bytes(2048, 64, True) == 1024 + 3 * 32 + 32 and blocked_row_bytes(2048, 32, False) == 1024 + 128


def test_blocked_int4_layout_puts_eight_values_of_sixteen_groups_in_each_64_bytes():
    q = (torch.arange(512) % 16 - 8).to(torch.int8).view(1, 512)  # value i: u = i mod 16
    blocks = pack_int4_blocked(q, torch.ones(1, 16).bfloat16(), None, 32)
    chunk = blocks[0, 64:128].long()  # after one header line: chunk 0 of block 0, bytes 4g + j of group g
    expected = [(32 * g + j) % 16 | ((32 * g + 4 + j) % 16) << 4 for g in range(16) for j in range(4)]
    assert chunk.tolist() == expected


@needs_blocked
@pytest.mark.parametrize("n, k, group, asymmetric", BLOCKED_SHAPES)
def test_blocked_int4_kernel_is_the_float64_product_up_to_rounding(n, k, group, asymmetric):
    _check_int4_product(n, k, group, asymmetric, x_levels=127, blocked=True)


@needs_blocked
@pytest.mark.parametrize("n, k, group, asymmetric", BLOCKED_SHAPES)
def test_blocked_int4_widening_is_the_nibble_layouts_bit_for_bit(n, k, group, asymmetric):
    q, scale, zero, gen = _random_int4(n, k, group, asymmetric, n - k)
    offset = None if zero is None else zero + 8
    blocks = pack_int4_blocked(q, scale, offset, group)
    expected = widen_reference(pack_nibbles(q), scale, offset, k, group)
    assert torch.equal(native._native_int4_blocked_to_bf16(blocks, asymmetric, k, group), expected)
    lib = native._native_kernel()
    if lib.amx and lib.gemm_amx is not None and k % 32 == 0:  # the AMX prefill product widens from the blocks
        x = torch.randn(40, k, generator=gen).to(torch.bfloat16)
        assert torch.equal(native._native_gemm(x, blocks, None, int4_blocked=(k, group, asymmetric)),
                           native._native_gemm(x, pack_nibbles(q), scale, int4=(offset, k, group)))


@pytest.fixture(params=["blocked", "nibble layout"])
def int4_layout(request, monkeypatch):
    """The model tests in both layouts: blocked (where this CPU runs it: AVX512-VNNI) and nibbles (the others)."""
    if request.param != "blocked":
        monkeypatch.setattr(int4, "blocked_layout_for", lambda group: False)
    return request.param


@needs_kernels
@pytest.mark.parametrize("group, asymmetric", LAYOUTS)
def test_widening_is_torchaos_dequantization_bit_for_bit(group, asymmetric):
    from torchao.quantization import IntxUnpackedToInt8Tensor

    gen = torch.Generator().manual_seed(group)
    w = (torch.randn(48, 192, generator=gen) * 0.05).to(torch.bfloat16)
    t = IntxUnpackedToInt8Tensor.from_hp(w, (1, group), torch.int4, mapping_type=MappingType.ASYMMETRIC
                                         if asymmetric else MappingType.SYMMETRIC)
    packed = pack_nibbles(t.qdata)
    offset = (t.zero_point + 8) if asymmetric else None
    expected = t.dequantize()
    assert torch.equal(native._native_int4_to_bf16(packed, t.scale, offset, 192, group), expected)
    assert torch.equal(widen_reference(packed, t.scale, offset, 192, group), expected)


def _variants():
    """Every kernel variant, skipped where this CPU cannot run it (tests/test_kernels_emulated.py emulates some)."""
    return [pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=why or "-"))
            for name, why in native.isa_reasons().items()]


@pytest.mark.parametrize("isa", _variants())
def test_each_kernel_variant_has_the_same_int4_product_and_widening(isa, tmp_path_factory, monkeypatch):
    """The AVX2 variant (built here too where the CPU has AVX2) against the loaded one: bit-identical widening,
    products within bf16 rounding of each other."""
    import ctypes

    monkeypatch.setenv("OLMO_HF_CACHE", str(tmp_path_factory.mktemp("int4_variants")))
    lib, why = native.load_variant(isa)
    if lib is None:
        pytest.skip(why)
    lib.lib.olmo_hf_kernels_isa.restype = ctypes.c_char_p
    assert lib.lib.olmo_hf_kernels_isa().decode() == isa
    for n, k, group, asymmetric in ((37, 96, 32, True), (130, 512, 64, False), (9, 256, 128, True)):
        q, scale, zero, gen = _random_int4(n, k, group, asymmetric, n + k)
        offset, packed = None if zero is None else zero + 8, pack_nibbles(q)
        assert torch.equal(native._native_int4_to_bf16(packed, scale, offset, k, group, lib),
                           widen_reference(packed, scale, offset, k, group))
        for rows in (1, 2, 5, 8):
            x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
            ref = x.double() @ widen_reference(packed, scale, offset, k, group).double().T
            out = native._native_int4_matmul(x, packed, scale, offset, k, group, lib).double()
            torch.testing.assert_close(out, ref, rtol=2**-6, atol=1e-2 * ref.abs().max().item())


@pytest.mark.usefixtures("int4_layout")
# ----------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("group, asymmetric", LAYOUTS)
def test_fast_path_takes_int4_models_with_fused_projections(checkpoint, group, asymmetric):
    model = load_int4(checkpoint, group, asymmetric)
    assert is_int4_weight_only(model.model.layers[0].mlp.down_proj)
    optimize_for_cpu_inference(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    for layer in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        assert type(layer) is Int4PackedLinear
    assert attn.q_proj._packed is attn.v_proj._packed is attn.__dict__["_fast_qkv"]  # one fused [q; k; v]
    assert mlp.gate_proj._packed is mlp.__dict__["_fast_gate_up"]
    assert attn.q_proj._packed.asymmetric == asymmetric


@pytest.mark.usefixtures("int4_layout")
@pytest.mark.parametrize("group, asymmetric", LAYOUTS)
def test_prefill_logits_are_bit_identical_to_the_torchao_model(checkpoint, group, asymmetric):
    plain, fast = load_int4(checkpoint, group, asymmetric), optimize_for_cpu_inference(
        load_int4(checkpoint, group, asymmetric))
    with torch.no_grad():
        assert torch.equal(fast(IDS).logits, plain(IDS).logits)


@pytest.mark.usefixtures("int4_layout")
@pytest.mark.parametrize("asymmetric", [False, True])
def test_greedy_tokens_equal_the_torchao_models(checkpoint, asymmetric):
    plain, fast = load_int4(checkpoint, 32, asymmetric), optimize_for_cpu_inference(
        load_int4(checkpoint, 32, asymmetric))
    with torch.no_grad():
        ref = plain.generate(IDS, max_new_tokens=12, do_sample=False)
        out = fast.generate(IDS, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref)


@pytest.mark.usefixtures("int4_layout")
@needs_kernels
def test_decode_step_logits_are_close_to_the_torchao_models(checkpoint):
    from transformers import DynamicCache

    plain, fast = load_int4(checkpoint, 64, True), optimize_for_cpu_inference(load_int4(checkpoint, 64, True))
    with torch.no_grad():
        logits = []
        for model in (plain, fast):
            cache = DynamicCache()
            model(IDS[:, :-1], cache=cache, use_cache=True)
            logits.append(model(IDS[:, -1:], cache=cache, use_cache=True).logits)
    assert _rel(logits[1], logits[0]) < DECODE_LOGITS_REL


@pytest.mark.usefixtures("int4_layout")
def test_save_pretrained_of_the_optimised_model_reloads_to_the_same_logits(checkpoint, tmp_path):
    plain, fast = load_int4(checkpoint, 32, True), optimize_for_cpu_inference(load_int4(checkpoint, 32, True))
    fast.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert is_int4_weight_only(reloaded.model.layers[1].self_attn.k_proj)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, plain(IDS).logits)


@pytest.mark.usefixtures("int4_layout")
def test_state_dict_of_the_optimised_model_is_torchaos(checkpoint):
    plain, fast = load_int4(checkpoint, 64, True), optimize_for_cpu_inference(load_int4(checkpoint, 64, True))
    expected, got = plain.state_dict(), fast.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if hasattr(value, "qdata"):
            assert type(got[key]) is type(value) and got[key].block_size == value.block_size, key
            for part in ("qdata", "scale", "zero_point"):
                assert getattr(got[key], part).dtype == getattr(value, part).dtype, (key, part)
                assert torch.equal(getattr(got[key], part), getattr(value, part)), (key, part)
        else:
            assert torch.equal(got[key], value), key


@pytest.mark.usefixtures("int4_layout")
def test_undo_restores_every_parameter_exactly(checkpoint):
    model = load_int4(checkpoint, 32, True)
    before = {name: (p, p.qdata.clone(), p.scale.clone(), p.zero_point.clone()) if hasattr(p, "qdata")
              else (p, p.detach().clone()) for name, p in model.named_parameters()}
    optimize_for_cpu_inference(model)
    undo(model)
    assert not is_optimized(model)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, *values) in before.items():
        assert after[name] is param, name  # the very Parameter objects
        parts = (param.qdata, param.scale, param.zero_point) if hasattr(param, "qdata") else (param.detach(),)
        for got, expected in zip(parts, values):
            assert got.dtype == expected.dtype and torch.equal(got, expected), name


@pytest.mark.usefixtures("int4_layout")
def test_deepcopy_of_an_optimised_model_gives_the_same_logits(checkpoint):
    fast = optimize_for_cpu_inference(load_int4(checkpoint, 64, False))
    twin = copy.deepcopy(fast)
    assert twin.model.layers[0].mlp.up_proj._packed is not fast.model.layers[0].mlp.up_proj._packed
    with torch.no_grad():
        assert torch.equal(twin(IDS).logits, fast(IDS).logits)


def test_packed_weights_take_half_the_bytes_of_int8_and_torchaos_bytes_are_released(checkpoint, monkeypatch):
    # against int8 in torchao's layout: the blocked one pads each row's scales to a 64-byte line (nothing at the
    # widths of real models, twice the bytes at this tiny model's 64)
    monkeypatch.setattr(quantized, "blocked_layout_for", lambda group: False)
    monkeypatch.setattr(int4, "blocked_layout_for", lambda group: False)  # the nibble layout's bytes
    int8 = optimize_for_cpu_inference(AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, quantization_config=quantization_config("int8", device="cpu")).eval())
    model = load_int4(checkpoint, 64, False)
    sources = [m.weight for m in model.modules() if is_int4_weight_only(m)]
    optimize_for_cpu_inference(model)

    def resident(m, attr):  # the decoder's projections (both models hold an int8 lm_head)
        seen, total = set(), 0
        for name, module in m.named_modules():
            packed = getattr(module, "_packed", None)
            if packed is None or id(packed) in seen or not hasattr(packed, attr) or name.endswith("lm_head"):
                continue
            seen.add(id(packed))
            total += sum(t.numel() * t.element_size() for t in (getattr(packed, a) for a in packed.__slots__
                                                                 if a in ("packed", "qdata", "scale", "offset"))
                         if isinstance(t, torch.Tensor))
        return total

    int4_bytes, int8_bytes = resident(model, "packed"), resident(int8, "qdata")
    assert 0.5 <= int4_bytes / int8_bytes <= 0.6  # nibbles + bf16 scale per 64, against int8 + fp32 scale per row
    assert all(w.qdata.numel() == 0 and w.scale.numel() == 0 for w in sources)  # one-per-byte data freed


def test_status_and_repr_name_the_int4_layers(checkpoint):
    model = optimize_for_cpu_inference(load_int4(checkpoint, 32, False))
    assert "int4 weight-only" in repr(model.model.layers[0].mlp.down_proj)
    assert "int4" in str(status(model))
