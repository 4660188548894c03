"""Pooling, criteria and evidence heads, each in a registry filled by a decorator.

Interfaces (B batch, T tokens, H hidden size, C criteria/slots):

* pooling ``forward(sequence [B,T,H], attention_mask [B,T], hidden_states) -> [B,H]``;
  ``needs_hidden_states`` says whether it reads the encoder's per-layer states.
* criteria head ``__init__(hidden_size, num_outputs, *, hidden=256, dropout=0.1)``,
  ``forward(pooled [B,H]) -> logits [B,C]``.
* evidence head ``__init__(hidden_size, num_slots, *, hidden=256, dropout=0.1)``,
  ``forward(sequence [B,T,H], attention_mask [B,T]) -> (start_logits, end_logits)``
  each ``[B,C,T]``, padding positions set to :func:`mask_value`; position 0 ([CLS]) is
  the null span. ``compute`` also returns auxiliary tensors, and heads with their own
  objective (``has_custom_loss``) implement ``loss(aux, batch)``.

Add an implementation by subclassing and decorating it with ``@register_*("name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tune_app.models import catalog

__all__ = [
    "CRF_LOSS_REDUCTIONS",
    "CRITERIA_HEADS",
    "EVIDENCE_HEADS",
    "POOLINGS",
    "CriteriaHead",
    "EvidenceHead",
    "Pooling",
    "balanced_slot_mean",
    "mask_value",
    "masked_mean",
    "register_criteria_head",
    "register_evidence_head",
    "register_pooling",
]


def mask_value(dtype: torch.dtype) -> float:
    """A large negative logit for masked positions that cannot overflow when added to a few
    others (a quarter of the dtype's most negative finite value)."""
    return float(torch.finfo(dtype).min) / 4


def masked_mean(sequence: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over valid positions: ``[B,T,H]``, ``[B,T]`` -> ``[B,H]`` (zeros if none valid)."""
    mask = attention_mask.to(sequence.dtype).unsqueeze(-1)
    total = (sequence * mask).sum(dim=1)
    return total / mask.sum(dim=1).clamp_min(1.0)


def balanced_slot_mean(values: Tensor, weights: Tensor, has_span: Tensor) -> Tensor:
    """Class-balanced mean of per-slot evidence losses: the slots with a gold span and the
    null slots each weigh half, whatever their counts.

    ``values``: each slot's summed loss (0 for ignored slots), ``weights``: each slot's
    normaliser (1, or its number of tokens; 0 for ignored slots), ``has_span``: bool, the
    slot's gold evidence is a span (not null). Each group's mean is ``sum(values) /
    sum(weights)`` over its slots; the result is the average of the groups present in the
    batch (a batch of null slots only is their plain mean). 0 (with a graph) when every
    slot is ignored.

    Why: most (post, criterion) slots are null (about 7 in 8 on RedSM5-shaped data). With a
    plain mean the loss is dominated by null slots and the cheapest solution is a [CLS]
    (null) score above every span; the span heads then predicted null on every slot while
    their best span was already right, which is the bug this balance fixes.
    """
    values = values.float()
    weights = weights.to(values.dtype)
    span = has_span.to(values.dtype)
    total = values.new_zeros(())
    groups = values.new_zeros(())
    for member in (span, 1.0 - span):
        w = (weights * member).sum()
        present = (w > 0).to(values.dtype)
        total = total + present * (values * member).sum() / w.clamp_min(1e-12)
        groups = groups + present
    return total / groups.clamp_min(1.0)


def _check_sizes(hidden_size: int, num: int, hidden: int, dropout: float) -> None:
    if hidden_size < 1 or num < 1 or hidden < 1:
        raise ValueError(f"sizes must be positive (hidden_size={hidden_size}, outputs={num}, hidden={hidden})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


# --------------------------------------------------------------------------- pooling


class Pooling(nn.Module):
    """Reduces encoder output to one vector per example."""

    #: True when ``forward`` reads ``hidden_states`` (all layers' outputs).
    needs_hidden_states: bool = False

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        raise NotImplementedError


POOLINGS: dict[str, type[Pooling]] = {}
CRITERIA_HEADS: dict[str, type[CriteriaHead]] = {}
EVIDENCE_HEADS: dict[str, type[EvidenceHead]] = {}

_P = TypeVar("_P", bound=type[Pooling])
_C = TypeVar("_C", bound="type[CriteriaHead]")
_E = TypeVar("_E", bound="type[EvidenceHead]")


def _register(registry: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
    def deco(cls: Any) -> Any:
        if name in registry:
            raise ValueError(f"{kind} '{name}' is already registered")
        registry[name] = cls
        cls.registry_name = name
        return cls

    return deco


def register_pooling(name: str) -> Callable[[_P], _P]:
    """Class decorator adding a :class:`Pooling` to :data:`POOLINGS`."""
    return _register(POOLINGS, "pooling", name)


def register_criteria_head(name: str) -> Callable[[_C], _C]:
    """Class decorator adding a :class:`CriteriaHead` to :data:`CRITERIA_HEADS`."""
    return _register(CRITERIA_HEADS, "criteria head", name)


def register_evidence_head(name: str) -> Callable[[_E], _E]:
    """Class decorator adding an :class:`EvidenceHead` to :data:`EVIDENCE_HEADS`."""
    return _register(EVIDENCE_HEADS, "evidence head", name)


@register_pooling("cls")
class ClsPooling(Pooling):
    """The first token's ([CLS]) final hidden state."""

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        return sequence[:, 0]


@register_pooling("mean")
class MeanPooling(Pooling):
    """Mean of the final hidden states over non-padding tokens."""

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        return masked_mean(sequence, attention_mask)


@register_pooling("max")
class MaxPooling(Pooling):
    """Element-wise max of the final hidden states over non-padding tokens."""

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        fill = mask_value(sequence.dtype)
        masked = sequence.masked_fill(~attention_mask.bool().unsqueeze(-1), fill)
        return masked.max(dim=1).values


@register_pooling("attention")
class AttentionPooling(Pooling):
    """Learned attention: softmax over non-padding tokens of ``w·h_t``, weighted sum."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        scores = self.score(sequence).squeeze(-1)
        scores = scores.masked_fill(~attention_mask.bool(), mask_value(scores.dtype))
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)
        return (weights * sequence).sum(dim=1)


@register_pooling("last_2_layer_mix")
class LastTwoLayerMixPooling(Pooling):
    """Learned softmax-weighted mix of the last two layers, then mask-aware mean."""

    needs_hidden_states = True

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.layer_logits = nn.Parameter(torch.zeros(2))

    def forward(self, sequence: Tensor, attention_mask: Tensor,
                hidden_states: tuple[Tensor, ...] | None = None) -> Tensor:
        if hidden_states is None or len(hidden_states) < 2:
            raise ValueError("last_2_layer_mix needs the encoder's hidden_states (>= 2 layers)")
        w = torch.softmax(self.layer_logits, dim=0).to(sequence.dtype)
        mixed = w[0] * hidden_states[-2] + w[1] * hidden_states[-1]
        return masked_mean(mixed, attention_mask)


# --------------------------------------------------------------------------- criteria heads


class CriteriaHead(nn.Module):
    """Maps a pooled vector ``[B,H]`` to criteria logits ``[B,C]``."""

    registry_name: str = ""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        _check_sizes(hidden_size, num_outputs, hidden, dropout)
        self.hidden_size = hidden_size
        self.num_outputs = num_outputs

    def forward(self, pooled: Tensor) -> Tensor:
        raise NotImplementedError


@register_criteria_head("linear")
class LinearCriteriaHead(CriteriaHead):
    """Dropout then one linear layer (``hidden`` unused)."""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_outputs, hidden=hidden, dropout=dropout)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_outputs))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)


@register_criteria_head("mlp")
class MlpCriteriaHead(CriteriaHead):
    """Dropout, Linear(H, hidden), GELU, dropout, Linear(hidden, C)."""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_outputs, hidden=hidden, dropout=dropout)
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, hidden), nn.GELU(),
            nn.Dropout(dropout), nn.Linear(hidden, num_outputs),
        )

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)


@register_criteria_head("mlp_residual")
class MlpResidualCriteriaHead(CriteriaHead):
    """Pre-norm residual block ``x + MLP(LN(x))`` (H -> hidden -> H), then Linear(H, C)."""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_outputs, hidden=hidden, dropout=dropout)
        self.norm = nn.LayerNorm(hidden_size)
        self.block = nn.Sequential(
            nn.Linear(hidden_size, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden_size),
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled + self.dropout(self.block(self.norm(pooled)))
        return self.out(self.dropout(x))


@register_criteria_head("gated")
class GatedCriteriaHead(CriteriaHead):
    """Gated linear unit ``(W1 x) * sigmoid(W2 x)`` to ``hidden``, then Linear(hidden, C)."""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_outputs, hidden=hidden, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.value = nn.Linear(hidden_size, hidden)
        self.gate = nn.Linear(hidden_size, hidden)
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        x = self.dropout(pooled)
        h = self.value(x) * torch.sigmoid(self.gate(x))
        return self.out(self.dropout(h))


@register_criteria_head("multi_sample_dropout")
class MultiSampleDropoutCriteriaHead(CriteriaHead):
    """Linear(H, hidden) + GELU, then the mean of ``num_samples`` dropout draws through a
    shared Linear(hidden, C) (training); one pass at eval, where dropout is the identity."""

    def __init__(self, hidden_size: int, num_outputs: int, *, hidden: int = 256,
                 dropout: float = 0.1, num_samples: int = 5) -> None:
        super().__init__(hidden_size, num_outputs, hidden=hidden, dropout=dropout)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.proj = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU())
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        h = self.proj(pooled)
        if not self.training or self.num_samples == 1:
            return self.out(self.dropout(h))
        return torch.stack([self.out(self.dropout(h)) for _ in range(self.num_samples)]).mean(0)


# --------------------------------------------------------------------------- evidence heads


EvidenceAux = dict[str, Tensor]


class EvidenceHead(nn.Module):
    """Per-slot start/end logits over tokens; position 0 ([CLS]) is the null span."""

    registry_name: str = ""
    #: True when the head trains with its own ``loss(aux, batch)`` instead of start/end CE.
    has_custom_loss: bool = False

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        _check_sizes(hidden_size, num_slots, hidden, dropout)
        self.hidden_size = hidden_size
        self.num_slots = num_slots

    @classmethod
    def tokenizer_kwargs(cls, tokenizer: Any) -> dict[str, Any]:
        """Extra constructor kwargs taken from the encoder's tokenizer (default none)."""
        return {}

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        """``(start_logits [B,C,T], end_logits [B,C,T], aux)``; ``aux`` feeds ``loss``."""
        raise NotImplementedError

    def forward(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor]:
        start, end, _ = self.compute(sequence, attention_mask, input_ids=input_ids,
                                     sentence_spans=sentence_spans)
        return start, end

    def loss(self, aux: EvidenceAux, batch: Mapping[str, Tensor]) -> Tensor:
        """The head's own evidence loss (only when ``has_custom_loss``)."""
        raise NotImplementedError(f"{type(self).__name__} trains with start/end cross-entropy")


def mask_positions(logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Set padding positions of ``[B,C,T]`` logits to :func:`mask_value`."""
    pad = ~attention_mask.bool().unsqueeze(1)
    return logits.masked_fill(pad, mask_value(logits.dtype))


def _split_start_end(scores: Tensor, num_slots: int, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[B,T,2C]`` -> masked start/end ``[B,C,T]`` each."""
    b, t, _ = scores.shape
    scores = scores.view(b, t, num_slots, 2).permute(3, 0, 2, 1)
    return mask_positions(scores[0], attention_mask), mask_positions(scores[1], attention_mask)


@register_evidence_head("start_end_linear")
class StartEndLinearHead(EvidenceHead):
    """Dropout then Linear(H, 2C): a start and an end score per token and slot."""

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_slots, hidden=hidden, dropout=dropout)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 2 * num_slots))

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        start, end = _split_start_end(self.net(sequence), self.num_slots, attention_mask)
        return start, end, {}


