"""The study report's numbers (model and baselines) land on the MLflow study-level run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_app.tracking.mlflow_callback import KIND_TAG, STUDY_TAG
from tune_app.tracking.report_log import log_study_report, report_metrics

REPORT = {
    "report_id": "0" * 32, "split": "test",
    "test_metrics": {"criteria_matching": {"macro_f1": 0.7, "micro_f1": 0.8},
                     "evidence_binding": {"token_f1": 0.6, "char_f1": 0.65, "null_accuracy": 0.9}},
    "baselines": {
        "split": "test",
        "criteria_matching": {"tfidf_logreg": {"macro_f1": 0.5}, "always_positive": {"macro_f1": 0.25}},
        "evidence_binding": {"lexical_tfidf": {"char_f1": 0.4, "exact_match": 0.3, "null_accuracy": 0.95}},
        "model_minus_baseline": {"criteria_matching": {"tfidf_logreg": 0.2, "always_positive": 0.45},
                                 "evidence_binding": {"lexical_tfidf": 0.25}},
    },
}


def test_report_metrics_flatten_model_and_baselines() -> None:
    m = report_metrics(REPORT)
    assert m["test.model.criteria.macro_f1"] == 0.7 and m["test.model.evidence.char_f1"] == 0.65
    assert m["test.baseline.tfidf_logreg.macro_f1"] == 0.5
    assert m["test.baseline.always_positive.macro_f1"] == 0.25
    assert m["test.baseline.lexical_tfidf.char_f1"] == 0.4
    assert m["test.model_minus.tfidf_logreg"] == pytest.approx(0.2)
    assert m["test.model_minus.lexical_tfidf"] == pytest.approx(0.25)


def test_logged_on_the_study_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_study_report(REPORT, tracking_uri=uri, experiment_name="exp", study_name="s1",
                              files=[tmp_path / "evaluation_report.json"])
    assert run_id is not None
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.tags[KIND_TAG] == "study" and run.data.tags[STUDY_TAG] == "s1"
    assert client.get_experiment(run.info.experiment_id).name == "exp", "the trial runs' experiment"
    assert run.data.metrics == report_metrics(REPORT)
    assert run.data.tags["tune_app.test_report_json"].endswith("evaluation_report.json")
    # The same run again (a re-evaluation), never a second study run; nothing under ./mlruns.
    assert log_study_report(REPORT, tracking_uri=uri, experiment_name="exp", study_name="s1") == run_id
    assert not (tmp_path / "mlruns").exists()


def test_unreachable_backend_is_not_an_error() -> None:
    assert log_study_report(REPORT, tracking_uri="http://127.0.0.1:9", experiment_name="e",
                            study_name="s") is None
