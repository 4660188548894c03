"""When Tune saves the study's state: bounded cost, and never behind a started trial.

Tune rewrites its whole experiment state (every trial's entry, the searcher, the
callbacks) at each sync. Syncing at every controller step (``TUNE_GLOBAL_CHECKPOINT_S=0``)
made that hundreds of rewrites per trial, each growing with the number of trials:
quadratic I/O over a 1000-trial study. Instead (set up by ``tuner._env_for_tune``):

* Tune's own adaptive period (``auto``: syncing takes about 5 % of the time);
* a forced sync after every reported checkpoint (Tune does this itself when
  ``CheckpointConfig(num_to_keep)`` is set), so the saved state names each trial's
  newest checkpoint and the scheduler's view of its results;
* a forced sync, waited for, when a trial is added (:func:`sync_state_when_trial_added`),
  before its actor starts, so a kill before the new trial's first checkpoint cannot lose
  the trial from Tune's state: on resume it continues under its own id and folder instead
  of being sampled again as a second trial next to an orphaned folder and MLflow run.

So a study syncs O(1 + epochs) times per trial. A kill can still land between a save and
the forced sync right after it; the trial then resumes from its newest valid checkpoint on
disk and reports to Tune the epochs its saved state missed (``checkpoints.resume``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from ray.tune import Callback

_MARK = "_tune_app_syncs_on_add"


def sync_state_when_trial_added() -> None:
    """Make Tune save its state, and wait for it, before a new trial's actor starts.

    Tune offers no hook for this, so ``TuneController._schedule_trial_actor`` is wrapped
    (once per process): for a trial that has no folder name yet (a new one, not a restored
    one), the name is chosen first (``Trial.init_local_path``, which Tune calls right after
    anyway), then the controller's state is synced at once and waited for. So a trial
    folder, checkpoint or MLflow run never exists unless Tune's saved state names its trial
    and folder, and a study with no saved state has run nothing (``resume=`` can then start
    it afresh). A Ray upgrade that renames either method fails
    ``tests/integration/test_state_sync.py``.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController._schedule_trial_actor, _MARK, False):
        return
    original = TuneController._schedule_trial_actor

    @functools.wraps(original)
    def schedule_trial_actor(self: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(trial, "relative_logdir", None):
            trial.init_local_path()
            self.checkpoint(force=True, wait=True)
        return original(self, trial, *args, **kwargs)

    setattr(schedule_trial_actor, _MARK, True)
    TuneController._schedule_trial_actor = schedule_trial_actor  # type: ignore[method-assign]


_MOVED_MARK = "_tune_app_follows_moved_study"


def new_trials_follow_moved_study() -> None:
    """After ``Tuner.restore`` of a moved study, new trials go to its new location.

    Tune saves the searcher's ``Experiment`` (with the storage path of the study's first
    location) in ``search_gen_state-*.json`` and makes every later trial from it; restored
    trials get the new path, but trials sampled after the restore would be written under the
    old one (or fail when it is gone). ``TuneController.resume`` is wrapped (once per
    process) to point the restored experiment at the controller's own storage.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController.resume, _MOVED_MARK, False):
        return
    original = TuneController.resume

    @functools.wraps(original)
    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        experiment: Any = getattr(self._search_alg, "_experiment", None)
        old = getattr(experiment, "storage", None)
        if old is not None and old.experiment_fs_path != self._storage.experiment_fs_path:
            storage = copy.copy(self._storage)
            experiment.storage = storage
            experiment.spec["storage"] = storage
        return out

    setattr(resume, _MOVED_MARK, True)
    TuneController.resume = resume  # type: ignore[method-assign]


class TrimEndedTrialState(Callback):
    """Shrinks each ended trial's entry in Tune's saved state to what is still read.

    Tune keeps, per trial and per numeric metric ever reported, running statistics
    (``metric_analysis``) and the last 5 and 10 values (``metric_n_steps``): about 9 KB of
    the ~21 KB each trial adds to every state rewrite. Once a trial has ended nothing
    updates them, and only the study's metric is still read (``ResultGrid.get_best_result``),
    so the rest is dropped. Results stay whole in the trial's ``result.json`` and in MLflow.
    """

    def __init__(self, metric: str) -> None:
        self.keep = {metric, "epoch", "training_iteration"}

    def _trim(self, trial: Any) -> None:
        meta = getattr(trial, "run_metadata", None)
        if meta is None or not hasattr(meta, "metric_analysis"):
            return
        meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if k in self.keep}
        meta.metric_n_steps = {k: v for k, v in meta.metric_n_steps.items() if k in self.keep}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trim(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trim(trial)
