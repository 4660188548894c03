"""Losses for the dual-head model: multi-label criteria losses (registry
:data:`CRITERIA_LOSSES`), start/end evidence cross-entropy, and :func:`joint_loss`.

All criteria losses are computed from logits in float32 with softplus forms, so they
stay finite (with finite gradients) at logits of +-100 and beyond.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from tune_app.models import catalog
from tune_app.models.dual_head import DualHeadOutput
from tune_app.models.heads import balanced_slot_mean

#: Evidence targets equal to this are ignored (0 is the null span, not ignored).
IGNORE_INDEX = -100
#: Focal gamma used by ``adaptive_focal`` for hard examples (p_t < ADAPTIVE_THRESHOLD) is gamma + this.
ADAPTIVE_GAMMA_BOOST = 2.0
ADAPTIVE_THRESHOLD = 0.2


class CriteriaLossFn(Protocol):
    """``(logits [B,C], targets [B,C] in [0,1], ...) -> scalar`` (mean over elements)."""

    def __call__(self, logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None,
                 focal_gamma: float, hybrid_alpha: float) -> Tensor: ...


CRITERIA_LOSSES: dict[str, CriteriaLossFn] = {}


def register_criteria_loss(name: str) -> Callable[[CriteriaLossFn], CriteriaLossFn]:
    """Decorator adding a criteria loss to :data:`CRITERIA_LOSSES`."""

    def deco(fn: CriteriaLossFn) -> CriteriaLossFn:
        if name in CRITERIA_LOSSES:
            raise ValueError(f"criteria loss '{name}' is already registered")
        CRITERIA_LOSSES[name] = fn
        return fn

    return deco


def smooth_labels(targets: Tensor, label_smoothing: float) -> Tensor:
    """Binary label smoothing: ``y (1 - eps) + eps / 2``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def bce_elements(logits: Tensor, targets: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """Element-wise ``-[w y log s(x) + (1-y) log(1-s(x))]`` via softplus (same as
    ``F.binary_cross_entropy_with_logits(..., pos_weight=w, reduction='none')``)."""
    x = logits.float()
    y = targets.float()
    pos = F.softplus(-x)
    if pos_weight is not None:
        pos = pos * pos_weight.to(x.device, x.dtype)
    return y * pos + (1.0 - y) * F.softplus(x)


def focal_elements(logits: Tensor, targets: Tensor, gamma: Tensor | float,
                   pos_weight: Tensor | None = None) -> Tensor:
    """Binary focal loss ``(1 - p_t)^gamma * BCE`` with ``p_t = exp(-BCE)`` (soft-label safe)."""
    bce = bce_elements(logits, targets)
    one_minus_pt = (-torch.expm1(-bce)).clamp_min(1e-12)
    weighted = bce if pos_weight is None else bce_elements(logits, targets, pos_weight)
    return one_minus_pt.pow(gamma) * weighted


def _check_gamma(gamma: float) -> None:
    if gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {gamma}")


@register_criteria_loss("bce")
def bce_loss(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
             focal_gamma: float = 2.0, hybrid_alpha: float = 0.5) -> Tensor:
    """Mean binary cross-entropy with logits (``pos_weight`` applied when given)."""
    return bce_elements(logits, targets, pos_weight).mean()


@register_criteria_loss("weighted_bce")
def weighted_bce_loss(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
                      focal_gamma: float = 2.0, hybrid_alpha: float = 0.5) -> Tensor:
    """BCE with a per-class positive weight (required; see :func:`pos_weight_from_labels`)."""
    if pos_weight is None:
        raise ValueError("criteria_loss='weighted_bce' needs pos_weight: "
                         "pos_weight_from_labels(<train split labels>)")
    return bce_elements(logits, targets, pos_weight).mean()


@register_criteria_loss("focal")
def focal_loss(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
               focal_gamma: float = 2.0, hybrid_alpha: float = 0.5) -> Tensor:
    """Mean binary focal loss ``(1 - p_t)^gamma * BCE`` (Lin et al., 2017)."""
    _check_gamma(focal_gamma)
    return focal_elements(logits, targets, focal_gamma, pos_weight).mean()


@register_criteria_loss("adaptive_focal")
def adaptive_focal_loss(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
                        focal_gamma: float = 2.0, hybrid_alpha: float = 0.5) -> Tensor:
    """Sample-dependent focal loss (Mukhoti et al., 2020): gamma + ADAPTIVE_GAMMA_BOOST
    where the (detached) ``p_t`` < ADAPTIVE_THRESHOLD, ``focal_gamma`` elsewhere."""
    _check_gamma(focal_gamma)
    with torch.no_grad():
        p_t = torch.exp(-bce_elements(logits, targets))
        gamma = torch.where(p_t < ADAPTIVE_THRESHOLD,
                            torch.full_like(p_t, focal_gamma + ADAPTIVE_GAMMA_BOOST),
                            torch.full_like(p_t, focal_gamma))
    return focal_elements(logits, targets, gamma, pos_weight).mean()


@register_criteria_loss("hybrid")
def hybrid_loss(logits: Tensor, targets: Tensor, *, pos_weight: Tensor | None = None,
                focal_gamma: float = 2.0, hybrid_alpha: float = 0.5) -> Tensor:
    """``alpha * BCE + (1 - alpha) * focal`` with ``alpha = hybrid_alpha`` in [0, 1]."""
    if not 0.0 <= hybrid_alpha <= 1.0:
        raise ValueError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
    _check_gamma(focal_gamma)
    bce = bce_elements(logits, targets, pos_weight).mean()
    focal = focal_elements(logits, targets, focal_gamma, pos_weight).mean()
    return hybrid_alpha * bce + (1.0 - hybrid_alpha) * focal


def pos_weight_from_labels(labels: Tensor, *, max_weight: float = 100.0) -> Tensor:
    """Per-class ``#negatives / #positives`` from training labels ``[N,C]`` (a class with no
    positive counts as one), clipped to ``[1e-3, max_weight]``; float32 ``[C]``."""
    y = (labels.float() > 0.5).float()
    pos = y.sum(dim=0)
    neg = y.shape[0] - pos
    return (neg / pos.clamp_min(1.0)).clamp(1e-3, max_weight)


def evidence_ce(start_logits: Tensor, end_logits: Tensor, evidence_start: Tensor,
                evidence_end: Tensor, *, balanced: bool = True) -> Tensor:
    """Mean of start and end cross-entropy over tokens, per slot (target 0 = null span,
    IGNORE_INDEX = skip). Returns 0 (with a graph) when every target is ignored.

    ``balanced`` (default): slots with a gold span and null slots weigh half each
    (:func:`tune_app.models.heads.balanced_slot_mean`); without it every slot weighs the
    same, and the null slots' majority teaches the span heads to always predict null.
    """

    def ce(logits: Tensor, target: Tensor) -> Tensor:
        flat = logits.float().reshape(-1, logits.shape[-1])
        tgt = target.reshape(-1).long().to(flat.device)
        keep = tgt != IGNORE_INDEX
        per = F.cross_entropy(flat, tgt, ignore_index=IGNORE_INDEX, reduction="none")
        if balanced:
            return balanced_slot_mean(per, keep, tgt > 0)
        return per.sum() / keep.sum().clamp_min(1)

    return 0.5 * (ce(start_logits, evidence_start) + ce(end_logits, evidence_end))


def joint_loss(out: DualHeadOutput, batch: Mapping[str, Tensor], *, evidence_weight: float = 0.5,
               criteria_loss: str = "bce", pos_weight: Tensor | None = None,
               label_smoothing: float = 0.0, focal_gamma: float = 2.0,
               hybrid_alpha: float = 0.5) -> tuple[Tensor, dict[str, float]]:
    """``criteria + evidence_weight * evidence`` and the parts as floats.

    ``batch`` holds ``criteria_labels [B,C]`` (float 0/1), ``evidence_start`` and
    ``evidence_end`` ``[B,C]`` (long token index; 0 = null span, -100 = ignore).
    ``label_smoothing`` applies to the criteria targets. When the evidence head has its
    own objective (``out.evidence_loss_fn``: ``bio_crf``, ``sentence_reranker``) that
    replaces the start/end cross-entropy.
    """
    fn = CRITERIA_LOSSES.get(criteria_loss)
    if fn is None:
        raise ValueError(f"unknown criteria_loss '{criteria_loss}'; allowed: {', '.join(CRITERIA_LOSSES)}")
    if evidence_weight < 0:
        raise ValueError(f"evidence_weight must be >= 0, got {evidence_weight}")
    labels = batch["criteria_labels"].to(out.criteria_logits.device).float()
    targets = smooth_labels(labels, label_smoothing)
    crit = fn(out.criteria_logits, targets, pos_weight=pos_weight, focal_gamma=focal_gamma,
              hybrid_alpha=hybrid_alpha)
    if out.evidence_loss_fn is not None:
        evid = out.evidence_loss_fn(batch).float()
    else:
        evid = evidence_ce(out.start_logits, out.end_logits, batch["evidence_start"],
                           batch["evidence_end"])
    total = crit + evidence_weight * evid
    parts = {"criteria_loss": float(crit.detach()), "evidence_loss": float(evid.detach()),
             "loss": float(total.detach())}
    return total, parts


catalog.check_registry("criteria losses", CRITERIA_LOSSES, catalog.CRITERIA_LOSSES)
