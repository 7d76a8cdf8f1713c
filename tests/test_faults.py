"""Fault injection: bad input and faults in `olmo-hf run`, `olmo-hf convert` and `olmo-hf serve` (issue #15).

Every case ends in one line on stderr, no traceback, a documented exit code (2 input error, 74 I/O fault, 130
Ctrl-C), and nothing half-written: no output file that was not there before, no temporary file left behind.

- full disk: a 64 KiB tmpfs (needs root; skipped with the reason otherwise);
- read-only paths: a read-only tmpfs as root, a chmod 0555 directory otherwise;
- truncated and corrupt files of every format we read (safetensors, JSON, YAML, torch .pt, CSV/JSON/pipe input);
- Ctrl-C at several points of each long command: KeyboardInterrupt injected in-process at loading, generating and
  writing, plus one real SIGINT sent to the installed console script;
- concurrent runs writing one output.

Runs in-process (`olmo_hf.cli.main`) on the embedded demo model and tiny checkpoints; only the SIGINT and
concurrency cases start the installed console script.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import olmo_hf.cli.formats as formats_module
from olmo_hf.cli import main
from olmo_hf.cli import run as run_module
from olmo_hf.cli.output_file import AtomicOutput

from ai2_olmo_checkpoints import write_ai2_olmo
from test_cli_run import PROMPTS, cli_env, olmo_hf_command, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("restore_transformers_logging")  # conftest.py

GREEDY = ["--max-new-tokens", "2", "--no-do-sample"]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*args, stdin=str|bytes)`` -> (exit code, stdout, stderr) of `olmo-hf ...`, in-process."""

    def invoke(*args: str, stdin: str | bytes = PROMPTS[0] + "\n"):
        raw = stdin if isinstance(stdin, bytes) else stdin.encode()
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def error_line(err: str, command: str = "run") -> str:
    """The single error line of ``err`` (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith((f"olmo-hf {command}: error:",
                                                                   f"olmo-hf {command}: interrupted"))]
    assert len(lines) == 1, err
    (line,) = lines
    return line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("faults") / "tiny")


@pytest.fixture
def prompts_json(tmp_path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


def _mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def fill(disk: Path) -> None:
    """Fill ``disk`` up with a file named filler."""
    try:
        with open(disk / "filler", "wb") as f:
            f.write(b"x" * 1024 * 1024)
    except OSError:  # ENOSPC: full, as wanted
        pass


@pytest.fixture
def full_disk(tmp_path):
    """A directory on a 64 KiB tmpfs that is full (new empty files still fit; no data does)."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=64k")
    fill(disk)
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can create files in: a read-only tmpfs as root, else mode 0555."""
    directory = tmp_path / "ro"
    if os.geteuid() == 0:
        _mount_tmpfs(directory, "ro,size=64k")
        yield directory
        subprocess.run(["umount", str(directory)], check=False)
        return
    directory.mkdir()
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


@pytest.fixture
def rescued(tmp_path, monkeypatch):
    """Where run saves results it could not write to --output (the system temporary directory, redirected)."""
    rescue_dir = tmp_path / "rescued"
    rescue_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue_dir))
    return rescue_dir


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------- run: the output destination
def test_output_in_a_missing_directory_is_refused_before_the_model_loads(cli, prompts_json, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model was loaded"))
    code, out, err = cli("run", "--input", str(prompts_json), "--output", str(tmp_path / "no" / "out.json"))
    assert code == 2 and out == ""
    line = error_line(err)
    assert f"the directory {tmp_path / 'no'} does not exist" in line


def test_output_that_is_a_directory_is_refused(cli, prompts_json, tmp_path):
    code, _, err = cli("run", "--input", str(prompts_json), "--output", str(tmp_path))
    assert code == 2
    assert f"--output {tmp_path} is a directory" in error_line(err)


def test_output_in_a_read_only_directory_is_an_io_fault_before_inference(cli, prompts_json, read_only_dir,
                                                                         monkeypatch):
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model was loaded"))
    code, _, err = cli("run", "--input", str(prompts_json), "--output", str(read_only_dir / "out.json"))
    assert code == 74
    line = error_line(err)
    assert f"cannot create files in {read_only_dir}" in line and "choose a writable directory" in line


def test_full_disk_keeps_the_results_and_says_where(cli, prompts_json, full_disk, rescued):
    output = full_disk / "out.json"
    code, out, err = cli("run", "--input", str(prompts_json), "--output", str(output), *GREEDY)
    assert code == 74
    line = error_line(err)
    (saved,) = rescued.iterdir()
    assert f"--output {output} could not be written (No space left on device)" in line and str(saved) in line
    results = json.loads(saved.read_text())
    assert [r["generated_text"][: len(p)] for r, p in zip(results, PROMPTS)] == PROMPTS
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no out.json, no temporary file


def test_full_disk_with_overwrite_leaves_the_old_output_whole(cli, prompts_json, full_disk, rescued):
    output = full_disk / "out.json"
    (full_disk / "filler").unlink()
    output.write_text('["old"]\n')  # an earlier run's output
    fill(full_disk)
    code, _, err = cli("run", "--input", str(prompts_json), "--output", str(output), "--overwrite", *GREEDY)
    assert code == 74 and "No space left on device" in error_line(err)
    assert output.read_text() == '["old"]\n'
    assert len(list(rescued.iterdir())) == 1
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "out.json"]


@pytest.mark.parametrize("fmt", ["json", "csv", "pipe"])
def test_output_is_written_whole_and_leaves_no_temporary_file(cli, tmp_path, fmt):
    source = {"json": json.dumps(PROMPTS), "csv": "text\n" + "\n".join(PROMPTS) + "\n", "pipe": "\n".join(PROMPTS)}
    (tmp_path / f"in.{fmt}").write_text(source[fmt])
    output = tmp_path / f"out.{fmt}"
    code, out, err = cli("run", "--format", fmt, "--input", str(tmp_path / f"in.{fmt}"), "--output", str(output),
                         *GREEDY)
    assert code == 0, err
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"in.{fmt}", f"out.{fmt}"])
    lines = output.read_text().splitlines()
    assert len(json.loads(output.read_text()) if fmt == "json" else lines) == (3 if fmt == "csv" else 2)


def test_stdout_on_a_full_disk_is_an_io_fault_naming_stdout(cli, monkeypatch):
    import errno

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"The import\n"), encoding="utf-8"))
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setattr("sys.stdout", FullDisk())
    code = main(["run", *GREEDY])
    assert code == 74
    assert error_line(stderr.getvalue()) == ("olmo-hf run: error: I/O error on stdout (No space left on device); free "
                                             "some space or fix its permissions, then run again")


def test_output_to_a_device_is_written_in_place_not_replaced(cli, prompts_json):
    code, _, err = cli("run", "--input", str(prompts_json), "--output", os.devnull, "--overwrite", *GREEDY)
    assert code == 0, err
    assert not os.path.isfile(os.devnull)  # still the character device


# ---------------------------------------------------------------------------------------------------- run: Ctrl-C
@pytest.mark.parametrize("point", ["loading", "generating", "writing"])
def test_ctrl_c_in_run_exits_130_with_one_line_and_writes_nothing(cli, prompts_json, tmp_path, monkeypatch, point):
    output = tmp_path / "out.json"
    output.write_text('["old"]\n')
    if point == "loading":
        monkeypatch.setattr(run_module, "load_model_and_tokenizer", interrupt)
    elif point == "generating":
        calls = iter([False, True])
        original = run_module.normalize_output
        monkeypatch.setattr(run_module, "normalize_output",
                            lambda *a: interrupt() if next(calls) else original(*a))
    else:
        def half_then_interrupt(self, stream):
            stream.write('[{"generated_text": ')
            interrupt()

        monkeypatch.setattr(formats_module._CollectingWriter, "render", half_then_interrupt)
    code, out, err = cli("run", "--input", str(prompts_json), "--output", str(output), "--overwrite", *GREEDY)
    assert code == 130 and out == ""
    assert error_line(err) == "olmo-hf run: interrupted"
    assert output.read_text() == '["old"]\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "prompts.json"]


def test_ctrl_c_while_the_command_line_is_being_built_exits_130(cli, monkeypatch):
    import olmo_hf.cli as cli_module

    monkeypatch.setattr(cli_module, "build_parser", interrupt)  # e.g. while torch is being imported
    code, out, err = cli("run", "--max-new-tokens", "2")
    assert code == 130 and out == ""
    assert error_line(err) == "olmo-hf run: interrupted"


def test_sigint_to_the_console_script_exits_130_with_one_line(tmp_path):
    # Ctrl-C's default disposition, as a terminal gives it: a test run started in the background (`cmd &` in a
    # non-interactive shell) inherits SIGINT ignored, and a process that starts with SIGINT ignored keeps ignoring it
    proc = subprocess.Popen([olmo_hf_command(), "run", *GREEDY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.stdin.write(PROMPTS[0] + "\n")
    proc.stdin.flush()
    first = proc.stdout.readline()  # the first result: the run is now waiting for the next line
    assert json.loads(first)["generated_text"].startswith(PROMPTS[0])
    proc.send_signal(signal.SIGINT)
    # wait with stdin still open: closing it first (communicate) would race an end of input against the signal
    assert proc.wait(timeout=120) == 130
    out, err = proc.communicate(timeout=30)
    assert error_line(err) == "olmo-hf run: interrupted"


def test_sigint_while_the_console_script_imports_olmo_hf_exits_130_with_one_line(monkeypatch, capsys):
    """The console script's entry point lives outside the package (olmo_hf_launcher), so that a Ctrl-C during the
    seconds of `import torch` / `transformers` is caught too."""
    import builtins

    import olmo_hf_launcher

    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "olmo_hf.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    monkeypatch.setattr(sys, "argv", ["olmo-hf", "run", "--max-new-tokens", "2"])  # parses, so olmo_hf.cli is next
    assert olmo_hf_launcher.main() == 130
    assert capsys.readouterr().err == "olmo-hf: interrupted\n"


# ------------------------------------------------------------------------------------------------- run: bad input
def test_an_invalid_utf8_line_on_stdin_is_skipped_naming_it_and_the_others_run(cli):
    code, out, err = cli("run", *GREEDY, stdin=b"The import statement\n\xff\xfe broken\nA function definition\n")
    assert code == 2
    assert [json.loads(line)["generated_text"][:10] for line in out.splitlines()] == ["The import", "A function"]
    assert "olmo-hf: warning: stdin line 2 is not valid UTF-8 (byte 0xff at column 1); skipped it" in err
    line = error_line(err)
    assert "stdin had 1 line(s) that are not valid UTF-8 (line 2), skipped; every other line was processed" in line


def test_invalid_utf8_lines_keep_the_output_file_of_the_other_lines(cli, tmp_path):
    (tmp_path / "in.txt").write_bytes(b"The import statement\nbad \xc3\x28 byte\n")
    output = tmp_path / "out.jsonl"
    code, _, err = cli("run", "--format", "pipe", "--input", str(tmp_path / "in.txt"), "--output", str(output),
                       *GREEDY)
    assert code == 2
    assert f"--input {tmp_path / 'in.txt'} had 1 line(s) that are not valid UTF-8 (line 2)" in error_line(err)
    assert len(output.read_text().splitlines()) == 1


@pytest.mark.parametrize("fmt, content, message", [
    ("json", b'["fine",\n "caf\xe9"]', "is not valid UTF-8 (byte 0xe9 at line 2, column 6); convert it to UTF-8"),
    ("csv", b"text\nfine\ncaf\xe9\n", "is not valid UTF-8 (byte 0xe9 at line 3, column 4); convert it to UTF-8"),
    ("json", b'["one", "tw', "is not valid JSON"),
    ("csv", b'text\none\n"tw', "is not valid CSV after line 2 (unexpected end of data); it may be truncated"),
], ids=["json-not-utf8", "csv-not-utf8", "json-truncated", "csv-truncated"])
def test_a_truncated_or_non_utf8_input_file_is_one_line_naming_where(cli, tmp_path, fmt, content, message):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(content)
    code, _, err = cli("run", "--input", str(path))
    assert code == 2
    assert f"--input {path} {message}" in error_line(err)


# -------------------------------------------------------------------------------------- run: broken checkpoints
def _truncate(path: Path, size: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


@pytest.mark.parametrize("file, size, reason", [
    ("model.safetensors", None, "incomplete metadata"),
    ("model.safetensors", 20, "invalid header length"),
    ("model.safetensors", 0, "header too small"),
    ("config.json", None, ""),
    ("tokenizer.json", None, ""),
    ("tokenizer_config.json", None, ""),
    ("generation_config.json", None, ""),  # Transformers would silently ignore it
])
def test_truncated_checkpoint_file_is_named_with_exit_2(cli, tiny, tmp_path, file, size, reason):
    broken = Path(shutil.copytree(tiny, tmp_path / "broken"))
    _truncate(broken / file, size)
    code, out, err = cli("run", "--model", str(broken), *GREEDY)
    assert code == 2 and out == ""
    line = error_line(err)
    assert f"--model {broken}: {file} is truncated or corrupt" in line and reason in line


def test_a_config_with_a_negative_rope_theta_is_refused_naming_the_field(cli, tiny, tmp_path):
    broken = Path(shutil.copytree(tiny, tmp_path / "broken"))
    config = json.loads((broken / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = -1.0
    (broken / "config.json").write_text(json.dumps(config))
    code, _, err = cli("run", "--model", str(broken), *GREEDY)
    assert code == 2
    assert "`rope_parameters.rope_theta` must be a positive number, got -1.0" in error_line(err)


# ------------------------------------------------------------------------------------------ run: concurrent writers
def test_concurrent_writers_with_overwrite_leave_one_whole_output(tmp_path):
    output = str(tmp_path / "out.json")
    contents = [json.dumps([f"run {i}"] * 2000) for i in range(8)]
    barrier = threading.Barrier(len(contents))

    def write(content: str) -> None:
        target = AtomicOutput(output, overwrite=True)
        target.stream.write(content)
        barrier.wait()
        target.commit()

    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Path(output).read_text() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_overwrite_keeps_the_permissions_of_the_replaced_file(tmp_path):
    output = tmp_path / "out.json"
    output.write_text("old")
    output.chmod(0o640)
    target = AtomicOutput(str(output), overwrite=True)
    target.stream.write("new")
    target.commit()
    assert output.read_text() == "new" and output.stat().st_mode & 0o777 == 0o640


def test_concurrent_writers_without_overwrite_never_replace_each_other(tmp_path):
    output = str(tmp_path / "out.json")
    targets = [AtomicOutput(output, overwrite=False) for _ in range(4)]
    outcomes = []
    for index, target in enumerate(targets):
        target.stream.write(f"run {index}")
        try:
            target.commit()
            outcomes.append("written")
        except FileExistsError:
            outcomes.append("refused")
    assert outcomes == ["written", "refused", "refused", "refused"]
    assert Path(output).read_text() == "run 0"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_two_concurrent_runs_on_one_output_leave_a_whole_file(tmp_path, prompts_json):
    output = tmp_path / "out.json"
    command = [olmo_hf_command(), "run", "--input", str(prompts_json), "--output", str(output), "--overwrite",
               *GREEDY]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
             for _ in range(2)]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert len(json.loads(output.read_text())) == len(PROMPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "prompts.json"]


# ------------------------------------------------------------------------------------------------------- convert
@pytest.fixture
def ai2_ckpt(tmp_path) -> Path:
    return write_ai2_olmo(tmp_path / "ckpt")


def listing(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("relation", ["equals", "contains", "inside"])
def test_convert_refuses_a_dst_overlapping_src_and_keeps_src(cli, tiny, tmp_path, relation):
    src = Path(shutil.copytree(tiny, tmp_path / "parent" / "src"))
    before = listing(src)
    dst = {"equals": src, "contains": src.parent, "inside": src / "out"}[relation]
    code, out, err = cli("convert", str(src), str(dst), "--to", "olmo-core", "--overwrite")
    assert code == 2 and out == ""
    word = {"equals": "is", "contains": "contains", "inside": "lies inside"}[relation]
    assert f"DST {dst} {word} SRC {src}; writing there would destroy" in error_line(err, "convert")
    assert listing(src) == before
    assert sorted(p.name for p in src.parent.iterdir()) == ["src"]


def test_convert_overwrite_keeps_files_it_did_not_write(cli, ai2_ckpt, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "README.md").write_text("my notes")
    code, _, err = cli("convert", str(ai2_ckpt), str(dst), "--overwrite")
    assert code == 2
    assert "holds README.md, which a conversion does not write" in error_line(err, "convert")
    assert (dst / "README.md").read_text() == "my notes"


def test_convert_on_a_full_disk_is_an_io_fault_and_leaves_nothing(cli, ai2_ckpt, full_disk):
    dst = full_disk / "out"
    code, _, err = cli("convert", str(ai2_ckpt), str(dst))
    assert code == 74
    line = error_line(err, "convert")
    assert "No space left on device" in line and f"DST {dst} was left as it was" in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_convert_into_a_read_only_directory_is_an_io_fault(cli, ai2_ckpt, read_only_dir):
    code, _, err = cli("convert", str(ai2_ckpt), str(read_only_dir / "out"))
    assert code == 74
    assert str(read_only_dir) in error_line(err, "convert")
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("file, damage, message", [
    ("config.yaml", b"model:\n  d_model: [64\n", "config.yaml is not valid YAML, it may be truncated"),
    ("config.yaml", b"model:\n  d_model: \xff\n", "config.yaml is not UTF-8 text"),
    ("model.pt", None, "model.pt could not be read as a PyTorch checkpoint; it may be truncated or corrupt"),
])
def test_convert_names_a_truncated_or_corrupt_ai2_olmo_file(cli, ai2_ckpt, tmp_path, file, damage, message):
    if damage is None:
        _truncate(ai2_ckpt / file)
    else:
        (ai2_ckpt / file).write_bytes(damage)
    code, _, err = cli("convert", str(ai2_ckpt), str(tmp_path / "out"))
    assert code == 2
    assert message in error_line(err, "convert")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("file, message", [
    ("config.json", "config.json is not valid JSON, it may be truncated"),
    ("model.safetensors", "could not be loaded as a Transformers 'olmo2' model"),
])
def test_convert_names_a_truncated_transformers_file(cli, tiny, tmp_path, file, message):
    src = Path(shutil.copytree(tiny, tmp_path / "src"))
    _truncate(src / file)
    code, _, err = cli("convert", str(src), str(tmp_path / "out"), "--to", "olmo-core")
    assert code == 2
    line = error_line(err, "convert")
    assert message in line and str(src) in line


@pytest.mark.parametrize("point", ["reading", "writing", "model_and_optim"])
def test_ctrl_c_in_convert_exits_130_with_one_line_and_leaves_nothing(cli, tiny, tmp_path, monkeypatch, point):
    import torch.distributed.checkpoint as dcp

    import olmo_hf.convert as convert_module

    if point == "reading":
        monkeypatch.setattr(convert_module, "load_transformers_model", interrupt)
    elif point == "writing":
        monkeypatch.setattr(torch, "save", interrupt)
    else:
        monkeypatch.setattr(dcp.FileSystemWriter, "write_data", interrupt)
    dst = tmp_path / "core"
    code, out, err = cli("convert", str(tiny), str(dst), "--to", "olmo-core", "--model-and-optim")
    assert code == 130 and out == ""
    assert error_line(err, "convert") == "olmo-hf convert: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------- serve
@pytest.mark.parametrize("port, message", [
    ("99999", "--port 99999 is outside 1-65535"),
    ("0", "--port 0 is outside 1-65535"),
    ("http", "--port 'http' is not a number"),
])
def test_serve_refuses_a_port_outside_1_to_65535_before_starting(cli, port, message):
    code, out, err = cli("serve", "--port", port)
    assert code == 2 and out == ""
    assert message in error_line(err, "serve")


@pytest.mark.parametrize("path, body, param, message", [
    ("/v1/chat/completions", {"messages": [], "max_tokens": 3}, "messages",
     '`messages` must be a non-empty list of {"role": ..., "content": ...} objects'),
    ("/v1/chat/completions", {"max_tokens": 3}, "messages", "`messages` is required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens",
     "`max_tokens` must be an integer >= 1, got -1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature",
     "`temperature` must be a number between 0 and 2, got -1"),
    ("/v1/completions", {"prompt": "", "max_tokens": 3}, "prompt", "`prompt` must be a non-empty string or list"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 0}, "max_output_tokens",
     "`max_output_tokens` must be an integer >= 1, got 0"),
    ("/v1/completions", ["not", "an", "object"], "body", "the request body must be a JSON object, got list"),
])
def test_serve_request_errors_name_the_field(path, body, param, message):
    from olmo_hf.cli.serve_requests import request_error

    assert request_error(path, body) == (param, message)


def test_a_good_serve_request_passes_validation():
    from olmo_hf.cli.serve_requests import request_error

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0.7,
            "top_p": 0.9, "stream": True, "seed": 0}
    assert request_error("/v1/chat/completions", body) is None


def test_ctrl_c_in_chat_is_exit_130_with_one_line(cli, monkeypatch):
    import olmo_hf.compat as compat
    from olmo_hf.cli import serve as serve_module

    def interrupted_app():
        def app(args, prog_name):  # what Typer does on Ctrl-C: a silent SystemExit(130)
            raise SystemExit(130)

        return app

    monkeypatch.setattr(compat, "transformers_cli_app", interrupted_app)
    monkeypatch.setattr(serve_module, "expose_classes", lambda *a: {})
    code, out, err = cli("chat", "./ckpt", "http://example.invalid:8000")  # not loopback: offline mode stays
    assert code == 130 and out == ""
    assert error_line(err, "chat") == "olmo-hf chat: interrupted"
