"""Evidence-only augmentation: span splicing (property tests with a fake augmenter),
method availability, the offline data installer, and real TextAttack per method."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tune_app.data import nltk_setup
from tune_app.data.augment import (
    AugmentationRecord,
    augment_posts,
    check_method_available,
    read_records,
    splice_post,
    summarise,
    write_records,
)
from tune_app.data.schema import SYMPTOMS, EvidenceSpan, Post

REPO = Path(__file__).resolve().parents[2]
OFFLINE_METHODS = ("synonym", "insert", "swap", "char_perturb")


# ------------------------------------------------------------------------- helpers


def fake_augmenter(text: str, seed: int) -> str:
    """Deterministic in (text, seed); changes length and content, sometimes returns ''."""
    rng = random.Random(seed)
    choice = rng.randrange(6)
    if choice == 0:
        return text.upper() + "!"
    if choice == 1:
        return f"[{rng.random():.3f}]"
    if choice == 2:
        return text[::-1]
    if choice == 3:
        return text * 2 + "é😀"
    if choice == 4:
        return ""  # must keep the original sentence
    return text[: max(1, len(text) // 2)]


def located(post: Post) -> list[EvidenceSpan]:
    return [e for e in post.evidence if 0 <= e.start <= e.end <= len(post.text)]


def gaps(text: str, ranges: Sequence[tuple[int, int]]) -> list[str]:
    """The text outside the union of ``ranges``, as pieces in order."""
    merged: list[list[int]] = []
    for s, e in sorted(r for r in ranges if r[0] < r[1]):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, cursor = [], 0
    for s, e in merged:
        out.append(text[cursor:s])
        cursor = e
    out.append(text[cursor:])
    return out


def check_invariants(before: Post, after: Post, record: AugmentationRecord | None) -> None:
    """Everything augmentation promises about one post."""
    assert after.post_id == before.post_id and after.symptoms == before.symptoms
    assert [(e.symptom, e.sentence_id) for e in after.evidence] == \
        [(e.symptom, e.sentence_id) for e in before.evidence]
    if record is None:
        assert after == before
        return
    # Non-evidence text is byte-identical: same pieces between the (moved) spans ...
    old_ranges = [(e.start, e.end) for e in located(before)]
    new_ranges = [(e.start, e.end) for e in located(after)]
    assert [g.encode() for g in gaps(after.text, new_ranges)] == \
        [g.encode() for g in gaps(before.text, old_ranges)]
    # ... and undoing the recorded rewrites restores the post exactly.
    restored = after.text
    for ch in sorted(record.spans, key=lambda c: -c.augmented_start):
        restored = restored[:ch.augmented_start] + ch.original_text + restored[ch.augmented_end:]
    assert restored.encode() == before.text.encode()
    # Recomputed spans cover exactly the augmented evidence.
    by_range = {(c.original_start, c.original_end): c for c in record.spans}
    for old, new in zip(before.evidence, after.evidence, strict=True):
        change = by_range.get((old.start, old.end))
        if change is not None:
            assert before.text[old.start:old.end] == change.original_text
            assert (new.start, new.end) == (change.augmented_start, change.augmented_end)
            assert after.text[new.start:new.end] == change.augmented_text == new.text
            assert new.text.strip() or change.augmented_text == change.original_text
            assert old.symptom in change.symptoms and old.sentence_id in change.sentence_ids
        elif 0 <= old.start <= old.end <= len(before.text):
            assert after.text[new.start:new.end] == before.text[old.start:old.end]
            assert new.text == old.text
        else:
            assert new == old  # unlocated (-1/-1) spans are left alone


@st.composite
def posts_strategy(draw: st.DrawFn) -> Post:
    text = draw(st.text(alphabet=st.sampled_from("ab cé.\n😀"), max_size=60))
    n = len(text)
    ranges: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 9))
        if kind == 0 or n == 0:
            ranges.append((-1, -1))
        elif kind == 1 and ranges:
            ranges.append(draw(st.sampled_from(ranges)))  # same sentence, another symptom
        else:
            s = draw(st.integers(0, n))
            ranges.append((s, draw(st.integers(s, n))))
    evidence = tuple(
        EvidenceSpan(draw(st.sampled_from(SYMPTOMS)), f"s_{i}", s, e,
                     text[s:e] if s >= 0 else "unlocated sentence")
        for i, (s, e) in enumerate(ranges))
    symptoms = tuple(sorted({e.symptom for e in evidence}, key=SYMPTOMS.index))
    return Post(f"p{draw(st.integers(0, 10**6))}", text, symptoms, evidence)


def sentence_post(pid: str, sentences: Sequence[str], evidence: dict[int, Sequence[str]]) -> Post:
    """A post from ``sentences`` joined by ' '; ``evidence`` maps sentence index -> symptoms."""
    text = " ".join(sentences)
    spans, pos = [], 0
    for i, sentence in enumerate(sentences):
        for symptom in evidence.get(i, ()):
            spans.append(EvidenceSpan(symptom, f"{pid}_{i}", pos, pos + len(sentence), sentence))
        pos += len(sentence) + 1
    symptoms = tuple(sorted({e.symptom for e in spans}, key=SYMPTOMS.index))
    return Post(pid, text, symptoms, tuple(spans))


def many_posts(n: int = 200) -> list[Post]:
    return [sentence_post(f"p{i:03d}", ["hello there.", f"i feel sad {i}.", "bye now."],
                          {1: ["DEPRESSED_MOOD"]}) for i in range(n)]


# --------------------------------------------------------------- splicing properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(post=posts_strategy(), seed=st.integers(0, 2**31), post_seed=st.integers(0, 2**31))
def test_splice_keeps_non_evidence_text_and_moves_spans(post: Post, seed: int,
                                                        post_seed: int) -> None:
    rng = random.Random(post_seed)
    after, record = splice_post(post, lambda t: fake_augmenter(t, rng.getrandbits(32)),
                                method="fake", seed=seed, post_seed=post_seed)
    check_invariants(post, after, record)


@settings(max_examples=100, deadline=None)
@given(posts=st.lists(posts_strategy(), max_size=8, unique_by=lambda p: p.post_id),
       seed=st.integers(0, 2**31), probability=st.floats(0.0, 0.5))
def test_augment_posts_properties(posts: list[Post], seed: int, probability: float) -> None:
    out, records = augment_posts(posts, method="fake", probability=probability, seed=seed,
                                 augmenter=fake_augmenter)
    assert len(out) == len(posts)
    by_id = {r.post_id: r for r in records}
    assert len(by_id) == len(records)
    for before, after in zip(posts, out, strict=True):
        check_invariants(before, after, by_id.get(before.post_id))
    again = augment_posts(posts, method="fake", probability=probability, seed=seed,
                          augmenter=fake_augmenter)
    assert again == (out, records)  # deterministic under the seed


def _never(text: str, seed: int) -> str:
    raise AssertionError("augmenter called with probability 0")


@settings(max_examples=50, deadline=None)
@given(posts=st.lists(posts_strategy(), max_size=8), seed=st.integers(0, 2**31))
def test_probability_zero_is_identity(posts: list[Post], seed: int) -> None:
    out, records = augment_posts(posts, method="synonym", probability=0.0, seed=seed,
                                 augmenter=_never)
    assert out == posts and records == []
    assert all(a is b for a, b in zip(out, posts, strict=True))


def test_probability_zero_never_builds_textattack(monkeypatch: pytest.MonkeyPatch) -> None:
    import tune_app.data.augment as aug

    monkeypatch.setattr(aug, "get_span_augmenter", lambda m: pytest.fail("augmenter built"))
    posts = many_posts(5)
    assert augment_posts(posts, method="synonym", probability=0.0, seed=1) == (posts, [])


def test_probability_selects_about_that_fraction_and_nests() -> None:
    posts = many_posts(400)
    chosen = {}
    for p in (0.1, 0.25, 0.5):
        _, records = augment_posts(posts, method="fake", probability=p, seed=7,
                                   augmenter=lambda t, s: t + "!")
        chosen[p] = {r.post_id: r for r in records}
        assert abs(len(records) - p * len(posts)) < 4 * (len(posts) * p * (1 - p)) ** 0.5
    assert set(chosen[0.1]) <= set(chosen[0.25]) <= set(chosen[0.5])
    for pid, rec in chosen[0.1].items():  # a chosen post is augmented the same way
        assert chosen[0.5][pid] == rec
    _, other = augment_posts(posts, method="fake", probability=0.5, seed=8,
                             augmenter=lambda t, s: t + "!")
    assert {r.post_id for r in other} != set(chosen[0.5])


def test_shared_sentence_augmented_once_and_all_spans_follow() -> None:
    post = sentence_post("p", ["intro text.", "i am so tired and sad.", "middle.", "i cannot sleep.",
                               "end."],
                         {1: ["DEPRESSED_MOOD", "FATIGUE"], 3: ["SLEEP_ISSUES"]})
    calls: list[str] = []

    def counting(text: str, seed: int) -> str:
        calls.append(text)
        return f"<<{text} plus more words>>"

    [after], [record] = augment_posts([post], method="fake", probability=1.0, seed=0,
                                      augmenter=counting)
    assert calls == ["i am so tired and sad.", "i cannot sleep."]
    check_invariants(post, after, record)
    mood, fatigue, sleep = after.evidence
    assert (mood.start, mood.end, mood.text) == (fatigue.start, fatigue.end, fatigue.text)
    assert after.text[sleep.start:sleep.end] == "<<i cannot sleep. plus more words>>"
    assert after.text.startswith("intro text. <<") and after.text.endswith(">> end.")
    assert record.spans[0].symptoms == ("DEPRESSED_MOOD", "FATIGUE")


def test_overlapping_and_unlocated_spans_are_left_alone() -> None:
    text = "aaa bbb ccc ddd"
    post = Post("p", text, ("ANHEDONIA", "FATIGUE", "SLEEP_ISSUES"), (
        EvidenceSpan("ANHEDONIA", "a", 0, 7, text[0:7]),
        EvidenceSpan("FATIGUE", "b", 4, 11, text[4:11]),
        EvidenceSpan("SLEEP_ISSUES", "c", 12, 15, "ddd"),
        EvidenceSpan("SLEEP_ISSUES", "d", -1, -1, "not in the post"),
    ))
    [after], [record] = augment_posts([post], method="fake", probability=1.0, seed=0,
                                      augmenter=lambda t, s: t.upper() + "?")
    assert after.text == "aaa bbb ccc DDD?"
    assert [(c.original_start, c.original_end) for c in record.spans] == [(12, 15)]
    assert after.evidence[:2] == post.evidence[:2] and after.evidence[3] == post.evidence[3]
    check_invariants(post, after, record)


def test_records_round_trip_and_summary(tmp_path: Path) -> None:
    posts = many_posts(20)
    _, records = augment_posts(posts, method="fake", probability=0.5, seed=3,
                               augmenter=lambda t, s: t.replace("sad", "down"))
    path = write_records(tmp_path / "trial" / "augmentation.jsonl", records)
    rows = read_records(path)
    assert len(rows) == len(records) > 0
    row = rows[0]
    assert row["method"] == "fake" and row["seed"] == 3 and row["changed"] is True
    span = row["spans"][0]
    assert span["original_text"].replace("sad", "down") == span["augmented_text"]
    assert span["symptoms"] == ["DEPRESSED_MOOD"] and span["changed"] is True
    assert summarise(records, len(posts)) == {
        "posts": 20, "posts_augmented": len(records), "posts_changed": len(records),
        "spans_augmented": len(records), "spans_changed": len(records)}


def test_invalid_probability_rejected() -> None:
    with pytest.raises(ValueError, match="probability"):
        augment_posts(many_posts(2), method="fake", probability=1.5, seed=0,
                      augmenter=fake_augmenter)


# ------------------------------------------------------------------- availability


def test_back_translation_is_rejected_with_what_it_needs() -> None:
    with pytest.raises(ValueError, match="back_translation needs .*translation models.*Hub"):
        check_method_available("back_translation")


def test_unknown_method_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed values: synonym, insert, swap"):
        check_method_available("paraphrase")


@pytest.fixture()
def empty_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNE_APP_NLTK_DATA", str(tmp_path / "nltk_data"))
    monkeypatch.setenv("TA_CACHE_DIR", str(tmp_path / "ta"))
    return tmp_path


@pytest.mark.parametrize("method", OFFLINE_METHODS)
def test_missing_data_rejected_at_validation(empty_data: Path, method: str) -> None:
    with pytest.raises(ValueError, match="install_nltk_data.sh") as info:
        check_method_available(method)
    msg = str(info.value)
    assert "stopwords" in msg and "post_install_check_3" in msg
    assert ("WordNet" in msg) == (method in ("synonym", "insert"))


def _fake_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in nltk_setup.WORDNET_FILES:
        (folder / name).write_text(f"content of {name}\n")
    return folder


def test_install_data_is_idempotent_and_copies(empty_data: Path) -> None:
    src = _fake_wordnet(empty_data / "debian" / "wordnet")
    man = empty_data / "lexnames.5WN.gz"
    rows = "".join(f"{i:02d}\t{n}\tdescription {i}  \n"
                   for i, n in enumerate(nltk_setup.WORDNET_LEXNAMES))
    man.write_bytes(gzip.compress(f".TS\nl l l.\n\\fBFile\\fP\t\\fBName\\fP\n_\n{rows}.TE\n".encode()))
    assert nltk_setup.missing_resources(wordnet=True)
    first = nltk_setup.install_data(wordnet_src=src, lexnames_man=man)
    assert nltk_setup.missing_resources(wordnet=True) == []
    wn = empty_data / "nltk_data" / "corpora" / "wordnet"
    assert not any(p.is_symlink() for p in wn.iterdir())
    assert (wn / "data.noun").read_text() == "content of data.noun\n"
    lexnames = (wn / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3"
    assert lexnames[18] == "18\tnoun.person\t1" and lexnames[44] == "44\tadj.ppl\t3"
    stop = (empty_data / "nltk_data" / "corpora" / "stopwords" / "english").read_text().split()
    assert {"i", "the", "not", "wouldn't"} <= set(stop) and "sad" not in stop
    assert any(line.startswith("wrote") for line in first)
    second = nltk_setup.install_data(wordnet_src=src, lexnames_man=man)
    assert not any(line.startswith("wrote") for line in second)
    assert "0 of 14 files copied" in " ".join(second)


def test_install_without_wordnet_warns(empty_data: Path) -> None:
    log = nltk_setup.install_data(wordnet_src=empty_data / "nowhere", lexnames_man=None)
    assert any(line.startswith("warning: WordNet not found") for line in log)
    assert nltk_setup.missing_resources(wordnet=False) == []
    check_method_available("swap")
    with pytest.raises(ValueError, match="WordNet"):
        check_method_available("synonym")


def test_lexnames_from_debian_man_page() -> None:
    man = nltk_setup.DEBIAN_LEXNAMES_MAN
    if not man.is_file():
        pytest.skip(f"{man} not installed (Debian wordnet-base)")
    assert nltk_setup.lexnames_from_man(gzip.decompress(man.read_bytes()).decode()) == \
        nltk_setup.lexnames_table()


def test_lazy_import() -> None:
    code = ("import sys, tune_app, tune_app.data.augment, tune_app.trainable\n"
            "from tune_app.data.augment import augment_posts, check_method_available\n"
            "for m in ('synonym', 'insert', 'swap', 'char_perturb', 'back_translation'):\n"
            "    try: check_method_available(m)\n"
            "    except ValueError: pass\n"
            "augment_posts([], method='synonym', probability=0.5, seed=0)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textattack', 'flair'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------ real TextAttack, offline


@pytest.fixture(scope="module")
def textattack_ready() -> Iterator[None]:
    """Import TextAttack once for the module; the data must be installed (install.sh)."""
    missing = nltk_setup.missing_resources(wordnet=True)
    assert not missing, f"offline NLP data missing: {missing}; run scripts/install_nltk_data.sh"
    keys = ("HF_HOME", "XDG_CACHE_HOME", "PYTORCH_TRANSFORMERS_CACHE", "TFHUB_CACHE_DIR")
    before = {k: os.environ.get(k) for k in keys}
    nltk_setup.import_textattack(wordnet=True)
    assert {k: os.environ.get(k) for k in keys} == before
    yield


@pytest.fixture(scope="module")
def synthetic_posts(tmp_path_factory: pytest.TempPathFactory) -> list[Post]:
    from tune_app.data.redsm5 import load_posts
    from tune_app.data.synthetic import write_synthetic_redsm5

    folder = write_synthetic_redsm5(tmp_path_factory.mktemp("syn") / "data", num_posts=30, seed=5)
    return load_posts(source="local", path=folder).posts


def test_wordnet_from_debian_works(textattack_ready: None) -> None:
    from nltk.corpus import wordnet

    assert {"felicitous", "glad"} <= {lemma for s in wordnet.synsets("happy")
                                      for lemma in s.lemma_names()}


@pytest.mark.parametrize("method", OFFLINE_METHODS)
def test_textattack_method_offline(textattack_ready: None, synthetic_posts: list[Post],
                                   method: str) -> None:
    check_method_available(method)
    state = random.getstate()
    out, records = augment_posts(synthetic_posts, method=method, probability=0.5, seed=11)
    assert random.getstate() == state  # global RNG untouched
    assert 0 < len(records) < len(synthetic_posts)
    assert sum(r.changed for r in records) >= len(records) // 2
    by_id = {r.post_id: r for r in records}
    for before, after in zip(synthetic_posts, out, strict=True):
        check_invariants(before, after, by_id.get(before.post_id))
    assert augment_posts(synthetic_posts, method=method, probability=0.5, seed=11) == \
        (out, records)


@pytest.mark.slow
def test_textattack_deterministic_across_hash_seeds(tmp_path: Path) -> None:
    """WordNet synonym sets are unordered: the result must not depend on PYTHONHASHSEED."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tune_app.data.redsm5 import load_posts\n"
        "from tune_app.data.synthetic import write_synthetic_redsm5\n"
        "from tune_app.data.augment import augment_posts\n"
        "posts = load_posts(source='local', path=write_synthetic_redsm5(Path(sys.argv[1]),"
        " num_posts=30, seed=5)).posts\n"
        "out = {m: [r.to_dict() for r in augment_posts(posts, method=m, probability=0.5,"
        " seed=2)[1]] for m in ('synonym', 'insert')}\n"
        "print(json.dumps(out))\n")
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert any(r["changed"] for r in outputs[0]["synonym"])
