"""The fast path on every CPU: which kernel variant a CPU gets (decided from simulated flags, so that every branch
runs on any machine), each variant this machine can build computing the right product, the measured per-machine
plan (decided from given timings: never slower), a clean fallback where no kernel applies, and status()."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

import olmo_hf
from olmo_hf import fast
from olmo_hf.fast import native

AVX512_BF16 = {"fpu", "sse2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma", "f16c"}  # e.g. a Zen 2 / Skylake laptop


@pytest.fixture
def fresh_native(monkeypatch):
    """Forget this process's library and plan for one test (restored afterwards)."""
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_native_reason", "")
    monkeypatch.setattr(native, "_PLAN", None)
    return native


# ----------------------------------------------------------------------------------------------- which variant
def test_a_cpu_with_avx512_bf16_gets_the_avx512_bf16_kernels():
    assert native.choose_isa(AVX512_BF16 | {"amx_bf16", "amx_tile"}, "x86_64", "linux") == ("avx512_bf16", "")


def test_a_cpu_with_avx2_fma_f16c_only_gets_the_avx2_kernels():
    assert native.choose_isa(AVX2_ONLY, "x86_64", "linux") == ("avx2", "")


def test_avx512f_without_bf16_gets_the_avx2_kernels():
    """Skylake-X / Ice Lake: AVX-512 but no bf16 dot product; the AVX2 variant widens bf16 in registers."""
    assert native.choose_isa(AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}, "x86_64", "linux")[0] == "avx2"


def test_an_old_x86_cpu_gets_no_kernels_and_a_reason():
    isa, why = native.choose_isa({"fpu", "sse2", "avx"}, "x86_64", "linux")
    assert isa is None and "neither AVX512-BF16 nor AVX2" in why


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_an_arm_cpu_with_neon_gets_the_neon_kernels(machine):
    """Graviton 2/3/4, Ampere Altra, Apple silicon under Linux: /proc/cpuinfo "Features" lists asimd."""
    assert native.choose_isa({"fp", "asimd", "evtstrm", "aes", "crc32"}, machine, "linux") == ("neon", "")


def test_an_arm_cpu_without_neon_gets_no_kernels_and_a_reason():
    isa, why = native.choose_isa({"fp"}, "aarch64", "linux")
    assert isa is None and "NEON" in why and "PyTorch" in why


def test_x86_flags_never_select_an_arm_variant_and_the_reverse():
    assert native.choose_isa(AVX512_BF16 | {"asimd"}, "x86_64", "linux")[0] == "avx512_bf16"
    assert native.choose_isa(AVX512_BF16, "aarch64", "linux")[0] is None


@pytest.mark.parametrize("machine", ["riscv64", "ppc64le", "s390x"])
def test_other_cpus_get_no_kernels_and_a_reason(machine):
    isa, why = native.choose_isa({"v"}, machine, "linux")
    assert isa is None and machine in why and "PyTorch" in why


def test_each_variant_says_why_a_cpu_cannot_run_it():
    assert native.isa_reasons(AVX2_ONLY, "x86_64") == {
        "avx512_bf16": "this CPU lacks avx512_bf16, avx512bw, avx512f, avx512vl",
        "avx2": "",
        "neon": "neon is for aarch64 / arm64 CPUs, not x86_64",
    }


def test_macos_gets_no_kernels_and_a_reason():
    isa, why = native.choose_isa(AVX512_BF16, "x86_64", "darwin")
    assert isa is None and "Linux" in why


# ----------------------------------------------------------------------------------------------- each variant
def _buildable_isas():
    """Every kernel variant, skipped where this CPU cannot run it (tests/test_kernels_emulated.py emulates some)."""
    return [pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=why or "-"))
            for name, why in native.isa_reasons().items()]


