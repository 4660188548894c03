"""Encoding posts into model inputs with a tiny BERT tokenizer built from SYNTHETIC_WORDS."""

from __future__ import annotations

import string
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tune_app.data.encode import CRITERION_DESCRIPTIONS, Encoded, collate, decode_span, encode_posts
from tune_app.data.redsm5 import label_vector, load_posts
from tune_app.data.schema import NO_SYMPTOMS, SYMPTOMS, EvidenceSpan, Post
from tune_app.data.synthetic import SYNTHETIC_WORDS, write_synthetic_redsm5

CHARS = string.ascii_lowercase + string.digits
WORDS = sorted(SYNTHETIC_WORDS)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *CHARS,
             *string.punctuation, *(f"##{c}" for c in CHARS)]
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast(vocab_file=str(path))


@pytest.fixture(scope="module")
def posts(tmp_path_factory: pytest.TempPathFactory) -> list[Post]:
    folder = write_synthetic_redsm5(tmp_path_factory.mktemp("synth") / "redsm5", num_posts=60)
    return load_posts(source="local", path=folder).posts


def _post(sentences: list[str], evidence_at: int, symptom: str = "FATIGUE", pid: str = "s_1_1") -> Post:
    text = " ".join(sentences)
    start = len(" ".join(sentences[:evidence_at])) + (1 if evidence_at else 0)
    end = start + len(sentences[evidence_at])
    assert text[start:end] == sentences[evidence_at]
    return Post(pid, text, (symptom,), (EvidenceSpan(symptom, f"{pid}_{evidence_at}", start, end,
                                                     sentences[evidence_at]),))


FILLER = "my cat knocked a cup off the table."
EVIDENCE = "i am exhausted all the time."


def _slot(e: Encoded, symptom: str) -> tuple[int, int]:
    i = e.criterion_ids.index(SYMPTOMS.index(symptom))
    return e.evidence_start[i], e.evidence_end[i]


def test_multi_label_shapes_and_evidence(tokenizer: Any, posts: list[Post]) -> None:
    encoded = encode_posts(posts, tokenizer, input_format="multi_label", max_length=256)
    assert len(encoded) == len(posts)
    for e in encoded:
        post = posts[e.post_index]
        n = len(e.input_ids)
        assert n <= 256 and len(e.attention_mask) == len(e.token_type_ids) == len(e.offsets) == n
        assert e.offsets[0] == (0, 0) and e.offsets[-1] == (0, 0)
        assert e.criterion_ids == list(range(10))
        assert e.criteria_labels == label_vector(post, include_no_symptoms=True)
        assert (e.evidence_start[-1], e.evidence_end[-1]) == (0, 0)  # NO_SYMPTOMS slot
        for c, symptom in enumerate(SYMPTOMS):
            span = decode_span(e.offsets, e.evidence_start[c], e.evidence_end[c])
            if symptom in post.symptoms:  # every synthetic post fits in 256 tokens
                first = next(ev for ev in post.evidence if ev.symptom == symptom)
                assert span == (first.start, first.end)
            else:
                assert span is None
    nine = encode_posts(posts[:3], tokenizer, input_format="multi_label", include_no_symptoms=False)
    assert all(len(e.criteria_labels) == len(e.evidence_start) == 9 for e in nine)


def test_first_evidence_that_fits(tokenizer: Any) -> None:
    sentences = [EVIDENCE, FILLER, "i have no energy to do anything."]
    post = _post(sentences, 0)
    second = _post(sentences, 2).evidence[0]
    post = Post(post.post_id, post.text, post.symptoms, (post.evidence[0], second))
    (e,) = encode_posts([post], tokenizer, input_format="multi_label")
    assert decode_span(e.offsets, *_slot(e, "FATIGUE")) == (0, len(EVIDENCE))
    # the first sentence cut off by a window start: the second one is used instead
    windows = encode_posts([post], tokenizer, input_format="multi_label", max_length=16,
                           long_text="sliding_window", stride=4)
    last = windows[-1]
    assert decode_span(last.offsets, *_slot(last, "FATIGUE")) == (second.start, second.end)


def test_truncation_nulls_span(tokenizer: Any) -> None:
    post = _post([FILLER] * 6 + [EVIDENCE], 6)
    (e,) = encode_posts([post], tokenizer, input_format="multi_label", max_length=32)
    assert _slot(e, "FATIGUE") == (0, 0) and e.criteria_labels[SYMPTOMS.index("FATIGUE")] == 1.0
    # cut in the middle of the evidence sentence: null as well
    (e,) = encode_posts([_post([FILLER, EVIDENCE], 1)], tokenizer, input_format="multi_label",
                        max_length=14)
    assert _slot(e, "FATIGUE") == (0, 0)
    (e,) = encode_posts([_post([FILLER, EVIDENCE], 1)], tokenizer, input_format="multi_label",
                        max_length=20)
    assert decode_span(e.offsets, *_slot(e, "FATIGUE")) is not None


