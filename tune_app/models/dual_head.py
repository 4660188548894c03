"""The dual-head model: a shared encoder, a criteria (multi-label) head and an evidence
(span per criterion) head, optionally coupled so the evidence head sees the criteria
representation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from tune_app.models.catalog import COUPLING_METHODS, COUPLING_POOLINGS, COUPLINGS
from tune_app.models.encoders import LoadedEncoder
from tune_app.models.heads import (
    CRITERIA_HEADS,
    EVIDENCE_HEADS,
    POOLINGS,
    CriteriaHead,
    EvidenceHead,
    Pooling,
)

#: Coupling modes, combination methods and the pooling applied before combination.


@dataclass
class DualHeadOutput:
    """Model outputs: ``criteria_logits [B,C]``, ``start_logits``/``end_logits [B,C,T]``.

    ``evidence_loss_fn`` is set when the evidence head has its own objective (``bio_crf``,
    ``sentence_reranker``); :func:`tune_app.models.losses.joint_loss` then calls it with
    the batch instead of start/end cross-entropy.
    """

    criteria_logits: Tensor
    start_logits: Tensor
    end_logits: Tensor
    evidence_aux: dict[str, Tensor] = field(default_factory=dict)
    evidence_loss_fn: Callable[[Mapping[str, Tensor]], Tensor] | None = None


class Coupling(nn.Module):
    """Feeds the criteria representation to the evidence head.

    The criteria representation is ``r = pool(sequence) + W·sigmoid(criteria_logits)``
    (``pool`` in mean/max/attention), broadcast over tokens and combined with each token
    state ``h_t``: ``concat`` -> ``Linear([h_t; r])``, ``add`` -> ``h_t + r``, ``mean`` ->
    ``(h_t + r) / 2``, ``weighted_sum`` -> ``a·h_t + b·r`` (learned scalars, init 1),
    ``weighted_mean`` -> ``softmax([a, b])`` weighted average.
    """

    def __init__(self, hidden_size: int, num_outputs: int, *, method: str, pooling: str) -> None:
        super().__init__()
        if method not in COUPLING_METHODS:
            raise ValueError(f"unknown coupling_method '{method}'; allowed: {', '.join(COUPLING_METHODS)}")
        if pooling not in COUPLING_POOLINGS:
            raise ValueError(f"unknown coupling_pooling '{pooling}'; allowed: {', '.join(COUPLING_POOLINGS)}")
        self.method = method
        self.pool = POOLINGS[pooling](hidden_size)
        self.label_proj = nn.Linear(num_outputs, hidden_size)
        self.concat_proj = nn.Linear(2 * hidden_size, hidden_size) if method == "concat" else None
        self.weights = (nn.Parameter(torch.ones(2) if method == "weighted_sum" else torch.zeros(2))
                        if method in ("weighted_sum", "weighted_mean") else None)

    def forward(self, sequence: Tensor, attention_mask: Tensor, criteria_logits: Tensor) -> Tensor:
        rep = self.pool(sequence, attention_mask)
        rep = rep + self.label_proj(torch.sigmoid(criteria_logits).to(rep.dtype))
        rep = rep.unsqueeze(1).expand_as(sequence)
        if self.method == "concat":
            assert self.concat_proj is not None
            return self.concat_proj(torch.cat([sequence, rep], dim=-1))
        if self.method == "add":
            return sequence + rep
        if self.method == "mean":
            return (sequence + rep) / 2
        assert self.weights is not None
        w = self.weights if self.method == "weighted_sum" else torch.softmax(self.weights, dim=0)
        w = w.to(sequence.dtype)
        return w[0] * sequence + w[1] * rep


class DualHeadModel(nn.Module):
    """Shared encoder + pooling + criteria head + evidence head (+ optional coupling)."""

    def __init__(self, encoder: PreTrainedModel, pooling: Pooling, criteria_head: CriteriaHead,
                 evidence_head: EvidenceHead, *, coupling: Coupling | None = None,
                 build_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.criteria_head = criteria_head
        self.evidence_head = evidence_head
        self.coupling = coupling
        #: The build settings (names and sizes), used by :func:`architecture_signature`.
        self.build_config: dict[str, Any] = dict(build_config or {})

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None,
                sentence_spans: Tensor | None = None) -> DualHeadOutput:
        """Run encoder and both heads. ``sentence_spans [B,S,2]`` (token start/end inclusive,
        -1 rows for padding) is only read by the ``sentence_reranker`` evidence head."""
        need_states = self.pooling.needs_hidden_states
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                                  "return_dict": True}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if need_states:
            kwargs["output_hidden_states"] = True
        enc = self.encoder(**kwargs)
        sequence: Tensor = enc.last_hidden_state
        pooled = self.pooling(sequence, attention_mask,
                              enc.hidden_states if need_states else None)
        criteria_logits = self.criteria_head(pooled)
        ev_input = (sequence if self.coupling is None
                    else self.coupling(sequence, attention_mask, criteria_logits))
        start, end, aux = self.evidence_head.compute(ev_input, attention_mask, input_ids=input_ids,
                                                     sentence_spans=sentence_spans)
        loss_fn: Callable[[Mapping[str, Tensor]], Tensor] | None = None
        if self.evidence_head.has_custom_loss:
            loss_fn = partial(self.evidence_head.loss, aux)
        return DualHeadOutput(criteria_logits, start, end, aux, loss_fn)


def _pick(kind: str, name: str, allowed: Mapping[str, Any] | tuple[str, ...]) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {kind} '{name}'; allowed: {', '.join(allowed)}")


def build_model(encoder: LoadedEncoder, *, num_outputs: int, criteria_head: str = "linear",
                evidence_head: str = "start_end_linear", pooling: str = "cls",
                head_hidden: int = 256, dropout: float = 0.1, coupling: str = "independent",
                coupling_method: str = "concat", coupling_pooling: str = "mean",
                evidence_options: Mapping[str, Any] | None = None,
                seed: int | None = None) -> DualHeadModel:
    """Assemble a :class:`DualHeadModel` on ``encoder`` with ``num_outputs`` criteria
    (one evidence slot each). Names come from the registries in ``heads.py``; unknown
    names raise ``ValueError`` listing the allowed ones. ``evidence_options`` are extra
    keyword arguments of the evidence head (``bio_crf``: ``loss_reduction``). With
    ``seed`` the head weights are initialised from it (on a forked RNG); otherwise from
    the global RNG.
    """
    _pick("criteria_head", criteria_head, CRITERIA_HEADS)
    _pick("evidence_head", evidence_head, EVIDENCE_HEADS)
    _pick("pooling", pooling, POOLINGS)
    _pick("coupling", coupling, COUPLINGS)
    if coupling == "coupled":
        _pick("coupling_method", coupling_method, COUPLING_METHODS)
        _pick("coupling_pooling", coupling_pooling, COUPLING_POOLINGS)
    h = encoder.hidden_size
    ev_cls = EVIDENCE_HEADS[evidence_head]

    def make() -> DualHeadModel:
        pool = POOLINGS[pooling](h)
        crit = CRITERIA_HEADS[criteria_head](h, num_outputs, hidden=head_hidden, dropout=dropout)
        ev = ev_cls(h, num_outputs, hidden=head_hidden, dropout=dropout,
                    **ev_cls.tokenizer_kwargs(encoder.tokenizer), **(evidence_options or {}))
        coup = (Coupling(h, num_outputs, method=coupling_method, pooling=coupling_pooling)
                if coupling == "coupled" else None)
        config = {
            "encoder_name": encoder.name, "encoder_signature": encoder.signature,
            "encoder_revision": encoder.resolved_revision, "hidden_size": h,
            "num_outputs": num_outputs, "criteria_head": criteria_head,
            "evidence_head": evidence_head, "pooling": pooling, "head_hidden": head_hidden,
            "coupling": coupling,
            "coupling_method": coupling_method if coupling == "coupled" else None,
            "coupling_pooling": coupling_pooling if coupling == "coupled" else None,
        }
        return DualHeadModel(encoder.model, pool, crit, ev, coupling=coup, build_config=config)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def architecture_signature(model: DualHeadModel) -> dict[str, Any]:
    """Checkpoint-compatibility metadata: encoder signature, head names and sizes, and a
    hash of every parameter/buffer name and shape (equal hashes -> loadable state dict)."""
    shapes = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    sig = {k: v for k, v in model.build_config.items() if k != "encoder_revision"}
    sig["state_dict_hash"] = digest
    return sig