@pytest.mark.parametrize("isa", _buildable_isas())
def test_each_kernel_variant_computes_x_times_w_transposed_on_the_plain_weight(isa, tmp_path, monkeypatch):
    """1..8 rows, tails of K and N, strided rows of x and of W (a row slice of a fused matrix); within bf16
    rounding of the float64 product."""
    monkeypatch.setenv("OLMO_HF_CACHE", str(tmp_path))
    lib, why = native.load_variant(isa)
    if lib is None:
        pytest.skip(why)
    lib.lib.olmo_hf_kernels_isa.restype = ctypes.c_char_p
    assert lib.lib.olmo_hf_kernels_isa().decode() == isa
    gen = torch.Generator().manual_seed(0)
    for n, k in ((1, 7), (3, 33), (5, 96), (130, 100), (64, 2048)):
        fused = torch.randn(n + 9, k + 3, generator=gen).to(torch.bfloat16)
        w = fused[4 : 4 + n, :k]  # row stride k + 3
        for m in range(1, 9):
            x = torch.randn(m, k + 5, generator=gen).to(torch.bfloat16)[:, :k]
            out = native._native_matmul(x, w, lib).double()
            ref = x.double() @ w.double().T
            torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-3 * k**0.5)
    assert native._self_test(lib) == ""


# ----------------------------------------------------------------------------------------------- the plan
def test_a_kernel_faster_than_pytorch_is_enabled_with_its_measured_speed():
    on, note = native.decide_part("matrix-vector (1 row)", 1.0e-3, 2.0e-3, "F.linear")
    assert on and note == "matrix-vector (1 row): on, measured x2.00 of F.linear (1.00 vs 2.00 ms)"


def test_a_kernel_slower_than_pytorch_is_switched_off():
    on, note = native.decide_part("decode attention", 3.0e-3, 2.0e-3, "sdpa")
    assert not on and "off (not faster here)" in note and "x0.67" in note


def test_a_kernel_within_the_noise_margin_stays_off():
    assert native.decide_part("element-wise", 0.97e-3, 1.0e-3, "PyTorch operators")[0] is False


