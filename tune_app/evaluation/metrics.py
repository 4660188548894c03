"""Metrics for both heads, computed from logits gathered over a split.

Criteria matching: multi-label F1 (scikit-learn). Evidence binding: best-span
decoding per (example, criterion) slot, then token-level F1 against the gold span,
exact match, and null-span accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import f1_score


@dataclass
class SplitOutputs:
    """Everything gathered from a pass over a split, on CPU.

    ``probs``/``labels`` are per post ([N, C]) after aggregating windows or pairs;
    the evidence arrays are per model input slot.
    """

    probs: np.ndarray
    labels: np.ndarray
    pred_start: np.ndarray
    pred_end: np.ndarray
    gold_start: np.ndarray
    gold_end: np.ndarray


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_span_tokens: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best (start, end) per slot with start <= end < start + max_span_tokens.

    ``*_logits``: [B, C, T] with padding already masked by the head. The null span
    (0, 0) competes with its score ``start[0] + end[0]``; returns two [B, C] tensors.
    """
    t = start_logits.shape[-1]
    scores = start_logits.unsqueeze(-1) + end_logits.unsqueeze(-2)  # [B, C, T(start), T(end)]
    idx = torch.arange(t, device=scores.device)
    allowed = (idx.view(1, -1) >= idx.view(-1, 1)) & (idx.view(1, -1) < idx.view(-1, 1) + max_span_tokens)
    allowed[0, 1:] = False  # a span that starts at [CLS] is only the null span
    allowed[1:, 0] = False
    scores = scores.masked_fill(~allowed, float("-inf"))
    flat = scores.flatten(-2).argmax(-1)
    return flat // t, flat % t


