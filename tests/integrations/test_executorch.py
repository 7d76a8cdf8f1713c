"""ExecuTorch: Transformers' ``convert_and_export_with_cache`` (transformers.integrations.executorch: torch.export of
the model with a static key/value cache) on our causal LMs gives the built-in classes' logits, step by step; the
exported program lowered to XNNPACK runs in the ExecuTorch runtime with the same logits; a model optimised by
olmo_hf.fast is refused with a message that says to call ``olmo_hf.fast.undo`` first.

The exported program takes one token and its cache position per call (the cache lives in the program's buffers), so
a sequence is fed token by token and compared with the built-in model's uncached forward over the whole sequence.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from ._export_fixtures import EXPORT_ATOL, FAMILY_NAMES, exception_chain, load_pair, save_builtin_checkpoint

executorch_integration = pytest.importorskip("transformers.integrations.executorch")

SEQ = 10  # longer than the OLMo 3 sliding window (4)
MAX_CACHE_LEN = 16


def with_static_cache(model):
    """What convert_and_export_with_cache reads: a static cache of batch 1 and MAX_CACHE_LEN positions."""
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static",
        cache_config={"batch_size": 1, "max_cache_len": MAX_CACHE_LEN},
    )
    return model


def export(model) -> torch.export.ExportedProgram:
    return executorch_integration.convert_and_export_with_cache(
        with_static_cache(model), example_input_ids=torch.tensor([[5]]), example_cache_position=torch.tensor([0])
    )


def decode(step, ids: torch.Tensor) -> torch.Tensor:
    """Feed ``ids`` (1, n) one token at a time to ``step(input_ids, cache_position) -> logits``; (1, n, vocab)."""
    return torch.cat([step(ids[:, i : i + 1], torch.tensor([i])) for i in range(ids.shape[1])], dim=1)


def random_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (1, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("executorch")
    return {family: save_builtin_checkpoint(family, root / family) for family in FAMILY_NAMES}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_exported_program_with_static_cache_gives_the_builtin_logits(family, checkpoints):
    ref, ours = load_pair(family, checkpoints[family])
    ids = random_ids()
    with torch.no_grad():
        expected = ref(ids).logits

    program = export(ours).module()
    with torch.no_grad():
        logits = decode(lambda x, pos: program(input_ids=x, cache_position=pos), ids)

    torch.testing.assert_close(logits, expected, rtol=0, atol=EXPORT_ATOL)


@pytest.mark.slow  # lowering to XNNPACK: ~40-50 s per model on the 2-core machine
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_xnnpack_program_runs_in_the_executorch_runtime_with_the_builtin_logits(family, checkpoints):
    pytest.importorskip("executorch", reason="the executorch package is not installed (pip install executorch)")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    ref, ours = load_pair(family, checkpoints[family])
    ids = random_ids()
    with torch.no_grad():
        expected = ref(ids).logits

    program = to_edge_transform_and_lower(export(ours), partitioner=[XnnpackPartitioner()]).to_executorch()
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    logits = decode(lambda x, pos: method.execute([x, pos])[0], ids)

    torch.testing.assert_close(logits, expected, rtol=0, atol=EXPORT_ATOL)


def test_fast_path_model_refuses_executorch_export_and_names_undo(checkpoints):
    from olmo_hf.fast import optimize_for_cpu_inference

    _, ours = load_pair("olmo2", checkpoints["olmo2"])
    optimize_for_cpu_inference(ours)

    with pytest.raises(Exception) as info:  # torch.export (strict) wraps the error it met in its own
        export(ours)

    messages = [str(e) for e in exception_chain(info.value)]
    assert any("call olmo_hf.fast.undo(model) before exporting" in m for m in messages), messages[0]