@register_evidence_head("start_end_mlp")
class StartEndMlpHead(EvidenceHead):
    """Token MLP (Linear(H, hidden), GELU, dropout) then Linear(hidden, 2C)."""

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_slots, hidden=hidden, dropout=dropout)
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden_size, hidden), nn.GELU(),
            nn.Dropout(dropout), nn.Linear(hidden, 2 * num_slots),
        )

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        start, end = _split_start_end(self.net(sequence), self.num_slots, attention_mask)
        return start, end, {}


#: Finite low score for valid positions that a head does not propose (spans, sentences).
UNPROPOSED = -1e4


@register_evidence_head("biaffine")
class BiaffineHead(EvidenceHead):
    """Biaffine span scorer: ``s_c(i, j) = [h^s_i; 1]^T U_c [h^e_j; 1]`` for ``1 <= i <= j``
    plus the null span ``(0, 0)``. Start/end logits are the log-marginals of that span
    distribution (``logsumexp`` over the other end), so start/end cross-entropy trains the
    span scores. ``aux["span_scores"]`` is ``[B,C,T,T]`` (memory grows with T^2)."""

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__(hidden_size, num_slots, hidden=hidden, dropout=dropout)

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, hidden), nn.GELU(),
                                 nn.Dropout(dropout))

        self.start_mlp = mlp()
        self.end_mlp = mlp()
        self.bilinear = nn.Parameter(torch.randn(num_slots, hidden + 1, hidden + 1) * (hidden + 1) ** -0.5)

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        ones = sequence.new_ones(*sequence.shape[:2], 1)
        hs = torch.cat([self.start_mlp(sequence), ones], dim=-1)
        he = torch.cat([self.end_mlp(sequence), ones], dim=-1)
        scores = torch.einsum("bid,cde,bje->bcij", hs, self.bilinear.to(hs.dtype), he)
        t = sequence.shape[1]
        idx = torch.arange(t, device=sequence.device)
        pair_ok = (idx.view(-1, 1) <= idx.view(1, -1)) & (idx.view(-1, 1) >= 1)
        pair_ok[0, 0] = True
        valid = attention_mask.bool()
        ok = pair_ok.view(1, 1, t, t) & valid.view(-1, 1, t, 1) & valid.view(-1, 1, 1, t)
        scores = scores.masked_fill(~ok, mask_value(scores.dtype))
        start = mask_positions(torch.logsumexp(scores, dim=-1), attention_mask)
        end = mask_positions(torch.logsumexp(scores, dim=-2), attention_mask)
        return start, end, {"span_scores": scores}


