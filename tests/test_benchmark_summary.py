"""scripts/benchmark.py's summaries: ratios are medians of per-pair ratios, prefill pairs are back-to-back samples,
and llama.cpp's one sample per round is paired with the median of that round's prefill samples (the timed runs
themselves need a model and minutes; they are not run here)."""

import importlib.util
import os
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "benchmark_script", Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
)
benchmark = importlib.util.module_from_spec(_SPEC)
_ENV = dict(os.environ)
_SPEC.loader.exec_module(benchmark)  # sets HF_HUB_OFFLINE, TRANSFORMERS_VERBOSITY, ... for its own runs
os.environ.clear()
os.environ.update(_ENV)  # not for the rest of the test session


def _result(ours_prefill, builtin_prefill, llama_prefill, samples_per_round):
    """A timed result of len(llama_prefill) rounds: prefill samples (flat, round after round) per implementation."""
    n = samples_per_round

    def rounds(xs):
        return [sorted(xs[i * n : (i + 1) * n])[n // 2] for i in range(len(xs) // n)]

    impl = {
        name: {"prefill_tps": xs, "prefill_round_tps": rounds(xs), "decode_b1_tps": [10.0] * len(llama_prefill)}
        for name, xs in (("ours", ours_prefill), ("builtin", builtin_prefill))
    }
    gguf = {"label": "llama.cpp m", "path": "m.gguf", "bytes_per_step": 1e9}
    llama = {"prefill_tps": llama_prefill, "decode_b1_tps": [5.0] * len(llama_prefill),
             "bandwidth_gbps": [20.0] * len(llama_prefill)}
    return {"timed": {"samples": {**impl, "llama.cpp m": llama}}, "llama_cpp": {"ggufs": [gguf]}}


def test_llama_cpp_prefill_is_paired_with_the_median_of_the_same_rounds_samples():
    # round 1: ours 100, 110, 900 (median 110) against llama.cpp 10; round 2: ours 400, 410, 420 against 40
    res = _result([100, 110, 900, 400, 410, 420], [50, 50, 50, 200, 200, 200], [10, 40], samples_per_round=3)
    row = benchmark.summarize_llama_cpp(res)["llama.cpp m"]
    assert row["ours_over_llama_cpp_prefill_tps_pairs"] == pytest.approx([11.0, 10.25])
    assert row["builtin_over_llama_cpp_prefill_tps_pairs"] == pytest.approx([5.0, 5.0])
    assert row["ours_over_llama_cpp_decode_b1_tps"] == pytest.approx(2.0)


def test_prefill_samples_must_be_at_least_one():
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(["--prefill-samples", "0"])
    assert e.value.code == 2
