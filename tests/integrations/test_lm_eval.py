"""lm-evaluation-harness on our classes gives the built-in classes' metrics and per-sample scores, on the same weights:
``simple_evaluate`` over three local YAML tasks (multiple choice, greedy generation, rolling log-likelihood), with
``HFLM`` wrapping a loaded model; ``HFLM(pretrained=path)`` loads our class."""

from __future__ import annotations

import json

import pytest
import torch

from .tiny_models import FAMILIES, FAMILY_NAMES, TEXTS, load_pair, tokenizer

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("lm_eval.models.huggingface")
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

# float32 log-likelihoods of a few dozen tokens; the per-token logits agree within 1e-5 (tests/test_parity.py).
LOGLIK_ATOL = 1e-4

QUESTIONS = [
    ("The import statement", [" loads a module.", " is a tuple.", " frees memory."], 0),
    ("A tuple is", [" mutable.", " immutable.", " a generator."], 1),
    ("Exceptions propagate", [" up the call stack.", " sideways.", " into the dictionary."], 0),
    ("A dictionary maps", [" lists to loops.", " keys to values.", " bytes to modules."], 1),
    ("The with statement", [" wraps a block.", " deletes names.", " raises nothing."], 0),
    ("Generators produce values", [" eagerly.", " lazily.", " twice."], 1),
]

TASKS = {
    "olmo_hf_tiny_choice": """
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "olmo_hf_tiny_generate": """
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
    "olmo_hf_tiny_perplexity": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
""",
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three local tasks over a JSON-lines file of six examples (no Hub, no download)."""
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    data = root / "data.jsonl"
    with data.open("w") as f:
        for (question, choices, answer), text in zip(QUESTIONS, TEXTS):
            f.write(json.dumps({"question": question, "choices": choices, "answer": answer, "text": text}) + "\n")
    for name, body in TASKS.items():
        head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        (root / f"{name}.yaml").write_text(head + body)
    return root


def evaluate(model, task_dir):
    lm = HFLM(pretrained=model, tokenizer=tokenizer(), device="cpu", batch_size=4)
    return lm_eval.simple_evaluate(
        model=lm, tasks=sorted(TASKS), task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0, log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
    )


def scores(sample):
    """One logged sample's per-request results: log-likelihoods (multiple choice: ``(loglik, is_greedy)`` -> loglik;
    rolling: the loglik) or generated strings."""
    results = [resp[0] for resp in sample["resps"]]  # one result per request
    return [r[0] if isinstance(r, tuple) else r for r in results]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def evaluations(request, causal_checkpoints, task_dir):
    family = FAMILIES[request.param]
    builtin, ours = load_pair(family, causal_checkpoints[family.name])
    return evaluate(builtin, task_dir), evaluate(ours, task_dir)


def test_metrics_match_builtin(evaluations):
    builtin, ours = evaluations
    for task in TASKS:
        ref, got = builtin["results"][task], ours["results"][task]
        metrics = sorted(k for k in ref if k.endswith(",none") and not k.endswith("_stderr,none"))
        assert metrics == sorted(k for k in got if k.endswith(",none") and not k.endswith("_stderr,none")), task
        for metric in metrics:
            if metric.startswith(("acc", "exact_match")):
                assert got[metric] == ref[metric], (task, metric)  # same choices picked, same strings generated
            else:
                assert got[metric] == pytest.approx(ref[metric], rel=1e-5), (task, metric)
    assert ours["results"]["olmo_hf_tiny_choice"]["acc,none"] in {i / 6 for i in range(7)}


def test_per_sample_scores_match_builtin(evaluations):
    builtin, ours = evaluations
    for task in TASKS:
        ref_samples, samples = builtin["samples"][task], ours["samples"][task]
        assert len(samples) == len(ref_samples) == 6
        for ref, got in zip(ref_samples, samples):
            ref_scores, got_scores = scores(ref), scores(got)
            if task == "olmo_hf_tiny_generate":
                assert got_scores == ref_scores  # greedy generations, token for token
            else:
                assert all(isinstance(s, float) for s in got_scores)
                assert got_scores == pytest.approx(ref_scores, abs=LOGLIK_ATOL)


def test_hflm_given_a_path_loads_our_class(causal_checkpoints):
    lm = HFLM(pretrained=str(causal_checkpoints["olmo2"]), device="cpu", batch_size=1, dtype=torch.float32)
    assert type(lm.model) is FAMILIES["olmo2"].ours_causal_lm