def span_scores(start_logits: torch.Tensor, end_logits: torch.Tensor, max_span_tokens: int = 64
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best non-null span per slot and the margin it has over the null span.

    Returns ``(start, end, margin, null_score)``, each [B, C]: the best span with
    1 <= start <= end < start + max_span_tokens, ``margin = span score - null score``
    (null score ``start[0] + end[0]``). Predicting the span when ``margin > 0`` is
    exactly :func:`best_spans`; a calibrated null threshold replaces that 0.
    """
    t = start_logits.shape[-1]
    scores = start_logits.unsqueeze(-1) + end_logits.unsqueeze(-2)
    idx = torch.arange(t, device=scores.device)
    allowed = (idx.view(1, -1) >= idx.view(-1, 1)) & (idx.view(1, -1) < idx.view(-1, 1) + max_span_tokens)
    allowed[0, :] = False
    allowed[:, 0] = False
    null = scores[..., 0, 0]
    if t < 2:
        zeros = torch.zeros_like(null, dtype=torch.long)
        return zeros, zeros, torch.full_like(null, float("-inf")), null
    best, flat = scores.masked_fill(~allowed, float("-inf")).flatten(-2).max(-1)
    return flat // t, flat % t, best - null, null


def apply_null_threshold(start: np.ndarray, end: np.ndarray, margin: np.ndarray, threshold: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted spans: the best span where ``margin > threshold``, else the null span (0, 0)."""
    keep = np.asarray(margin) > threshold
    return np.where(keep, start, 0), np.where(keep, end, 0)


def criteria_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Macro/micro F1 and label-wise accuracy of thresholded probabilities."""
    pred = (probs >= threshold).astype(int)
    gold = labels.astype(int)
    return {
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "accuracy": float((pred == gold).mean()) if gold.size else 0.0,
    }


def evidence_metrics(pred_start: np.ndarray, pred_end: np.ndarray,
                     gold_start: np.ndarray, gold_end: np.ndarray) -> dict[str, float]:
    """Token-level F1 and exact match on gold-evidence slots; accuracy on null slots."""
    ps, pe, gs, ge = (np.asarray(a).reshape(-1) for a in (pred_start, pred_end, gold_start, gold_end))
    has_gold = gs > 0
    f1s: list[float] = []
    exact: list[float] = []
    for p0, p1, g0, g1 in zip(ps[has_gold], pe[has_gold], gs[has_gold], ge[has_gold], strict=True):
        overlap = max(0, min(p1, g1) - max(p0, g0) + 1) if p0 > 0 else 0
        if overlap == 0:
            f1s.append(0.0)
        else:
            precision = overlap / (p1 - p0 + 1)
            recall = overlap / (g1 - g0 + 1)
            f1s.append(2 * precision * recall / (precision + recall))
        exact.append(float(p0 == g0 and p1 == g1))
    null_slots = ~has_gold
    return {
        "evidence_f1": float(np.mean(f1s)) if f1s else 0.0,
        "evidence_exact_match": float(np.mean(exact)) if exact else 0.0,
        "null_accuracy": float((ps[null_slots] == 0).mean()) if null_slots.any() else 0.0,
    }


def split_metrics(out: SplitOutputs, *, threshold: float = 0.5, prefix: str = "val_") -> dict[str, float]:
    """All metrics of a split with a prefix (``val_macro_f1``...), plus the joint score."""
    crit = criteria_metrics(out.probs, out.labels, threshold)
    evid = evidence_metrics(out.pred_start, out.pred_end, out.gold_start, out.gold_end)
    merged = {**crit, **evid, "joint_score": (crit["macro_f1"] + evid["evidence_f1"]) / 2}
    return {f"{prefix}{k}": v for k, v in merged.items()}


# --- full reports (study evaluation) ----------------------------------------------------
def criteria_report(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float,
                    names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Criteria-matching metrics of per-post probabilities ``[N, C]`` at ``thresholds``.

    scikit-learn computes every number: label-wise ``accuracy`` (as in validation),
    ``subset_accuracy`` (all criteria of a post right), macro/micro F1, precision and
    recall, per-criterion F1/precision/recall/PR AUC (average precision; None for a
    criterion without positives) and 2x2 confusion matrices ``[[tn, fp], [fn, tp]]``.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    gold = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
    pred = (p >= thr).astype(int)
    out: dict[str, Any] = {
        "num_posts": int(gold.shape[0]),
        "accuracy": float((pred == gold).mean()) if gold.size else 0.0,
        "subset_accuracy": float(accuracy_score(gold, pred)) if gold.size else 0.0,
    }
    for avg in ("macro", "micro"):
        prec, rec, f1, _ = precision_recall_fscore_support(gold, pred, average=avg, zero_division=0)
        out[f"{avg}_f1"], out[f"{avg}_precision"], out[f"{avg}_recall"] = float(f1), float(prec), float(rec)
    prec_c, rec_c, f1_c, support = precision_recall_fscore_support(gold, pred, average=None,
                                                                     zero_division=0)
    cms = multilabel_confusion_matrix(gold, pred)
    per: dict[str, Any] = {}
    aps: list[float] = []
    for j, name in enumerate(names):
        ap = float(average_precision_score(gold[:, j], p[:, j])) if gold[:, j].any() else None
        if ap is not None:
            aps.append(ap)
        per[name] = {"f1": float(f1_c[j]), "precision": float(prec_c[j]), "recall": float(rec_c[j]),
                     "pr_auc": ap, "support": int(support[j]), "threshold": float(thr[j]),
                     "confusion_matrix": cms[j].astype(int).tolist()}
    out["pr_auc_macro"] = float(np.mean(aps)) if aps else None
    out["per_criterion"] = per
    return out


def _span_f1(p0: int, p1: int, g0: int, g1: int, *, inclusive: bool) -> float:
    """F1 of two [start, end] spans (``inclusive`` end: token spans; else char spans)."""
    extra = 1 if inclusive else 0
    overlap = min(p1, g1) - max(p0, g0) + extra
    if overlap <= 0:
        return 0.0
    precision = overlap / (p1 - p0 + extra)
    recall = overlap / (g1 - g0 + extra)
    return 2 * precision * recall / (precision + recall)


def evidence_report(pred_start: npt.ArrayLike, pred_end: npt.ArrayLike, gold_start: npt.ArrayLike,
                    gold_end: npt.ArrayLike, pred_chars: list[tuple[int, int] | None] | None = None,
                    gold_chars: list[list[tuple[int, int]]] | None = None) -> dict[str, Any]:
    """Evidence-binding metrics over slots (token spans; (0, 0) is the null span).

    On slots with gold evidence: ``exact_match`` and ``token_f1`` (inclusive token
    spans), and, given char spans (``pred_chars`` from ``decode_span``, ``gold_chars``
    the annotated char spans of the slot's criterion), ``char_f1`` (best over the gold
    spans; a null prediction scores 0). ``null_accuracy``: share of gold-null slots
    predicted null. ``slot_f1``: SQuAD 2.0-style F1 over every slot (null vs null = 1).
    """
    ps, pe, gs, ge = (np.asarray(a).reshape(-1).astype(int) for a in (pred_start, pred_end, gold_start, gold_end))
    has_gold = gs > 0
    token_f1 = np.array([_span_f1(a, b, c, d, inclusive=True) if a > 0 else 0.0
                         for a, b, c, d in zip(ps, pe, gs, ge, strict=True)])
    exact = (ps == gs) & (pe == ge)
    out: dict[str, Any] = {
        "num_slots": int(gs.size), "num_gold_spans": int(has_gold.sum()),
        "exact_match": float(exact[has_gold].mean()) if has_gold.any() else 0.0,
        "token_f1": float(token_f1[has_gold].mean()) if has_gold.any() else 0.0,
        "null_accuracy": float((ps[~has_gold] == 0).mean()) if (~has_gold).any() else 0.0,
        "slot_f1": float(np.where(has_gold, token_f1, ps == 0).mean()) if gs.size else 0.0,
    }
    if pred_chars is not None and gold_chars is not None:
        scores = [max((_span_f1(pc[0], pc[1], g0, g1, inclusive=False) for g0, g1 in gc), default=0.0)
                  if pc is not None else 0.0
                  for pc, gc, g in zip(pred_chars, gold_chars, has_gold, strict=True) if g]
        out["char_f1"] = float(np.mean(scores)) if scores else 0.0
    return out
