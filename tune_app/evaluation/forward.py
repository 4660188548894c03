"""One pass of a model over a split: the evaluation loop that validation during training
(``trainable.evaluate``) and the study's test evaluation (``evaluation.predict``) share.

Criteria probabilities of a post's windows or pairs are aggregated per post by max; each
evidence slot gets its best non-null span and that span's margin over the null span
(predicting the span when the margin is above 0 is the uncalibrated decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tune_app.data.loader import SplitData

__all__ = ["SplitPass", "run_split"]


@dataclass
class SplitPass:
    """What one pass gathered, on CPU: per post ``probs``/``labels`` [N, C]; per evidence
    slot (model input x criterion, in the split's order) the best non-null span, its margin
    and the gold span; the mean batch loss when a loss was asked for."""

    probs: np.ndarray
    labels: np.ndarray
    span_start: np.ndarray
    span_end: np.ndarray
    span_margin: np.ndarray
    gold_start: np.ndarray
    gold_end: np.ndarray
    loss: float | None = None

    def decided_spans(self, null_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (start, end) per slot: the best span when its margin is above
        ``null_threshold``, else the null span (0, 0)."""
        from tune_app.evaluation.metrics import apply_null_threshold

        return apply_null_threshold(self.span_start, self.span_end, self.span_margin, null_threshold)


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


@torch.no_grad()
def run_split(model: torch.nn.Module, split: SplitData, *, width: int, device: torch.device,
              max_span_tokens: int, loss_kwargs: dict[str, Any] | None = None) -> SplitPass:
    """Run ``model`` (eval mode) over ``split.loader`` in order; ``width`` labels per post;
    ``loss_kwargs`` (``joint_loss``'s) adds the mean loss."""
    from tune_app.evaluation.metrics import span_scores
    from tune_app.models.losses import joint_loss

    model.eval()
    probs = np.zeros((split.num_posts, width), dtype=np.float64)
    labels = np.zeros((split.num_posts, width), dtype=np.float64)
    starts, ends, margins, gold_s, gold_e = [], [], [], [], []
    total, batches = 0.0, 0
    for batch in split.loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        if loss_kwargs is not None:
            loss, _ = joint_loss(out, batch, **loss_kwargs)
            total += float(loss)
            batches += 1
        p = torch.sigmoid(out.criteria_logits.float()).cpu().numpy()
        y = batch["criteria_labels"].cpu().numpy()
        posts = batch["post_index"].cpu().numpy()
        cols = batch["criterion_ids"].cpu().numpy()
        for row in range(p.shape[0]):
            for slot in range(p.shape[1]):
                i, j = posts[row], cols[row, slot]
                probs[i, j] = max(probs[i, j], p[row, slot])
                labels[i, j] = max(labels[i, j], y[row, slot])
        s, e, m, _ = span_scores(out.start_logits.float(), out.end_logits.float(), max_span_tokens)
        starts.append(s.cpu().numpy().reshape(-1))
        ends.append(e.cpu().numpy().reshape(-1))
        margins.append(m.double().cpu().numpy().reshape(-1))
        gold_s.append(batch["evidence_start"].cpu().numpy().reshape(-1))
        gold_e.append(batch["evidence_end"].cpu().numpy().reshape(-1))
    return SplitPass(probs=probs, labels=labels, span_start=_cat(starts, np.int64), span_end=_cat(ends, np.int64),
                     span_margin=_cat(margins, np.float64), gold_start=_cat(gold_s, np.int64),
                     gold_end=_cat(gold_e, np.int64), loss=total / max(batches, 1) if loss_kwargs is not None else None)
