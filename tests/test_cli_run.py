"""End-to-end tests of `olmo-hf run`: the INSTALLED console script, in subprocesses, offline.

Starting Python + torch + transformers costs ~5 s per process, so the independent invocations are started
together by one module fixture (a few at a time) and each test then checks its own result. The streaming
test talks to a live process. Models: a tiny random OLMo 2 saved into tmp_path (and a sequence-classification
twin), plus the embedded demo model.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import olmo_hf

DEMO = Path(olmo_hf.__file__).parent / "demo"
PROMPTS = ["The import statement", "A function definition"]


def olmo_hf_command() -> str:
    """The console script of the environment running the tests (installed by `pip install -e .`)."""
    script = Path(sys.executable).with_name("olmo-hf")
    found = str(script) if script.exists() else shutil.which("olmo-hf")
    if not found:
        pytest.fail("the olmo-hf console script is not installed: run `pip install -e .` first")
    return found


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def save_tiny_checkpoint(path: Path, classifier: bool = False) -> Path:
    """A 2-layer, 32-wide random OLMo 2 with the demo model's tokenizer, written with save_pretrained."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    config = olmo_hf.Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    torch.manual_seed(0)
    model_class = olmo_hf.Olmo2ForSequenceClassification if classifier else olmo_hf.Olmo2ForCausalLM
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def lines_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_run")
    save_tiny_checkpoint(root / "tiny")
    save_tiny_checkpoint(root / "tiny-clf", classifier=True)
    (root / "in.json").write_text(json.dumps([{"id": i, "prompt": p} for i, p in enumerate(PROMPTS)]))
    (root / "empty.json").write_text("[]")
    with open(root / "in.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(PROMPTS))
    (root / "kept.json").write_text("keep me")
    (root / "replaced.json").write_text("replace me")
    return root


@pytest.fixture(scope="module")
def runs(workdir: Path) -> dict[str, subprocess.CompletedProcess]:
    """Every independent invocation, started concurrently (4 at a time), keyed by case name."""
    tiny, greedy = str(workdir / "tiny"), ["--max-new-tokens", "3", "--no-do-sample"]
    cases: dict[str, tuple[list[str], str]] = {
        "pipe": (["--model", tiny, *greedy], f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n"),
        "json": (["--model", tiny, "--input", "in.json", "--column", "prompt", "--output", "replaced.json",
                  "--overwrite", *greedy], ""),
        "csv": (["--model", tiny, "--input", "in.csv", "--column", "text", *greedy], ""),
        "demo": (["--task", "text-generation", "--seed", "0", "--max-new-tokens", "24"], "The import statement\n"),
        "classify": (["--model", str(workdir / "tiny-clf"), "--column", "text,text_pair"], "a premise\ta hypothesis\n"),
        # errors: exit code 2, one line naming the problem and the fix
        "missing_model": (["--model", str(workdir / "no" / "such-model"), "--task", "text-generation"], "hi\n"),
        "offline_hub": (["--model", "allenai/OLMo-2-0425-1B", "--task", "text-generation"], "hi\n"),
        "refuse": (["--model", tiny, "--input", "in.json", "--column", "prompt", "--output", "kept.json"], ""),
        "pipe_with_column": (["--model", tiny, "--task", "text-generation", "--column", "prompt"], "hi\n"),
        "empty_input": (["--model", tiny, "--input", "empty.json", "--column", "prompt"], ""),
        "unknown_task": (["--model", tiny, "--task", "summarization"], "hi\n"),
    }
    command = olmo_hf_command()

    def invoke(case: tuple[list[str], str]) -> subprocess.CompletedProcess:
        args, stdin = case
        return subprocess.run([command, "run", *args], input=stdin, capture_output=True, text=True,
                              cwd=workdir, env=cli_env(), timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(invoke, cases.values())))
    return results


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's one error line; asserts exit code 2 and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("olmo-hf run: error:")]
    assert len(ours) == 1, result.stderr
    assert result.stdout == ""
    return ours[0]


# ----------------------------------------------------------------------------------------------- formats
def test_pipe_prints_one_json_line_per_nonblank_input_line(runs):
    outputs = lines_of(ok(runs["pipe"]).stdout)
    assert len(outputs) == 2  # the blank line is skipped
    for prompt, output in zip(PROMPTS, outputs):
        assert set(output) == {"generated_text"}
        assert output["generated_text"].startswith(prompt)  # 4.x semantics: prompt + continuation
        assert len(output["generated_text"]) > len(prompt)


def test_json_input_with_column_overwrites_output_with_a_json_list(runs, workdir):
    result = ok(runs["json"])
    assert result.stdout == ""
    data = json.loads((workdir / "replaced.json").read_text())  # the file existed: --overwrite replaced it
    assert [set(d) for d in data] == [{"generated_text"}] * 2
    assert [d["generated_text"][: len(p)] for d, p in zip(data, PROMPTS)] == PROMPTS
    assert "olmo-hf run" in result.stderr and "2/2" in result.stderr  # the tqdm bar, on stderr only


def test_existing_output_is_refused_without_overwrite(runs, workdir):
    line = error_line(runs["refuse"])
    assert "kept.json already exists" in line and "--overwrite" in line
    assert (workdir / "kept.json").read_text() == "keep me"


def test_csv_input_with_column_prints_a_generated_text_table(runs):
    rows = list(csv.DictReader(io.StringIO(ok(runs["csv"]).stdout)))
    assert [list(r) for r in rows] == [["generated_text"]] * 2
    assert [r["generated_text"][: len(p)] for r, p in zip(rows, PROMPTS)] == PROMPTS


def test_text_classification_of_tab_separated_pairs(runs):
    result = ok(runs["classify"])
    (output,) = lines_of(result.stdout)
    assert set(output) == {"label", "score"} and 0 <= output["score"] <= 1


# ----------------------------------------------------------------------------------------------- demo model
COMMON_WORDS = {"the", "a", "an", "is", "are", "of", "to", "in", "and", "or", "be", "it", "that", "this", "for",
                "as", "with", "by", "on", "not", "if", "can", "which", "from", "object", "function", "value"}


def test_embedded_demo_model_prints_english_like_text(runs):
    result = ok(runs["demo"])
    (output,) = lines_of(result.stdout)
    text = output["generated_text"]
    assert text.startswith("The import statement")
    continuation = text[len("The import statement"):]
    words = re.findall(r"[A-Za-z]+", continuation)
    assert len(words) >= 6, text
    assert len(COMMON_WORDS.intersection(w.lower() for w in words)) >= 2, text
    visible = [c for c in continuation if not c.isspace()]
    assert sum(c.isascii() and (c.isalnum() or c in ".,;:'\"()-_=[]") for c in visible) / len(visible) > 0.8, text
    assert "embedded demo model" in result.stderr


# ----------------------------------------------------------------------------------------------- errors
def test_missing_model_path_is_one_line_naming_it(runs, workdir):
    line = error_line(runs["missing_model"])
    assert str(workdir / "no" / "such-model") in line and "no such directory" in line


def test_uncached_hub_id_offline_is_one_line_with_the_fix(runs):
    line = error_line(runs["offline_hub"])
    assert "allenai/OLMo-2-0425-1B" in line and "HF_HUB_OFFLINE" in line and "hf download" in line


def test_column_with_pipe_format_is_rejected(runs):
    assert "--column" in error_line(runs["pipe_with_column"])


def test_empty_input_is_rejected(runs):
    assert "no inputs" in error_line(runs["empty_input"])


def test_unknown_task_is_rejected(runs):
    line = error_line(runs["unknown_task"])
    assert "summarization" in line and "text-generation" in line


# ----------------------------------------------------------------------------------------------- streaming
def test_pipe_mode_streams_each_result_before_stdin_closes(workdir):
    """The first result must arrive while stdin is still open (4.x printed everything at EOF)."""
    proc = subprocess.Popen(
        [olmo_hf_command(), "run", "--model", str(workdir / "tiny"), "--max-new-tokens", "2", "--no-do-sample"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    stderr_chunks: list[str] = []
    threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True).start()
    try:
        proc.stdin.write(PROMPTS[0] + "\n")
        proc.stdin.flush()
        try:
            first = json.loads(lines.get(timeout=240))
        except queue.Empty:
            pytest.fail("no output line while stdin was open: pipe mode does not stream")
        assert proc.poll() is None  # still waiting for more input
        assert first["generated_text"].startswith(PROMPTS[0])
        proc.stdin.write(PROMPTS[1] + "\n")
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0, "".join(stderr_chunks)
        second = json.loads(lines.get(timeout=10))
        assert second["generated_text"].startswith(PROMPTS[1])
    finally:
        if proc.poll() is None:
            proc.kill()
