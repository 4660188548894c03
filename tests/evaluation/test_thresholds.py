"""Threshold calibration: criteria (per criterion / global) and the evidence null threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tune_app.evaluation.thresholds import calibrate_criteria, calibrate_null_threshold, f1_at


def test_f1_at_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    probs, labels = rng.random((40, 5)), (rng.random((40, 5)) > 0.7).astype(int)
    labels[:, 4] = 0  # a criterion without positives (zero_division=0)
    for t in (0.2, 0.5, 0.9):
        expected = f1_score(labels, (probs >= t).astype(int), average=None, zero_division=0)
        assert f1_at(probs, labels, np.array([t]))[0] == pytest.approx(expected)


def test_per_criterion_thresholds_separate_each_criterion() -> None:
    probs = np.array([[0.1, 0.6], [0.2, 0.7], [0.3, 0.8], [0.4, 0.9]])
    labels = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    thr = calibrate_criteria(probs, labels, "per_criterion")
    assert thr[0] == pytest.approx(0.25)  # only cut between .2 and .3 gives F1 = 1
    assert thr[1] == pytest.approx(0.5)  # no positives: every cut ties, the default wins


def test_global_threshold_maximises_macro_f1() -> None:
    probs = np.array([[0.1, 0.05], [0.2, 0.12], [0.3, 0.5], [0.4, 0.9]])
    labels = np.array([[0, 0], [0, 0], [1, 1], [1, 1]])
    thr = calibrate_criteria(probs, labels, "global")
    assert thr[0] == thr[1]
    assert 0.2 < thr[0] < 0.3  # the one cut that is perfect for both criteria
    assert f1_at(probs, labels, thr[:1]).mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strategy"):
        calibrate_criteria(probs, labels, "bogus")  # type: ignore[arg-type]


def test_null_threshold_trades_spans_for_nulls() -> None:
    # Slot A: right span, margin 1.0; B: gold null, spurious span, margin 0.5; C: null.
    start, end, margin = np.array([1, 3, 2]), np.array([2, 3, 2]), np.array([1.0, 0.5, -1.0])
    gold_s, gold_e = np.array([1, 0, 0]), np.array([2, 0, 0])
    assert calibrate_null_threshold(start, end, margin, gold_s, gold_e) == pytest.approx(0.75)
    assert calibrate_null_threshold(start[:0], end[:0], margin[:0], gold_s[:0], gold_e[:0]) == 0.0
