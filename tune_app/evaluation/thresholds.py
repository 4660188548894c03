"""Decision thresholds calibrated on the validation split.

Criteria: per-criterion thresholds (each maximises its own F1, which maximises the
macro-F1 they average into) or one global threshold maximising macro-F1. Evidence:
the null threshold, the margin a span's score must have over the null span's score,
maximising SQuAD 2.0-style F1 over all slots. Candidates are midpoints between sorted
distinct scores (so they generalise past the exact validation values); ties go to
the candidate closest to the default (0.5 for criteria, 0.0 for evidence).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from tune_app.evaluation.metrics import evidence_report

Strategy = Literal["per_criterion", "global"]
DEFAULT_THRESHOLD = 0.5


def _candidates(values: np.ndarray, default: float, lo: float | None, hi: float | None) -> np.ndarray:
    """Midpoints between distinct values (plus one below/above all) and the default."""
    u = np.unique(values[np.isfinite(values)])
    if u.size == 0:
        return np.array([default])
    below = lo if lo is not None else u[0] - 1.0
    above = hi if hi is not None else u[-1] + 1.0
    edges = np.concatenate([[min(below, u[0])], u, [max(above, u[-1])]])
    mids = (edges[:-1] + edges[1:]) / 2
    return np.unique(np.concatenate([mids, [default]]))


def _pick(candidates: np.ndarray, scores: np.ndarray, default: float) -> float:
    """Best-scoring candidate; ties go to the one closest to ``default``, then the lower."""
    best = scores.max()
    tied = candidates[np.isclose(scores, best, rtol=0.0, atol=1e-12)]
    return float(tied[np.lexsort((tied, np.abs(tied - default)))][0])


def f1_at(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 per (threshold, criterion): ``probs``/``labels`` [N, C], ``thresholds`` [K] -> [K, C].

    Same definition as scikit-learn's with ``zero_division=0``.
    """
    pred = probs[None, :, :] >= thresholds[:, None, None]
    gold = labels.astype(bool)[None, :, :]
    tp = (pred & gold).sum(1)
    fp = (pred & ~gold).sum(1)
    fn = (~pred & gold).sum(1)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def calibrate_criteria(probs: np.ndarray, labels: np.ndarray, strategy: Strategy = "per_criterion",
                       default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Thresholds [C] maximising validation macro-F1 (``per_criterion`` or one ``global``)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    c = probs.shape[1]
    if strategy == "global":
        cands = _candidates(probs.reshape(-1), default, 0.0, 1.0)
        macro = f1_at(probs, labels, cands).mean(axis=1)
        return np.full(c, _pick(cands, macro, default))
    if strategy != "per_criterion":
        raise ValueError(f"threshold strategy must be 'per_criterion' or 'global', got {strategy!r}")
    out = np.empty(c)
    for j in range(c):
        cands = _candidates(probs[:, j], default, 0.0, 1.0)
        out[j] = _pick(cands, f1_at(probs[:, [j]], labels[:, [j]], cands)[:, 0], default)
    return out


def calibrate_null_threshold(start: np.ndarray, end: np.ndarray, margin: np.ndarray,
                             gold_start: np.ndarray, gold_end: np.ndarray, default: float = 0.0) -> float:
    """Null threshold maximising slot F1 (null vs null = 1) on the given slots.

    ``start``/``end``/``margin`` come from :func:`~tune_app.evaluation.metrics.span_scores`.
    """
    s, e, gs, ge = (np.asarray(a).reshape(-1) for a in (start, end, gold_start, gold_end))
    margin = np.asarray(margin, dtype=np.float64).reshape(-1)
    if margin.size == 0:
        return default
    has_gold = gs > 0
    # Slot F1 if the best span is predicted (token F1 vs gold; 0 on a gold-null slot).
    span_f1 = np.array([evidence_report([a], [b], [c], [d])["token_f1"] if g else 0.0
                        for a, b, c, d, g in zip(s, e, gs, ge, has_gold, strict=True)])
    cands = _candidates(margin, default, None, None)
    keep = margin[None, :] > cands[:, None]
    scores = np.where(keep, span_f1[None, :], (~has_gold)[None, :].astype(float)).mean(axis=1)
    return _pick(cands, scores, default)


def thresholds_dict(thresholds: np.ndarray, names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {name: float(t) for name, t in zip(names, thresholds, strict=True)}
