"""Tune callbacks that own checkpoint bytes on disk: retention and storage pressure.

``RetentionCallback`` is the one place that deletes checkpoints. On every reported
checkpoint and at every trial end it asks the pure ``plan_retention`` what to keep
and prunes the rest. Pruning leaves a tiny tombstone folder (``PRUNED`` marker), so
a checkpoint that Tune's saved experiment state still references always resolves
and restore after a SIGKILL never fails on a missing folder; the trainable skips
tombstones and falls back to the newest valid checkpoint.

``StoragePressureCallback`` runs the background ``StorageMonitor`` and, while free
space is critical, escalates the retention policy one step at a time:
1. prune the running trial's unprotected checkpoints now;
2. later trials keep ``keep_best_k=1, keep_last_n=0``;
3. keep only the single best checkpoint of the whole study.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune_app.checkpoints.cleanup_scan import checkpoint_score, trial_finished
from tune_app.checkpoints.retention import (
    CheckpointRecord,
    RetentionPolicy,
    escalate,
    plan_retention,
    plan_single_best,
    protected_paths,
)
from tune_app.checkpoints.store import (
    PRUNED_FILE,
    STATE_FILE,
    dir_nbytes,
    is_tombstone,
    prune_checkpoint,
)
from tune_app.config import AppConfig

logger = logging.getLogger(__name__)

#: MLflow tag on the trial's run holding the storage-pressure step reached (1..3).
PRESSURE_TAG = "tune_app.storage_pressure_step"
#: ``<study>/storage_pressure.jsonl``: one JSON line {step, time, trial_id, free_fraction} per escalation.
#: Not a top-level ``*.json``: on restore Tune copies the study folder's top-level ``*.json``/``*.pkl`` into its
#: staging folder and copies them back at every state sync, so a later write to such a file by the
#: driver would be overwritten by the stale copy (``.jsonl`` is not synced).
PRESSURE_FILE = "storage_pressure.jsonl"
STEP_ACTIONS = {1: "prune the running trial's unprotected checkpoints",
                2: "later trials keep best 1, last 0",
                3: "keep only the single best checkpoint of the study"}


def _checkpoint_index(path: Path) -> int:
    try:
        return int(path.name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def scan_records(study_dir: Path, metric: str) -> dict[str, CheckpointRecord]:
    """Checkpoint records of a study rebuilt from disk (used after a restore).

    A prune that a crash interrupted (``PRUNED`` marker written, files left) is
    finished here: its deletion was already decided and recorded.
    """
    records: dict[str, CheckpointRecord] = {}
    for trial_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        finished = trial_finished(trial_dir)
        for ckpt in sorted(trial_dir.glob("checkpoint_*")):
            if not ckpt.is_dir():
                continue
            if is_tombstone(ckpt):
                if any(entry.name != PRUNED_FILE for entry in ckpt.iterdir()):
                    freed = prune_checkpoint(ckpt, reason="finishing an interrupted prune")
                    logger.info("retention: finished the interrupted prune of %s (%.1f MB)", ckpt, freed / 1e6)
                continue
            if not (ckpt / STATE_FILE).is_file():
                continue
            records[str(ckpt)] = CheckpointRecord(
                trial_id=trial_dir.name, path=str(ckpt), index=_checkpoint_index(ckpt),
                score=checkpoint_score(ckpt, metric), size_bytes=dir_nbytes(ckpt), trial_finished=finished,
            )
    return records


class RetentionCallback(Callback):
    """Decides, after every checkpoint and trial end, which checkpoint bytes stay."""

    def __init__(self, study_dir: Path, *, metric: str, mode: str, policy: RetentionPolicy) -> None:
        self.study_dir = Path(study_dir)
        self.metric = metric
        self.mode = mode
        self.base_policy = policy
        self.pressure_step = 0
        self._records: dict[str, CheckpointRecord] | None = None

    @classmethod
    def from_config(cls, cfg: AppConfig) -> RetentionCallback:
        r = cfg.retention
        policy = RetentionPolicy(keep_last_n=r.keep_last_n, keep_best_k=r.keep_best_k,
                                 keep_best_k_max=r.keep_best_k_max, max_total_size_gb=r.max_total_size_gb)
        return cls(cfg.study_dir, metric=cfg.tune.metric, mode=cfg.tune.mode, policy=policy)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_records"] = None  # rebuilt from disk after a restore
        return state

    @property
    def policy(self) -> RetentionPolicy:
        return escalate(self.base_policy, min(self.pressure_step, 2)) if self.pressure_step else self.base_policy

    @property
    def records(self) -> dict[str, CheckpointRecord]:
        if self._records is None:
            self._records = scan_records(self.study_dir, self.metric) if self.study_dir.is_dir() else {}
        return self._records

    def _trial_key(self, trial: Any) -> str:
        return Path(trial.storage.trial_fs_path).name

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = Path(checkpoint.path)
        score = (trial.last_result or {}).get(self.metric)
        self.records[str(path)] = CheckpointRecord(
            trial_id=self._trial_key(trial), path=str(path), index=_checkpoint_index(path),
            score=float(score) if isinstance(score, int | float) else None,
            size_bytes=dir_nbytes(path), trial_finished=False,
        )
        self.apply()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = self._trial_key(trial)
        for path, rec in list(self.records.items()):
            if rec.trial_id == key and not rec.trial_finished:
                self.records[path] = CheckpointRecord(rec.trial_id, rec.path, rec.index, rec.score,
                                                      rec.size_bytes, True)
        self.apply()

    def apply(self) -> int:
        """Prune what the current policy does not keep; returns bytes freed."""
        records = list(self.records.values())
        if self.pressure_step >= 3:
            plan = plan_single_best(records, self.mode)  # type: ignore[arg-type]
        else:
            plan = plan_retention(records, self.policy, mode=self.mode)  # type: ignore[arg-type]
        freed = 0
        for path in sorted(plan.delete):
            freed += prune_checkpoint(Path(path), reason=plan.reasons.get(path, "retention"))
            self.records.pop(path, None)
        if freed:
            logger.info("retention: pruned %d checkpoint(s), %.1f MB freed", len(plan.delete), freed / 1e6)
        if plan.over_budget:
            logger.warning("retention: protected checkpoints alone exceed max_total_size_gb=%s",
                           self.base_policy.max_total_size_gb)
        return freed


class StoragePressureCallback(Callback):
    """Watches free disk space and escalates retention while it is critical.

    A check runs after every trial result (i.e. before the trial's next save) and
    at every trial start. While the monitor is critical (free below
    ``warn_free_fraction``) each check escalates one step (max 3): 1 prunes the
    running trial's unprotected checkpoints, 2 switches to ``keep_best_k=1,
    keep_last_n=0``, 3 keeps only the study's single best (plus resume points).
    Each step is logged (WARNING), tagged on the trial's MLflow run
    (``tune_app.storage_pressure_step``) and appended to ``<study>/storage_pressure.jsonl``
    (step, time, trial, free fraction); that record is read back at setup, so a
    restored study stays at the step it had reached.
    ``disk_usage`` is injectable (tests); it defaults to ``shutil.disk_usage``.
    """

    def __init__(self, study_dir: Path, retention: RetentionCallback, *, interval_s: float,
                 warn_free_fraction: float, error_free_fraction: float, tracking_uri: str,
                 experiment_name: str, disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> None:
        self.study_dir = Path(study_dir)
        self.retention = retention
        self.interval_s = interval_s
        self.warn_free_fraction = warn_free_fraction
        self.error_free_fraction = error_free_fraction
        from tune_app.tracking.sanitize import sanitize

        self.tracking_uri = tracking_uri
        self.experiment_name = sanitize(experiment_name)  # as MLflow has it (the writers sanitise)
        self.disk_usage = disk_usage
        self._monitor: Any = None
        self._tagged: set[str] = set()

    @classmethod
    def from_config(cls, cfg: AppConfig, retention: RetentionCallback) -> StoragePressureCallback:
        r = cfg.retention
        return cls(cfg.study_dir, retention, interval_s=r.monitor_interval_s,
                   warn_free_fraction=r.warn_free_fraction, error_free_fraction=r.error_free_fraction,
                   tracking_uri=cfg.tracking_uri, experiment_name=cfg.experiment_name)

    def __getstate__(self) -> dict[str, Any]:
        from tune_app.tracking.sanitize import sanitize

        state = self.__dict__.copy()
        state["_monitor"] = None
        state["_tagged"] = set()
        state["tracking_uri"] = sanitize(self.tracking_uri)  # tuner.pkl: no credentials
        return state

    def setup(self, **info: Any) -> None:  # type: ignore[override]
        from tune_app.checkpoints.monitor import StorageMonitor

        self.study_dir.mkdir(parents=True, exist_ok=True)
        recorded = [int(e.get("step", 0)) for e in read_pressure_record(self.study_dir)]
        if recorded and max(recorded) > self.retention.pressure_step:
            self.retention.pressure_step = min(max(recorded), 3)
            logger.warning("storage pressure: continuing at step %d recorded in %s",
                           self.retention.pressure_step, self.study_dir / PRESSURE_FILE)
        self._monitor = StorageMonitor(self.study_dir, interval_s=self.interval_s,
                                       warn_free_fraction=self.warn_free_fraction,
                                       error_free_fraction=self.error_free_fraction,
                                       disk_usage=self.disk_usage)
        self._monitor.start()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._monitor is not None:
            self._monitor.stop()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.check(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.check(trial)

    def check(self, trial: Any | None = None) -> int:
        """Escalate one step if free space is critical now; returns the current step."""
        if self._monitor is None:
            return self.retention.pressure_step
        status = self._monitor.check_now()
        if self._monitor.needs_pruning and self.retention.pressure_step < 3:
            # Send MLflow operations buffered on disk before freeing space, so the
            # buffer does not grow while the disk is short.
            from tune_app.tracking.buffer import flush_all

            flush_all(timeout_s=10)
            self.retention.pressure_step += 1
            step = self.retention.pressure_step
            logger.warning("storage pressure: %.1f%% free, escalating retention to step %d (%s)",
                           100 * status.free_fraction, step, STEP_ACTIONS[step])
            self._record(trial, step, status.free_fraction)
            self._tag(trial, step)
        elif self.retention.pressure_step and trial is not None and trial.trial_id not in self._tagged:
            self._tag(trial, self.retention.pressure_step)  # a later trial running under pressure
        if not self._monitor.needs_pruning:
            return self.retention.pressure_step
        if self.retention.pressure_step == 1 and trial is not None:
            self._prune_trial_unprotected(trial)
        self.retention.apply()
        return self.retention.pressure_step

    def _prune_trial_unprotected(self, trial: Any) -> int:
        """Step 1: the running trial keeps only protected checkpoints (study best, resume point)."""
        key = self.retention._trial_key(trial)
        records = list(self.retention.records.values())
        keep = protected_paths(records, self.retention.policy, mode=self.retention.mode)  # type: ignore[arg-type]
        freed = 0
        for rec in records:
            if rec.trial_id == key and rec.path not in keep:
                freed += prune_checkpoint(Path(rec.path), reason="storage pressure step 1: unprotected")
                self.retention.records.pop(rec.path, None)
        if freed:
            logger.warning("storage pressure step 1: pruned %.1f MB of trial %s", freed / 1e6, key)
        return freed

    def _record(self, trial: Any | None, step: int, free_fraction: float) -> None:
        entry = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "trial_id": getattr(trial, "trial_id", None), "free_fraction": round(free_fraction, 6)}
        try:
            with (self.study_dir / PRESSURE_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a full disk must not stop the escalation itself
            logger.warning("could not record the storage-pressure step in %s: %s", PRESSURE_FILE, exc)

    def _tag(self, trial: Any | None, step: int) -> None:
        try:
            from mlflow.tracking import MlflowClient

            from tune_app.tracking.mlflow_callback import (
                KIND_TAG,
                STUDY_KIND,
                STUDY_TAG,
                TRIAL_ID_TAG,
            )

            client = MlflowClient(self.tracking_uri)
            exp = client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                return
            query = f"tags.`{STUDY_TAG}` = '{self.retention.study_dir.name}'"
            if trial is not None:
                query += f" and tags.`{TRIAL_ID_TAG}` = '{trial.trial_id}'"
            else:  # no trial running: the study-level run
                query += f" and tags.`{KIND_TAG}` = '{STUDY_KIND}'"
            for run in client.search_runs([exp.experiment_id], filter_string=query, max_results=1):
                client.set_tag(run.info.run_id, PRESSURE_TAG, str(step))
                if trial is not None:
                    self._tagged.add(trial.trial_id)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("could not record the storage-pressure step in MLflow: %s", exc)


def read_pressure_record(study_dir: Path) -> list[dict[str, Any]]:
    """The escalations recorded in ``<study>/storage_pressure.jsonl`` (a torn last line is skipped)."""
    try:
        lines = (Path(study_dir) / PRESSURE_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
