"""`olmo-hf serve` / `olmo-hf chat`: Transformers 5's server and chat client with olmo_hf's classes.

- in-process: the wrapper's serve command started on 127.0.0.1 (a free port) in a thread, one chat request, then
  the model the server actually loaded is checked to be olmo_hf's class, and the server stopped;
- end to end: the installed `olmo-hf serve` in a subprocess, a completion request, and `olmo-hf chat` talking
  to it with HF_HUB_OFFLINE=1 (Transformers' own client refuses localhost in offline mode).

Skipped when the serving extras (fastapi, uvicorn, openai) are not installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import olmo_hf

missing = [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"serving extras not installed: {', '.join(missing)}")

from test_cli_run import cli_env, olmo_hf_command, save_tiny_checkpoint  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if json.load(response) == {"status": "ok"}:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail(f"no healthy server at {base} after {timeout} s")


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.load(response)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["Olmo2ForCausalLM"]
    return path


SERVED_BY_OURS = "with olmo_hf.Olmo2ForCausalLM"  # the line olmo-hf serve prints from the process that loads it


@contextlib.contextmanager
def serving(checkpoint: Path, *options: str):
    """The wrapper's serve command, in a thread of this process, stopped through the uvicorn server it started
    (Transformers 5.25 removed `--non-blocking` and `Serve.kill_server()`); yields the base URL. From 5.25 the
    model loads in a spawned process, which inherits this test's stderr."""
    import uvicorn

    from olmo_hf.cli import serve_loader, serve_requests
    from olmo_hf.cli.serve import expose_classes, restore_classes, run_transformers_command

    servers: list[uvicorn.Server] = []
    original_server_init = uvicorn.Server.__init__

    def recording_server_init(self, *args, **kwargs):
        servers.append(self)
        original_server_init(self, *args, **kwargs)

    module, name = serve_loader._MODULE, serve_loader._NAME
    original_loader = getattr(module, name)
    previous = expose_classes()  # what run_transformers_command does too; kept to restore afterwards
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(checkpoint), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *options]
    exit_codes: list[int] = []
    uvicorn.Server.__init__ = recording_server_init
    thread = threading.Thread(target=lambda: exit_codes.append(run_transformers_command("serve", argv)), daemon=True)
    thread.start()
    try:
        wait_healthy(base, timeout=120)
        yield base
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=60)
        uvicorn.Server.__init__ = original_server_init
        setattr(module, name, original_loader)
        serve_requests.uninstall()
        restore_classes(previous)
    assert exit_codes == [0]


def test_a_checkpoint_naming_Olmo2ForCausalLM_is_served_by_our_class(checkpoint, capfd):
    """From 5.25 the announcement comes from whichever process loaded the model."""
    with serving(checkpoint) as base:
        reply = post(base, "/v1/chat/completions", {
            "model": str(checkpoint), "max_tokens": 3,
            "messages": [{"role": "user", "content": "Hello"}],
        })
        assert reply["choices"][0]["message"]["role"] == "assistant"
    assert SERVED_BY_OURS in capfd.readouterr().err


FAST_PATH_ON = "with olmo_hf.Olmo2ForCausalLM (CPU fast path on; --no-fast turns it off)"
FAST_PATH_OFF = "with olmo_hf.Olmo2ForCausalLM (CPU fast path off: --no-fast)"


def test_serve_applies_the_cpu_fast_path_and_no_fast_turns_it_off_with_the_same_greedy_completion(checkpoint, capfd):
    """float32 on the CPU: the fast path gives the plain model's greedy tokens; the serving line says which ran."""
    request = {"model": str(checkpoint), "prompt": "The import statement", "max_tokens": 8, "temperature": 0}
    completions = {}
    for options, line in ((["--dtype", "float32"], FAST_PATH_ON), (["--dtype", "float32", "--no-fast"], FAST_PATH_OFF)):
        with serving(checkpoint, *options) as base:
            reply = post(base, "/v1/completions", request)
        assert reply["usage"]["completion_tokens"] == 8
        completions[line] = reply["choices"][0]["text"]
        err = capfd.readouterr().err
        assert line in err and err.count("olmo-hf serve: serving") == 1, err[-3000:]
    assert completions[FAST_PATH_ON] == completions[FAST_PATH_OFF] != ""


