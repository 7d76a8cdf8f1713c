"""ONNX: ``torch.onnx.export(..., dynamo=True)`` of our causal LMs, run in onnxruntime, gives the built-in classes'
logits; a model optimised by olmo_hf.fast is refused with a message that says to call ``olmo_hf.fast.undo`` first.

The export is of a plain forward (no cache) on a fixed-shape, left-padded batch: input ids and attention mask in,
logits out. Compared at the positions the mask keeps (padded positions hold arbitrary values in any implementation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ._export_fixtures import (
    EXPORT_ATOL,
    FAMILY_NAMES,
    exception_chain,
    left_padded_batch,
    load_pair,
    save_builtin_checkpoint,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx's dynamo exporter translates with it


class LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits, without a cache: the graph that is exported."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_and_run(model: torch.nn.Module, path, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Export ``model`` to ``path`` with the dynamo exporter and run it in onnxruntime on (ids, mask): the logits."""
    torch.onnx.export(
        LogitsOnly(model).eval(), (ids, mask), str(path), dynamo=True,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {family: save_builtin_checkpoint(family, root / family) for family in FAMILY_NAMES}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_onnx_export_runs_in_onnxruntime_with_the_builtin_logits(family, checkpoints, tmp_path):
    ref, ours = load_pair(family, checkpoints[family])
    ids, mask = left_padded_batch()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits.numpy()

    logits = export_and_run(ours, tmp_path / "model.onnx", ids, mask)

    kept = mask.numpy().astype(bool)
    assert logits.shape == expected.shape == (2, 12, 128)
    np.testing.assert_allclose(logits[kept], expected[kept], rtol=0, atol=EXPORT_ATOL)
    assert (logits[kept].argmax(-1) == expected[kept].argmax(-1)).all()


def test_fast_path_model_refuses_onnx_export_and_names_undo(checkpoints, tmp_path):
    from olmo_hf.fast import FastPathError, optimize_for_cpu_inference

    _, ours = load_pair("olmo2", checkpoints["olmo2"])
    optimize_for_cpu_inference(ours)
    ids, mask = left_padded_batch()

    with pytest.raises(Exception) as info:  # torch.onnx wraps the error it met in its own
        export_and_run(ours, tmp_path / "model.onnx", ids, mask)

    ours_error = [e for e in exception_chain(info.value) if isinstance(e, FastPathError)]
    assert ours_error, f"no FastPathError behind {type(info.value).__name__}: {info.value}"
    assert "call olmo_hf.fast.undo(model) before exporting" in str(ours_error[0])
    assert "call olmo_hf.fast.undo(model) before exporting" in str(info.value)  # what the user reads


def test_fast_path_model_exports_after_undo(checkpoints, tmp_path):
    from olmo_hf.fast import optimize_for_cpu_inference, undo

    ref, ours = load_pair("olmo2", checkpoints["olmo2"])
    undo(optimize_for_cpu_inference(ours))
    ids, mask = left_padded_batch()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits.numpy()

    logits = export_and_run(ours, tmp_path / "model.onnx", ids, mask)

    kept = mask.numpy().astype(bool)
    np.testing.assert_allclose(logits[kept], expected[kept], rtol=0, atol=EXPORT_ATOL)
