"""Tune callbacks that decide when checkpoint bytes go: retention and storage pressure.

Both call the study's ``checkpoints.keeper.CheckpointKeeper``, the one deleter.
``RetentionCallback``: on every reported checkpoint and at every trial end the keeper
prunes what the pure ``plan_retention`` does not keep. Pruning leaves a tiny tombstone folder (``PRUNED`` marker), so
a checkpoint that Tune's saved experiment state still references always resolves
and restore after a SIGKILL never fails on a missing folder; the trainable skips
tombstones and falls back to the newest valid checkpoint.

``StoragePressureCallback`` runs the background ``StorageMonitor`` and, while free
space is critical, escalates the retention policy one step at a time:
1. prune the running trials' unprotected checkpoints now;
2. later trials keep ``keep_best_k=1, keep_last_n=0``;
3. keep only the single best checkpoint of the whole study.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from tune_app.checkpoints import failpoints
from tune_app.checkpoints.keeper import CheckpointKeeper
from tune_app.checkpoints.retention import CheckpointRecord, RetentionPolicy, escalate
from tune_app.checkpoints.store import checkpoint_index, dir_nbytes
from tune_app.config import AppConfig

if TYPE_CHECKING:
    from tune_app.object_store import StudyMirror

logger = logging.getLogger(__name__)

#: MLflow tag on the trial's run holding the storage-pressure step reached (1..3).
PRESSURE_TAG = "tune_app.storage_pressure_step"
#: ``<study>/storage_pressure.jsonl``: one JSON line {step, time, trial_id, free_fraction} per escalation.
#: Not a top-level ``*.json``: on restore Tune copies the study folder's top-level ``*.json``/``*.pkl`` into its
#: staging folder and copies them back at every state sync, so a later write to such a file by the
#: driver would be overwritten by the stale copy (``.jsonl`` is not synced).
PRESSURE_FILE = "storage_pressure.jsonl"
STEP_ACTIONS = {1: "prune the running trials' unprotected checkpoints",
                2: "later trials keep best 1, last 0",
                3: "keep only the single best checkpoint of the study"}


def _trial_key(trial: Any) -> str:
    """The trial's folder name: how records name their trial."""
    return Path(trial.storage.trial_fs_path).name


