"""Heads, poolings, coupling and the dual-head model, over every registered option."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import Tensor

from tune_app.models.dual_head import (
    COUPLING_METHODS,
    COUPLING_POOLINGS,
    DualHeadModel,
    DualHeadOutput,
    architecture_signature,
    build_model,
)
from tune_app.models.encoders import LoadedEncoder, load_encoder
from tune_app.models.heads import (
    CRITERIA_HEADS,
    EVIDENCE_HEADS,
    POOLINGS,
    TAG_B,
    TAG_I,
    TAG_O,
    BioCrfHead,
    CriteriaHead,
    EvidenceHead,
    SentenceRerankerHead,
    bio_to_span,
    mask_value,
    register_criteria_head,
    span_to_bio,
    viterbi_decode,
)
from tune_app.models.losses import joint_loss

C = 9
TEXTS = ["I can't sleep. I feel worthless and tired!", "Nothing matters anymore.",
         "Fine today."]


@pytest.fixture(scope="module")
def enc() -> LoadedEncoder:
    return load_encoder("tiny", seed=0)


def _batch(enc: LoadedEncoder, texts: list[str] = TEXTS, pad_to: int | None = None) -> dict[str, Tensor]:
    kw: dict[str, object] = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
    b = enc.tokenizer(texts, return_tensors="pt", **kw)
    return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _targets(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    n = batch["input_ids"].shape[0]
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, C, generator=g) > 0.5).float()
    lengths = batch["attention_mask"].sum(1)
    start = torch.zeros(n, C, dtype=torch.long)
    end = torch.zeros(n, C, dtype=torch.long)
    for i in range(n):
        if lengths[i] > 3:
            start[i, 0], end[i, 0] = 1, int(lengths[i]) - 2  # one real span (excl. [SEP])
            start[i, 1], end[i, 1] = 2, 2
    return {"criteria_labels": labels, "evidence_start": start, "evidence_end": end}


def _run(model: DualHeadModel, batch: dict[str, Tensor]) -> DualHeadOutput:
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def _check_shapes(out: DualHeadOutput, batch: dict[str, Tensor]) -> None:
    b, t = batch["input_ids"].shape
    assert out.criteria_logits.shape == (b, C)
    assert out.start_logits.shape == (b, C, t) and out.end_logits.shape == (b, C, t)
    for x in (out.criteria_logits, out.start_logits, out.end_logits):
        assert torch.isfinite(x).all()
    pad = batch["attention_mask"] == 0
    for x in (out.start_logits, out.end_logits):
        assert (x.permute(0, 2, 1)[pad] == mask_value(x.dtype)).all()


def _check_padding_invariant(model: DualHeadModel, enc: LoadedEncoder) -> None:
    model.eval()
    tight = _batch(enc)
    loose = _batch(enc, pad_to=tight["input_ids"].shape[1] + 7)
    with torch.no_grad():
        a, b = _run(model, tight), _run(model, loose)
    t = tight["input_ids"].shape[1]
    torch.testing.assert_close(a.criteria_logits, b.criteria_logits, atol=1e-5, rtol=1e-4)
    valid = tight["attention_mask"].bool().unsqueeze(1).expand_as(a.start_logits)
    torch.testing.assert_close(a.start_logits[valid], b.start_logits[..., :t][valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.end_logits[valid], b.end_logits[..., :t][valid], atol=1e-4, rtol=1e-4)
    assert (b.start_logits[..., t:] == mask_value(b.start_logits.dtype)).all()


def _check_grad_reaches_encoder(model: DualHeadModel, batch: dict[str, Tensor]) -> None:
    model.train()
    model.zero_grad()
    out = _run(model, batch)
    loss, parts = joint_loss(out, {**batch, **_targets(batch)})
    assert torch.isfinite(loss) and set(parts) >= {"criteria_loss", "evidence_loss"}
    loss.backward()
    g_emb = model.encoder.embeddings.word_embeddings.weight.grad
    assert g_emb is not None and g_emb.abs().sum() > 0
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("encoder.") and p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def _check_deterministic(enc: LoadedEncoder, batch: dict[str, Tensor], **kw: object) -> None:
    m1 = build_model(enc, num_outputs=C, seed=11, **kw)  # type: ignore[arg-type]
    m2 = build_model(enc, num_outputs=C, seed=11, **kw)  # type: ignore[arg-type]
    m1.eval()
    m2.eval()
    with torch.no_grad():
        o1, o2 = _run(m1, batch), _run(m2, batch)
    assert torch.equal(o1.criteria_logits, o2.criteria_logits)
    assert torch.equal(o1.start_logits, o2.start_logits)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("criteria_head", sorted(CRITERIA_HEADS))
def test_criteria_head_x_pooling(enc: LoadedEncoder, criteria_head: str, pooling: str) -> None:
    model = build_model(enc, num_outputs=C, criteria_head=criteria_head, pooling=pooling,
                        head_hidden=32, seed=0)
    batch = _batch(enc)
    _check_shapes(_run(model, batch), batch)
    _check_grad_reaches_encoder(model, batch)
    _check_padding_invariant(model, enc)
    _check_deterministic(enc, batch, criteria_head=criteria_head, pooling=pooling, head_hidden=32)


@pytest.mark.parametrize("evidence_head", sorted(EVIDENCE_HEADS))
def test_evidence_head(enc: LoadedEncoder, evidence_head: str) -> None:
    model = build_model(enc, num_outputs=C, evidence_head=evidence_head, pooling="mean",
                        head_hidden=32, seed=0)
    batch = _batch(enc)
    model.eval()
    with torch.no_grad():
        _check_shapes(_run(model, batch), batch)
    _check_grad_reaches_encoder(model, batch)
    _check_padding_invariant(model, enc)
    _check_deterministic(enc, batch, evidence_head=evidence_head, head_hidden=32)


@pytest.mark.parametrize("coupling_pooling", COUPLING_POOLINGS)
@pytest.mark.parametrize("coupling_method", COUPLING_METHODS)
def test_coupled(enc: LoadedEncoder, coupling_method: str, coupling_pooling: str) -> None:
    kw = {"coupling": "coupled", "coupling_method": coupling_method,
          "coupling_pooling": coupling_pooling, "head_hidden": 32}
    model = build_model(enc, num_outputs=C, seed=0, **kw)  # type: ignore[arg-type]
    assert model.coupling is not None
    batch = _batch(enc)
    _check_shapes(_run(model, batch), batch)
    _check_grad_reaches_encoder(model, batch)
    _check_padding_invariant(model, enc)
    _check_deterministic(enc, batch, **kw)


def test_coupled_evidence_depends_on_criteria(enc: LoadedEncoder) -> None:
    model = build_model(enc, num_outputs=C, coupling="coupled", coupling_method="add", seed=0)
    model.eval()
    batch = _batch(enc)
    with torch.no_grad():
        before = _run(model, batch).start_logits.clone()
        model.criteria_head.net[-1].bias.add_(3.0)  # type: ignore[index, union-attr]
        after = _run(model, batch).start_logits
    assert not torch.allclose(before, after)


def test_independent_has_no_coupling(enc: LoadedEncoder) -> None:
    assert build_model(enc, num_outputs=C).coupling is None


@pytest.mark.parametrize(
    ("kwarg", "value", "allowed"),
    [("criteria_head", "nope", "linear"), ("evidence_head", "nope", "start_end_linear"),
     ("pooling", "nope", "cls"), ("coupling", "nope", "independent"),
     ("coupling_method", "nope", "concat"), ("coupling_pooling", "nope", "attention")],
)
def test_unknown_names(enc: LoadedEncoder, kwarg: str, value: str, allowed: str) -> None:
    kw: dict[str, object] = {kwarg: value}
    if kwarg.startswith("coupling_"):
        kw["coupling"] = "coupled"
    with pytest.raises(ValueError, match=f"allowed: .*{allowed}"):
        build_model(enc, num_outputs=C, **kw)  # type: ignore[arg-type]


def test_registries_have_required_names() -> None:
    assert {"linear", "mlp"} <= set(CRITERIA_HEADS)
    assert {"start_end_linear"} <= set(EVIDENCE_HEADS)
    assert {"cls", "mean"} <= set(POOLINGS)
    assert all(issubclass(c, CriteriaHead) for c in CRITERIA_HEADS.values())
    assert all(issubclass(c, EvidenceHead) for c in EVIDENCE_HEADS.values())


def test_register_duplicate_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_criteria_head("linear")(CRITERIA_HEADS["linear"])


def test_head_interfaces_direct() -> None:
    head = CRITERIA_HEADS["mlp"](16, 4, hidden=8, dropout=0.2)
    assert head(torch.randn(3, 16)).shape == (3, 4)
    ev = EVIDENCE_HEADS["start_end_linear"](16, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    s, e = ev(torch.randn(1, 5, 16), mask)
    assert s.shape == e.shape == (1, 4, 5)
    assert (s[..., 3:] == mask_value(torch.float32)).all() and torch.isfinite(s[..., :3]).all()
    with pytest.raises(ValueError, match="dropout"):
        CRITERIA_HEADS["linear"](16, 4, dropout=1.5)


def test_mean_pooling_ignores_padding_values() -> None:
    pool = POOLINGS["mean"](4)
    seq = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    other = seq.clone()
    other[0, 3:] = 1e6
    torch.testing.assert_close(pool(seq, mask), pool(other, mask))
    torch.testing.assert_close(pool(seq, mask)[0], seq[0, :3].mean(0))


def test_hidden_states_only_when_needed(enc: LoadedEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    orig = enc.model.forward

    def spy(*a: object, **k: object) -> object:
        seen.append(bool(k.get("output_hidden_states", False)))
        return orig(*a, **k)

    monkeypatch.setattr(enc.model, "forward", spy)
    batch = _batch(enc)
    for pooling in ("cls", "last_2_layer_mix"):
        _run(build_model(enc, num_outputs=C, pooling=pooling), batch)
    assert seen == [False, True]


def test_architecture_signature(enc: LoadedEncoder) -> None:
    a = architecture_signature(build_model(enc, num_outputs=C, criteria_head="mlp", head_hidden=32))
    b = architecture_signature(build_model(enc, num_outputs=C, criteria_head="mlp", head_hidden=32))
    c = architecture_signature(build_model(enc, num_outputs=C, criteria_head="mlp", head_hidden=64))
    assert a == b and a != c
    assert a["encoder_signature"] == enc.signature
    assert a["criteria_head"] == "mlp" and a["evidence_head"] == "start_end_linear"
    assert a["num_outputs"] == C and a["hidden_size"] == 64 and a["state_dict_hash"]


# ----------------------------------------------------------------- phase-2 specifics

def _path_score(em: Tensor, tags: tuple[int, ...], crf: torch.nn.Module) -> Tensor:
    s = crf.start_transitions[tags[0]] + em[0, tags[0]]
    for t in range(1, len(tags)):
        s = s + crf.transitions[tags[t - 1], tags[t]] + em[t, tags[t]]
    return s + crf.end_transitions[tags[-1]]


def test_viterbi_matches_brute_force() -> None:
    torch.manual_seed(0)
    head = BioCrfHead(8, 2, hidden=8)
    with torch.no_grad():
        for p in head.crf.parameters():
            p.normal_()
    n, t = 6, 5
    em = torch.randn(n, t, 3)
    lengths = [5, 4, 1, 3, 5, 2]
    mask = torch.tensor([[i < L for i in range(t)] for L in lengths])
    with torch.no_grad():
        got = viterbi_decode(em, mask, head.crf.start_transitions, head.crf.transitions,
                             head.crf.end_transitions)
    for i, L in enumerate(lengths):
        best = max(itertools.product(range(3), repeat=L),
                   key=lambda p, i=i: float(_path_score(em[i], p, head.crf).detach()))
        assert tuple(got[i, :L].tolist()) == best
        assert (got[i, L:] == TAG_O).all()
        # torchcrf's own decoder agrees.
        assert head.crf.decode(em[i:i + 1, :L], torch.ones(1, L, dtype=torch.bool))[0] == list(best)


def test_crf_nll_matches_brute_force() -> None:
    torch.manual_seed(1)
    head = BioCrfHead(8, 1, hidden=8)
    em = torch.randn(1, 4, 3)
    gold = (TAG_O, TAG_B, TAG_I, TAG_O)
    with torch.no_grad():
        scores = torch.stack([_path_score(em[0], p, head.crf)
                              for p in itertools.product(range(3), repeat=4)])
        want = torch.logsumexp(scores, 0) - _path_score(em[0], gold, head.crf)
        got = -head.crf(em, torch.tensor([gold]), torch.ones(1, 4, dtype=torch.bool), reduction="sum")
    torch.testing.assert_close(got, want)


def test_crf_loss_reductions_average_over_tokens_or_slots() -> None:
    torch.manual_seed(2)
    heads = {r: BioCrfHead(8, 2, hidden=8, loss_reduction=r) for r in ("token_mean", "slot_mean")}
    heads["slot_mean"].load_state_dict(heads["token_mean"].state_dict())
    sequence, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    start, end = torch.tensor([[1, -100], [2, 0]]), torch.tensor([[3, -100], [2, 0]])

    def loss(reduction: str, s: Tensor, e: Tensor) -> Tensor:
        head = heads[reduction]
        head.eval()
        with torch.no_grad():
            _, _, aux = head.compute(sequence, mask)
            return head.loss(aux, {"evidence_start": s, "evidence_end": e})

    def only(row: int, col: int) -> tuple[Tensor, Tensor]:
        keep = torch.zeros(2, 2, dtype=torch.bool)
        keep[row, col] = True
        return start.masked_fill(~keep, -100), end.masked_fill(~keep, -100)

    # Per-slot NLL (slot (0,1) is ignored): slots (0,0) and (1,0) hold spans, (1,1) is null.
    nll = {rc: loss("slot_mean", *only(*rc)) for rc in ((0, 0), (1, 0), (1, 1))}
    tokens = {(0, 0): 5, (1, 0): 3, (1, 1): 3}
    for rc in nll:  # one slot alone: its NLL, or its NLL per token
        torch.testing.assert_close(loss("token_mean", *only(*rc)) * tokens[rc], nll[rc])
    # Span and null slots weigh half each (balanced), averaged over slots or over tokens.
    torch.testing.assert_close(loss("slot_mean", start, end),
                               0.5 * (nll[0, 0] + nll[1, 0]) / 2 + 0.5 * nll[1, 1])
    torch.testing.assert_close(loss("token_mean", start, end),
                               0.5 * (nll[0, 0] + nll[1, 0]) / 8 + 0.5 * nll[1, 1] / 3)
    with pytest.raises(ValueError, match="loss_reduction 'sum'; allowed: token_mean, slot_mean"):
        BioCrfHead(8, 1, loss_reduction="sum")


def test_reranker_loss_weighs_span_and_null_slots_half_each(enc: LoadedEncoder) -> None:
    """Like the start/end cross-entropy: 1 span slot among 3 null ones weighs half."""
    model = build_model(enc, num_outputs=4, evidence_head="sentence_reranker", head_hidden=16, seed=0)
    model.eval()
    b = enc.tokenizer(["i can't sleep. i feel worthless!"], return_tensors="pt")
    with torch.no_grad():
        aux = model(b["input_ids"], b["attention_mask"]).evidence_aux
    scores = aux["sentence_scores"][0]
    batch = {"evidence_start": torch.tensor([[8, 0, 0, 0]]), "evidence_end": torch.tensor([[9, 0, 0, 0]])}
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * ce(scores[:1], torch.tensor([2])) + 0.5 * ce(scores[1:], torch.tensor([0, 0, 0]))
    torch.testing.assert_close(model.evidence_head.loss(aux, batch), want)


def test_bio_span_roundtrip() -> None:
    start = torch.tensor([0, 1, 3, 2])
    end = torch.tensor([0, 3, 3, 4])
    tags = span_to_bio(start, end, 6)
    assert tags.tolist() == [[0] * 6, [0, 1, 2, 2, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 1, 2, 2, 0]]
    s, e = bio_to_span(tags, torch.ones(4, 6, dtype=torch.bool))
    assert s.tolist() == start.tolist() and e.tolist() == end.tolist()
    # Stray I starts a span; the first span wins; padding ends a span; [CLS] ignored.
    odd = torch.tensor([[TAG_B, 0, TAG_I, TAG_I, TAG_B, TAG_I], [0, TAG_B, TAG_I, TAG_I, TAG_I, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    s, e = bio_to_span(odd, mask)
    assert s.tolist() == [2, 1] and e.tolist() == [3, 2]


def test_bio_crf_forward_consistent_with_decode(enc: LoadedEncoder) -> None:
    model = build_model(enc, num_outputs=C, evidence_head="bio_crf", head_hidden=16, seed=0)
    model.eval()
    batch = _batch(enc)
    with torch.no_grad():
        out = _run(model, batch)
    head = model.evidence_head
    assert isinstance(head, BioCrfHead) and out.evidence_loss_fn is not None
    tags = head.decode(out.evidence_aux["emissions"], batch["attention_mask"])
    assert (tags[:, :, 0] == TAG_O).all()  # [CLS] forced to O
    b, c, t = tags.shape
    mask = batch["attention_mask"].bool().unsqueeze(1).expand(b, c, t).reshape(b * c, t)
    s, e = bio_to_span(tags.reshape(b * c, t), mask)
    assert out.start_logits.argmax(-1).reshape(-1).tolist() == s.tolist()
    assert out.end_logits.argmax(-1).reshape(-1).tolist() == e.tolist()


@pytest.mark.parametrize("evidence_head", sorted(EVIDENCE_HEADS))
def test_evidence_head_learns(enc: LoadedEncoder, evidence_head: str) -> None:
    """A few optimiser steps on one batch lower the evidence loss (objective is wired)."""
    model = build_model(load_encoder("tiny", seed=0), num_outputs=2, evidence_head=evidence_head,
                        head_hidden=32, dropout=0.0, seed=0)
    batch = _batch(enc)
    n = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(1)
    tgt = {"criteria_labels": torch.ones(n, 2),
           "evidence_start": torch.stack([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)], 1),
           "evidence_end": torch.stack([lengths - 2, torch.zeros(n, dtype=torch.long)], 1)}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, parts = joint_loss(_run(model, batch), {**batch, **tgt}, evidence_weight=1.0)
        loss.backward()
        opt.step()
        losses.append(parts["evidence_loss"])
    assert losses[-1] < losses[0]


def test_biaffine_marginals(enc: LoadedEncoder) -> None:
    model = build_model(enc, num_outputs=C, evidence_head="biaffine", head_hidden=16, seed=0)
    model.eval()
    batch = _batch(enc)
    with torch.no_grad():
        out = _run(model, batch)
    spans = out.evidence_aux["span_scores"]
    lo = mask_value(spans.dtype)
    assert (spans[..., 0, 1:] == lo).all() and (spans[..., 1:, 0] == lo).all()  # null only (0,0)
    assert (torch.tril(spans[0, 0, 1:, 1:], diagonal=-1)[torch.tril(torch.ones_like(spans[0, 0, 1:, 1:]), -1).bool()] == lo).all()
    valid = batch["attention_mask"][0].bool()
    torch.testing.assert_close(out.start_logits[0, 0, valid], torch.logsumexp(spans[0, 0], -1)[valid])


def test_reranker_sentences_from_ids(enc: LoadedEncoder) -> None:
    head = build_model(enc, num_outputs=C, evidence_head="sentence_reranker").evidence_head
    assert isinstance(head, SentenceRerankerHead)
    b = enc.tokenizer(["i can't sleep... i feel worthless! ok", "fine"], padding=True, return_tensors="pt")
    member = head.sentence_masks(b["attention_mask"], b["input_ids"], None)
    toks = [enc.tokenizer.convert_ids_to_tokens(b["input_ids"][0][m]) for m in member[0] if m.any()]
    assert toks == [["i", "can", "'", "t", "sleep", ".", ".", "."], ["i", "feel", "worthless", "!"], ["ok"]]
    assert int(member[1].any(-1).sum()) == 1


def test_reranker_spans_key_and_targets(enc: LoadedEncoder) -> None:
    model = build_model(enc, num_outputs=2, evidence_head="sentence_reranker", head_hidden=16, seed=0)
    model.eval()
    b = enc.tokenizer(["i can't sleep. i feel worthless!"], return_tensors="pt")
    # Token positions: [CLS]=0, "i can ' t sleep ." = 1..6, "i feel worthless !" = 7..10, [SEP]=11
    spans = torch.tensor([[[1, 6], [7, 10]]])
    with torch.no_grad():
        derived = model(b["input_ids"], b["attention_mask"])
        given = model(b["input_ids"], b["attention_mask"], sentence_spans=spans)
    torch.testing.assert_close(derived.start_logits, given.start_logits)
    aux = given.evidence_aux
    assert aux["sentence_start"].tolist() == [[1, 7]] and aux["sentence_end"].tolist() == [[6, 10]]
    # argmax of start and of end pick the same candidate (null or one sentence).
    s, e = given.start_logits.argmax(-1), given.end_logits.argmax(-1)
    pairs = {(0, 0), (1, 6), (7, 10)}
    assert all((int(a), int(z)) in pairs for a, z in zip(s[0], e[0], strict=True))
    # Loss target: the sentence overlapping the gold span most; -100 ignored.
    head = model.evidence_head
    scores = aux["sentence_scores"]
    batch = {"evidence_start": torch.tensor([[8, 0]]), "evidence_end": torch.tensor([[9, 0]])}
    want = 0.5 * (torch.nn.functional.cross_entropy(scores[0, :1], torch.tensor([2]))
                  + torch.nn.functional.cross_entropy(scores[0, 1:], torch.tensor([0])))
    torch.testing.assert_close(head.loss(aux, batch), want)
    ign = {"evidence_start": torch.tensor([[-100, 0]]), "evidence_end": torch.tensor([[-100, 0]])}
    torch.testing.assert_close(head.loss(aux, ign),
                               torch.nn.functional.cross_entropy(scores[0, 1:], torch.tensor([0])))


def test_multi_sample_dropout_modes() -> None:
    torch.manual_seed(0)
    head = CRITERIA_HEADS["multi_sample_dropout"](16, 3, hidden=32, dropout=0.5)
    x = torch.randn(4, 16)
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    assert not torch.allclose(head(x), head(x))


def test_last_2_layer_mix_needs_states() -> None:
    pool = POOLINGS["last_2_layer_mix"](4)
    with pytest.raises(ValueError, match="hidden_states"):
        pool(torch.randn(1, 3, 4), torch.ones(1, 3))


@pytest.mark.parametrize("evidence_head", sorted(EVIDENCE_HEADS))
@pytest.mark.parametrize("coupling", ["independent", "coupled"])
def test_mixed_precision_autocast(enc: LoadedEncoder, evidence_head: str, coupling: str) -> None:
    """bf16 autocast (as on GPU): forward, joint_loss and backward stay finite."""
    model = build_model(enc, num_outputs=C, evidence_head=evidence_head, pooling="attention",
                        criteria_head="gated", coupling=coupling, head_hidden=16, seed=0)
    batch = _batch(enc, pad_to=24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(model, batch)
        loss, _ = joint_loss(out, {**batch, **_targets(batch)}, criteria_loss="focal")
    loss.backward()
    assert torch.isfinite(loss)
    pad = batch["attention_mask"] == 0
    assert (out.start_logits.permute(0, 2, 1)[pad] == mask_value(out.start_logits.dtype)).all()
