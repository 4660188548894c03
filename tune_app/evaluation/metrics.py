"""Metrics for both heads, computed from logits gathered over a split.

Criteria matching: multi-label F1 (scikit-learn). Evidence binding: best-span
decoding per (example, criterion) slot, then token-level F1 against the gold span,
exact match, and null-span accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
