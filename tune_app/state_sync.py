"""When Tune saves the study's state: bounded cost, and never behind a started trial.

Tune rewrites its whole experiment state (every trial's entry, the searcher, the
callbacks) at each sync. Syncing at every controller step (``TUNE_GLOBAL_CHECKPOINT_S=0``)
made that hundreds of rewrites per trial, each growing with the number of trials:
quadratic I/O over a 1000-trial study. Instead (set up by ``tuner._env_for_tune``):

* Tune's own adaptive period (``auto``: syncing takes about 5 % of the time);
* a forced sync after every reported checkpoint (Tune does this itself when
  ``CheckpointConfig(num_to_keep)`` is set), so the saved state names each trial's
  newest checkpoint and the scheduler's view of its results;
* a forced sync when a trial is added (:func:`sync_state_when_trial_added`), so a kill
  before the new trial's first checkpoint cannot lose the trial from Tune's state: on
  resume it continues under its own id and folder instead of being sampled again as a
  second trial next to an orphaned folder and MLflow run.

So a study syncs O(1 + epochs) times per trial. A kill can still land between a save and
the forced sync right after it; the trial then resumes from the checkpoint Tune's state
names and re-runs at most that epoch (MLflow skips steps it already holds).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_tune_app_syncs_on_add"


def sync_state_when_trial_added() -> None:
    """Make Tune's controller force a state sync at its next step after adding a trial.

    Tune offers no hook for this, so ``TuneController.add_trial`` is wrapped (once per
    process): after the original runs, the controller's experiment-state manager is
    asked to force its next sync, exactly as Tune does after a checkpoint. A Ray upgrade
    that renames either attribute fails ``tests/integration/test_state_sync.py``.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController.add_trial, _MARK, False):
        return
    original = TuneController.add_trial

    @functools.wraps(original)
    def add_trial(self: Any, trial: Any) -> None:
        original(self, trial)
        manager = getattr(self, "_checkpoint_manager", None)
        if manager is not None and hasattr(manager, "_should_force_sync_up"):
            manager._should_force_sync_up = True
        else:  # pragma: no cover - only after a Ray change
            logger.warning("Tune's controller changed: the study state is not synced when a trial starts")

    setattr(add_trial, _MARK, True)
    TuneController.add_trial = add_trial  # type: ignore[method-assign]
