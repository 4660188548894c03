"""Each reported metric against a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tune_app.evaluation.metrics import (
    apply_null_threshold,
    best_spans,
    criteria_report,
    evidence_report,
    span_scores,
)

LABELS = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
PROBS = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1], [0.3, 0.7]])


def test_criteria_report_matches_hand_computation() -> None:
    # pred at 0.5: [[1,0],[0,1],[1,0],[0,1]]; A: tp=fp=fn=tn=1; B: tp=2, tn=2.
    r = criteria_report(PROBS, LABELS, 0.5, ["A", "B"])
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["subset_accuracy"] == pytest.approx(2 / 4)
    assert r["macro_f1"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["micro_f1"] == pytest.approx(0.75)  # tp=3, fp=1, fn=1
    assert r["micro_precision"] == pytest.approx(0.75) and r["micro_recall"] == pytest.approx(0.75)
    assert r["macro_precision"] == pytest.approx(0.75) and r["macro_recall"] == pytest.approx(0.75)
    a, b = r["per_criterion"]["A"], r["per_criterion"]["B"]
    assert (a["f1"], a["precision"], a["recall"], a["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert a["confusion_matrix"] == [[1, 1], [1, 1]] and b["confusion_matrix"] == [[2, 0], [0, 2]]
    # Average precision of A: ranking .9(+) .6(-) .4(+) .3(-) -> (1 + 2/3) / 2.
    assert a["pr_auc"] == pytest.approx(5 / 6) and b["pr_auc"] == pytest.approx(1.0)
    assert r["pr_auc_macro"] == pytest.approx((5 / 6 + 1) / 2)


def test_criteria_report_applies_each_criterion_threshold() -> None:
    r = criteria_report(PROBS, LABELS, np.array([0.35, 0.75]), ["A", "B"])
    # A at .35: pred [1,1,1,0] -> tp=2, fp=1 -> F1 .8; B at .75: pred [0,1,0,0] -> tp=1, fn=1 -> F1 2/3.
    assert r["per_criterion"]["A"]["f1"] == pytest.approx(0.8)
    assert r["per_criterion"]["B"]["f1"] == pytest.approx(2 / 3)
    assert r["per_criterion"]["A"]["threshold"] == 0.35


def test_pr_auc_is_none_without_positives() -> None:
    r = criteria_report(PROBS, np.array([[1, 0], [0, 0], [0, 0], [1, 0]]), 0.5, ["A", "B"])
    assert r["per_criterion"]["B"]["pr_auc"] is None
    assert r["pr_auc_macro"] == pytest.approx(r["per_criterion"]["A"]["pr_auc"])


def test_evidence_report_matches_hand_computation() -> None:
    gold_s, gold_e = [3, 2, 0, 0, 7], [5, 2, 0, 0, 8]
    pred_s, pred_e = [4, 2, 0, 1, 0], [6, 2, 0, 1, 0]
    pred_chars = [(10, 20), (5, 9), None, (0, 3), None]
    gold_chars = [[(15, 25)], [(30, 40), (5, 9)], [], [], [(1, 2)]]
    r = evidence_report(pred_s, pred_e, gold_s, gold_e, pred_chars, gold_chars)
    assert r["num_gold_spans"] == 3 and r["num_slots"] == 5
    assert r["exact_match"] == pytest.approx(1 / 3)
    assert r["token_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # tokens 4-5 shared of 3 and 3
    assert r["null_accuracy"] == pytest.approx(1 / 2)
    assert r["slot_f1"] == pytest.approx((2 / 3 + 1 + 1 + 0 + 0) / 5)
    assert r["char_f1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # chars 15-20 of 10 and 10


def test_span_scores_agree_with_best_spans_at_zero_threshold() -> None:
    gen = torch.Generator().manual_seed(0)
    start, end = torch.randn(6, 3, 12, generator=gen), torch.randn(6, 3, 12, generator=gen)
    s, e, margin, null = span_scores(start, end)
    ref_s, ref_e = best_spans(start, end)
    ps, pe = apply_null_threshold(s.numpy(), e.numpy(), margin.numpy(), 0.0)
    assert np.array_equal(ps, ref_s.numpy()) and np.array_equal(pe, ref_e.numpy())
    assert torch.allclose(null, start[..., 0] + end[..., 0])
    assert bool(((s >= 1) & (e >= s)).all())
    # A high threshold turns every slot into the null span.
    ps, pe = apply_null_threshold(s.numpy(), e.numpy(), margin.numpy(), 1e9)
    assert not ps.any() and not pe.any()