# BIO tags of the CRF head.
TAG_O, TAG_B, TAG_I = 0, 1, 2

#: How the CRF head averages its negative log-likelihood: over the valid tokens of the
#: kept slots (``token_mean``: long posts weigh more) or over the kept slots (``slot_mean``:
#: every post-criterion pair weighs the same).
CRF_LOSS_REDUCTIONS = catalog.CRF_LOSS_REDUCTIONS


def viterbi_decode(emissions: Tensor, mask: Tensor, start_transitions: Tensor,
                   transitions: Tensor, end_transitions: Tensor) -> Tensor:
    """Batched Viterbi: best tag path ``[N,T]`` (tags after each sequence's end are 0).

    ``emissions [N,T,K]``, ``mask [N,T]`` (prefix masks, first step on),
    ``transitions[k, k']`` scores k -> k'. Vectorised over N (no per-item Python loop).
    """
    n, t, _ = emissions.shape
    m = mask.bool()
    score = start_transitions + emissions[:, 0]
    history: list[Tensor] = []
    for step in range(1, t):
        cand = score.unsqueeze(2) + transitions.unsqueeze(0)  # [N, prev, next]
        best, idx = cand.max(dim=1)
        nxt = best + emissions[:, step]
        on = m[:, step].unsqueeze(1)
        score = torch.where(on, nxt, score)
        history.append(torch.where(on, idx, torch.arange(idx.shape[1], device=idx.device).expand_as(idx)))
    score = score + end_transitions
    last = score.argmax(dim=1)
    path = [last]
    for idx in reversed(history):
        last = idx.gather(1, last.unsqueeze(1)).squeeze(1)
        path.append(last)
    tags = torch.stack(path[::-1], dim=1)
    return tags.masked_fill(~m, TAG_O)


