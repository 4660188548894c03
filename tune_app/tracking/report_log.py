"""The study's test report on its MLflow study-level run.

:func:`log_study_report` puts the report on the study-level run that
``ResumableMLflowLoggerCallback`` created (the trial runs' parent, in the study's
experiment, tags ``tune_app.kind=study`` + ``tune_app.study``; created here when it is
missing, found again otherwise):

* metrics: the headline numbers of ``evaluation_report.json`` (the tuned model's test
  metrics and every baseline's, plus the model's margin over each). Step 0 for the first
  report, one more for each later report (a re-evaluation), so no step repeats; logging
  the same report again (same ``report_id``) logs nothing twice;
* artifacts: ``evaluation_report.json``, ``evaluation_report.html`` and ``plots/*.png``,
  replacing the previous report's set (a re-evaluation leaves one set, never two). With the
  default sqlite store they are under ``<tune.storage_path>/mlartifacts``
  (``tune_app.tracking.experiment``);
* tags: the report's id, source and files (``tune_app.test_report_*``), set last: a run
  with ``tune_app.test_report_id`` holds that report's metrics and files.

Best effort: tracking never fails a study, so an unreachable backend is logged and the
report on disk stays the record (``resume=`` of the complete study logs it then: see
``evaluation.report.evaluate_finished_study``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from tune_app.tracking.buffer import find_or_create_run
from tune_app.tracking.mlflow_callback import _MLFLOW_HTTP_ENV, study_match
from tune_app.tracking.sanitize import sanitize

logger = logging.getLogger(__name__)

#: Headline metrics of a split's ``criteria_matching`` / ``evidence_binding`` sections.
CRITERIA_KEYS: tuple[str, ...] = ("macro_f1", "micro_f1", "macro_precision", "macro_recall")
EVIDENCE_KEYS: tuple[str, ...] = ("token_f1", "char_f1", "exact_match", "null_accuracy")


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics of a study report: ``<split>.model.<task>.<metric>``,
    ``<split>.baseline.<name>.<metric>`` and ``<split>.model_minus.<name>``."""
    split = str(report["split"])
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)

    metrics = report.get(f"{split}_metrics") or {}
    for key in CRITERIA_KEYS:
        put(f"{split}.model.criteria.{key}", (metrics.get("criteria_matching") or {}).get(key))
    for key in EVIDENCE_KEYS:
        put(f"{split}.model.evidence.{key}", (metrics.get("evidence_binding") or {}).get(key))
    baselines = report.get("baselines") or {}
    for name, scores in (baselines.get("criteria_matching") or {}).items():
        for key in CRITERIA_KEYS:
            put(f"{split}.baseline.{name}.{key}", scores.get(key))
    for name, scores in (baselines.get("evidence_binding") or {}).items():
        for key in ("char_f1", "exact_match", "null_accuracy"):
            put(f"{split}.baseline.{name}.{key}", scores.get(key))
    for deltas in (baselines.get("model_minus_baseline") or {}).values():
        for name, value in (deltas or {}).items():
            put(f"{split}.model_minus.{name}", value)
    return out


#: The report's files as artifacts of the study run (names as in ``tune_app.evaluation.report``).
REPORT_FILE = "evaluation_report.json"
HTML_FILE = "evaluation_report.html"
PLOTS_DIR = "plots"
REPORT_ID_TAG = "tune_app.test_report_id"
REPORT_SOURCE_TAG = "tune_app.test_report_source"


def report_artifacts(report: dict[str, Any], report_dir: Path) -> list[tuple[Path, str | None]]:
    """``(file, artifact folder)`` of each file of the report in ``report_dir`` that exists:
    the JSON, and the HTML page and plots the report lists under ``artifacts``."""
    report_dir = Path(report_dir)
    relative = [REPORT_FILE, *sorted(str(v) for v in (report.get("artifacts") or {}).values())]
    out: list[tuple[Path, str | None]] = []
    for rel in dict.fromkeys(relative):
        path = report_dir / rel
        if path.is_file() and not Path(rel).is_absolute() and ".." not in Path(rel).parts:
            folder = Path(rel).parent.as_posix()
            out.append((path, None if folder in ("", ".") else folder))
    return out


def _replace_artifacts(client: Any, run_id: str, files: list[tuple[Path, str | None]]) -> None:
    """Upload ``files`` to ``run_id`` in place of the previous report's JSON, HTML and plots."""
    present = {a.path for a in client.list_artifacts(run_id)}
    stale = [p for p in (REPORT_FILE, HTML_FILE, PLOTS_DIR) if p in present]
    if stale:
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri,
                                           tracking_uri=client.tracking_uri)
            for name in stale:
                repo.delete_artifacts(name)
        except Exception as exc:  # noqa: BLE001 - a store without deletes: same names are overwritten
            from tune_app.tracking.outage_log import log_debug_detail

            log_debug_detail(logger.name, "MLflow: the previous report's artifacts could not be deleted; "
                                          "overwriting them", exc)
    for file, folder in files:
        client.log_artifact(run_id, str(file), folder)


def _next_step(client: Any, run_id: str, key: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, key)), default=-1) + 1


def log_study_report(report: dict[str, Any], *, tracking_uri: str, experiment_name: str, study_name: str,
                     files: list[Path] | None = None, report_dir: Path | None = None,
                     only_if_missing: bool = False) -> str | None:
    """Log ``report`` on the study-level run: metrics, its files in ``report_dir`` as artifacts
    (replacing the previous set), ``files`` (default: the JSON and HTML in ``report_dir``) as
    tags. ``only_if_missing``: do nothing when the run already holds a report. Returns the
    run id, or None when MLflow could not be reached (logged, never raised)."""
    for key, value in _MLFLOW_HTTP_ENV.items():  # fail fast on an unreachable server
        os.environ.setdefault(key, value)
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        match = study_match(study_name)
        run_id, _ = find_or_create_run(client, experiment_name, match, dict(match), f"study-{study_name}")
        held = client.get_run(run_id).data.tags.get(REPORT_ID_TAG)
        report_id = str(report.get("report_id", ""))
        if only_if_missing and held:
            return str(run_id)
        values = sorted(report_metrics(report).items())
        if held != report_id and values:
            headline = f"{report.get('split')}.model.criteria.macro_f1"
            step = _next_step(client, run_id, headline if headline in dict(values) else values[0][0])
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in values]
            for lo in range(0, len(metrics), 500):
                client.log_batch(run_id, metrics=metrics[lo:lo + 500])
        if report_dir is not None:
            _replace_artifacts(client, run_id, report_artifacts(report, report_dir))
            if files is None:
                files = [p for p in (Path(report_dir) / REPORT_FILE, Path(report_dir) / HTML_FILE) if p.is_file()]
        tags = {f"tune_app.test_report_{Path(p).suffix.lstrip('.') or 'file'}": sanitize(str(p))
                for p in files or []}
        tags[REPORT_SOURCE_TAG] = sanitize(str(report.get("source") or ""))
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_tag(run_id, REPORT_ID_TAG, report_id)  # last: the run holds this report whole
        return str(run_id)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the study
        from tune_app.tracking.outage_log import log_debug_detail, short_reason

        logger.warning("MLflow: could not log the study report on the study run (%s); "
                       "the report on disk is complete", short_reason(exc))
        log_debug_detail(logger.name, "MLflow: study report not logged", exc)
        return None