@pytest.mark.parametrize("args, off", [
    (["m", "--no-fast"], "--no-fast"),
    (["m", "--compile"], "--compile (serve compiles the plain model; drop --compile for the fast path)"),
    (["m", "--continuous-batching", "--port", "8001"], "--continuous-batching (not tested with the fast path)"),
    (["m", "--compile", "--no-compile"], None),
    (["m", "--device", "cpu"], None),
])
def test_serve_decides_before_loading_whether_the_fast_path_may_apply(args, off):
    from olmo_hf.cli.serve import fast_path_setting

    assert fast_path_setting(args) == ([a for a in args if a != "--no-fast"], off)


def test_the_fast_path_is_applied_to_a_bf16_or_fp32_cpu_model_only(checkpoint):
    import torch

    from olmo_hf import fast
    from olmo_hf.cli.serve_loader import apply_fast_path

    for dtype in (torch.float32, torch.bfloat16):
        model = olmo_hf.Olmo2ForCausalLM.from_pretrained(checkpoint, dtype=dtype)
        assert apply_fast_path(model) is None and fast.is_optimized(model)
        assert apply_fast_path(model) is None  # already packed (up to 5.23 the loader runs per request)
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float16)
    assert apply_fast_path(model) == "float16 weights (it packs bfloat16 and float32)"
    assert not fast.is_optimized(model)
    model = olmo_hf.Olmo2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    assert apply_fast_path(model, off="--no-fast") == "--no-fast" and not fast.is_optimized(model)


def test_serve_help_teaches_no_fast(capsys):
    from olmo_hf.cli.serve import expose_classes, restore_classes, run_transformers_command

    previous = expose_classes()  # what run_transformers_command does for the process's lifetime; undone below, so
    try:  # that later tests see Transformers' own classes on the transformers module again
        assert run_transformers_command("serve", ["--help"]) == 0
    finally:
        restore_classes(previous)
    out = capsys.readouterr().out
    assert "--port" in out and "olmo-hf serve adds:\n  --no-fast  Serve the plain model" in out


def post_any(base: str, path: str, body: dict) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of a POST, whatever the status."""
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


BAD_REQUESTS = [  # (body fields, the parameter the 400 names)
    ({"max_tokens": -1}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": "3"}, "max_tokens"),
    ({"messages": [{"content": "no role"}]}, "messages"),
    ({"stream": "yes"}, "stream"),
    ({"n": 3}, "n"),
]


def test_a_burst_of_24_concurrent_requests_good_and_bad_is_answered(checkpoint):
    """16 good chat requests and 8 bad ones at once: the good get completions, the bad a 400 naming the field
    (before reaching the model), and the server stays healthy."""
    good = {"model": str(checkpoint), "max_tokens": 2, "messages": [{"role": "user", "content": "Hello"}]}
    bodies = [dict(good) for _ in range(16)] + [{**good, **fields} for fields, _ in BAD_REQUESTS]
    with serving(checkpoint) as base:
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            replies = list(pool.map(lambda body: post_any(base, "/v1/chat/completions", body), bodies))
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            assert json.load(response) == {"status": "ok"}
    for status, reply in replies[:16]:
        assert status == 200, reply
        assert reply["choices"][0]["message"]["role"] == "assistant"
    for (status, reply), (_, param) in zip(replies[16:], BAD_REQUESTS):
        assert status == 400, reply
        assert reply["error"]["param"] == param and f"`{param}" in reply["error"]["message"]


def test_installed_serve_and_chat_commands(checkpoint):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [olmo_hf_command(), "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        wait_healthy(base, timeout=180, proc=server)
        reply = post(base, "/v1/completions", {"model": str(checkpoint), "prompt": "The import", "max_tokens": 3})
        assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 3

        # chat reads stdin: one message, "n" to "Continue generating?", then !exit
        chat = subprocess.run(
            [olmo_hf_command(), "chat", str(checkpoint), base, "max_new_tokens=3", "do_sample=False"],
            input="Hello there\nn\n!exit\n", capture_output=True, text=True, env=cli_env(), timeout=180,
        )
        assert chat.returncode == 0, chat.stdout[-2000:] + chat.stderr[-2000:]
        assert "OfflineModeIsEnabled" not in chat.stdout + chat.stderr
        assert "3 tokens in" in chat.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert SERVED_BY_OURS in server.stderr.read()


def test_serve_without_the_extras_names_them(monkeypatch, capsys):
    from olmo_hf.cli import serve

    monkeypatch.setattr(serve, "_serving_dependencies_missing", lambda: ["fastapi"])
    assert serve.run_transformers_command("serve", ["some-model"]) == 2
    assert "pip install 'olmo_hf[serve]'" in capsys.readouterr().err
