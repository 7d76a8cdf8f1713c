"""The ``convert`` command: ``python -m olmo_hf.convert`` and ``olmo-hf convert`` (olmo_hf.convert.cli).

Process-level behaviour (exit codes, stdout / stderr) is checked in subprocesses; option handling runs
in-process through ``olmo_hf.convert.cli.main``. ``--validate``'s comparison with the ORIGINAL libraries runs
this same command inside the reference venvs (scripts/setup_reference_envs.sh; OLMO_HF_AI2_OLMO_PYTHON /
OLMO_HF_OLMO_CORE_PYTHON) with olmo_hf on PYTHONPATH, and is skipped with the reason when a venv is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo_hf.convert import cli

from ai2_olmo_checkpoints import ai2_olmo_state_dict, write_ai2_olmo

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def write_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(100)}, unk_token="t0")).save(str(path))
    return path


@pytest.fixture
def ckpt(tmp_path) -> Path:
    # a synthetic trainer step, weights std 0.1
    return write_ai2_olmo(tmp_path / "step1000", state_dict=ai2_olmo_state_dict(std=0.1))


def run(args, python=sys.executable, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "olmo_hf.convert", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, cwd=REPO, timeout=600)


def error_lines(stderr: str, prog: str = "python -m olmo_hf.convert") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error:")]


# --- python -m olmo_hf.convert, in a subprocess -------------------------------------------------------------


def test_converts_with_the_format_auto_detected(ckpt, tmp_path):
    dst = tmp_path / "hf"
    proc = run([ckpt, dst, "--tokenizer", write_tokenizer(tmp_path / "tokenizer.json")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(dst)  # stdout carries only the result
    assert f"converted ai2-olmo checkpoint {ckpt}" in proc.stderr  # detected as the ai2-olmo trainer format
    assert json.loads((dst / "config.json").read_text())["model_type"] == "olmo"
    assert {"model.safetensors", "generation_config.json", "tokenizer.json"} <= {p.name for p in dst.iterdir()}


def test_existing_destination_is_refused_with_exit_code_2(ckpt, tmp_path):
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    proc = run([ckpt, dst])
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert "exists and is not empty" in line and "--overwrite" in line
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_wrong_explicit_format_is_exit_code_2(ckpt, tmp_path):
    proc = run([ckpt, tmp_path / "hf", "--format", "olmo-core"])
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert "config.json does not exist" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "hf").exists()


def test_missing_tokenizer_is_exit_code_2(ckpt, tmp_path):
    proc = run([ckpt, tmp_path / "hf", "--tokenizer", tmp_path / "nope.json"])
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert "tokenizer path" in line and "does not exist" in line
    assert not (tmp_path / "hf").exists()


# --- olmo-hf convert ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olmo_hf_script() -> Path:
    script = Path(sys.executable).parent / "olmo-hf"
    if not script.is_file():
        pytest.skip(f"no olmo-hf console script next to {sys.executable} (pip install -e .)")
    proc = subprocess.run([str(script), "convert", "--help"], capture_output=True, text=True, env=ENV, timeout=600)
    if proc.returncode != 0 or "SRC" not in proc.stdout:
        pytest.skip(f"`olmo-hf convert --help` does not work yet (exit {proc.returncode})")
    assert "examples:" in proc.stdout and "--to {hf,olmo-core}" in proc.stdout
    return script


def test_olmo_hf_convert_converts_and_reports_errors(olmo_hf_script, ckpt, tmp_path):
    dst = tmp_path / "hf"
    proc = subprocess.run([str(olmo_hf_script), "convert", str(ckpt), str(dst), "--format", "olmo"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (dst / "model.safetensors").is_file()
    again = subprocess.run([str(olmo_hf_script), "convert", str(ckpt), str(dst)],
                           capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 2
    [line] = error_lines(again.stderr, prog="olmo-hf convert")
    assert "exists and is not empty" in line


# --- options, in-process -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["olmo", "olmo_trainer", "ai2-olmo", "auto"])
def test_format_spellings_of_the_ai2_olmo_trainer(spelling, ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), str(tmp_path / "hf"), "--format", spelling]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "hf")


def test_unknown_format_is_one_line_exit_code_2(ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), str(tmp_path / "hf"), "--format", "megatron"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [
        "python -m olmo_hf.convert: error: unknown format 'megatron'; choose one of 'auto', 'olmo_trainer', "
        "'olmo_core', 'hf_olmo'."
    ]


def test_debug_adds_the_traceback(ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), str(tmp_path / "hf"), "--format", "megatron", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and len(error_lines(err)) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--to", "olmo-core", "--tokenizer", "tok.json"], "--tokenizer applies to --to hf only"),
        (["--model-and-optim"], "--model-and-optim applies to --to olmo-core only"),
        (["--format", "hf"], "pass --to olmo-core"),
    ],
    ids=["tokenizer-to-olmo-core", "model-and-optim-to-hf", "format-hf-to-hf"],
)
def test_options_that_do_not_apply_are_refused(extra, message, ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), str(tmp_path / "out"), *extra]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert message in line
    assert not (tmp_path / "out").exists()


def test_to_olmo_core_from_an_original_checkpoint_and_from_a_transformers_directory(ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), str(tmp_path / "hf")]) == 0
    assert cli.main([str(tmp_path / "hf"), str(tmp_path / "core"), "--to", "olmo-core", "--model-and-optim"]) == 0
    assert sorted(p.name for p in (tmp_path / "core").iterdir()) == ["config.json", "model.pt", "model_and_optim"]
    # the ai2-olmo checkpoint itself, converted in memory on the way
    assert cli.main([str(ckpt), str(tmp_path / "core2"), "--to", "olmo-core", "--dtype", "bfloat16"]) == 0
    a = torch.load(tmp_path / "core" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "core2" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k].to(torch.bfloat16), b[k]) for k in a)
    assert capsys.readouterr().out.split() == [str(tmp_path / p) for p in ("hf", "core", "core2")]


def test_add_convert_parser_plugs_into_another_command_line(ckpt, tmp_path):
    parser = argparse.ArgumentParser(prog="olmo-hf")
    cli.add_convert_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(ckpt), str(tmp_path / "hf"), "--format", "olmo-core"])
    assert args.handler is cli.run_convert and args.convert_prog == "olmo-hf convert"
    assert args.handler(args) == 2  # the wrong format, reported as a usage error
    assert "--to {hf,olmo-core}" in parser._subparsers._group_actions[0].choices["convert"].format_help()


# --- --validate ----------------------------------------------------------------------------------------------


def test_validate_says_what_it_skipped_when_the_original_library_is_missing(ckpt, tmp_path, caplog):
    import importlib.util

    if importlib.util.find_spec("olmo") is not None:
        pytest.skip("ai2-olmo is importable here; nothing is skipped")
    with caplog.at_level("INFO", logger="olmo_hf.convert"):
        assert cli.main([str(ckpt), str(tmp_path / "hf"), "--validate"]) == 0
    assert "reloads with identical weights and finite logits" in caplog.text
    assert "comparison with ai2-olmo was skipped: ai2-olmo (olmo) is not importable in this interpreter" in caplog.text


def test_validate_fails_and_leaves_dst_untouched_when_logits_differ(ckpt, tmp_path, monkeypatch, capsys):
    """The comparison itself, with a stand-in for ai2-olmo whose logits are off by 0.1."""
    from olmo_hf.convert import validate

    def fake_reference(fmt, src, ids, dtype):
        model = cli_model(tmp_path / "probe")
        with torch.no_grad():
            return model(ids).logits + 0.1

    def cli_model(out):
        from olmo_hf import OlmoForCausalLM

        return OlmoForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    assert cli.main([str(ckpt), str(tmp_path / "probe")]) == 0
    monkeypatch.setattr(validate, "_library", lambda *a, **k: ("0.6.0", ""))
    monkeypatch.setattr(validate, "_ai2_olmo_logits", fake_reference)
    assert cli.main([str(ckpt), str(tmp_path / "hf"), "--validate"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "validation failed: max |logit diff| vs ai2-olmo 0.6.0 is 0.1" in line
    assert not (tmp_path / "hf").exists()


def reference_python(name: str, env_var: str) -> Path:
    python = Path(os.environ.get(env_var) or REPO / ".venvs" / name / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"no {name} reference venv at {python}: run scripts/setup_reference_envs.sh or set {env_var}")
    return python


def test_validate_compares_logits_with_ai2_olmo_when_it_is_importable(ckpt, tmp_path):
    python = reference_python("ai2-olmo", "OLMO_HF_AI2_OLMO_PYTHON")
    proc = run([ckpt, tmp_path / "hf", "--validate"], python=python, env={**ENV, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--validate: logits match ai2-olmo 0.6.0, max |diff|" in proc.stderr


def test_validate_compares_logits_with_olmo_core_both_ways_when_it_is_importable(ckpt, tmp_path):
    python = reference_python("olmo-core", "OLMO_HF_OLMO_CORE_PYTHON")
    assert cli.main([str(ckpt), str(tmp_path / "hf")]) == 0
    script = (
        "import sys; from olmo_hf.convert.cli import main; "
        f"sys.exit(main([{str(tmp_path / 'hf')!r}, {str(tmp_path / 'core')!r}, '--to', 'olmo-core', '--validate']) "
        f"or main([{str(tmp_path / 'core')!r}, {str(tmp_path / 'hf2')!r}, '--validate']))"
    )
    proc = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                          env={**ENV, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # HF -> OLMo-core: OLMo-core builds the export and matches; OLMo-core -> HF: ours matches OLMo-core
    assert proc.stderr.count("--validate: logits match OLMo-core 3.0.0, max |diff|") == 2
    shutil.rmtree(tmp_path / "hf2")


@pytest.mark.parametrize("has_end_of_turn", [True, False])
def test_generation_config_stops_at_the_end_of_turn_token_when_the_tokenizer_has_it(ckpt, tmp_path, has_end_of_turn):
    """As OLMo-core's HF exporter: generation eos [<|im_end|>, eos] for a tokenizer with the chat end-of-turn token."""
    from tokenizers import Tokenizer, models

    from olmo_hf.convert import convert_checkpoint

    vocab = {f"t{i}": i for i in range(100)}
    if has_end_of_turn:
        vocab["<|im_end|>"] = vocab.pop("t42")
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(tmp_path / "tokenizer.json"))
    dst = convert_checkpoint(ckpt, tmp_path / "hf", tokenizer=tmp_path / "tokenizer.json")
    eos = json.loads((dst / "config.json").read_text())["eos_token_id"]
    expected = [42, eos] if has_end_of_turn else eos
    assert json.loads((dst / "generation_config.json").read_text())["eos_token_id"] == expected
