"""`olmo-hf run --chat`: inputs as user messages through the checkpoint tokenizer's own chat template, stopping at
the end-of-turn token too, replies only (in-process, like test_cli_fast.py).

The OLMo 3 Think stand-in below is a tiny random OLMo 3 with the demo tokenizer plus `<|im_start|>` / `<|im_end|>`
and a ChatML-style template whose generation prompt opens `<think>`, the shape shared/reference/olmo3.md §4
describes for the Think models (the real template comes with each checkpoint's tokenizer; none is shipped here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import olmo_hf
from test_cli_fast import cli  # noqa: F401 - the in-process `olmo-hf run` fixture
from test_cli_run import DEMO

pytestmark = pytest.mark.usefixtures("restore_transformers_logging")  # conftest.py

THINK_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def think_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("think") / "olmo3-think"
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = THINK_TEMPLATE
    config = olmo_hf.Olmo3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        sliding_window=8, max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    olmo_hf.Olmo3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def chat_cli(cli):  # noqa: F811 - `cli` is the imported fixture
    """``chat_cli(*args, stdin=...)`` -> (exit code, stdout, stderr, [generate() calls as (prompt text, kwargs)])."""

    def invoke(*args: str, stdin: str = "The import statement\n"):
        calls: list = []

        def record_generate(model, tokenizer):
            generate = model.generate

            def recorded_generate(input_ids=None, **gen_kwargs):
                calls.append((tokenizer.decode(input_ids[0]), gen_kwargs))
                return generate(input_ids=input_ids, **gen_kwargs)

            model.generate = recorded_generate

        code, out, err, _ = cli(*args, stdin=stdin, on_load=record_generate)
        return code, out, err, calls

    return invoke


def test_chat_renders_the_checkpoints_template_with_its_think_generation_prompt(chat_cli, think_checkpoint):
    code, out, err, ((prompt, _),) = chat_cli("--model", str(think_checkpoint), "--chat", "--max-new-tokens", "3",
                                         "--no-do-sample")
    assert code == 0, err
    assert prompt == "<|im_start|>user\nThe import statement<|im_end|>\n<|im_start|>assistant\n<think>"


def test_chat_also_stops_at_the_end_of_turn_token(chat_cli, think_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(think_checkpoint)
    code, _, err, ((_, kwargs),) = chat_cli("--model", str(think_checkpoint), "--chat", "--max-new-tokens", "3")
    assert code == 0, err
    assert kwargs["eos_token_id"] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_chat_outputs_the_assistant_reply_only(chat_cli, think_checkpoint):
    code, out, err, _ = chat_cli("--model", str(think_checkpoint), "--chat", "--max-new-tokens", "4", "--no-do-sample")
    assert code == 0, err
    reply = json.loads(out)["generated_text"]
    assert isinstance(reply, str) and "The import statement" not in reply


def test_chat_with_the_demo_models_instruct_template(chat_cli):
    code, out, err, ((prompt, kwargs),) = chat_cli("--chat", "--max-new-tokens", "4", "--no-do-sample")
    assert code == 0, err
    assert prompt == "<|endoftext|><|user|>\nThe import statement\n<|assistant|>\n"
    assert kwargs["eos_token_id"] == [AutoTokenizer.from_pretrained(DEMO).eos_token_id]  # no <|im_end|> in its vocab


def test_chat_without_a_chat_template_is_a_one_line_error(chat_cli, tmp_path):
    from test_cli_run import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "base")
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    code, out, err, calls = chat_cli("--model", str(path), "--chat")
    assert code == 2 and out == "" and calls == []
    (line,) = [line for line in err.splitlines() if line.startswith("olmo-hf run: error:")]
    assert "--chat: the tokenizer of" in line and "has no chat template" in line
