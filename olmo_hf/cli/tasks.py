# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""The pipeline tasks ``olmo-hf run`` supports, and what each one needs and returns.

OLMo checkpoints are decoder-only language models, so of the Transformers 4.x ``run`` tasks only two make
sense: ``text-generation`` (``*ForCausalLM``) and ``text-classification`` (``*ForSequenceClassification``,
Transformers' generic last-token classifier; 4.x's alias ``sentiment-analysis`` is accepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CliError

__all__ = ["Task", "TASKS", "get_task", "infer_task", "normalize_output"]


@dataclass(frozen=True)
class Task:
    """One supported pipeline task."""

    name: str
    auto_class: str  # the Transformers Auto class that loads its model
    input_keys: tuple[str, ...]  # the keys of a multi-column input (``--column a,b``), in positional order
    csv_fields: tuple[str, ...]  # the CSV header of its outputs
    generates: bool  # whether generation flags (--max-new-tokens, sampling) apply


TASKS: dict[str, Task] = {
    "text-generation": Task(
        name="text-generation",
        auto_class="AutoModelForCausalLM",
        input_keys=("text",),
        csv_fields=("generated_text",),
        generates=True,
    ),
    "text-classification": Task(
        name="text-classification",
        auto_class="AutoModelForSequenceClassification",
        input_keys=("text", "text_pair"),
        csv_fields=("label", "score"),
        generates=False,
    ),
}
ALIASES = {"sentiment-analysis": "text-classification"}


def get_task(name: str) -> Task:
    """The task called ``name`` (or one of its aliases); a :class:`CliError` listing the choices otherwise."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise CliError(
            f"unknown task {name!r}: olmo-hf run supports {' and '.join(TASKS)} "
            "(OLMo checkpoints are decoder-only language models; 'sentiment-analysis' is accepted as an alias "
            "of text-classification)"
        )
    return task


def infer_task(config: Any) -> Task:
    """The task a checkpoint was saved for, from ``config.architectures`` (text generation by default)."""
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return TASKS["text-classification"]
    return TASKS["text-generation"]


def normalize_output(task: Task, output: Any) -> list[dict]:
    """A pipeline's answer for ONE input as a list of dicts (one per returned sequence / label)."""
    if isinstance(output, dict):
        return [output]
    if isinstance(output, list) and all(isinstance(item, dict) for item in output):
        return output
    raise TypeError(f"unexpected {task.name} pipeline output: {output!r}")
