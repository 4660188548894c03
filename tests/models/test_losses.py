"""Criteria losses, evidence cross-entropy and joint_loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tune_app.models.dual_head import DualHeadOutput
from tune_app.models.losses import (
    CRITERIA_LOSSES,
    evidence_ce,
    joint_loss,
    pos_weight_from_labels,
)

LOGITS = [[0.0, 2.0], [-1.0, 3.0]]
LABELS = [[1.0, 0.0], [0.0, 1.0]]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, y: float, w: float = 1.0) -> float:
    return -(w * y * math.log(_sig(x)) + (1 - y) * math.log(1 - _sig(x)))


def _focal(x: float, y: float, g: float) -> float:
    b = _bce(x, y)
    return (1 - math.exp(-b)) ** g * b


def _mean(f: object) -> float:
    vals = [f(x, y) for xr, yr in zip(LOGITS, LABELS, strict=True)  # type: ignore[operator]
            for x, y in zip(xr, yr, strict=True)]
    return sum(vals) / len(vals)


def _out(criteria: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> DualHeadOutput:
    b, c = criteria.shape
    start = torch.zeros(b, c, 3) if start is None else start
    end = torch.zeros(b, c, 3) if end is None else end
    return DualHeadOutput(criteria, start, end)


def _batch(labels: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> dict[str, Tensor]:
    b, c = labels.shape
    zeros = torch.zeros(b, c, dtype=torch.long)
    return {"criteria_labels": labels, "evidence_start": zeros if start is None else start,
            "evidence_end": zeros if end is None else end}


def _call(name: str, logits: Tensor, labels: Tensor, **kw: object) -> Tensor:
    opts: dict[str, object] = {"pos_weight": None, "focal_gamma": 2.0, "hybrid_alpha": 0.5, **kw}
    return CRITERIA_LOSSES[name](logits, labels, **opts)  # type: ignore[arg-type]


X, Y = torch.tensor(LOGITS), torch.tensor(LABELS)


def test_registry() -> None:
    assert set(CRITERIA_LOSSES) == {"bce", "weighted_bce", "focal", "adaptive_focal", "hybrid"}


def test_bce_hand() -> None:
    assert _call("bce", X, Y).item() == pytest.approx(_mean(_bce), rel=1e-6)
    torch.testing.assert_close(_call("bce", X, Y), F.binary_cross_entropy_with_logits(X, Y))


def test_weighted_bce_hand() -> None:
    pw = torch.tensor([3.0, 0.5])
    want = sum(
        _bce(x, y, w) for row, yr in zip(LOGITS, LABELS, strict=True)
        for x, y, w in zip(row, yr, [3.0, 0.5], strict=True)) / 4
    assert _call("weighted_bce", X, Y, pos_weight=pw).item() == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(_call("weighted_bce", X, Y, pos_weight=pw),
                               F.binary_cross_entropy_with_logits(X, Y, pos_weight=pw))
    with pytest.raises(ValueError, match="pos_weight_from_labels"):
        _call("weighted_bce", X, Y)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5, 5.0])
def test_focal_hand(gamma: float) -> None:
    got = _call("focal", X, Y, focal_gamma=gamma).item()
    assert got == pytest.approx(_mean(lambda x, y: _focal(x, y, gamma)), rel=1e-5)


def test_adaptive_focal_hand() -> None:
    def ref(x: float, y: float) -> float:
        p_t = math.exp(-_bce(x, y))
        return _focal(x, y, 2.0 + 2.0 if p_t < 0.2 else 2.0)

    assert _call("adaptive_focal", X, Y, focal_gamma=2.0).item() == pytest.approx(_mean(ref), rel=1e-5)
    # Some element is hard (p_t < 0.2) so it differs from plain focal.
    assert _call("adaptive_focal", X, Y).item() != pytest.approx(_call("focal", X, Y).item())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_hybrid_hand(alpha: float) -> None:
    want = alpha * _mean(_bce) + (1 - alpha) * _mean(lambda x, y: _focal(x, y, 2.0))
    assert _call("hybrid", X, Y, hybrid_alpha=alpha).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError):
        _call("hybrid", X, Y, hybrid_alpha=1.5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2])
def test_label_smoothing_hand(eps: float) -> None:
    def ref(x: float, y: float) -> float:
        return _bce(x, y * (1 - eps) + eps / 2)

    loss, parts = joint_loss(_out(X), _batch(Y), label_smoothing=eps)
    assert parts["criteria_loss"] == pytest.approx(_mean(ref), rel=1e-6)


@pytest.mark.parametrize("name", sorted(CRITERIA_LOSSES))
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_stable_at_extreme_logits(name: str, eps: float) -> None:
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # two right, two confidently wrong
    out = _out(logits)
    loss, parts = joint_loss(out, _batch(labels), criteria_loss=name, label_smoothing=eps,
                             pos_weight=torch.full((4,), 2.0), focal_gamma=5.0)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    if eps == 0.0 and name in ("bce", "weighted_bce"):
        # right ones ~0; wrong negative 100; wrong positive 2 * 100 (pos_weight 2).
        assert parts["criteria_loss"] == pytest.approx((100.0 + 200.0) / 4, rel=1e-4)


def test_evidence_ce_hand() -> None:
    start = torch.tensor([[[1.0, 2.0, 3.0]]])
    end = torch.tensor([[[0.0, 0.0, 5.0]]])
    s_t, e_t = torch.tensor([[2]]), torch.tensor([[0]])
    def lce(v: list[float], t: int) -> float:
        return -(v[t] - math.log(sum(math.exp(a) for a in v)))
    want = 0.5 * (lce([1, 2, 3], 2) + lce([0, 0, 5], 0))
    assert evidence_ce(start, end, s_t, e_t).item() == pytest.approx(want, rel=1e-6)


def test_evidence_ce_ignore_and_masked_logits() -> None:
    big = torch.finfo(torch.float32).min / 4
    start = torch.tensor([[[0.0, 1.0, big], [0.0, 1.0, big]]], requires_grad=True)
    s_t = torch.tensor([[1, -100]])
    loss = evidence_ce(start, start, s_t, s_t)
    assert loss.item() == pytest.approx(-(1 - math.log(1 + math.e)), rel=1e-6)
    loss.backward()
    assert start.grad is not None and torch.isfinite(start.grad).all()
    all_ignored = evidence_ce(start, start, torch.full((1, 2), -100), torch.full((1, 2), -100))
    assert all_ignored.item() == 0.0


def test_joint_loss_combination_and_extremes() -> None:
    logits = torch.tensor([[3.0, -2.0]])
    start = torch.tensor([[[100.0, -100.0, 0.0], [0.0, 100.0, -100.0]]], requires_grad=True)
    batch = _batch(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 2]]), torch.tensor([[0, 2]]))
    total, parts = joint_loss(_out(logits, start, start), batch, evidence_weight=0.25)
    assert total.item() == pytest.approx(parts["criteria_loss"] + 0.25 * parts["evidence_loss"], rel=1e-6)
    assert parts["evidence_loss"] == pytest.approx(0.5 * (0 + 200.0), rel=1e-3)
    total.backward()
    assert start.grad is not None and torch.isfinite(start.grad).all()


def test_joint_loss_uses_head_loss_fn() -> None:
    out = _out(X)
    out.evidence_loss_fn = lambda batch: torch.tensor(7.0)
    _, parts = joint_loss(out, _batch(Y))
    assert parts["evidence_loss"] == 7.0


def test_joint_loss_errors() -> None:
    with pytest.raises(ValueError, match="allowed: bce"):
        joint_loss(_out(X), _batch(Y), criteria_loss="mse")
    with pytest.raises(ValueError, match="label_smoothing"):
        joint_loss(_out(X), _batch(Y), label_smoothing=1.0)


def test_pos_weight_from_labels() -> None:
    labels = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(pos_weight_from_labels(labels), torch.tensor([1.0, 3.0, 4.0]))
    assert pos_weight_from_labels(labels, max_weight=2.0).max().item() == 2.0


def test_evidence_ce_weighs_span_and_null_slots_half_each() -> None:
    """One span slot among seven null slots: the loss is the mean of the two groups' means,
    not a plain mean over slots (which let the null majority win: the span heads then
    predicted null on every slot of the embedded set, evidence F1 0.0)."""
    torch.manual_seed(0)
    start, end = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    gold_s = torch.tensor([[3, 0, 0, 0], [0, 0, 0, 0]])
    gold_e = torch.tensor([[4, 0, 0, 0], [0, 0, 0, 0]])
    span_only = evidence_ce(start, end, gold_s.masked_fill(gold_s == 0, -100), gold_e.masked_fill(gold_e == 0, -100))
    null_only = evidence_ce(start, end, gold_s.masked_fill(gold_s > 0, -100), gold_e.masked_fill(gold_e > 0, -100))
    mixed = evidence_ce(start, end, gold_s, gold_e)
    torch.testing.assert_close(mixed, 0.5 * span_only + 0.5 * null_only)
    plain = evidence_ce(start, end, gold_s, gold_e, balanced=False)
    torch.testing.assert_close(plain, span_only / 8 + null_only * 7 / 8)


def test_evidence_loss_does_not_push_towards_null_when_the_head_cannot_tell() -> None:
    """A head that already scores the gold token of each slot as high as [CLS] but cannot yet
    tell present from absent symptoms (same scores on every slot) gets no gradient towards
    null; with the plain mean 7 null slots in 8 pushed [CLS] above every span."""
    null = torch.zeros((), requires_grad=True)
    other = torch.full((2, 4, 4), -10.0)
    start = torch.cat([null.expand(2, 4, 1), torch.zeros(2, 4, 1), other], dim=-1)
    gold = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    (grad,) = torch.autograd.grad(evidence_ce(start, start, gold, gold), null)
    assert abs(float(grad)) < 1e-3
    (plain,) = torch.autograd.grad(evidence_ce(start, start, gold, gold, balanced=False), null)
    assert float(plain) < -0.1  # gradient descent raises the null score
