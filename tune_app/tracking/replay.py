"""Replay a study's MLflow outage buffer outside a running study, and say what is left.

``replay_pending(study_dir, tracking_uri)`` is what ``python -m tune_app.run resume=<study>``
calls for a study whose trials all ended (Tune runs no callback then). ``pending_note``
is the line the end-of-study summary prints while records are still buffered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tune_app.tracking.buffer import (
    BUFFER_FILE,
    REJECTED_FILE,
    BufferedMlflowWriter,
    MetricBuffer,
    RejectedLog,
    reset_store_cache,
)


@dataclass(frozen=True)
class ReplayResult:
    """Records MLflow accepted now, records still buffered, records refused for good (in total)."""

    replayed: int
    pending: int
    rejected: int


def replay_pending(study_dir: Path | str, tracking_uri: str, *, experiment_name: str | None = None,
                   timeout_s: float = 60.0) -> ReplayResult:
    """Send ``<study>/mlflow_buffer.jsonl`` to ``tracking_uri`` once (runs the store lost are recreated)."""
    from tune_app.tracking.mlflow_callback import _MLFLOW_HTTP_ENV

    study_dir = Path(study_dir)
    buffer = MetricBuffer(study_dir / BUFFER_FILE)
    rejected = RejectedLog(study_dir / REJECTED_FILE)
    before = buffer.count()
    if before == 0:
        return ReplayResult(0, 0, rejected.count())
    for key, value in _MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(key, value)

    def client() -> object:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri)

    rejected_before = rejected.count()
    reset_store_cache()  # open the store afresh: it may have been deleted or replaced since this process opened it
    writer = BufferedMlflowWriter(buffer, client, experiment_name=experiment_name or study_dir.name,
                                  backoff_initial_s=timeout_s, backoff_max_s=timeout_s)
    writer.flush(timeout_s)
    writer.close(0)
    pending = buffer.count()
    refused = rejected.count()
    return ReplayResult(replayed=max(0, before - pending - (refused - rejected_before)), pending=pending,
                        rejected=refused)


def pending_note(study_dir: Path | str) -> str | None:
    """``MLflow: N record(s) still buffered in <file>; replay them: <command>`` (``None`` when none are)."""
    study_dir = Path(study_dir)
    pending = MetricBuffer(study_dir / BUFFER_FILE).count()
    rejected = RejectedLog(study_dir / REJECTED_FILE).count()
    notes = []
    if pending:
        notes.append(f"MLflow: {pending} record(s) still buffered in {study_dir / BUFFER_FILE} (store unreachable); "
                     f"replay them with: python -m tune_app.run resume={study_dir}")
    if rejected:
        notes.append(f"MLflow: {rejected} record(s) refused for good are kept, with the reason, in "
                     f"{study_dir / REJECTED_FILE}")
    return "\n".join(notes) or None