class RetentionCallback(Callback):
    """Decides, after every checkpoint and trial end, which checkpoint bytes stay."""

    def __init__(self, study_dir: Path, *, metric: str, policy: RetentionPolicy,
                 keep_optimizer_state: bool = True) -> None:
        self.study_dir = Path(study_dir)
        self.metric = metric
        self.base_policy = policy
        self.keep_optimizer_state = keep_optimizer_state
        self.pressure_step = 0
        self._keeper: CheckpointKeeper | None = None

    @classmethod
    def from_config(cls, cfg: AppConfig) -> RetentionCallback:
        r = cfg.retention
        policy = RetentionPolicy(keep_last_n=r.keep_last_n, keep_best_k=r.keep_best_k,
                                 keep_best_k_max=r.keep_best_k_max, max_total_size_gb=r.max_total_size_gb)
        return cls(cfg.study_dir, metric=cfg.tune.metric, policy=policy,
                   keep_optimizer_state=r.keep_optimizer_state)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_records", None)  # pickled by an older version
        state["_keeper"] = None  # its records are read from disk again after a restore
        return state

    @property
    def keeper(self) -> CheckpointKeeper:
        """The study's checkpoint owner (the only deleter); made on first use, also after a
        restore (a callback pickled by an older version has none)."""
        if self.__dict__.get("_keeper") is None:
            self._keeper = CheckpointKeeper(self.study_dir, metric=self.metric,
                                            keep_optimizer_state=self.__dict__.get("keep_optimizer_state", True))
        assert self._keeper is not None
        return self._keeper

    @property
    def policy(self) -> RetentionPolicy:
        return escalate(self.base_policy, min(self.pressure_step, 2)) if self.pressure_step else self.base_policy

    @property
    def records(self) -> dict[str, CheckpointRecord]:
        return self.keeper.records

    def escalate(self, step: int) -> None:
        """Storage pressure's step (0-3; storage pressure decides it): steps 1-2 tighten the
        policy (``retention.escalate``), step 3 keeps only the study's single best."""
        self.pressure_step = max(0, min(int(step), 3))

    def prune_trial_unprotected(self, trial: Any, reason: str) -> int:
        """Have the keeper prune ``trial``'s checkpoints the current policy does not protect."""
        return self.keeper.prune_unprotected(_trial_key(trial), self.policy, reason)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = Path(checkpoint.path)
        score = (trial.last_result or {}).get(self.metric)
        index = checkpoint_index(path)
        self.keeper.add(CheckpointRecord(
            trial_id=_trial_key(trial), path=str(path), index=-1 if index is None else index,
            score=float(score) if isinstance(score, int | float) else None,
            size_bytes=dir_nbytes(path), trial_finished=False,
        ))
        self.apply()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = _trial_key(trial)
        for rec in list(self.records.values()):
            if rec.trial_id == key and not rec.trial_finished:
                self.keeper.add(dataclasses.replace(rec, trial_finished=True))
        self.apply()
        failpoints.pause("trial_end")  # crash tests: pruned for an ended trial, Tune's state not saved yet

    def apply(self) -> int:
        """Have the keeper prune what the current policy does not keep; returns bytes freed."""
        pruned, freed, over_budget = self.keeper.enforce(None if self.pressure_step >= 3 else self.policy)
        if freed:
            logger.info("retention: pruned %d checkpoint(s), %.1f MB freed", pruned, freed / 1e6)
        if over_budget:
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

    With N trials at once a step is given the same chance as with one: the next step waits
    until every trial that was running when the last one was taken has reported again (or
    ended), so N trials reporting do not climb N times faster than one trial would.
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
        #: trials running when the last step was taken that have not reported since
        self._awaiting: set[str] = set()

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
        state["_awaiting"] = set()
        state["tracking_uri"] = sanitize(self.tracking_uri)  # tuner.pkl: no credentials
        return state

    def setup(self, **info: Any) -> None:  # type: ignore[override]
        from tune_app.checkpoints.monitor import StorageMonitor

        self.study_dir.mkdir(parents=True, exist_ok=True)
        recorded = [int(e.get("step", 0)) for e in read_pressure_record(self.study_dir)]
        if recorded and max(recorded) > self.retention.pressure_step:
            self.retention.escalate(max(recorded))
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
        self.check(trial, trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.check(trial, trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._awaiting.discard(trial.trial_id)  # an ended trial saves nothing more: not waited for

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._awaiting.discard(trial.trial_id)

    def check(self, trial: Any | None = None, trials: list | None = None) -> int:
        """Escalate one step if free space is critical now; returns the current step.

        Step 1 prunes ``trial``'s unprotected checkpoints and those of every other trial of
        ``trials`` Tune runs now (N trials at once write to the same disk). The next step is
        taken only once each trial running at the last step has reported since (``trials``
        not given: ``trial`` alone), so the last step has had its effect on every trial."""
        if self._monitor is None:
            return self.retention.pressure_step
        if trial is not None:
            self._awaiting.discard(trial.trial_id)
        status = self._monitor.check_now()
        if self._monitor.needs_pruning and self.retention.pressure_step < 3 and not self._awaiting:
            # Send MLflow operations buffered on disk before freeing space, so the
            # buffer does not grow while the disk is short.
            from tune_app.tracking.buffer import flush_all

            flush_all(timeout_s=10)
            step = self.retention.pressure_step + 1
            self.retention.escalate(step)
            logger.warning("storage pressure: %.1f%% free, escalating retention to step %d (%s)",
                           100 * status.free_fraction, step, STEP_ACTIONS[step])
            self._record(trial, step, status.free_fraction)
            self._tag(trial, step)
            self._awaiting = {t.trial_id for t in _running(trial, trials)}
        elif self.retention.pressure_step and trial is not None and trial.trial_id not in self._tagged:
            self._tag(trial, self.retention.pressure_step)  # a later trial running under pressure
        if not self._monitor.needs_pruning:
            return self.retention.pressure_step
        if self.retention.pressure_step == 1:
            for t in _running(trial, trials):
                self._prune_trial_unprotected(t)
        self.retention.apply()
        return self.retention.pressure_step

    def _prune_trial_unprotected(self, trial: Any) -> int:
        """Step 1: a running trial keeps only protected checkpoints (study best, resume point)."""
        freed = self.retention.prune_trial_unprotected(trial, "storage pressure step 1: unprotected")
        if freed:
            logger.warning("storage pressure step 1: pruned %.1f MB of trial %s", freed / 1e6, _trial_key(trial))
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


class MirrorCallback(Callback):
    """Keeps the bucket's copy of the study in step while it runs (the last callback: after
    MLflow logged a result and retention pruned). Tune processes an epoch's result (MLflow logs
    it) before its checkpoint (retention prunes), so both events sync. A failed sync is logged
    and retried at the next event; the local working copy holds everything meanwhile.

    An event's sync walks the study's files but not the folders of trials that ended and were
    synced since: its cost follows the running trials, not the study's size. At most every
    ``full_every_s`` (and when the study ends) a sync walks everything, which also takes what
    retention changed in ended trials to the bucket."""

    def __init__(self, mirror: StudyMirror | None, full_every_s: float = 60.0) -> None:
        self.mirror = mirror
        self.full_every_s = full_every_s
        self._failing = False
        self._full_at = float("-inf")
        #: folders of ended trials walked by a sync since they ended
        self._settled: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # tuner.pkl: rebuilt on restore (make_callbacks)
        return {"mirror": None, "full_every_s": self.full_every_s, "_failing": False, "_full_at": float("-inf"),
                "_settled": set()}

    def sync(self, *, force: bool = False, trials: list | None = None, trial: Any = None) -> None:
        """Bring the bucket's copy up to date (``force``: the logs too, and every folder).
        ``trials``: Tune's trials, to know which have ended; ``trial``: the one the event is about."""
        if self.mirror is None:
            return
        from tune_app.object_store import ObjectStoreError, first_line

        ended = {folder for t in trials or () if (folder := _trial_folder(t)) and _has_ended(t)}
        if trials is not None:
            self._settled &= ended  # a trial that runs again (retried after an error) is walked again
        full = force or time.monotonic() - self._full_at >= self.full_every_s
        current = _trial_folder(trial) if trial is not None else None
        settled = set() if full else self._settled - {current}
        try:
            self.mirror.sync(force=force, settled=settled)
        except (OSError, ObjectStoreError) as exc:
            if not self._failing:
                logger.warning("could not update the study's copy in %s (%s); the local copy %s has everything, "
                               "and the next result tries again", self.mirror.remote_dir, first_line(exc),
                               self.mirror.local_dir)
            self._failing = True
            return
        if self._failing:
            logger.warning("the study's copy in %s is up to date again", self.mirror.remote_dir)
        self._failing = False
        if full:
            self._full_at = time.monotonic()
            self._settled |= ended
        elif current is not None and current in ended:
            self._settled.add(current)

    def before_new_trial_starts(self) -> None:
        """The bucket gets the record that names a new trial (journal or state) before the trial
        writes anything (called by ``state_sync``; Tune has no callback for it)."""
        self.sync()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.sync(trials=trials, trial=trial)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.sync(trials=trials, trial=trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync(trials=trials, trial=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync(trials=trials, trial=trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sync(force=True)


def _trial_folder(trial: Any) -> str | None:
    """The trial's folder name in the study (``None`` before Tune named it)."""
    return getattr(getattr(trial, "storage", None), "trial_dir_name", None) or None


def _has_ended(trial: Any) -> bool:
    return getattr(trial, "status", None) in ("TERMINATED", "ERROR")


def _running(trial: Any | None, trials: list | None) -> list[Any]:
    """``trial`` (the one reporting or starting), then every other trial of ``trials`` Tune runs now."""
    others = [t for t in trials or [] if t is not trial and getattr(t, "status", None) == "RUNNING"]
    return ([trial] if trial is not None else []) + others


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
