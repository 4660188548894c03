"""Per-criterion precision-recall curves of head 1 (report key ``precision_recall``).

From the predicted probabilities of the evaluated checkpoint(s) on the report's split,
pooled (each post once per checkpoint, as the thresholds are calibrated): scikit-learn's
``precision_recall_curve`` and ``average_precision_score`` per criterion, and the operating
point (precision, recall) of the criterion's calibrated threshold. A criterion without a
positive in the split has no curve: it is listed under ``skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Digits kept of the curve points stored in the report (the plot's resolution, a smaller JSON).
CURVE_DIGITS = 4


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), CURVE_DIGITS) for v in values]


def operating_point(scores: np.ndarray, gold: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Precision and recall of ``scores >= threshold`` (precision None: nothing predicted)."""
    pred = scores >= threshold
    tp = float((pred & gold).sum())
    return {"precision": tp / float(pred.sum()) if pred.any() else None,
            "recall": tp / float(gold.sum()) if gold.any() else None}


def precision_recall_report(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                            thresholds: np.ndarray, names: Sequence[str], *, split: str) -> dict[str, Any]:
    """The ``precision_recall`` section of a study report.

    ``probs`` / ``labels``: one ``[N, C]`` array per evaluated checkpoint (pooled here);
    ``thresholds``: the calibrated per-criterion thresholds. Per criterion with a positive:
    ``average_precision``, ``positives`` and ``positive_rate`` (of the pooled rows),
    ``threshold``, ``operating_point`` and the ``curve`` (``precision`` / ``recall`` lists,
    sklearn's order, intermediate points that do not change the curve dropped).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    p = np.concatenate([np.asarray(a, dtype=np.float64) for a in probs])
    gold = np.concatenate([np.asarray(a) for a in labels]).astype(bool)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
    per: dict[str, Any] = {}
    skipped: list[str] = []
    for j, name in enumerate(names):
        if not gold[:, j].any():
            skipped.append(name)
            continue
        precision, recall, _ = precision_recall_curve(gold[:, j], p[:, j], drop_intermediate=True)
        per[name] = {
            "average_precision": float(average_precision_score(gold[:, j], p[:, j])),
            "positives": int(gold[:, j].sum()), "positive_rate": float(gold[:, j].mean()),
            "threshold": float(thr[j]), "operating_point": operating_point(p[:, j], gold[:, j], float(thr[j])),
            "curve": {"precision": _round(precision), "recall": _round(recall)},
        }
    aps = [c["average_precision"] for c in per.values()]
    return {"split": split, "num_checkpoints": len(probs), "num_samples": int(p.shape[0]),
            "average_precision_macro": float(np.mean(aps)) if aps else None,
            "per_criterion": per, "skipped": skipped}
