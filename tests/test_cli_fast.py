"""`olmo-hf run --fast/--no-fast`: the CPU fast path (olmo_hf.fast) applied by default on the CPU.

In-process (`olmo_hf.cli.main`, no 5 s interpreter start per run) on the embedded demo model and tiny
checkpoints; `load_model_and_tokenizer` is wrapped to record the model each run actually used. The installed
console script runs the default (fast) path end to end in test_cli_run.py (the demo and classify cases).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from olmo_hf.cli import main
from olmo_hf.cli import run as run_module
from olmo_hf.fast import is_optimized

from test_cli_run import DEMO, PROMPTS, save_tiny_checkpoint

GREEDY_FP32 = ["--dtype", "fp32", "--no-do-sample", "--max-new-tokens", "12"]


pytestmark = pytest.mark.usefixtures("restore_transformers_logging")  # conftest.py


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*args, stdin=..., on_load=...)`` -> (exit code, stdout, stderr, [models loaded]); runs `olmo-hf run`
    in-process. ``on_load(model, tokenizer)`` sees each loaded model before it runs."""

    def invoke(*args: str, stdin: str = PROMPTS[0] + "\n", on_load=None):
        models: list = []
        original = run_module.load_model_and_tokenizer

        def recording(*a, **kw):
            model, tokenizer = original(*a, **kw)
            models.append(model)
            if on_load is not None:
                on_load(model, tokenizer)
            return model, tokenizer

        monkeypatch.setattr(run_module, "load_model_and_tokenizer", recording)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(["run", *args])
        out, err = capsys.readouterr()
        return code, out, err, models

    return invoke


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_fast")
    return {"lm": save_tiny_checkpoint(root / "tiny"), "clf": save_tiny_checkpoint(root / "tiny-clf", True)}


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("olmo-hf run: error:")]
    return line


# ----------------------------------------------------------------------------------------------- default on / off
def test_default_run_on_cpu_applies_the_fast_path(cli):
    code, out, err, (model,) = cli("--max-new-tokens", "4", "--no-do-sample")
    assert code == 0, err
    assert is_optimized(model)
    assert json.loads(out)["generated_text"].startswith(PROMPTS[0])


def test_no_fast_runs_the_plain_model(cli):
    code, out, err, (model,) = cli("--max-new-tokens", "4", "--no-do-sample", "--no-fast")
    assert code == 0, err
    assert not is_optimized(model)


def test_fast_greedy_float32_output_is_identical_to_the_plain_model(cli):
    stdin = "".join(p + "\n" for p in PROMPTS)
    code, fast_out, err, (fast_model,) = cli(*GREEDY_FP32, "--fast", stdin=stdin)
    assert code == 0, err
    code, plain_out, err, (plain_model,) = cli(*GREEDY_FP32, "--no-fast", stdin=stdin)
    assert code == 0, err
    assert is_optimized(fast_model) and not is_optimized(plain_model)
    assert fast_model.dtype == torch.float32
    assert len(fast_out.splitlines()) == 2
    assert fast_out == plain_out


# Recorded with transformers 5.23.0 (the last release before the `cache` rename), `olmo-hf run`, plain and fast model
# in float32; every supported release must print exactly this (CI runs the suite on the oldest and the newest).
DEMO_CONTINUATION = (
    "The Python interpreter of the exception.\n\nIf the \"name\" statement is a file object, the module is used to "
    "the same as the class is raised.  If the default is not called, the function is None, the same value is used"
)


@pytest.mark.parametrize("fast", ["--fast", "--no-fast"])
def test_demo_greedy_continuation_is_the_one_recorded_before_the_cache_rename(cli, fast):
    code, out, err, _ = cli("--no-do-sample", "--dtype", "fp32", fast, stdin="The Python interpreter\n")
    assert code == 0, err
    assert json.loads(out)["generated_text"] == DEMO_CONTINUATION


def test_classification_checkpoint_gets_the_fast_path_score_head_included(cli, tiny):
    args = ("--model", str(tiny["clf"]), "--dtype", "fp32")
    code, fast_out, err, (fast_model,) = cli(*args)
    assert code == 0, err
    assert is_optimized(fast_model) and type(fast_model.score).__name__ == "PackedLinear"
    code, plain_out, err, _ = cli(*args, "--no-fast")
    assert code == 0, err
    fast, plain = json.loads(fast_out), json.loads(plain_out)
    assert fast["label"] == plain["label"] and fast["score"] == pytest.approx(plain["score"], abs=1e-5)


# ----------------------------------------------------------------------------------------------- --fast, cannot apply
def test_fast_with_a_quantization_it_does_not_take_is_a_one_line_error(cli):
    line = one_error_line(*cli("--fast", "--quantize", "int8-dynamic")[:3])
    assert "--fast" in line and "--quantize" in line


