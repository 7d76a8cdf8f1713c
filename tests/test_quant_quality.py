"""scripts/quant_quality.py's metrics: relative L2 logit error, top-1 agreement and KL divergence per position,
and their means over sequences (the llama.cpp comparison itself needs llama-cpp-python and is not run here)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "quant_quality", Path(__file__).resolve().parents[1] / "scripts" / "quant_quality.py"
)
quant_quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quant_quality)


def test_identical_logits_have_zero_error_full_agreement_and_zero_kl():
    ref = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    c = quant_quality.compare_logits(ref, ref.clone())
    assert c.rel_l2.tolist() == [0.0] * 5
    assert c.top1.tolist() == [True] * 5
    assert c.kl.abs().max().item() < 1e-12


def test_relative_l2_error_is_per_position_norm_of_difference_over_norm_of_reference():
    ref = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])  # norms 5 and 1
    cand = torch.tensor([[3.0, 4.0, 1.0], [1.0, 0.0, 0.5]])  # differences of norm 1 and 0.5
    c = quant_quality.compare_logits(ref, cand)
    assert c.rel_l2.tolist() == pytest.approx([0.2, 0.5])


def test_top1_agreement_compares_the_argmax_token_of_each_position():
    ref = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    cand = torch.tensor([[0.0, 1.0, 2.0], [9.0, 1.0, 0.0]])  # position 0 changes its top token, position 1 keeps it
    assert quant_quality.compare_logits(ref, cand).top1.tolist() == [False, True]


def test_kl_is_of_the_candidate_distribution_from_the_reference_distribution():
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    cand = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert quant_quality.compare_logits(ref, cand).kl.item() == pytest.approx(expected)


def test_a_constant_logit_shift_changes_neither_top1_nor_kl():
    ref = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    c = quant_quality.compare_logits(ref, ref + 3.0)
    assert c.top1.all()
    assert c.kl.abs().max().item() < 1e-12


def test_summary_averages_over_every_position_of_every_sequence():
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    first = quant_quality.compare_logits(ref[:1], torch.tensor([[1.0, 0.5]]))  # error 0.5, top-1 kept
    second = quant_quality.compare_logits(ref[1:], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # 1.414 / lost; 0 / kept
    s = quant_quality.summarize([first, second])
    assert s["positions"] == 3
    assert s["rel_l2"] == pytest.approx((0.5 + math.sqrt(2) + 0.0) / 3)
    assert s["rel_l2_max"] == pytest.approx(math.sqrt(2))
    assert s["top1"] == pytest.approx(2 / 3)


def test_logits_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        quant_quality.compare_logits(torch.zeros(2, 3), torch.zeros(2, 4))
