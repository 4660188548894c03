"""MLflow logging that survives ``Tuner.restore``: one run per trial, no step twice.

Ray's stock ``MLflowLoggerCallback`` keeps its trial -> run map in memory, so after a
restore the interrupted trial gets a second MLflow run and the re-reported epochs are
logged again (../shared/notes/ray-tune-2.60.md). This subclass:

* re-attaches a trial to its existing run, found by the ``tune_app.trial_id`` tag in
  the experiment, and marks it RUNNING again;
* logs with ``step = epoch`` and skips every step at or below the last step that run
  already holds, so a trial that repeats epochs after a fallback never duplicates one;
* logs the metrics of one result in a single batch (one SQLite transaction).
"""

from __future__ import annotations

import logging
import numbers
import time
from typing import TYPE_CHECKING, Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

TRIAL_ID_TAG = "tune_app.trial_id"
STUDY_TAG = "tune_app.study"
#: Result keys that Tune adds for its own bookkeeping; not worth an MLflow metric.
_SKIP_KEYS = frozenset({
    "timestamp", "pid", "time_since_restore", "iterations_since_restore", "done",
    "training_iteration", "timesteps_total", "time_total_s", "time_this_iter_s",
    "timesteps_since_restore", "checkpoint_dir_name", "should_checkpoint",
})
#: The metric whose history tells the last epoch a run holds.
STEP_KEY = "epoch"


class ResumableMLflowLoggerCallback(MLflowLoggerCallback):
    """``MLflowLoggerCallback`` that re-attaches restored trials to their runs."""

    def __init__(self, *args: Any, study_name: str, extra_tags: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.study_name = study_name
        self.extra_tags = dict(extra_tags or {})
        self._last_step: dict[str, int] = {}

    # Tune pickles callbacks into tuner.pkl; the MLflow client must not travel.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_last_step"] = {}
        state.pop("_trial_runs", None)
        return state

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self.tags = {**(self.tags or {}), **self.extra_tags, STUDY_TAG: self.study_name}
        self._last_step = {}

    def _client(self) -> Any:
        return self.mlflow_util._get_client()

    def _find_run(self, trial_id: str) -> Any | None:
        runs = self._client().search_runs(
            experiment_ids=[self.mlflow_util.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{STUDY_TAG}` = '{self.study_name}'",
            max_results=5,
        )
        return runs[0] if runs else None

    def _last_logged_step(self, run_id: str) -> int:
        history = self._client().get_metric_history(run_id, STEP_KEY)
        return max((m.step for m in history), default=0)

    def log_trial_start(self, trial: Trial) -> None:
        if trial not in self._trial_runs:
            existing = self._find_run(trial.trial_id)
            if existing is not None:
                run_id = existing.info.run_id
                self._client().update_run(run_id, status="RUNNING")
                self._trial_runs[trial] = run_id
                self._last_step[run_id] = self._last_logged_step(run_id)
                logger.info("MLflow: trial %s continues run %s from step %d",
                            trial.trial_id, run_id, self._last_step[run_id])
            else:
                tags = {**(self.tags or {}), "trial_name": str(trial), TRIAL_ID_TAG: trial.trial_id}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
                self._last_step[run.info.run_id] = 0
        run_id = self._trial_runs[trial]
        if not self.log_params_on_trial_end:
            self._log_params_once(run_id, trial.config)

    def _log_params_once(self, run_id: str, config: dict[str, Any]) -> None:
        logged = self._client().get_run(run_id).data.params
        todo = {k: v for k, v in config.items() if k not in logged}
        if todo:
            self.mlflow_util.log_params(run_id=run_id, params_to_log=todo)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self._trial_runs[trial]
        step = int(result.get(STEP_KEY) or result.get("training_iteration") or iteration)
        last = self._last_step.get(run_id, 0)
        if step <= last:
            logger.info("MLflow: skip step %d of trial %s (run already holds up to %d)",
                        step, trial.trial_id, last)
            return
        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(key=key, value=float(value), timestamp=now_ms, step=step)
            for key, value in result.items()
            if key not in _SKIP_KEYS and isinstance(value, numbers.Real) and not isinstance(value, bool)
        ]
        self._client().log_batch(run_id, metrics=metrics)
        self._last_step[run_id] = step

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        if trial in self._trial_runs:
            super().log_trial_end(trial, failed=failed)
