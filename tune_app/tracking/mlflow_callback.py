"""MLflow logging that survives ``Tuner.restore`` and tracking-backend outages.

* One run per trial: a restored trial re-attaches to its run, found by the
  ``tune_app.trial_id`` + ``tune_app.study`` tags, marked RUNNING again.
* ``step = epoch``; every step at or below the last step the run already holds (in
  MLflow or in the outage buffer) is skipped, so no step is logged twice.
* All writes go through ``BufferedMlflowWriter``: the callback only enqueues; a writer
  thread sends, and on failure buffers to ``<study>/mlflow_buffer.jsonl`` and replays
  with backoff (nothing is dropped: see ``tune_app.tracking.buffer``). A run that cannot
  be created at trial start (backend down) gets a ``pending:`` placeholder and is created
  (or found) at replay; an existing run is described to the writer, so a replay
  recreates it when the store lost it.
* Params and tags are sanitised; tags carry study, trial, the trial's real seed
  (``tune_app.seed``, also the param ``trial_seed``: ``tune_app.seeds``), dataset
  id/revision (from ``<study>/meta/study.json``) and code version.
* The study-level run (``tune_app.kind=study``) is in the same experiment and is the
  parent of every trial run (``mlflow.parentRunId``; trial runs are ``tune_app.kind=trial``),
  as MLflow shows a hyperparameter search. It is created once and found again by its tags
  after a restore or in a resumed process; a trial run created while the study run is only
  a ``pending:`` placeholder gets the real parent id when the writer resolves it. It holds
  the study's params, the best trial id / score / epoch and the trial counts
  (``tune_app.tracking.study_run``), the progress tags (``set_study_tags``) and, once the
  test evaluation is written, the report (``tune_app.tracking.report_log``).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.logger import LoggerCallback

from tune_app import outcome
from tune_app.tracking.buffer import (
    BUFFER_FILE,
    PARENT_RUN_TAG,
    PENDING_PREFIX,
    BufferedMlflowWriter,
    MetricBuffer,
    find_or_create_run,
    last_logged_step,
)
from tune_app.tracking.outage_log import log_debug_detail
from tune_app.tracking.sanitize import sanitize, sanitize_mapping

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

TRIAL_ID_TAG = "tune_app.trial_id"
STUDY_TAG = "tune_app.study"
KIND_TAG = "tune_app.kind"
#: ``tune_app.kind`` of the study-level run and of a trial run.
STUDY_KIND = "study"
TRIAL_KIND = "trial"
#: The seed a trial trained with (tag; the study's seed on the study run) and its param.
SEED_TAG = "tune_app.seed"
SEED_PARAM = "trial_seed"
#: Result keys that Tune adds for its own bookkeeping; not worth an MLflow metric.
_SKIP_KEYS = frozenset({
    "timestamp", "pid", "time_since_restore", "iterations_since_restore", "done",
    "training_iteration", "timesteps_total", "time_total_s", "time_this_iter_s",
    "timesteps_since_restore", "checkpoint_dir_name", "should_checkpoint",
})
#: The metric whose history tells the last epoch a run holds.
STEP_KEY = "epoch"
#: Fail fast on an unreachable server: the writer's own backoff does the retrying.
_MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def outcome_tags(trial: Trial) -> dict[str, str]:
    """Tags of an ended trial's run: ``tune_app.outcome`` and, when stopped early, at which epoch and why."""
    storage = getattr(trial, "storage", None)
    state = outcome.read_trial_state(storage.trial_fs_path) if storage is not None else {}
    record = outcome.stop_record(state)
    if record is None:
        # Not done training at its end (a SIGINT stops trials too): interrupted; a resume re-tags it.
        ended = outcome.outcome_from_state(state)
        return {outcome.OUTCOME_TAG: ended if ended in outcome.ENDED else outcome.INTERRUPTED}
    return sanitize_mapping({outcome.OUTCOME_TAG: outcome.STOPPED, outcome.STOPPED_EARLY_TAG: "true",
                             outcome.STOPPED_AT_EPOCH_TAG: str(record.get("epoch", state.get("epoch"))),
                             outcome.STOPPED_BY_TAG: outcome.describe_stop(record)})


def study_match(study_name: str) -> dict[str, str]:
    """The tags that find a study's study-level run again (in the study's experiment)."""
    return {KIND_TAG: STUDY_KIND, STUDY_TAG: study_name}


def study_tags(study_dir: Path) -> dict[str, str]:
    """Dataset id and resolved revision from ``<study>/meta/study.json`` (empty if absent)."""
    from tune_app.study import STUDY_META

    try:
        meta = json.loads((Path(study_dir) / STUDY_META).read_text())
    except (OSError, ValueError):
        return {}
    out = {"tune_app.dataset_id": meta.get("dataset_id"), "tune_app.dataset_revision": meta.get("dataset_revision")}
    return {k: str(v) for k, v in out.items() if v is not None}


