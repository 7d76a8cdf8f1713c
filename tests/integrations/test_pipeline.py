"""``pipeline()`` on our classes gives the built-in classes' outputs, on the same weights: greedy text generation
(plain prompts, a left-padded batch, a chat conversation; strings and token ids) and text classification (labels
and every score, a padded batch)."""

from __future__ import annotations

import pytest
from transformers import pipeline

from .tiny_models import ATOL, FAMILIES, FAMILY_NAMES, load_pair, tokenizer

PROMPTS = ["The import statement", "A tuple is an immutable", "Exceptions"]


def left_padding_tokenizer():
    tok = tokenizer()
    tok.padding_side = "left"
    return tok


def generation_pipelines(family, path):
    """(built-in, ours): ours from the path, as users write it; the built-in one from the built-in model."""
    builtin, _ = load_pair(family, path)
    ours = pipeline("text-generation", model=str(path), tokenizer=left_padding_tokenizer(), dtype="float32")
    assert type(ours.model) is family.ours_causal_lm
    return pipeline("text-generation", model=builtin, tokenizer=left_padding_tokenizer()), ours


GREEDY = dict(max_new_tokens=12, do_sample=False)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_greedy_generation_matches_builtin(family, causal_checkpoints):
    builtin, ours = generation_pipelines(FAMILIES[family], causal_checkpoints[family])
    for prompt in PROMPTS:
        expected = builtin(prompt, **GREEDY)
        assert ours(prompt, **GREEDY) == expected
        assert ours(prompt, return_tensors=True, **GREEDY) == builtin(prompt, return_tensors=True, **GREEDY)
    assert len(expected[0]["generated_text"]) > len(prompt)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_batched_left_padded_generation_matches_builtin(family, causal_checkpoints):
    builtin, ours = generation_pipelines(FAMILIES[family], causal_checkpoints[family])
    expected = builtin(PROMPTS, batch_size=3, **GREEDY)
    assert ours(PROMPTS, batch_size=3, **GREEDY) == expected
    # and the batch gives what each prompt gives alone
    assert expected == [builtin(prompt, **GREEDY) for prompt in PROMPTS]


def test_chat_generation_matches_builtin(causal_checkpoints):
    builtin, ours = generation_pipelines(FAMILIES["olmo2"], causal_checkpoints["olmo2"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a tuple?"}]
    (expected,) = builtin(messages, **GREEDY)
    (got,) = ours(messages, **GREEDY)
    assert got == expected
    assert got["generated_text"][-1]["role"] == "assistant"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_classification_matches_builtin(family, classifier_checkpoints):
    spec, path = FAMILIES[family], classifier_checkpoints[family]
    builtin_model, _ = load_pair(spec, path, classifier=True)
    ours = pipeline("text-classification", model=str(path), dtype="float32")
    assert type(ours.model) is spec.ours_classifier
    builtin = pipeline("text-classification", model=builtin_model, tokenizer=tokenizer())
    texts = ["A sentence to classify.", "Short.", "A longer sentence, so that the batch is padded on the right."]
    for kwargs in (dict(), dict(top_k=None), dict(top_k=None, batch_size=3)):
        expected, got = builtin(texts, **kwargs), ours(texts, **kwargs)
        assert len(got) == len(expected) == 3
        for ref_row, row in zip(expected, got):
            ref_row, row = (ref_row, row) if isinstance(row, list) else ([ref_row], [row])
            assert [r["label"] for r in row] == [r["label"] for r in ref_row]
            assert [r["score"] for r in row] == pytest.approx([r["score"] for r in ref_row], abs=ATOL)
    # the scores differ between texts: the pooled (last non-padding) token is read, not a padding one
    scores = [row[0]["score"] for row in ours(texts, top_k=None, batch_size=3)]
    assert len(set(scores)) == 3
