"""Fast, in-process tests of `olmo-hf run`'s argument and input handling (no model is loaded unless noted).

The end-to-end behaviour of the installed command is in test_cli_run.py; this file covers the many small
rules behind it: --format inference, --column parsing, flag combinations, JSON/CSV validation, --device,
--dtype, --quantize, and the --debug traceback.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from olmo_hf.cli import main
from olmo_hf.cli import loading
from olmo_hf.cli.errors import CliError
from olmo_hf.cli.formats import check_combination, iter_pipe, parse_columns, read_batch, resolve_format
from olmo_hf.cli.tasks import TASKS, get_task

GEN, CLF = TASKS["text-generation"], TASKS["text-classification"]


pytestmark = pytest.mark.usefixtures("restore_transformers_logging")  # conftest.py


# ----------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize(
    "fmt, path, expected",
    [("infer", None, "pipe"), ("infer", "a.json", "json"), ("infer", "A.CSV", "csv"), ("csv", "a.txt", "csv"),
     ("pipe", "a.txt", "pipe")],
)
def test_resolve_format(fmt, path, expected):
    assert resolve_format(fmt, path) == expected


def test_unknown_extension_asks_for_format():
    with pytest.raises(CliError, match="--format json, --format csv, or --format pipe"):
        resolve_format("infer", "prompts.txt")


def test_parse_columns():
    assert parse_columns(None, GEN) is None
    assert parse_columns("prompt", GEN).pairs == (("prompt", "prompt"),)
    assert parse_columns("a,b", CLF).pairs == (("text", "a"), ("text_pair", "b"))
    assert parse_columns("text_pair=b,text=a", CLF).pairs == (("text_pair", "b"), ("text", "a"))
    with pytest.raises(CliError, match="takes 1 input"):
        parse_columns("a,b", GEN)
    with pytest.raises(CliError, match="not an input of text-classification"):
        parse_columns("premise=a,b", CLF)
    with pytest.raises(CliError, match="empty column name"):
        parse_columns("a,", CLF)


def test_flag_combinations(tmp_path):
    with pytest.raises(CliError, match="--format json reads a file"):
        check_combination("json", None, None, GEN)
    with pytest.raises(CliError, match="with --format pipe each line is one input"):
        check_combination("pipe", None, parse_columns("text", GEN), GEN)
    with pytest.raises(CliError, match="does not exist"):
        check_combination("csv", str(tmp_path / "missing.csv"), None, GEN)
    check_combination("pipe", None, parse_columns("a,b", CLF), CLF)  # tab-separated pairs: fine


def test_json_inputs(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps(["plain", "strings"]))
    assert read_batch("json", str(path), None) == ["plain", "strings"]
    path.write_text(json.dumps([{"q": "x", "n": 1}]))
    assert read_batch("json", str(path), parse_columns("q", GEN)) == ["x"]
    with pytest.raises(CliError, match=r"pass --column .*fields are: q, n"):
        read_batch("json", str(path), None)
    with pytest.raises(CliError, match="has no column 'text'; its columns are: q, n"):
        read_batch("json", str(path), parse_columns("text", GEN))
    with pytest.raises(CliError, match="expected a string"):
        read_batch("json", str(path), parse_columns("n", GEN))
    path.write_text('{"not": "a list"}')
    with pytest.raises(CliError, match="expects a list"):
        read_batch("json", str(path), None)
    path.write_text("[oops")
    with pytest.raises(CliError, match="not valid JSON"):
        read_batch("json", str(path), None)
    path.write_text(json.dumps(["fine", "  "]))
    with pytest.raises(CliError, match="input 1 is empty"):
        read_batch("json", str(path), None)


def test_csv_inputs(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("text\nhello\n")
    assert read_batch("csv", str(path), None) == ["hello"]  # a single column needs no --column
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CliError, match="has 2 columns"):
        read_batch("csv", str(path), None)
    with pytest.raises(CliError, match="no column 'c'"):
        read_batch("csv", str(path), parse_columns("c", GEN))
    assert read_batch("csv", str(path), parse_columns("a,b", CLF)) == [{"text": "1", "text_pair": "2"}]
    path.write_text("a,b\n")
    with pytest.raises(CliError, match="no inputs"):
        read_batch("csv", str(path), parse_columns("a", GEN))


def test_pipe_lines_lose_their_newline_and_blank_lines_are_skipped():
    stream = io.StringIO("first\r\n\n  \nsecond\n")
    assert list(iter_pipe(stream, None)) == ["first", "second"]
    pairs = list(iter_pipe(io.StringIO("a\tb\n"), parse_columns("a,b", CLF)))
    assert pairs == [{"text": "a", "text_pair": "b"}]
    with pytest.raises(CliError, match="line 1 has 1 tab-separated field"):
        list(iter_pipe(io.StringIO("no tab\n"), parse_columns("a,b", CLF)))


def test_task_aliases_and_unknown_tasks():
    assert get_task("sentiment-analysis") is CLF
    with pytest.raises(CliError, match="unknown task 'translation'"):
        get_task("translation")


# ----------------------------------------------------------------------------------------------- model flags
def test_resolve_device():
    assert loading.resolve_device("-1") == torch.device("cpu")
    assert loading.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(CliError, match="use -1 for the CPU"):
        loading.resolve_device("-2")
    with pytest.raises(CliError, match="is not a device"):
        loading.resolve_device("gpu-please")
    if not torch.cuda.is_available():
        for spec in ("0", "cuda:0"):
            with pytest.raises(CliError, match="asks for CUDA GPU 0, but torch sees no CUDA GPU"):
                loading.resolve_device(spec)


def test_resolve_dtype(capsys, monkeypatch):
    cpu = torch.device("cpu")
    assert loading.resolve_dtype("fp32", cpu, "olmo2") == torch.float32
    monkeypatch.setattr(loading, "_supports_bf16", lambda device: True)
    assert loading.resolve_dtype("auto", cpu, "olmo2") == torch.bfloat16
    monkeypatch.setattr(loading, "_supports_bf16", lambda device: False)
    assert loading.resolve_dtype("auto", cpu, "olmo2") == torch.float32  # never fp16 implicitly
    assert capsys.readouterr().err == ""
    assert loading.resolve_dtype("fp16", cpu, "olmo2") == torch.float16
    assert "OLMo 2 and 3 overflow in float16" in capsys.readouterr().err
    loading.resolve_dtype("fp16", cpu, "olmo")
    assert capsys.readouterr().err == ""


def test_quantize_without_the_quantization_module_is_a_clear_error(monkeypatch):
    real_find_spec = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: None if name == "olmo_hf.quantization" else real_find_spec(name, *a))
    with pytest.raises(CliError, match="--quantize int8 is not available"):
        loading.resolve_quantization("int8", torch.device("cpu"))
    assert loading.resolve_quantization(None, torch.device("cpu")) is None


def test_quantize_with_an_unknown_scheme_names_it():
    if loading.importlib.util.find_spec("olmo_hf.quantization") is None:
        pytest.skip("olmo_hf.quantization is not installed")
    with pytest.raises(CliError, match="--quantize no-such-scheme"):
        loading.resolve_quantization("no-such-scheme", torch.device("cpu"))


@pytest.mark.parametrize("name, is_path", [("allenai/OLMo-2-0425-1B", False), ("gpt2", False), ("./ckpt", True),
                                           ("/abs/ckpt", True), ("a/b/c", True), ("ckpt/", True), ("~/ckpt", True)])
def test_paths_and_hub_ids_are_told_apart(name, is_path):
    assert loading._looks_like_path(name) is is_path


# ----------------------------------------------------------------------------------------------- main()
def test_debug_shows_the_traceback_and_the_one_line_error(capsys, tmp_path):
    argv = ["run", "--model", str(tmp_path / "nope" / "model"), "--task", "text-generation"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no such directory" in err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "CliError" in err and "no such directory" in err


def test_invalid_numbers_exit_2(capsys):
    assert main(["run", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be at least 1" in capsys.readouterr().err
    assert main(["run", "--top-p", "1.5"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "olmo-hf run" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- writers
def test_writers(tmp_path, capsys):
    from olmo_hf.cli.formats import open_writer

    csv_path = tmp_path / "out.csv"
    writer = open_writer("csv", str(csv_path), CLF)
    writer.write([{"label": "LABEL_1", "score": 0.75}])
    writer.close(success=True)
    assert csv_path.read_text().splitlines() == ["label,score", "LABEL_1,0.75"]

    json_path = tmp_path / "out.json"
    writer = open_writer("json", str(json_path), GEN)
    writer.write([{"generated_text": "a"}])
    writer.close(success=False)  # a failed run leaves no half-written file
    assert not json_path.exists()

    writer = open_writer("pipe", None, GEN)
    writer.write([{"generated_text": "line one\nline two é"}])
    assert capsys.readouterr().out == '{"generated_text": "line one\\nline two é"}\n'


def test_config_and_tokenizer_flags_in_process(tmp_path, capsys, monkeypatch):
    from test_cli_run import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.setattr("sys.stdin", io.StringIO("The import statement\n"))
    argv = ["run", "--model", str(ckpt), "--config", str(ckpt), "--tokenizer", str(ckpt), "--dtype", "fp32",
            "--max-new-tokens", "2", "--no-do-sample", "--attn-implementation", "eager", "--seed", "0"]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["generated_text"].startswith("The import statement")
