"""The RedSM5 loader, its errors, and the splits."""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tune_app.data.redsm5 import (
    DataError,
    check_disjoint,
    label_vector,
    load_posts,
    load_splits,
    locate_sentence,
    make_splits,
    save_splits,
)
from tune_app.data.schema import (
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    NO_SYMPTOMS,
    POSTS_FILE,
    SYMPTOMS,
    EvidenceSpan,
    Post,
)
from tune_app.data.synthetic import SPECIAL_CASE, write_synthetic_redsm5
from tune_app.hub import HubAccessError

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_redsm5(tmp_path_factory.mktemp("synth") / "redsm5")


@pytest.fixture(scope="module")
def ann(synth: Path) -> pd.DataFrame:
    return pd.read_csv(synth / ANNOTATIONS_FILE, dtype=str, keep_default_na=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _write(folder: Path, posts: list[tuple[str, str]], rows: list[tuple[str, ...]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(posts, columns=["post_id", "text"]).to_csv(folder / POSTS_FILE, index=False)
    pd.DataFrame(rows, columns=list(ANNOTATIONS_COLUMNS)).to_csv(folder / ANNOTATIONS_FILE, index=False)
    return folder


# ------------------------------------------------------------------ loading


def test_round_trip_synthetic(synth: Path, ann: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tune_app.data.redsm5"):
        loaded = load_posts(source="local", path=synth)
    posts = loaded.posts
    assert len(posts) == 240 and [p.post_id for p in posts] == sorted(p.post_id for p in posts)
    assert loaded.synthetic and loaded.provided_splits is None
    assert loaded.revision is not None and loaded.revision.startswith("sha256:")
    assert loaded.revision == load_posts(source="local", path=synth).revision
    n_special = int((ann["DSM5_symptom"] == SPECIAL_CASE).sum())
    assert loaded.dropped["special_case_rows"] == n_special > 0
    assert loaded.unlocated_evidence == 0
    assert any("special-case rows" in r.message and "drop" in r.message for r in caplog.records)

    positive = ann[(ann["status"] == "1") & ann["DSM5_symptom"].isin(SYMPTOMS)]
    expected = positive.groupby("post_id")["DSM5_symptom"].apply(set).to_dict()
    for p in posts:
        assert set(p.symptoms) == expected.get(p.post_id, set())
        assert list(p.symptoms) == [s for s in SYMPTOMS if s in p.symptoms]
        assert {e.symptom for e in p.evidence} == set(p.symptoms)
        for e in p.evidence:
            assert p.text[e.start:e.end] == e.text
    assert 0.15 < sum(not p.has_symptoms for p in posts) / len(posts) < 0.35


def test_revision_changes_with_content(synth: Path, tmp_path: Path) -> None:
    copy = _copy(synth, tmp_path / "copy")
    before = load_posts(source="local", path=copy).revision
    with open(copy / POSTS_FILE, "a") as f:
        f.write('s_9999_1,"one more post."\n')
    assert load_posts(source="local", path=copy).revision != before


def test_wrong_columns(synth: Path, tmp_path: Path) -> None:
    copy = _copy(synth, tmp_path / "copy")
    df = pd.read_csv(copy / ANNOTATIONS_FILE, dtype=str, keep_default_na=False)
    df.rename(columns={"DSM5_symptom": "symptom"}).to_csv(copy / ANNOTATIONS_FILE, index=False)
    with pytest.raises(DataError) as err:
        load_posts(source="local", path=copy)
    msg = str(err.value)
    assert "DSM5_symptom" in msg and "missing" in msg and "extra" in msg and "'symptom'" in msg
    assert str(copy / ANNOTATIONS_FILE) in msg


def test_missing_file(synth: Path, tmp_path: Path) -> None:
    copy = _copy(synth, tmp_path / "copy")
    (copy / POSTS_FILE).unlink()
    with pytest.raises(DataError, match=r"missing file .*redsm5_posts\.csv.*data\.path"):
        load_posts(source="local", path=copy)
    with pytest.raises(DataError, match="data.path"):
        load_posts(source="local", path=None)


def test_special_case_policies(synth: Path, ann: pd.DataFrame) -> None:
    n_special = int((ann["DSM5_symptom"] == SPECIAL_CASE).sum())
    with pytest.raises(DataError) as err:
        load_posts(source="local", path=synth, special_case_policy="error")
    assert f"'{SPECIAL_CASE}': {n_special}" in str(err.value)
    assert "special_case_policy" in str(err.value)
    negative = load_posts(source="local", path=synth, special_case_policy="negative")
    assert negative.dropped["special_case_rows"] == n_special
    with pytest.raises(DataError, match="special_case_policy"):
        load_posts(source="local", path=synth, special_case_policy="bogus")  # type: ignore[arg-type]


def test_only_post_ids(synth: Path) -> None:
    all_ids = [p.post_id for p in load_posts(source="local", path=synth).posts]
    wanted = set(all_ids[::7])
    loaded = load_posts(source="local", path=synth, only_post_ids=wanted)
    assert {p.post_id for p in loaded.posts} == wanted
    with pytest.raises(DataError, match="s_0_0"):
        load_posts(source="local", path=synth, only_post_ids=["s_0_0"])


def test_locate_fallback_and_unlocated(tmp_path: Path) -> None:
    text = "First line.  I   Can't SLEEP\nat night. Bye."
    folder = _write(tmp_path / "d", [("s_1_1", text)], [
        ("s_1_1", "s_1_1_1", "i can't sleep at night.", "SLEEP_ISSUES", "1", ""),
        ("s_1_1", "s_1_1_2", "not in the post.", "FATIGUE", "1", ""),
        ("s_1_1", "s_1_1_0", "First line.", "FATIGUE", "0", ""),
        ("s_7_7", "s_7_7_0", "orphan.", "FATIGUE", "1", ""),
    ])
    loaded = load_posts(source="local", path=folder)
    (post,) = loaded.posts
    assert post.symptoms == ("SLEEP_ISSUES", "FATIGUE")
    sleep = next(e for e in post.evidence if e.symptom == "SLEEP_ISSUES")
    assert post.text[sleep.start:sleep.end] == "I   Can't SLEEP\nat night."
    fatigue = next(e for e in post.evidence if e.symptom == "FATIGUE")
    assert (fatigue.start, fatigue.end) == (-1, -1)
    assert loaded.unlocated_evidence == 1 and loaded.dropped["unknown_post_rows"] == 1
    assert locate_sentence("abc", "   ") is None


def test_bad_status(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", [("s_1_1", "a.")], [("s_1_1", "s_1_1_0", "a.", "FATIGUE", "yes", "")])
    with pytest.raises(DataError, match="s_1_1_0.*status"):
        load_posts(source="local", path=folder)


def test_hub_offline_is_immediate_and_actionable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(HubAccessError) as err:
        load_posts(source="hub", hub_id="irlab-udc/redsm5", revision="v1.0", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    for phrase in ("irlab-udc/redsm5", "v1.0", "HF_HUB_OFFLINE", "data.path", POSTS_FILE, ANNOTATIONS_FILE):
        assert phrase in msg


def test_hub_from_cache(monkeypatch: pytest.MonkeyPatch, synth: Path, tmp_path: Path) -> None:
    """A Hub-layout cache is read without the network; the revision is the commit sha."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "datasets--irlab-udc--redsm5"
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    for name in (POSTS_FILE, ANNOTATIONS_FILE):
        shutil.copy(synth / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    loaded = load_posts(source="hub", cache_dir=tmp_path)
    assert (loaded.dataset_id, loaded.revision) == ("irlab-udc/redsm5", SHA)
    assert len(loaded.posts) == 240 and loaded.provided_splits is None
    pinned = load_posts(source="hub", cache_dir=tmp_path, revision=SHA)
    assert pinned.posts == loaded.posts


# ------------------------------------------------------------------ splits


def test_splits_deterministic_stratified_and_sized(synth: Path) -> None:
    posts = load_posts(source="local", path=synth).posts
    splits = make_splits(posts, seed=42)
    assert splits == make_splits(list(reversed(posts)), seed=42)
    assert splits != make_splits(posts, seed=43)
    assert sorted(sum(splits.values(), [])) == sorted(p.post_id for p in posts)
    check_disjoint(splits)
    for name, ratio in zip(("train", "validation", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(len(splits[name]) - ratio * len(posts)) <= 1
    by_id = {p.post_id: p for p in posts}
    for name, ids in splits.items():
        counts = Counter(s for i in ids for s in by_id[i].symptoms)
        for symptom in ("DEPRESSED_MOOD", "WORTHLESSNESS", "SUICIDAL_THOUGHTS"):
            assert counts[symptom] >= 3, (name, symptom)
        assert sum(not by_id[i].symptoms for i in ids) >= 3
    custom = make_splits(posts, ratios=(0.5, 0.25, 0.25), seed=1)
    assert abs(len(custom["validation"]) - 60) <= 1


def test_splits_small_and_bad_ratios() -> None:
    tiny = [Post(f"s_{i}_0", "x.", (SYMPTOMS[i % 9],)) for i in range(5)]
    for n in range(len(tiny) + 1):
        splits = make_splits(tiny[:n])
        assert sum(len(v) for v in splits.values()) == n
    with pytest.raises(DataError, match="sum"):
        make_splits(tiny, ratios=(0.7, 0.2, 0.2))
    with pytest.raises(DataError, match="duplicate"):
        make_splits(tiny + tiny[:1])


def test_check_disjoint_names_ids() -> None:
    with pytest.raises(DataError) as err:
        check_disjoint({"train": ["s_1_1", "s_2_2"], "validation": ["s_3_3"], "test": ["s_2_2"]})
    assert "s_2_2 in train, test" in str(err.value) and "s_1_1" not in str(err.value)


def test_save_load_splits(synth: Path, tmp_path: Path) -> None:
    loaded = load_posts(source="local", path=synth)
    splits = make_splits(loaded.posts, seed=3)
    out = tmp_path / "splits.json"
    save_splits(splits, out, dataset_id=loaded.dataset_id, revision=loaded.revision, seed=3,
                ratios=(0.7, 0.15, 0.15))
    assert load_splits(out) == splits
    copy = _copy(synth, tmp_path / "with_splits")
    shutil.copy(out, copy / "splits.json")
    assert load_posts(source="local", path=copy).provided_splits == splits

    (tmp_path / "bad.json").write_text('{"train": [], "valid": []}')
    with pytest.raises(DataError) as err:
        load_splits(tmp_path / "bad.json")
    assert "required keys ['train', 'validation', 'test']" in str(err.value)
    assert "found ['train', 'valid']" in str(err.value)
    (tmp_path / "overlap.json").write_text('{"train": ["s_1_1"], "validation": [], "test": ["s_1_1"]}')
    with pytest.raises(DataError, match="s_1_1 in train, test"):
        load_splits(tmp_path / "overlap.json")
    with pytest.raises(DataError, match="does not exist"):
        load_splits(tmp_path / "nope.json")


def test_label_vector() -> None:
    post = Post("s_1_1", "i can't sleep.", ("SLEEP_ISSUES",),
                (EvidenceSpan("SLEEP_ISSUES", "s_1_1_0", 0, 14, "i can't sleep."),))
    vec = label_vector(post, include_no_symptoms=True)
    assert len(vec) == 10 and vec[SYMPTOMS.index("SLEEP_ISSUES")] == 1.0 and vec[-1] == 0.0
    empty = label_vector(Post("s_2_2", "hi."), include_no_symptoms=True)
    assert empty == [0.0] * 9 + [1.0]
    assert len(label_vector(post, include_no_symptoms=False)) == 9
    assert NO_SYMPTOMS not in SYMPTOMS
