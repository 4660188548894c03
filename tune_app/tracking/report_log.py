"""The study's test report on its MLflow study-level run.

:func:`log_study_report` puts the headline numbers of ``<study>/evaluation_report.json``
(the tuned model's test metrics and every baseline's, plus the model's margin over each)
on the study-level run that ``ResumableMLflowLoggerCallback`` created
(the trial runs' parent in the study's experiment, tags ``tune_app.kind=study`` +
``tune_app.study``), and
tags naming the report's id and files. The files are not copied as artifacts: the study
experiment has no artifact root of its own, so MLflow would write them under ``./mlruns``
of whatever folder the command ran in. Best effort: tracking never fails a study, so an
unreachable backend is logged and the report on disk stays the record.
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


def log_study_report(report: dict[str, Any], *, tracking_uri: str, experiment_name: str, study_name: str,
                     files: list[Path] | None = None) -> str | None:
    """Log ``report``'s metrics on the study-level run (``files``, the report's paths, as
    tags); its run id, or None when MLflow could not be reached (logged, never raised)."""
    for key, value in _MLFLOW_HTTP_ENV.items():  # fail fast on an unreachable server
        os.environ.setdefault(key, value)
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        match = study_match(study_name)
        run_id, _ = find_or_create_run(client, experiment_name, match, dict(match), f"study-{study_name}")
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(report_metrics(report).items())]
        for lo in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[lo:lo + 500])
        client.set_tag(run_id, "tune_app.test_report_id", str(report.get("report_id", "")))
        for path in files or []:
            client.set_tag(run_id, f"tune_app.test_report_{Path(path).suffix.lstrip('.') or 'file'}",
                           sanitize(str(path)))
        return str(run_id)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the study
        from tune_app.tracking.outage_log import log_debug_detail, short_reason

        logger.warning("MLflow: could not log the study report on the study run (%s); "
                       "the report on disk is complete", short_reason(exc))
        log_debug_detail(logger.name, "MLflow: study report not logged", exc)
        return None