def test_sliding_windows_cover_post_and_find_evidence(tokenizer: Any) -> None:
    post = _post([FILLER] * 12 + [EVIDENCE] + [FILLER] * 3, 12)
    ev = post.evidence[0]
    windows = encode_posts([post], tokenizer, input_format="multi_label", max_length=40,
                           long_text="sliding_window", stride=8)
    assert len(windows) > 3 and {w.post_index for w in windows} == {0}
    covered = {i for w in windows for s, e in w.offsets for i in range(s, e)}
    assert covered == {i for i, ch in enumerate(post.text) if not ch.isspace()}
    found = 0
    for w in windows:
        assert w.criteria_labels == label_vector(post, include_no_symptoms=True)
        chars = [o for o in w.offsets if o[1] > o[0]]
        inside = chars[0][0] <= ev.start and chars[-1][1] >= ev.end
        span = decode_span(w.offsets, *_slot(w, "FATIGUE"))
        assert span == ((ev.start, ev.end) if inside else None)
        found += inside
    assert found >= 1


def test_binary_pairs(tokenizer: Any, posts: list[Post]) -> None:
    some = posts[:5]
    encoded = encode_posts(some, tokenizer, input_format="binary_pairs", max_length=160)
    assert len(encoded) == 5 * 10
    assert set(CRITERION_DESCRIPTIONS) == {*SYMPTOMS, NO_SYMPTOMS}
    for k, e in enumerate(encoded):
        post, c = some[e.post_index], e.criterion_ids[0]
        assert (e.post_index, c) == (k // 10, k % 10)
        assert len(e.criteria_labels) == len(e.evidence_start) == 1
        assert e.criteria_labels == [label_vector(post, include_no_symptoms=True)[c]]
        sep = e.input_ids.index(tokenizer.sep_token_id)
        assert all(o == (0, 0) for o in e.offsets[: sep + 1])
        assert all(t == 0 for t in e.token_type_ids[: sep + 1]) and e.token_type_ids[sep + 1] == 1
        query = tokenizer.decode(e.input_ids[1:sep])
        assert query.replace(" ", "") == CRITERION_DESCRIPTIONS[(*SYMPTOMS, NO_SYMPTOMS)[c]].replace(" ", "")
        span = decode_span(e.offsets, e.evidence_start[0], e.evidence_end[0])
        if c < 9 and SYMPTOMS[c] in post.symptoms:
            first = next(ev for ev in post.evidence if ev.symptom == SYMPTOMS[c])
            assert span == (first.start, first.end) and e.evidence_start[0] > sep
        else:
            assert span is None
    windows = encode_posts(some[:1], tokenizer, input_format="binary_pairs", max_length=40,
                           long_text="sliding_window", stride=8, include_no_symptoms=False)
    assert {e.criterion_ids[0] for e in windows} == set(range(9)) and len(windows) > 9


def test_collate_pads(tokenizer: Any, posts: list[Post]) -> None:
    encoded = encode_posts(posts[:4], tokenizer, input_format="multi_label")
    batch = collate(encoded, tokenizer.pad_token_id)
    t = max(len(e.input_ids) for e in encoded)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (4, t)
    for key in ("criteria_labels", "criterion_ids", "evidence_start", "evidence_end"):
        assert batch[key].shape == (4, 10)
    assert batch["criteria_labels"].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    assert batch["post_index"].tolist() == [0, 1, 2, 3]
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i].sum().item() == n
    pairs = encode_posts(posts[:1], tokenizer, input_format="binary_pairs")
    with pytest.raises(ValueError, match="same number of criteria"):
        collate([encoded[0], pairs[0]], tokenizer.pad_token_id)


def test_decode_span_edges() -> None:
    offsets = [(0, 0), (0, 2), (3, 5), (0, 0)]
    assert decode_span(offsets, 1, 2) == (0, 5)
    assert decode_span(offsets, 0, 0) is None
    assert decode_span(offsets, 2, 1) is None
    assert decode_span(offsets, 1, 9) is None
    assert decode_span(offsets, 3, 3) is None


STRIDE = 4
_sentence = st.lists(st.sampled_from(WORDS), min_size=2, max_size=10).map(lambda w: " ".join(w) + ".")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(_sentence, max_size=8), evidence=_sentence, after=st.lists(_sentence, max_size=8),
       max_length=st.sampled_from([12, 24, 48, 96, 256]),
       long_text=st.sampled_from(["truncate", "sliding_window"]))
@example(before=["a a."] * 7 + ["a a a a a a a a."], evidence="a a a a a a a a a a.", after=[], max_length=24,
         long_text="sliding_window")  # an 11-token span that straddles both window boundaries
def test_property_evidence_round_trip(tokenizer: Any, before: list[str], evidence: str,
                                      after: list[str], max_length: int, long_text: str) -> None:
    post = _post([*before, evidence, *after], len(before), symptom="COGNITIVE_ISSUES")
    ev = post.evidence[0]
    encoded = encode_posts([post], tokenizer, input_format="multi_label", max_length=max_length,
                           long_text=long_text, stride=STRIDE)  # type: ignore[arg-type]
    for e in encoded:
        chars = [o for o in e.offsets if o[1] > o[0]]
        inside = bool(chars) and chars[0][0] <= ev.start and chars[-1][1] >= ev.end
        span = decode_span(e.offsets, *_slot(e, "COGNITIVE_ISSUES"))
        assert span == ((ev.start, ev.end) if inside else None)
    if long_text == "sliding_window":
        # Windows overlap by ``stride`` tokens, so a span of up to stride + 1 tokens always
        # lies whole in one of them; a longer one may straddle every boundary.
        assert any(decode_span(e.offsets, *_slot(e, "COGNITIVE_ISSUES")) for e in encoded) or \
            len(tokenizer.tokenize(evidence)) > STRIDE + 1