class ResumableMLflowLoggerCallback(LoggerCallback):
    """One MLflow run per trial, nested under one study run, across restores and outages;
    writes never block Tune."""

    # Defaults for attributes added after the first release: a study's tuner.pkl holds the
    # callback as it was pickled then (the README's ``Tuner.restore`` unpickles it).
    metric: str = "val_macro_f1"
    num_samples: int | None = None
    study_seed: int | None = None
    seed_policy: str | None = None
    study_params: dict[str, Any] | None = None

    def __init__(self, *, tracking_uri: str, experiment_name: str, study_name: str,
                 study_dir: Path | str | None = None, extra_tags: dict[str, str] | None = None,
                 buffer_warn_mb: float = 100.0, close_timeout_s: float = 120.0,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0,
                 metric: str = "val_macro_f1", num_samples: int | None = None,
                 study_seed: int | None = None, seed_policy: str | None = None,
                 study_params: dict[str, Any] | None = None) -> None:
        self.tracking_uri = tracking_uri
        # Sanitised here: the callback is pickled into tuner.pkl (the writer sanitises too).
        self.experiment_name = sanitize(experiment_name)
        self.study_name = study_name
        self.study_dir = Path(study_dir) if study_dir is not None else None
        self.extra_tags = sanitize_mapping(extra_tags or {})
        self.buffer_warn_mb = buffer_warn_mb
        self.close_timeout_s = close_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.metric = metric
        self.num_samples = num_samples
        self.study_seed = study_seed
        self.seed_policy = seed_policy
        self.study_params = sanitize_mapping(study_params or {})
        self._init_runtime()

    _RUNTIME = ("_writer", "_trial_runs", "_last_step", "_study_run", "tags", "_summary")

    def _init_runtime(self) -> None:
        from tune_app.tracking.study_run import StudySummary

        self._writer: BufferedMlflowWriter | None = None
        self._trial_runs: dict[str, str] = {}  # trial_id -> run id or pending placeholder
        self._last_step: dict[str, int] = {}
        self._study_run: str | None = None
        self._summary = StudySummary(self.metric, self.num_samples)
        self.tags: dict[str, str] = {}

    # Tune pickles callbacks into tuner.pkl; clients and threads must not travel.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._RUNTIME:
            state.pop(key, None)
        # Credentials in the URI stay in this process (a resume gets them from the config: see
        # config._check_redacted).
        state["tracking_uri"] = sanitize(self.tracking_uri)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # --- setup -----------------------------------------------------------------------
    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def buffer_path(self) -> Path:
        base = self.study_dir if self.study_dir is not None else Path.cwd()
        return base / BUFFER_FILE

    def setup(self, *args: Any, **kwargs: Any) -> None:
        for key, value in _MLFLOW_HTTP_ENV.items():
            os.environ.setdefault(key, value)
        self._init_runtime()
        self.tags = sanitize_mapping({
            **self.extra_tags, **(study_tags(self.study_dir) if self.study_dir else {}),
            STUDY_TAG: self.study_name,
        })
        buffer = MetricBuffer(self.buffer_path(), warn_bytes=int(self.buffer_warn_mb * 1024 * 1024))
        self._writer = BufferedMlflowWriter(buffer, self._client, experiment_name=self.experiment_name,
                                            step_key=STEP_KEY, backoff_initial_s=self.backoff_initial_s,
                                            backoff_max_s=self.backoff_max_s)
        if buffer.exists():
            logger.info("MLflow: replaying %d record(s) buffered in %s by an earlier session", buffer.count(),
                        buffer.path)
            self._writer.flush(timeout_s=30)
        # The trial runs' parent: in their experiment, found again (never recreated) on resume.
        self._study_run = self._attach(study_match(self.study_name), f"study:{self.study_name}",
                                       f"study-{self.study_name}")
        if self.study_params:
            self._writer.log_params(self._study_run, self.study_params)

    @property
    def writer(self) -> BufferedMlflowWriter:
        assert self._writer is not None, "setup() has not run"
        return self._writer

    @property
    def study_run(self) -> str | None:
        """The study-level run's id (or its ``pending:`` placeholder while MLflow is down)."""
        return self._study_run

    def _attach(self, match: dict[str, str], placeholder: str, run_name: str,
                experiment: str | None = None, tags: dict[str, str] | None = None) -> str:
        """Find or create the run tagged ``match`` (created with ``tags`` too); a placeholder
        when MLflow is down."""
        writer = self.writer
        experiment = experiment or self.experiment_name
        run_tags = {**self.tags, **(tags or {}), **match}
        pending = writer.buffer.pending_run(match) if writer.in_outage else None
        if pending is not None:
            self._last_step[pending] = writer.buffer.max_step(pending, STEP_KEY)
            return pending
        if not writer.in_outage:
            try:
                client = self._client()
                run_id, created = find_or_create_run(client, experiment, match, writer.resolve_tags(run_tags),
                                                     run_name)
                if not created:
                    client.update_run(run_id, status="RUNNING")
                held = 0 if created else last_logged_step(client, run_id, STEP_KEY)
                self._last_step[run_id] = max(held, writer.buffer.max_step(run_id, STEP_KEY))
                if not created:
                    logger.info("MLflow: %s continues run %s from step %d", run_name, run_id,
                                self._last_step[run_id])
                # Lets a replay recreate the run if the store loses it (deleted or replaced).
                writer.describe_run(run_id, match, run_tags, run_name, experiment)
                return run_id
            except Exception as exc:  # noqa: BLE001 - tracking must never stop training
                # The writer logs the outage (once): the create below fails the same way.
                log_debug_detail(logger.name, f"MLflow unreachable at the start of {run_name}: the run is "
                                              "created when it answers again", exc)
        ref = f"{PENDING_PREFIX}{placeholder}"
        writer.create_run(ref, match, run_tags, run_name, experiment)
        self._last_step[ref] = 0
        return ref

    # --- Tune hooks --------------------------------------------------------------------
    def trial_seed(self, trial: Trial) -> int | None:
        """The seed the trainable trains ``trial`` with (``None`` when the study's seed is unknown)."""
        if self.study_seed is None or self.seed_policy is None:
            return None
        from tune_app.seeds import trial_seed_for

        try:
            return trial_seed_for(self.study_seed, self.seed_policy, trial.config or {})
        except (TypeError, ValueError):
            return None

    def _trial_tags(self, trial: Trial) -> dict[str, str]:
        """Kind, parent (the study run), name, id and seed of a trial's run."""
        tags = {KIND_TAG: TRIAL_KIND, "trial_name": sanitize(str(trial)), TRIAL_ID_TAG: trial.trial_id}
        if self._study_run is not None:
            tags[PARENT_RUN_TAG] = self._study_run  # a pending: parent is resolved by the writer
        seed = self.trial_seed(trial)
        if seed is not None:
            tags[SEED_TAG] = str(seed)
        return tags

    def log_trial_start(self, trial: Trial) -> None:
        tags = self._trial_tags(trial)
        if trial.trial_id not in self._trial_runs:
            match = {STUDY_TAG: self.study_name, TRIAL_ID_TAG: trial.trial_id}
            ref = self._attach(match, trial.trial_id, str(trial), tags=tags)
            self._trial_runs[trial.trial_id] = ref
            self.writer.set_tags(ref, tags)  # a run found again (restore) gets them too
        else:
            self.writer.set_status(self._trial_runs[trial.trial_id], "RUNNING")
        params = sanitize_mapping(trial.config)
        if SEED_TAG in tags:
            params[SEED_PARAM] = tags[SEED_TAG]
        self.writer.log_params(self._trial_runs[trial.trial_id], params)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        ref = self._trial_runs.get(trial.trial_id)
        if ref is None:
            self.log_trial_start(trial)
            ref = self._trial_runs[trial.trial_id]
        step = int(result.get(STEP_KEY) or result.get("training_iteration") or iteration)
        last = self._last_step.get(ref, 0)
        if step <= last:
            logger.info("MLflow: skip step %d of trial %s (run already holds up to %d)",
                        step, trial.trial_id, last)
            return
        now_ms = int(time.time() * 1000)
        self.writer.log_metrics(ref, [
            (key, float(value), step, now_ms)
            for key, value in result.items()
            if key not in _SKIP_KEYS and isinstance(value, numbers.Real) and not isinstance(value, bool)
        ])
        self._last_step[ref] = step

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        ref = self._trial_runs.get(trial.trial_id)
        if ref is not None:
            if not failed:
                self.writer.set_tags(ref, outcome_tags(trial))
            self.writer.set_status(ref, "FAILED" if failed else "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        self._update_study_summary(trials, trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        self._update_study_summary(trials, trial, failed=True)

    def _update_study_summary(self, trials: list[Trial], ending: Trial, failed: bool) -> None:
        """Best trial id / score / epoch and trial counts on the study run (tags: overwritten)."""
        try:
            self._summary.update(trials, ending, failed)
            self.set_study_tags(self._summary.tags())
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the study
            log_debug_detail(logger.name, "MLflow: could not update the study run's summary", exc)

    def set_study_tags(self, tags: dict[str, Any]) -> None:
        """Tags on the study-level run (progress); enqueued, never blocking."""
        if self._writer is not None and self._study_run is not None:
            self._writer.set_tags(self._study_run, sanitize_mapping(tags))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Replay the outage buffer now (storage-pressure hook); True if it is empty."""
        return self._writer.flush(timeout_s) if self._writer is not None else True

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if self._writer is None:
            return
        if self._study_run is not None:
            done = all(outcome.tune_ended(t.status) for t in trials)
            if done:
                self._writer.set_status(self._study_run, "FINISHED")
        self._writer.close(self.close_timeout_s)