def test_quantize_int8_gets_the_fast_path_by_default(cli, tiny):
    code, out, err, (model,) = cli("--model", str(tiny["lm"]), "--quantize", "int8", "--max-new-tokens", "4")
    assert code == 0, err
    assert is_optimized(model) and type(model.model.layers[0].mlp.down_proj).__name__ == "Int8PackedLinear"


def test_quantize_int4_gets_the_fast_path_by_default(cli):
    code, out, err, (model,) = cli("--quantize", "int4", "--max-new-tokens", "4")  # the demo model
    assert code == 0, err
    assert is_optimized(model) and type(model.model.layers[0].mlp.down_proj).__name__ == "Int4PackedLinear"


def test_fast_on_a_gpu_is_a_one_line_error(cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA GPU 0, as far as --device can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, out, err, models = cli("--fast", "--device", "cuda")
    line = one_error_line(code, out, err)
    assert "--fast" in line and "--device cuda" in line and "--device -1" in line
    assert models == []  # refused before loading anything


def test_auto_skips_and_fast_refuses_a_model_that_is_not_olmo(cli, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    code, _, err, (model,) = cli("--model", str(tmp_path), "--max-new-tokens", "2", "--no-do-sample")
    assert code == 0, err
    assert type(model).__name__ == "LlamaForCausalLM" and not is_optimized(model)
    line = one_error_line(*cli("--model", str(tmp_path), "--fast")[:3])
    assert "--fast" in line and "LlamaForCausalLM" in line


def test_resolve_fast_defaults():
    from olmo_hf.cli.loading import resolve_fast

    cpu = torch.device("cpu")
    assert resolve_fast(None, cpu, "-1", None) == "auto"
    assert resolve_fast(True, cpu, "-1", None) == "on"
    assert resolve_fast(False, cpu, "-1", None) == "off"
    assert resolve_fast(None, cpu, "-1", object()) == "off"  # --quantize: not by default ...
    from olmo_hf.quantization import quantization_config

    assert resolve_fast(None, cpu, "-1", quantization_config("int8", device="cpu")) == "auto"  # ... but int8
    assert resolve_fast(None, cpu, "-1", quantization_config("int4", device="cpu")) == "auto"  # ... and int4
    assert resolve_fast(None, torch.device("cuda", 0), "0", None) == "off"
    assert resolve_fast(False, torch.device("cuda", 0), "0", object()) == "off"  # --no-fast never errs


# ----------------------------------------------------------------------------------------------- unforeseen failures
@pytest.fixture
def failing_fast_path(monkeypatch):
    """optimize_for_cpu_inference failing (it rolls the model back itself: tests/test_fast_path.py)."""
    import olmo_hf.fast

    def fail(model, **kwargs):
        raise RuntimeError("simulated packing failure")

    monkeypatch.setattr(olmo_hf.fast, "optimize_for_cpu_inference", fail)


def test_auto_mode_falls_back_to_the_plain_model(cli, failing_fast_path):
    code, out, err, (model,) = cli(*GREEDY_FP32, "--debug")
    assert code == 0, err
    assert not is_optimized(model)
    assert "CPU fast path not applied (RuntimeError: simulated packing failure); running the plain model" in err
    code, plain_out, err, _ = cli(*GREEDY_FP32, "--no-fast")
    assert code == 0, err
    assert out == plain_out


def test_auto_mode_fallback_is_silent_without_debug(cli, failing_fast_path):
    code, _, err, _ = cli("--max-new-tokens", "2", "--no-do-sample")
    assert code == 0, err
    assert "fast path" not in err


def test_explicit_fast_turns_a_failure_into_a_one_line_error(cli, failing_fast_path):
    line = one_error_line(*cli("--fast")[:3])
    assert "--fast" in line and "simulated packing failure" in line and "drop --fast" in line


def test_help_explains_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--fast, --no-fast" in text
    for needle in ("on the CPU", "--quantize", "measures faster on this CPU", "identical in float32", "bf16 rounding"):
        assert needle in text, needle
    assert "which native kernels run, which do not and why" in text  # --verbose


def test_verbose_prints_which_kernels_run_and_why(cli, tiny):
    """--verbose: olmo_hf.fast.status() of the loaded model on stderr (kernels on / off with the reason)."""
    code, out, err, _ = cli("--model", str(tiny["lm"]), "--max-new-tokens", "2", "--verbose")
    assert code == 0 and out
    assert "olmo_hf.fast: model optimised; native kernels:" in err
    assert "  on:  model:" in err and "linear layers in the fast path's record" in err


def test_verbose_with_no_fast_says_the_fast_path_is_off(cli, tiny):
    code, _, err, _ = cli("--model", str(tiny["lm"]), "--max-new-tokens", "2", "--verbose", "--no-fast")
    assert code == 0 and "olmo_hf.fast: CPU fast path off for this run" in err
