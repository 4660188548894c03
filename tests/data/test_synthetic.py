"""The synthetic RedSM5 generator: format, determinism, content."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tune_app.data.schema import (
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    POSTS_COLUMNS,
    POSTS_FILE,
    SYMPTOMS,
)
from tune_app.data.synthetic import (
    GENERATOR_VERSION,
    SPECIAL_CASE,
    SYNTHETIC_WORDS,
    write_synthetic_redsm5,
)

FILES = (POSTS_FILE, ANNOTATIONS_FILE, "dataset_info.json", "SYNTHETIC.md")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_redsm5(tmp_path_factory.mktemp("synth") / "redsm5")


def _read(d: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    kw = {"dtype": str, "keep_default_na": False}
    return pd.read_csv(d / POSTS_FILE, **kw), pd.read_csv(d / ANNOTATIONS_FILE, **kw)


def test_deterministic_bytes(tmp_path: Path, synth: Path) -> None:
    again = write_synthetic_redsm5(tmp_path / "a")
    for name in FILES:
        assert (again / name).read_bytes() == (synth / name).read_bytes(), name
    other = write_synthetic_redsm5(tmp_path / "b", seed=14)
    assert (other / POSTS_FILE).read_bytes() != (synth / POSTS_FILE).read_bytes()
    smaller = write_synthetic_redsm5(tmp_path / "c", num_posts=10)
    assert len(_read(smaller)[0]) == 10
    assert b"\r\n" not in (synth / POSTS_FILE).read_bytes()


def test_existing_target_untouched_and_no_tmp_left(tmp_path: Path) -> None:
    out = write_synthetic_redsm5(tmp_path / "d", num_posts=12)
    (out / POSTS_FILE).write_text("post_id,text\ns_1_1,hello.\n")
    assert write_synthetic_redsm5(tmp_path / "d", num_posts=12) == out
    assert (out / POSTS_FILE).read_text() == "post_id,text\ns_1_1,hello.\n"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_info_says_synthetic(synth: Path) -> None:
    info = json.loads((synth / "dataset_info.json").read_text())
    assert info["synthetic"] is True
    assert (info["generator_version"], info["seed"], info["num_posts"]) == (GENERATOR_VERSION, 13, 240)
    assert "synthetic" in (synth / "SYNTHETIC.md").read_text().lower()


def test_real_format(synth: Path) -> None:
    posts, ann = _read(synth)
    assert tuple(posts.columns) == POSTS_COLUMNS
    assert tuple(ann.columns) == ANNOTATIONS_COLUMNS
    assert len(posts) == 240 and posts["post_id"].is_unique
    assert posts["post_id"].str.fullmatch(r"s_\d+_\d+").all()
    assert ann["sentence_id"].str.fullmatch(r"s_\d+_\d+_\d+").all()
    assert all(sid.rsplit("_", 1)[0] == pid for pid, sid in zip(ann["post_id"], ann["sentence_id"], strict=True))
    assert set(ann["post_id"]) <= set(posts["post_id"])
    assert set(ann["status"]) == {"0", "1"}
    assert set(ann["DSM5_symptom"]) <= set(SYMPTOMS) | {SPECIAL_CASE}
    assert (ann["DSM5_symptom"] == SPECIAL_CASE).sum() >= 2
    assert (ann.loc[ann["DSM5_symptom"] == SPECIAL_CASE, "status"] == "1").all()


def test_evidence_verbatim_and_sentence_index(synth: Path) -> None:
    posts, ann = _read(synth)
    text = dict(zip(posts["post_id"], posts["text"], strict=True))
    for pid, sid, sentence in zip(ann["post_id"], ann["sentence_id"], ann["sentence_text"], strict=True):
        assert sentence in text[pid]
        sentences = re.findall(r"[^.]+\.", text[pid])
        assert sentences[int(sid.rsplit("_", 1)[1])].strip() == sentence


def test_content_shape(synth: Path) -> None:
    posts, ann = _read(synth)
    assert 300 <= len(SYNTHETIC_WORDS) <= 1500
    assert all(re.fullmatch(r"[a-z]+", w) for w in SYNTHETIC_WORDS)
    for t in posts["text"]:
        assert set(re.findall(r"[a-z]+", t)) <= SYNTHETIC_WORDS
        assert t == t.lower() and t.isascii()
        assert 20 <= len(t.split()) <= 120
        assert 3 <= t.count(".") <= 9
    pos = ann[(ann["status"] == "1") & ann["DSM5_symptom"].isin(SYMPTOMS)]
    per_symptom = pos.groupby("DSM5_symptom")["post_id"].nunique()
    assert set(per_symptom.index) == set(SYMPTOMS)
    assert per_symptom["DEPRESSED_MOOD"] > 2 * per_symptom["PSYCHOMOTOR"]
    assert per_symptom["WORTHLESSNESS"] > 2 * per_symptom["PSYCHOMOTOR"]
    no_symptom = 1 - pos["post_id"].nunique() / len(posts)
    assert 0.15 <= no_symptom <= 0.35


def test_learnable_by_bag_of_words(synth: Path) -> None:
    """A linear bag-of-words model beats chance (macro-F1 ~0.1) by far."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    posts, ann = _read(synth)
    pos = ann[(ann["status"] == "1") & ann["DSM5_symptom"].isin(SYMPTOMS)]
    y = np.array([[int(((pos["post_id"] == pid) & (pos["DSM5_symptom"] == s)).any())
                   for s in SYMPTOMS] for pid in posts["post_id"]])
    x = CountVectorizer(binary=True).fit_transform(posts["text"])
    model = OneVsRestClassifier(LogisticRegression(C=10.0, solver="liblinear", class_weight="balanced"))
    predicted = cross_val_predict(model, x, y, cv=5)
    assert f1_score(y, predicted, average="macro", zero_division=0) > 0.6