def bio_to_span(tags: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """First BIO span of each row of ``tags [N,T]``, ignoring position 0 ([CLS]): start at
    the first B (or stray I), end at the last of the I's that follow. ``(0, 0)`` if none."""
    n, t = tags.shape
    pos = torch.arange(t, device=tags.device).expand(n, t)
    inside = (tags != TAG_O) & mask.bool() & (pos >= 1)
    has = inside.any(dim=1)
    start = torch.where(has, inside.int().argmax(dim=1), torch.zeros_like(has, dtype=torch.long))
    after = pos > start.unsqueeze(1)
    breaks = after & ~((tags == TAG_I) & mask.bool())
    first_break = torch.where(breaks.any(dim=1), breaks.int().argmax(dim=1),
                              torch.full_like(start, t))
    end = torch.where(has, first_break - 1, torch.zeros_like(start))
    return start.long(), end.long()


def span_to_bio(start: Tensor, end: Tensor, length: int) -> Tensor:
    """Gold BIO tags ``[..., T]`` for spans ``start``/``end`` (0 -> all O; B at start, I to end)."""
    pos = torch.arange(length, device=start.device)
    s, e = start.unsqueeze(-1), end.unsqueeze(-1)
    real = s >= 1
    tags = torch.full((*start.shape, length), TAG_O, dtype=torch.long, device=start.device)
    tags = torch.where(real & (pos == s), torch.full_like(tags, TAG_B), tags)
    return torch.where(real & (pos > s) & (pos <= e), torch.full_like(tags, TAG_I), tags)


@register_evidence_head("bio_crf")
class BioCrfHead(EvidenceHead):
    """Per-slot BIO tagging with a linear-chain CRF (``torchcrf.CRF``, transitions shared by
    the slots). Trains with the CRF negative log-likelihood (``loss``, averaged as
    ``loss_reduction`` says, see :data:`CRF_LOSS_REDUCTIONS`);
    ``start_logits``/``end_logits`` come from the Viterbi path converted to a span (0 at
    the decoded start/end, -1e4 at other valid positions; not differentiable). [CLS] is
    forced to O."""

    has_custom_loss = True

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1, loss_reduction: str = "token_mean") -> None:
        super().__init__(hidden_size, num_slots, hidden=hidden, dropout=dropout)
        from torchcrf import CRF

        if loss_reduction not in CRF_LOSS_REDUCTIONS:
            raise ValueError(f"unknown CRF loss_reduction {loss_reduction!r}; allowed: "
                             f"{', '.join(CRF_LOSS_REDUCTIONS)}")
        self.loss_reduction = loss_reduction

        self.emit = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, 3 * num_slots))
        self.crf = CRF(3, batch_first=True)

    def emissions(self, sequence: Tensor) -> Tensor:
        """Float32 BIO emission scores ``[B,C,T,3]`` ([CLS] can only be O)."""
        b, t, _ = sequence.shape
        em = self.emit(sequence).float().view(b, t, self.num_slots, 3).permute(0, 2, 1, 3)
        cls_block = torch.zeros(3, device=em.device, dtype=em.dtype)
        cls_block[TAG_B] = cls_block[TAG_I] = UNPROPOSED
        first = em[:, :, :1] + cls_block
        return torch.cat([first, em[:, :, 1:]], dim=2)

    def decode(self, emissions: Tensor, attention_mask: Tensor) -> Tensor:
        """Viterbi BIO tags ``[B,C,T]`` for emissions ``[B,C,T,3]``."""
        b, c, t, k = emissions.shape
        mask = attention_mask.bool().unsqueeze(1).expand(b, c, t).reshape(b * c, t)
        tags = viterbi_decode(emissions.reshape(b * c, t, k), mask, self.crf.start_transitions,
                              self.crf.transitions, self.crf.end_transitions)
        return tags.view(b, c, t)

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        em = self.emissions(sequence)
        b, c, t, _ = em.shape
        with torch.no_grad():
            tags = self.decode(em.detach(), attention_mask)
            mask = attention_mask.bool().unsqueeze(1).expand(b, c, t)
            s, e = bio_to_span(tags.reshape(b * c, t), mask.reshape(b * c, t))
            pos = torch.arange(t, device=em.device)
            base = torch.full((b, c, t), UNPROPOSED, dtype=sequence.dtype, device=em.device)
            start = base.masked_fill(pos == s.view(b, c, 1), 0.0)
            end = base.masked_fill(pos == e.view(b, c, 1), 0.0)
        aux = {"emissions": em, "attention_mask": attention_mask, "tags": tags}
        return mask_positions(start, attention_mask), mask_positions(end, attention_mask), aux

    def loss(self, aux: EvidenceAux, batch: Mapping[str, Tensor]) -> Tensor:
        """CRF negative log-likelihood of the gold BIO tags of the slots whose target is not
        ignored (``evidence_start == -100``), averaged over their tokens or over the slots,
        span and null slots weighing half each (:func:`balanced_slot_mean`)."""
        em = aux["emissions"]
        b, c, t, k = em.shape
        start = batch["evidence_start"].to(em.device).long()
        end = batch["evidence_end"].to(em.device).long()
        keep = (start != -100) & (end != -100)
        tags = span_to_bio(start.clamp_min(0), end.clamp_min(0), t)
        mask = aux["attention_mask"].bool().unsqueeze(1).expand(b, c, t)
        tags = tags.masked_fill(~mask, TAG_O)
        llh = self.crf(em.reshape(b * c, t, k), tags.reshape(b * c, t),
                       mask.reshape(b * c, t), reduction="none").view(b, c)
        weights = keep.float() if self.loss_reduction == "slot_mean" else mask.sum(-1).float() * keep
        return balanced_slot_mean(-llh * keep, weights, start > 0)