def test_a_plan_measurement_disturbed_by_other_processes_is_repeated_and_the_least_disturbed_kept(monkeypatch):
    loads = iter([1.5, 0.9, 1.2])  # cores other processes kept busy during each of the three attempts
    results = iter([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    monkeypatch.setattr(native, "_PLAN_RETRIES", 2)
    monkeypatch.setattr(native, "_median_times_once", lambda fns, repeats, warmup: next(results))
    monkeypatch.setattr(native, "foreign_load", lambda start, end, seconds: next(loads))
    assert native._median_times([None, None]) == [3.0, 4.0]
    assert next(loads, "all used") == "all used"


def test_a_plan_measurement_on_a_quiet_machine_is_taken_once(monkeypatch):
    results = iter([[1.0, 2.0], [3.0, 4.0]])
    monkeypatch.setattr(native, "_median_times_once", lambda fns, repeats, warmup: next(results))
    monkeypatch.setattr(native, "foreign_load", lambda start, end, seconds: 0.1)
    assert native._median_times([None, None]) == [1.0, 2.0]
    assert next(results) == [3.0, 4.0]


def test_foreign_load_counts_only_the_cpu_time_of_other_processes():
    hz = os.sysconf("SC_CLK_TCK")
    # all CPUs were busy for 3 * hz ticks over 2 s, of which this process used hz ticks: one core's worth is foreign
    assert native.foreign_load((1000, 100), (1000 + 3 * hz, 100 + hz), 2.0) == 1.0
    assert native.foreign_load(None, (1, 1), 2.0) is None
    assert native.foreign_load((0, 0), (1, 1), 0.01) is None  # shorter than the counters can tell


def _fake_timings(monkeypatch, results):
    """Make _median_times return the given (native, torch) pairs in order of measurement."""
    calls = iter(results)
    monkeypatch.setattr(native, "_median_times", lambda fns, **_: list(next(calls)))


def test_the_plan_enables_the_product_up_to_the_largest_batch_where_it_is_faster(fresh_native, monkeypatch):
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    monkeypatch.setattr(lib, "amx", False)
    # gemv 1 row, 4 rows, 8 rows; decode attention at 128 and 512 keys; prefill attention; element-wise at 1 and at
    # 128 tokens; int8 gemv 1 row, 4 rows; int8 -> bf16 widening; int4 gemv 1 row, 8 rows; int4 -> bf16 widening
    _fake_timings(monkeypatch, [(1, 3), (2, 3), (5, 3), (1, 2), (1, 2), (4, 2), (1, 2), (3, 2), (1, 2), (3, 2), (1, 2),
                                (1, 2), (3, 2), (1, 2)])
    plan = native._measure_plan(lib)
    assert plan.gemv_max_rows == 4
    assert plan.int8_gemv_max_rows == 1 and plan.int8_convert and "off" in plan.notes["int8_gemv_4"]
    assert plan.int4_gemv_max_rows == 1 and plan.int4_convert and "off" in plan.notes["int4_gemv_8"]
    assert plan.decode_attention and not plan.prefill_attention and plan.elementwise
    assert not plan.elementwise_prefill and "128 tokens): off" in plan.notes["elementwise_prefill"]
    assert "off (not faster here)" in plan.notes["gemv_8"] and "off" in plan.notes["prefill_attention"]


def test_decode_attention_runs_only_if_faster_at_a_short_and_a_long_context(fresh_native, monkeypatch):
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    monkeypatch.setattr(lib, "amx", False)
    # gemv off at 1 row; decode attention faster at 128 keys, slower at 512; the rest off
    _fake_timings(monkeypatch, [(3, 2), (1, 2), (3, 2), (5, 5), (5, 5), (5, 5), (3, 2), (3, 2), (3, 2), (3, 2)])
    plan = native._measure_plan(lib)
    assert not plan.decode_attention
    assert "128 keys): on" in plan.notes["decode_attention"] and "512 keys): off" in plan.notes["decode_attention"]


def test_decode_attention_is_timed_against_transformers_sdpa_attention_function(fresh_native, monkeypatch):
    # what the attention block runs in its place: the "sdpa" entry of Transformers' attention functions (torch's
    # kernel and the transposes around it), called as an attention block calls it
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    monkeypatch.setattr(lib, "amx", False)
    sdpa, called = ALL_ATTENTION_FUNCTIONS["sdpa"], []

    def spy(module, q, k, v, mask, **kwargs):
        called.append((module.num_key_value_groups, tuple(q.shape), k.shape[2], mask, kwargs["scaling"]))
        return sdpa(module, q, k, v, mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", spy)  # this instance's local override
    monkeypatch.setattr(native, "_median_times", lambda fns, **_: [(fn(), 1.0)[1] for fn in fns])  # each once
    native._measure_plan(lib)
    assert called == [(1, (1, 16, 1, 128), 128, None, 0.088)] * 4 + [(1, (1, 16, 1, 128), 512, None, 0.088)] * 4


def test_a_product_slower_at_one_row_is_never_used(fresh_native, monkeypatch):
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    monkeypatch.setattr(lib, "amx", False)
    _fake_timings(monkeypatch, [(3, 2), (5, 5), (5, 5), (5, 5), (5, 5), (5, 5), (3, 2), (3, 2), (3, 2), (3, 2)])
    plan = native._measure_plan(lib)
    assert plan.gemv_max_rows == 0 and "gemv_4" not in plan.notes
    assert plan.int8_gemv_max_rows == 0 and not plan.int8_convert and "int8_gemv_4" not in plan.notes
    assert plan.int4_gemv_max_rows == 0 and not plan.int4_convert and "int4_gemv_8" not in plan.notes
    assert not (plan.decode_attention or plan.prefill_attention or plan.elementwise or plan.elementwise_prefill)


def test_amx_takes_over_from_the_row_count_where_it_measured_faster(fresh_native, monkeypatch):
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    monkeypatch.setattr(lib, "amx", True)
    # (AVX512, AMX, F.linear) at 1, 4, 8 rows; then attention and element-wise (1 and 128 tokens) pairs; int8 gemv 1, 4, 8 rows and
    # the int8 -> bf16 widening; int4 gemv 1, 8 rows and the int4 -> bf16 widening; the AMX prefill product (bf16 vs
    # F.linear, int8 vs widening + F.linear)
    _fake_timings(monkeypatch, [(1, 2, 3), (3, 2, 4), (5, 3, 4), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2),
                                (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2, 3, 2, 1, 2)])
    plan = native._measure_plan(lib)
    assert plan.gemv_max_rows == 8 and plan.gemv_amx_from_rows == 2
    assert plan.notes["gemv_1"].startswith("matrix-vector, AVX512 (1 row): on") and "AMX 2000.00 ms" in plan.notes["gemv_1"]
    assert plan.notes["gemv_8"].startswith("matrix-vector, AMX (8 rows): on")


def test_the_amx_kernel_computes_the_product_and_leaves_odd_rows_to_avx512(fresh_native):
    lib = native._native_kernel()
    if lib is None or not lib.amx:
        pytest.skip(f"no AMX here: {native.enable_amx(lib, native.cpu_flags()) if lib else 'no native kernels'}")
    gen = torch.Generator().manual_seed(0)
    for n, k in ((16, 32), (37, 64), (130, 2048), (64, 100)):  # N % 16 tails; K % 32 != 0 goes to AVX512 whole
        fused = torch.randn(n + 9, k + 3, generator=gen).to(torch.bfloat16)
        w = fused[4 : 4 + n, :k]
        for m in (1, 2, 5, 8):
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            out = native._native_matmul(x, w, lib, amx=True).double()
            torch.testing.assert_close(out, x.double() @ w.double().T, rtol=2**-7, atol=1e-3 * k**0.5)


@pytest.mark.parametrize("bf16_s,int8_s,int4_s,expected", [((1, 2), (1, 2), (3, 2), (True, True, False)),
                                                           ((2, 2), (3, 2), (1, 2), (False, False, True)),
                                                           ((1, 2), (3, 2), (1, 2), (True, False, True))])
def test_the_amx_prefill_product_runs_only_where_it_measured_faster(fresh_native, monkeypatch, bf16_s, int8_s,
                                                                    int4_s, expected):
    lib = native._native_kernel()
    if lib is None or lib.gemm_amx is None:
        pytest.skip("needs the AVX512-BF16 kernels built with AMX")
    monkeypatch.setattr(lib, "amx", True)
    _fake_timings(monkeypatch, [(*bf16_s, *int8_s, *int4_s)])
    enabled = native._measure_gemm(lib, torch.Generator().manual_seed(0), notes := {}, True, True)
    assert (enabled["gemm_amx"], enabled["int8_gemm_amx"], enabled["int4_gemm_amx"]) == expected
    assert notes["gemm_amx"].startswith("prefill products on AMX tiles (128 rows, bf16): " + ("on" if expected[0] else "off"))


def test_without_amx_the_prefill_product_stays_f_linear_and_says_why(fresh_native, monkeypatch):
    lib = native._native_kernel()
    if lib is None:
        pytest.skip("no native kernels")
    monkeypatch.setattr(lib, "amx", False)
    monkeypatch.setattr(lib, "amx_note", "AMX tile product: off (this CPU has no AMX-BF16)")
    assert native._measure_gemm(lib, torch.Generator(), notes := {}, True, True) == {}
    assert notes["gemm_amx"] == "prefill products on AMX tiles: off (this CPU has no AMX-BF16)"


def test_the_amx_prefill_product_is_x_times_w_transposed_for_any_rows(fresh_native):
    """Rows of x from 9 (just past the matrix-vector kernels) to 130 (tails of 32), N tails of 32, strided rows of
    W (a fused matrix's members), K up to 4096 (several K chunks when x is long); within bf16 rounding of float64."""
    lib = native._native_kernel()
    if lib is None or not lib.amx:
        pytest.skip(f"no AMX here: {native.enable_amx(lib, native.cpu_flags()) if lib else 'no native kernels'}")
    gen = torch.Generator().manual_seed(0)
    for n, k, m in ((16, 32, 9), (37, 64, 33), (130, 2048, 128), (64, 96, 130), (40, 4096, 600)):
        w = torch.randn(n + 9, k + 32, generator=gen).to(torch.bfloat16)[4 : 4 + n, :k]
        x = torch.randn(m, k + 3, generator=gen).to(torch.bfloat16)[:, :k]
        out = native._native_gemm(x, w, None, lib).double()
        torch.testing.assert_close(out, x.double() @ w.double().T, rtol=2**-7, atol=1e-3 * k**0.5)


def test_the_amx_int8_prefill_product_has_torchaos_roundings(fresh_native):
    """bf16(bf16(x @ q.T) * bf16(scale)): what torchao's int8 weight-only linear computes with F.linear."""
    lib = native._native_kernel()
    if lib is None or not lib.amx:
        pytest.skip(f"no AMX here: {native.enable_amx(lib, native.cpu_flags()) if lib else 'no native kernels'}")
    gen = torch.Generator().manual_seed(1)
    for n, k, m in ((16, 32, 9), (70, 256, 40), (96, 2048, 128)):
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scale = torch.rand(n, generator=gen) / 64
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        out = native._native_gemm(x, q, scale, lib)
        exact = ((x.double() @ q.double().T).to(torch.bfloat16) * scale.to(torch.bfloat16)).double()
        torch.testing.assert_close(out.double(), exact, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("group,asymmetric", [(32, False), (64, True), (128, True)])
def test_the_amx_int4_prefill_product_is_x_times_torchaos_dequantized_weight(fresh_native, group, asymmetric):
    """The nibble layout widened per band exactly as torchao dequantizes, then the bf16 product: within bf16
    rounding of x @ widen_reference(...) in float64 (several K chunks for the longest x)."""
    from olmo_hf.fast.int4 import pack_nibbles, widen_reference

    lib = native._native_kernel()
    if lib is None or not lib.amx:
        pytest.skip(f"no AMX here: {native.enable_amx(lib, native.cpu_flags()) if lib else 'no native kernels'}")
    gen = torch.Generator().manual_seed(group)
    for n, k, m in ((16, 128, 9), (70, 384, 40), (40, 4096, 600)):
        packed = pack_nibbles(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8))
        scale = (torch.rand(n, k // group, generator=gen) / 16).to(torch.bfloat16)
        offset = torch.randint(4, 12, (n, k // group), generator=gen, dtype=torch.int8) if asymmetric else None
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        out = native._native_gemm(x, packed, scale, lib, int4=(offset, k, group)).double()
        ref = x.double() @ widen_reference(packed, scale, offset, k, group).double().T
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-3 * k**0.5)


def test_the_amx_kernel_is_exact_to_bf16_over_odd_k_blocks_strided_x_and_many_row_blocks(fresh_native):
    """K an odd number of 32-wide blocks (the two accumulator chains plus the last single block), x a row slice
    with its own stride, and enough 16-row blocks that the prefetch runs on into the next block; against float64."""
    lib = native._native_kernel()
    if lib is None or not lib.amx:
        pytest.skip(f"no AMX here: {native.enable_amx(lib, native.cpu_flags()) if lib else 'no native kernels'}")
    gen = torch.Generator().manual_seed(1)
    for n, k in ((48, 96), (33, 160), (256, 1056)):
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        for m in (1, 3, 8):
            x = torch.randn(m, k + 16, generator=gen).to(torch.bfloat16)[:, 8 : 8 + k]
            out = native._native_matmul(x, w, lib, amx=True).double()
            torch.testing.assert_close(out, x.double() @ w.double().T, rtol=2**-7, atol=1e-3 * k**0.5)


def test_amx_is_off_without_the_cpu_flags(fresh_native):
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")
    was = lib.amx
    try:
        assert native.enable_amx(lib, AVX512_BF16) == "AMX: this CPU has no AMX-BF16"
    finally:
        lib.amx = was


def _tiny_bf16_model():
    config = olmo_hf.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=2, pad_token_id=1, eos_token_id=2, initializer_range=0.1)
    torch.manual_seed(0)
    return olmo_hf.Olmo2ForCausalLM(config).to(torch.bfloat16).eval()


def _greedy(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=1)


def test_a_plan_with_every_kernel_off_runs_exactly_the_plain_models_arithmetic(fresh_native, monkeypatch):
    """Measured slower everywhere: the optimised model computes what the plain model computes (PyTorch's
    operators on the same weights), so its logits are bit-identical."""
    monkeypatch.setattr(native, "_PLAN", native.KernelPlan(isa="avx512_bf16", notes={}))
    model = _tiny_bf16_model()
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    with torch.no_grad():
        plain = model(ids).logits
        fast.optimize_for_cpu_inference(model, fuse=False, fast_attention=False)
        assert torch.equal(model(ids).logits, plain)
    fast.undo(model)


def test_a_cpu_without_a_variant_falls_back_cleanly_and_says_why(fresh_native, monkeypatch):
    monkeypatch.setattr(native.platform, "machine", lambda: "riscv64")
    monkeypatch.setenv("OLMO_HF_NATIVE", "auto")
    model = _tiny_bf16_model()
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    expected = _greedy(model, ids)
    fast.optimize_for_cpu_inference(model)
    assert torch.equal(_greedy(model, ids), expected)
    report = fast.status(model)
    assert report.isa is None and report.optimized
    assert any("no native kernels for riscv64 CPUs" in line for line in report.skipped)


def test_switched_off_native_code_is_reported(fresh_native, monkeypatch):
    monkeypatch.setenv("OLMO_HF_NATIVE", "0")
    report = fast.status()
    assert report.isa is None and "switched off (OLMO_HF_NATIVE=0)" in str(report)


# ----------------------------------------------------------------------------------------------- status
def test_status_of_an_optimised_model_lists_what_runs_and_what_does_not(monkeypatch):
    monkeypatch.setattr(native, "_PLAN", native.KernelPlan(
        isa="avx512_bf16", gemv_max_rows=8, decode_attention=True,
        notes={"gemv_8": "matrix-vector (8 rows): on, measured x2.10 of F.linear (1.00 vs 2.10 ms)",
               "decode_attention": "decode attention: on, measured x5.00 of sdpa (0.04 vs 0.20 ms)",
               "prefill_attention": "prefill attention: off (not faster here), measured x0.80 of sdpa (1.0 vs 0.8 ms)"}))
    model = fast.optimize_for_cpu_inference(_tiny_bf16_model())
    report = fast.status(model)
    assert report.optimized and report.isa == "avx512_bf16"
    assert "matrix-vector (8 rows): on, measured x2.10 of F.linear (1.00 vs 2.10 ms)" in report.enabled
    assert any(line.startswith("prefill attention: off") for line in report.skipped)
    assert any("2 fused q/k/v" in line or "4 fused q/k/v" in line for line in report.enabled)
    text = str(report)
    assert text.startswith("olmo_hf.fast: model optimised; native kernels: avx512_bf16")
    assert "  off: prefill attention" in text
    fast.undo(model)
    assert not fast.status(model).optimized


def test_status_of_a_float32_model_says_the_native_kernels_do_not_apply(monkeypatch):
    monkeypatch.setattr(native, "_PLAN", native.KernelPlan(
        isa="avx512_bf16", gemv_max_rows=8, notes={"gemv_8": "matrix-vector (8 rows): on, measured x2 of F.linear"}))
    model = _tiny_bf16_model().float()
    fast.optimize_for_cpu_inference(model)
    report = fast.status(model)
    assert any("float32 (the native kernels are bf16 only)" in line for line in report.skipped)
    fast.undo(model)


def test_the_amx_prefill_product_takes_at_most_the_rows_it_was_measured_at(monkeypatch):
    """Measured (and enabled) at 128 rows; it falls behind oneDNN on larger products, which keep F.linear."""
    dense = torch.randn(64, 64).to(torch.bfloat16)
    assert native._can_use_native_gemm(torch.randn(1, 128, 64).to(torch.bfloat16), 64)
    assert not native._can_use_native_gemm(torch.randn(2, 65, 64).to(torch.bfloat16), 64)
    assert not native._can_use_native_gemm(dense[:, :63].contiguous(), 63)  # K % 32 != 0
