"""Kernel variants this CPU cannot run natively, run under emulation (qemu-user) for correctness, not speed: the
AArch64 NEON variant, and the AVX2 variant on an emulated AVX2-only CPU (Haswell: no AVX-512, so an AVX-512
instruction that slipped into the AVX2 build would stop it with SIGILL). kernels.c is compiled together with
tests/native/kernel_harness.c (a command-line driver: Python and torch do not run under the emulator) with the
flags native.py uses for that variant; inputs and outputs go through files and are checked here against float64.

Needs a cross compiler and qemu-user (Debian: ``apt-get install gcc-aarch64-linux-gnu qemu-user``); skipped with
that reason where they are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from olmo_hf.fast import native

HARNESS = Path(__file__).parent / "native" / "kernel_harness.c"
INSTALL = "apt-get install gcc-aarch64-linux-gnu qemu-user"

# variant -> (C compiler, emulator command, the compiled library's -m flags)
TARGETS = {
    "neon": ("aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]),
    "avx2": ("gcc", ["qemu-x86_64", "-cpu", "Haswell"]),
}


def _build(isa: str, tmp_path_factory, as_isa: str | None = None) -> list[str]:
    """Compile kernels.c (flags of `as_isa`, default `isa`) with the harness; the command that runs it emulated."""
    compiler, emulator = TARGETS[isa]
    missing = [tool for tool in (compiler, emulator[0]) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({INSTALL})")
    flags = [f for f in native._isa_flags(as_isa or isa) if f not in ("-shared", "-fPIC")]
    exe = tmp_path_factory.mktemp(f"harness-{isa}") / "kernel_harness"
    subprocess.run([compiler, *flags, str(HARNESS), native._NATIVE_SOURCE_FILE, "-o", str(exe), "-lm"], check=True)
    return [*emulator, str(exe)]


@pytest.fixture(scope="module", params=sorted(TARGETS))
def harness(request, tmp_path_factory):
    return request.param, _build(request.param, tmp_path_factory)


def _run(cmd: list[str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)


def _bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _from_bf16_bits(path: Path, shape) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.int16).reshape(shape)).view(torch.bfloat16)


def test_the_emulated_build_is_the_variant_native_py_would_load(harness):
    isa, cmd = harness
    assert _run(cmd, "isa").stdout.strip() == isa


@pytest.mark.parametrize("n,k", [(1, 7), (3, 33), (5, 96), (130, 100), (64, 2048)])
def test_the_emulated_bf16_product_is_x_times_w_transposed(harness, tmp_path, n, k):
    """1..8 rows, tails of K and N, rows of x and of W with a stride (a row slice of a fused matrix)."""
    _, cmd = harness
    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k + 3, generator=gen).to(torch.bfloat16)  # row stride k + 3, the last 3 columns unused
    for m in (1, 2, 4, 5, 8):
        x = torch.randn(m, k + 5, generator=gen).to(torch.bfloat16)  # row stride k + 5
        (tmp_path / "in").write_bytes(_bf16_bits(x).tobytes() + _bf16_bits(w).tobytes())
        done = _run(cmd, "bf16", m, n, k, k + 5, k + 3, tmp_path / "in", tmp_path / "out")
        assert done.returncode == 0, done.stderr
        out = _from_bf16_bits(tmp_path / "out", (m, n)).double()
        ref = x[:, :k].double() @ w[:, :k].double().T
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-3 * k**0.5)


@pytest.mark.parametrize("n,k", [(1, 7), (5, 130), (130, 256), (64, 2048)])
def test_the_emulated_int8_product_is_scaled_x_times_q_transposed(harness, tmp_path, n, k):
    _, cmd = harness
    gen = torch.Generator().manual_seed(n * 1000 + k)
    q = torch.randint(-127, 128, (n, k + 2), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) / 64
    for m in (1, 3, 8):
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        (tmp_path / "in").write_bytes(_bf16_bits(x).tobytes() + q.numpy().tobytes() + scale.numpy().tobytes())
        done = _run(cmd, "int8", m, n, k, k, k + 2, tmp_path / "in", tmp_path / "out")
        assert done.returncode == 0, done.stderr
        out = _from_bf16_bits(tmp_path / "out", (m, n)).double()
        ref = (x.double() @ q[:, :k].double().T) * scale.double()
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-4 * k**0.5)


def test_the_emulated_int8_widening_is_exact(harness, tmp_path):
    _, cmd = harness
    q = torch.arange(-128, 128, dtype=torch.int8).repeat(3, 1)[:, :251]  # every value, a K % 8 tail
    (tmp_path / "in").write_bytes(q.contiguous().numpy().tobytes())
    done = _run(cmd, "int8_to_bf16", 3, 251, 251, tmp_path / "in", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert torch.equal(_from_bf16_bits(tmp_path / "out", (3, 251)), q.to(torch.bfloat16))


@pytest.mark.parametrize("n,k,group", [(1, 64, 32), (5, 96, 32), (37, 256, 64), (64, 2048, 32), (6, 512, 256)])
def test_the_emulated_grouped_int8_product_and_widening_are_torchaos_dequantization(harness, tmp_path, n, k, group):
    """Group-wise int8 (the default of quantization_config("int8")): the widening bit for bit torchao's bf16(q *
    scale), the product within bf16 rounding of x @ the unrounded weight in float64."""
    _, cmd = harness
    gen = torch.Generator().manual_seed(n * 1000 + k)
    q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // group, generator=gen) / 64).half()
    for m in (1, 3, 8):
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        (tmp_path / "in").write_bytes(_bf16_bits(x).tobytes() + q.numpy().tobytes() + scale.numpy().tobytes())
        done = _run(cmd, "int8_grouped", m, n, k, group, tmp_path / "in", tmp_path / "out")
        assert done.returncode == 0, done.stderr
        both = _from_bf16_bits(tmp_path / "out", (m * n + n * k,))
        assert torch.equal(both[m * n :].view(n, k), native.int8_grouped_reference(q, scale))
        ref = x.double() @ (q.double() * scale.double().repeat_interleave(group, dim=1)).T
        torch.testing.assert_close(both[: m * n].view(m, n).double(), ref, rtol=2**-7, atol=1e-4 * k**0.5)


@pytest.mark.parametrize("n,k,group,asymmetric", [(5, 64, 32, False), (37, 192, 64, True), (64, 2048, 64, True),
                                                  (8, 256, 128, False)])
def test_the_emulated_int4_product_and_widening_are_the_nibble_layouts(harness, tmp_path, n, k, group, asymmetric):
    """olmo_hf.fast.int4's layout: the widening bit for bit what torchao's dequantization gives (widen_reference),
    the product within bf16 rounding of x @ that weight in float64."""
    from olmo_hf.fast.int4 import pack_nibbles, widen_reference

    _, cmd = harness
    gen = torch.Generator().manual_seed(n * 1000 + k)
    packed = pack_nibbles(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8))
    scale = (torch.rand(n, k // group, generator=gen) / 16).to(torch.bfloat16)
    offset = torch.randint(4, 12, (n, k // group), generator=gen, dtype=torch.int8) if asymmetric else None
    weight = widen_reference(packed, scale, offset, k, group)
    for m in (1, 3, 8):
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        extra = offset.numpy().tobytes() if asymmetric else b""
        (tmp_path / "in").write_bytes(_bf16_bits(x).tobytes() + packed.numpy().tobytes() + _bf16_bits(scale).tobytes()
                                      + extra)
        done = _run(cmd, "int4", m, n, k, group, int(asymmetric), tmp_path / "in", tmp_path / "out")
        assert done.returncode == 0, done.stderr
        both = _from_bf16_bits(tmp_path / "out", (m * n + n * k,))
        assert torch.equal(both[m * n :].view(n, k), weight)
        ref = x.double() @ weight.double().T
        torch.testing.assert_close(both[: m * n].view(m, n).double(), ref, rtol=2**-7, atol=1e-3 * k**0.5)


def test_the_emulated_avx2_only_cpu_rejects_avx512_code(tmp_path_factory, tmp_path):
    """The check above means something: the emulated Haswell stops the AVX512-BF16 build on its first product."""
    cmd = _build("avx2", tmp_path_factory, as_isa="avx512_bf16")
    x = torch.ones(1, 64, dtype=torch.bfloat16)
    (tmp_path / "in").write_bytes(_bf16_bits(x).tobytes() * 2)
    done = _run(cmd, "bf16", 1, 1, 64, 64, 64, tmp_path / "in", tmp_path / "out")
    assert done.returncode != 0
