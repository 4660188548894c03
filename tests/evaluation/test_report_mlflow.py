"""The study report's numbers (model and baselines) land on the MLflow study-level run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    # The same run again (the same report logged twice), never a second study run or step.
    assert log_study_report(REPORT, tracking_uri=uri, experiment_name="exp", study_name="s1") == run_id
    assert [m.step for m in client.get_metric_history(run_id, "test.model.criteria.macro_f1")] == [0]
    assert not (tmp_path / "mlruns").exists()


def write_report(folder: Path, report: dict[str, Any], plots: list[str]) -> dict[str, Any]:
    """``report`` written in ``folder`` as ``write_study_report`` does (JSON, HTML, plots it lists)."""
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    listed = {Path(name).stem: f"plots/{name}" for name in plots}
    for rel in listed.values():
        (folder / rel).write_bytes(b"\x89PNG " + rel.encode())
    (folder / "evaluation_report.html").write_text(f"<html>{report['report_id']}</html>")
    (folder / "plots" / "stale_unlisted.png").write_bytes(b"not part of the report")
    out = {**report, "artifacts": {**listed, "html": "evaluation_report.html"}}
    (folder / "evaluation_report.json").write_text(json.dumps(out))
    return out


def artifact_tree(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(artifact_tree(client, run_id, item.path) if item.is_dir else [item.path])
    return sorted(out)


def test_report_files_are_artifacts_and_a_re_evaluation_replaces_them(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "experiments"
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    first = write_report(tmp_path / "study", REPORT, ["optimization_history.png", "confusion_matrices.png"])
    run_id = log_study_report(first, tracking_uri=uri, experiment_name="exp", study_name="s1",
                              report_dir=tmp_path / "study")
    assert run_id is not None
    client = MlflowClient(uri)
    assert artifact_tree(client, run_id) == ["evaluation_report.html", "evaluation_report.json",
                                             "plots/confusion_matrices.png", "plots/optimization_history.png"]
    assert client.get_run(run_id).info.artifact_uri.startswith((storage / "mlartifacts").as_uri())
    assert (storage / "mlartifacts" / "exp" / run_id / "artifacts" / "evaluation_report.json").is_file()

    # A re-evaluation (python -m tune_app.evaluate): its files replace the set, its metrics go to step 1.
    second = write_report(tmp_path / "manual", {**REPORT, "report_id": "1" * 32, "source": "manual"},
                          ["optimization_history.png"])
    assert log_study_report(second, tracking_uri=uri, experiment_name="exp", study_name="s1",
                            report_dir=tmp_path / "manual") == run_id
    assert artifact_tree(client, run_id) == ["evaluation_report.html", "evaluation_report.json",
                                             "plots/optimization_history.png"]
    local = client.download_artifacts(run_id, "evaluation_report.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["report_id"] == "1" * 32
    assert [m.step for m in client.get_metric_history(run_id, "test.model.criteria.macro_f1")] == [0, 1]
    tags = client.get_run(run_id).data.tags
    assert tags["tune_app.test_report_id"] == "1" * 32 and tags["tune_app.test_report_source"] == "manual"
    assert tags["tune_app.test_report_html"].endswith("manual/evaluation_report.html")

    # resume= of a complete study: only when the run holds no report yet.
    assert log_study_report(first, tracking_uri=uri, experiment_name="exp", study_name="s1",
                            report_dir=tmp_path / "study", only_if_missing=True) == run_id
    assert client.get_run(run_id).data.tags["tune_app.test_report_id"] == "1" * 32
    assert [m.step for m in client.get_metric_history(run_id, "test.model.criteria.macro_f1")] == [0, 1]


def test_unreachable_backend_is_not_an_error() -> None:
    assert log_study_report(REPORT, tracking_uri="http://127.0.0.1:9", experiment_name="e",
                            study_name="s") is None
