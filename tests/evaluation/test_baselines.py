"""The report's baselines: sentence splitting, hand-checkable scores, determinism, contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training import synthetic_posts
from tune_app.data.schema import EvidenceSpan, Post
from tune_app.evaluation.baselines import (
    BASELINE_NAMES,
    baseline_report,
    criteria_baselines,
    evidence_baseline,
    sentence_spans,
)


def test_sentence_spans_trim_and_split() -> None:
    text = "  i feel sad.  i can't sleep!! ok\nnew line?"
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["i feel sad.", "i can't sleep!!", "ok", "new line?"]
    assert sentence_spans("   ") == []


def _post(pid: str, text: str, *evidence: tuple[str, str]) -> Post:
    spans = tuple(EvidenceSpan(symptom=sym, sentence_id=f"{pid}_{i}", start=text.index(sent),
                               end=text.index(sent) + len(sent), text=sent)
                  for i, (sym, sent) in enumerate(evidence))
    return Post(post_id=pid, text=text, symptoms=tuple(sorted({sym for sym, _ in evidence})), evidence=spans)


def test_evidence_baseline_picks_the_sentence_like_the_training_evidence() -> None:
    train = [_post("a", "i feel so sad today. the weather is fine.", ("DEPRESSED_MOOD", "i feel so sad today.")),
             _post("b", "we went out. so sad and empty.", ("DEPRESSED_MOOD", "so sad and empty."))]
    test = [_post("c", "lunch was good. i am sad and empty.", ("DEPRESSED_MOOD", "i am sad and empty."))]
    present = np.zeros((1, 10), dtype=int)
    present[0, 0] = 1  # DEPRESSED_MOOD predicted present
    got = evidence_baseline(train, test, present=present)
    assert got["char_f1"] == 1.0 and got["exact_match"] == 1.0
    assert got["null_accuracy"] == 1.0 and got["num_gold_spans"] == 1
    missed = evidence_baseline(train, test, present=np.zeros((1, 10), dtype=int))
    assert missed["char_f1"] == 0.0  # predicted absent: null on a gold slot


@pytest.fixture(scope="module")
def posts(tmp_path_factory: pytest.TempPathFactory) -> list[Post]:
    return synthetic_posts(Path(tmp_path_factory.mktemp("baselines")), 120)


def test_criteria_baselines_on_the_synthetic_set(posts: list[Post]) -> None:
    train, test = posts[:90], posts[90:]
    scores = criteria_baselines(train, test)
    assert set(scores) == set(BASELINE_NAMES["criteria_matching"])
    ap = scores["always_positive"]
    assert ap["micro_recall"] == 1.0 and 0.0 < ap["macro_f1"] < 0.5
    assert scores["tfidf_logreg"]["macro_f1"] > ap["macro_f1"] + 0.2  # lexical cues carry far
    assert len(ap["per_criterion_f1"]) == 10  # nine symptoms + NO_SYMPTOMS


def test_baseline_report_is_deterministic_and_fits_the_contract(posts: list[Post]) -> None:
    from tune_app.evaluation.contracts import validator

    model = {"criteria_matching": {"macro_f1": 0.5}, "evidence_binding": {"char_f1": 0.25}}
    a = baseline_report(posts[:90], posts[90:], model_metrics=model)
    b = baseline_report(posts[:90], posts[90:], model_metrics=model)
    assert a == b
    assert a["model_minus_baseline"]["criteria_matching"]["always_positive"] == pytest.approx(
        0.5 - a["criteria_matching"]["always_positive"]["macro_f1"])
    assert a["model_minus_baseline"]["evidence_binding"]["lexical_tfidf"] == pytest.approx(
        0.25 - a["evidence_binding"]["lexical_tfidf"]["char_f1"])
    schema = validator("study_report").schema
    sub = {"$defs": schema["$defs"], **schema["properties"]["baselines"]}
    from jsonschema import Draft202012Validator

    assert list(Draft202012Validator(sub).iter_errors(a)) == []


def test_html_page_shows_the_model_against_the_baselines(tmp_path: Path) -> None:
    from tune_app.evaluation.plots import baseline_rows, write_html

    report = {
        "study_id": "s", "split": "test", "best_trial_id": "t0", "optimization_metric_name": "val_macro_f1",
        "best_validation_score": 0.8, "evaluated_checkpoints": [{"path": "t0/checkpoint_000001"}],
        "decision_thresholds": {"strategy": "per_criterion"}, "trials_count": 1, "generated_at": "now",
        "test_metrics": {"criteria_matching": {"macro_f1": 0.7}, "evidence_binding": {"char_f1": 0.6}},
        "baselines": {"criteria_matching": {"tfidf_logreg": {"macro_f1": 0.5}, "always_positive": {"macro_f1": 0.25}},
                      "evidence_binding": {"lexical_tfidf": {"char_f1": 0.4}},
                      "model_minus_baseline": {"criteria_matching": {"tfidf_logreg": 0.2, "always_positive": 0.45},
                                               "evidence_binding": {"lexical_tfidf": 0.2}}},
    }
    rows = baseline_rows(report)
    assert rows[0] == ("tuned model", "criteria macro-F1", "0.7000", "")
    assert ("tfidf_logreg", "criteria macro-F1", "0.5000", "+0.2000") in rows
    assert ("lexical_tfidf", "evidence char F1", "0.4000", "+0.2000") in rows
    page = write_html(report, {}, tmp_path / "r.html").read_text()
    assert "Against the baselines" in page and "always_positive" in page and "+0.4500" in page