#: Tokens that end a sentence when the reranker derives sentences from input_ids.
SENTENCE_END_TOKENS: tuple[str, ...] = (".", "!", "?")


@register_evidence_head("sentence_reranker")
class SentenceRerankerHead(EvidenceHead):
    """Scores whole sentences per slot and picks one (or the null span).

    Sentences come from the optional batch key ``sentence_spans`` (``[B,S,2]`` long, token
    start/end inclusive, rows with start < 0 are padding; pass it to
    ``DualHeadModel.forward``) or, without it, from ``input_ids`` split after ``.``/``!``/``?``
    (runs of them count once; special tokens excluded). A sentence's score is a linear map
    of the mean of its projected token states; the null score comes from [CLS]. Start/end
    logits carry the sentence score at its first/last token (null at 0, -1e4 elsewhere).
    Trains with cross-entropy over {null, sentences}; the target is the sentence that
    overlaps the gold span most.
    """

    has_custom_loss = True
    boundary_ids: Tensor
    special_ids: Tensor

    def __init__(self, hidden_size: int, num_slots: int, *, hidden: int = 256,
                 dropout: float = 0.1, boundary_token_ids: Sequence[int] = (),
                 special_token_ids: Sequence[int] = ()) -> None:
        super().__init__(hidden_size, num_slots, hidden=hidden, dropout=dropout)
        self.register_buffer("boundary_ids", torch.tensor(sorted(set(boundary_token_ids)), dtype=torch.long),
                             persistent=False)
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_token_ids)), dtype=torch.long),
                             persistent=False)
        self.token_proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, hidden), nn.GELU())
        self.sentence_score = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_slots))
        self.null_score = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_slots))

    @classmethod
    def tokenizer_kwargs(cls, tokenizer: Any) -> dict[str, Any]:
        """Sentence-ending and special token ids of ``tokenizer``."""
        ids: set[int] = set()
        for tok in SENTENCE_END_TOKENS:
            enc = tokenizer(tok, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(int(enc[0]))
        return {"boundary_token_ids": sorted(ids),
                "special_token_ids": sorted(int(i) for i in tokenizer.all_special_ids)}

    def sentence_masks(self, attention_mask: Tensor, input_ids: Tensor | None,
                       sentence_spans: Tensor | None) -> Tensor:
        """Token membership ``[B,S,T]`` (bool) of each sentence."""
        b, t = attention_mask.shape
        pos = torch.arange(t, device=attention_mask.device)
        valid = attention_mask.bool()
        if sentence_spans is not None:
            s = sentence_spans[..., 0].unsqueeze(-1).to(pos.device)
            e = sentence_spans[..., 1].unsqueeze(-1).to(pos.device)
            return (s >= 0) & (pos >= s) & (pos <= e) & valid.unsqueeze(1)
        if input_ids is None:
            raise ValueError("sentence_reranker needs input_ids or sentence_spans")
        content = valid & (pos >= 1) & ~torch.isin(input_ids, self.special_ids)
        boundary = torch.isin(input_ids, self.boundary_ids) & content
        nxt = torch.cat([boundary[:, 1:], boundary.new_zeros(b, 1)], dim=1)
        brk = (boundary & ~nxt).long()
        seg = brk.cumsum(dim=1) - brk
        num = int(seg.masked_fill(~content, 0).max().item()) + 1 if bool(content.any()) else 1
        sid = torch.arange(num, device=pos.device).view(1, -1, 1)
        return content.unsqueeze(1) & (seg.unsqueeze(1) == sid)

    def compute(self, sequence: Tensor, attention_mask: Tensor, *,
                input_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> tuple[Tensor, Tensor, EvidenceAux]:
        b, t, _ = sequence.shape
        member = self.sentence_masks(attention_mask, input_ids, sentence_spans)  # [B,S,T]
        m = member.to(sequence.dtype)
        count = m.sum(-1, keepdim=True)
        sent = torch.einsum("bst,bth->bsh", m, self.token_proj(sequence)) / count.clamp_min(1.0)
        sent_scores = self.sentence_score(sent).permute(0, 2, 1)  # [B,C,S]
        has = member.any(-1)  # [B,S]
        sent_scores = sent_scores.masked_fill(~has.unsqueeze(1), mask_value(sent_scores.dtype))
        null = self.null_score(sequence[:, 0])  # [B,C]
        pos = torch.arange(t, device=sequence.device)
        first = torch.where(member, pos, t).min(-1).values.clamp_max(t - 1)  # [B,S]
        last = torch.where(member, pos, -1).max(-1).values.clamp_min(0)
        first = torch.where(has, first, 0)
        last = torch.where(has, last, 0)
        c = self.num_slots

        null = null.to(sent_scores.dtype)

        def place(index: Tensor) -> Tensor:
            base = sent_scores.new_full((b, c, t), UNPROPOSED)
            vals = sent_scores.masked_fill(~has.unsqueeze(1), UNPROPOSED)
            out = base.scatter(2, index.unsqueeze(1).expand(b, c, -1), vals)
            out = torch.cat([null.unsqueeze(-1), out[..., 1:]], dim=-1)
            return mask_positions(out, attention_mask)

        aux = {"sentence_scores": torch.cat([null.unsqueeze(-1), sent_scores], dim=-1),
               "sentence_start": first, "sentence_end": last, "sentence_valid": has}
        return place(first), place(last), aux

    def loss(self, aux: EvidenceAux, batch: Mapping[str, Tensor]) -> Tensor:
        """Cross-entropy over {null, sentences}, span and null slots weighing half each
        (:func:`balanced_slot_mean`); slots with target -100 or no overlapping sentence are
        ignored."""
        scores = aux["sentence_scores"].float()  # [B,C,S+1]
        gs = batch["evidence_start"].to(scores.device).long()
        ge = batch["evidence_end"].to(scores.device).long()
        first, last, has = aux["sentence_start"], aux["sentence_end"], aux["sentence_valid"]
        overlap = (torch.minimum(last.unsqueeze(1), ge.unsqueeze(-1))
                   - torch.maximum(first.unsqueeze(1), gs.unsqueeze(-1)) + 1).clamp_min(0)
        overlap = overlap * has.unsqueeze(1)  # [B,C,S]
        best = overlap.argmax(-1) + 1
        target = torch.where(gs == 0, torch.zeros_like(best), best)
        bad = (gs == -100) | (ge == -100) | ((gs > 0) & (overlap.max(-1).values == 0))
        target = target.masked_fill(bad, -100)
        per = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), target.reshape(-1),
                              ignore_index=-100, reduction="none")
        return balanced_slot_mean(per, (target != -100).reshape(-1), target.reshape(-1) > 0)


catalog.check_registry("criteria heads", CRITERIA_HEADS, catalog.CRITERIA_HEADS)
catalog.check_registry("evidence heads", EVIDENCE_HEADS, catalog.EVIDENCE_HEADS)
catalog.check_registry("poolings", POOLINGS, catalog.POOLINGS)
