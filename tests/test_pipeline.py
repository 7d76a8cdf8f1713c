"""`pipeline()` with olmo_hf's classes: text generation (OLMo and OLMo 2), a chat-template conversation, and
text classification, from tiny checkpoints saved into tmp_path; offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, pipeline

import olmo_hf

DEMO = Path(olmo_hf.__file__).parent / "demo"


def save_tiny(path: Path, config_class, model_class, **overrides) -> Path:
    """A random 2-layer model with the demo model's tokenizer (which has an OLMo-2-style chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def olmo2_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("pipe") / "olmo2", olmo_hf.Olmo2Config, olmo_hf.Olmo2ForCausalLM)


@pytest.mark.parametrize("family", ["olmo", "olmo2"])
def test_text_generation_pipeline_uses_our_classes(family, olmo2_dir, tmp_path):
    if family == "olmo2":
        path, expected = olmo2_dir, olmo_hf.Olmo2ForCausalLM
    else:
        path = save_tiny(tmp_path / "olmo", olmo_hf.OlmoConfig, olmo_hf.OlmoForCausalLM, clip_qkv=8.0)
        expected = olmo_hf.OlmoForCausalLM
    pipe = pipeline("text-generation", model=str(path))
    assert type(pipe.model) is expected
    (output,) = pipe("The import statement", max_new_tokens=4, do_sample=False)
    assert output["generated_text"].startswith("The import statement")
    (only_new,) = pipe("The import statement", max_new_tokens=4, do_sample=False, return_full_text=False)
    assert output["generated_text"] == "The import statement" + only_new["generated_text"]


def test_chat_template_conversation(olmo2_dir):
    pipe = pipeline("text-generation", model=str(olmo2_dir))
    assert type(pipe.model) is olmo_hf.Olmo2ForCausalLM
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a tuple?"}]
    prompt = pipe.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|endoftext|><|system|>\nBe brief.\n<|user|>\nWhat is a tuple?\n<|assistant|>\n"
    (output,) = pipe(messages, max_new_tokens=4, do_sample=False)
    conversation = output["generated_text"]
    assert conversation[:2] == messages
    assert conversation[-1]["role"] == "assistant" and isinstance(conversation[-1]["content"], str)
    # A second turn renders the first answer with its EOS, as OLMo 2 Instruct's template does.
    follow_up = [*conversation, {"role": "user", "content": "And a list?"}]
    rendered = pipe.tokenizer.apply_chat_template(follow_up, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|endoftext|>\n<|user|>\nAnd a list?\n<|assistant|>\n")


def test_text_classification_pipeline_uses_our_class(tmp_path):
    path = save_tiny(tmp_path / "clf", olmo_hf.Olmo2Config, olmo_hf.Olmo2ForSequenceClassification, num_labels=3)
    pipe = pipeline("text-classification", model=str(path))
    assert type(pipe.model) is olmo_hf.Olmo2ForSequenceClassification
    (output,) = pipe("A sentence to classify.")
    assert output["label"] in {"LABEL_0", "LABEL_1", "LABEL_2"} and 0 < output["score"] <= 1
    pair = pipe({"text": "a premise", "text_pair": "a hypothesis"})
    assert set(pair) == {"label", "score"}


def test_demo_model_through_pipeline_is_ours():
    pipe = pipeline("text-generation", model=str(DEMO))
    assert type(pipe.model) is olmo_hf.Olmo2ForCausalLM
    torch.manual_seed(0)
    (output,) = pipe("The for statement", max_new_tokens=8)
    assert output["generated_text"].startswith("The for statement")
