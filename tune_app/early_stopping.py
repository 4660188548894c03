"""Early stopping of hopeless trials: Tune's own ASHA / median stopping rule, made durable.

``make_scheduler(cfg)`` returns what ``tune.scheduler`` names:

* ``fifo``   - Tune's ``FIFOScheduler``: every trial trains its planned epochs;
* ``asha``   - ``ASHAScheduler(time_attr="epoch", max_t=tune.max_epochs, grace_period,
  reduction_factor)``: at each rung (epoch grace_period * rf^k) a trial continues only if it is
  in the top 1/rf of the trials recorded at that rung so far;
* ``median`` - ``MedianStoppingRule(time_attr="epoch", grace_period, min_samples_required)``:
  a trial stops when its best score is below the median of the other trials' running means
  at the same epoch.

Both are thin subclasses of Tune's schedulers that add what a long, resumable study needs:

* **The decision is recorded where it is made**, on the driver, before Tune acts on it:
  ``trial_state.json`` gets ``status: stopped`` with the epoch and the rung / median the trial
  lost to (``tune_app.outcome.record_stopped``, atomic). A trial that reaches its planned
  epochs (its own ``train.epochs`` in the full space) is *finished*, never recorded as stopped.
* **Rung records survive a restore.** Tune does not save the scheduler with the experiment
  (``TuneController.__getstate__`` drops ``_scheduler_alg``; ``Tuner.restore`` gets the
  scheduler pickled in ``tuner.pkl`` at the start, with empty rungs). These subclasses save
  their decision state to ``<study>/meta/early_stopping.json`` (atomic) after every result and
  load it back when the restored study adds its first trial.
* **No stopped trial is revived.** A stop recorded on disk wins over Tune's saved state (a kill
  can land between the two): the scheduler stops such a trial at its first result, and the
  trainable (``train_trial``) does not train a trial whose state says stopped at all: it
  reports its last result again and returns.
* Trials are keyed by trial id (``_TrialKey``), never by Tune's ``Trial`` objects, so the state
  is plain JSON and matches the restored trials. The median rule never PAUSEs a trial (pausing
  would checkpoint through Tune, outside the harness's own checkpoints).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from tune_app import outcome

if TYPE_CHECKING:
    from tune_app.config import AppConfig

logger = logging.getLogger(__name__)

#: ``<study>/meta/early_stopping.json``: rung records / median history and the stop decisions.
STATE_FILE = Path("meta") / "early_stopping.json"
#: The trainable reports its epoch: that is the schedulers' clock.
TIME_ATTR = "epoch"


class _TrialKey:
    """Stands in for a Tune ``Trial`` inside the schedulers' bookkeeping: equal by trial id."""

    __slots__ = ("trial_id",)

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TrialKey) and other.trial_id == self.trial_id

    def __hash__(self) -> int:
        return hash(self.trial_id)

    def __repr__(self) -> str:
        return self.trial_id


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None


class _DurableStopping:
    """Mixin over a Tune scheduler: records stops in ``trial_state.json``, persists its state."""

    kind = "scheduler"
    _metric: str
    _time_attr: str

    def _init_durable(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.stopped: dict[str, dict[str, Any]] = {}
        self._study_dir: Path | None = None
        self._loaded = False

    # -- persistence -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def _bind(self, trial: Any) -> None:
        """Learn the study folder from the first trial; load what a previous session saved."""
        if self._loaded:
            return
        self._loaded = True
        storage = getattr(trial, "storage", None)
        fs_path = getattr(storage, "experiment_fs_path", None)
        if not fs_path:
            return
        self._study_dir = Path(fs_path)
        data = _read_json(self._study_dir / STATE_FILE)
        if not data:
            return
        if data.get("scheduler") != self.kind:
            logger.warning("early stopping: %s was saved by scheduler %r, this study runs %r; not loaded",
                           STATE_FILE, data.get("scheduler"), self.kind)
            return
        self._load_state(data)
        self.stopped = {str(k): dict(v) for k, v in (data.get("stopped") or {}).items()}
        logger.info("early stopping: %s state restored from %s (%d trial(s) stopped so far)",
                    self.kind, self._study_dir / STATE_FILE, len(self.stopped))

    def save_state(self) -> None:
        if self._study_dir is None:
            return
        import json

        from tune_app.study import write_text_atomic

        # Trial ids, epochs and scores only: no secret to redact, so not sanitised (walking the
        # whole state after every result grew with the study: ~45 ms per trial at 1000 trials).
        state = {"scheduler": self.kind, "stopped": self.stopped, **self._state()}
        try:
            write_text_atomic(self._study_dir / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")
        except OSError as exc:  # a full disk must not stop the study; the stop records still hold
            logger.warning("early stopping: could not save %s: %s", STATE_FILE, exc)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the scheduler into tuner.pkl once, at the start: the decision state
        # travels in meta/early_stopping.json instead (loaded on the first trial after restore).
        state = self.__dict__.copy()
        state["_loaded"] = False
        state["_study_dir"] = None
        return state

    # -- decisions ---------------------------------------------------------------------
    def _decide(self, tune_controller: Any, key: _TrialKey, result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Tune's decision for ``result`` and what it was measured against."""
        raise NotImplementedError

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._bind(trial)
        self._on_add(tune_controller, trial)

    def _on_add(self, tune_controller: Any, trial: Any) -> None:
        raise NotImplementedError

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        self._bind(trial)
        trial_id = trial.trial_id
        trial_dir = Path(trial.storage.trial_fs_path) if getattr(trial, "storage", None) else None
        epoch = result.get(self._time_attr)
        stopped_at = self._stopped_before(trial_id, trial_dir)
        if stopped_at is not None:  # stopped before a restore: never revived
            if isinstance(epoch, int) and isinstance(stopped_at, int) and epoch < stopped_at:
                return TrialScheduler.CONTINUE  # an epoch before its stop, reported again for Tune and Optuna
            return TrialScheduler.STOP
        planned = outcome.planned_epochs(getattr(trial, "config", None), self.max_epochs)
        decision, detail = self._decide(tune_controller, _TrialKey(trial_id), result)
        if decision == TrialScheduler.STOP and isinstance(epoch, int) and epoch < planned:
            record = {"scheduler": self.kind, "epoch": epoch, "planned_epochs": planned,
                      "metric": self._metric, "value": _finite(result.get(self._metric)), **detail}
            self.stopped[trial_id] = record
            if trial_dir is not None:
                self._record_on_disk(trial_dir, record)
            logger.info("early stopping: trial %s stopped at epoch %d/%d: %s", trial_id, epoch, planned,
                        outcome.describe_stop(record))
        elif decision == TrialScheduler.PAUSE:
            decision = TrialScheduler.CONTINUE
        self.save_state()
        return decision

    def _stopped_before(self, trial_id: str, trial_dir: Path | None) -> int | str | None:
        """The epoch a trial was stopped at before (this scheduler's record, else the trial's
        ``trial_state.json``); ``"unknown"`` when recorded without one; None if never stopped."""
        record = self.stopped.get(trial_id)
        if record is None and trial_dir is not None and outcome.trial_outcome(trial_dir) == outcome.STOPPED:
            record = outcome.stop_record(outcome.read_trial_state(trial_dir)) or {}
        if record is None:
            return None
        epoch = record.get("epoch")
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else "unknown"

    def _record_on_disk(self, trial_dir: Path, record: dict[str, Any]) -> None:
        from tune_app.checkpoints.failpoints import pause

        try:
            outcome.record_stopped(trial_dir, record)
        except OSError as exc:
            logger.warning("early stopping: could not record the stop in %s: %s", trial_dir, exc)
            return
        pause("stop")  # crash tests: recorded on disk, not yet in early_stopping.json nor Tune's state
        try:  # the trial's validation report shows the new status
            from tune_app.evaluation.report import write_trial_report

            write_trial_report(trial_dir)
        except Exception as exc:  # noqa: BLE001 - a report must never stop the study
            logger.warning("early stopping: could not rewrite the trial report of %s: %s", trial_dir, exc)


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DurableASHAScheduler(_DurableStopping, ASHAScheduler):  # type: ignore[misc]
    """Tune's ``ASHAScheduler`` with durable rungs and recorded stops (see the module)."""

    kind = "asha"

    def __init__(self, *, max_epochs: int, **kwargs: Any) -> None:
        ASHAScheduler.__init__(self, **kwargs)
        self._init_durable(max_epochs)

    def _on_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id not in self._trial_info:
            ASHAScheduler.on_trial_add(self, tune_controller, trial)

    def _decide(self, tune_controller: Any, key: _TrialKey, result: dict[str, Any]
                ) -> tuple[str, dict[str, Any]]:
        if key.trial_id not in self._trial_info:  # restored after its bracket entry was dropped
            self._trial_info[key.trial_id] = self._brackets[0]
        bracket = self._trial_info[key.trial_id]
        epoch = result.get(self._time_attr)
        # The rung this result is recorded at, and the cutoff before it joins (what it lost to).
        detail: dict[str, Any] = {}
        if isinstance(epoch, int | float):
            for milestone, recorded in bracket._rungs:
                if epoch < milestone or key.trial_id in recorded:
                    continue
                detail = {"rung": milestone, "cutoff": _finite(bracket.cutoff(recorded)),
                          "rung_size": len(recorded), "reduction_factor": self._reduction_factor}
                break
        decision = ASHAScheduler.on_trial_result(self, tune_controller, key, result)  # type: ignore[arg-type]
        if decision == TrialScheduler.STOP and not detail:
            detail = {"rung": self._max_t, "cutoff": None, "reason": "max_t"}
        return decision, detail

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if trial.trial_id in self._trial_info:
            ASHAScheduler.on_trial_complete(
                self, tune_controller, _TrialKey(trial.trial_id), result)  # type: ignore[arg-type]
        self.save_state()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def _state(self) -> dict[str, Any]:
        index = {id(b): i for i, b in enumerate(self._brackets)}
        return {"rungs": [[[m, dict(rec)] for m, rec in b._rungs] for b in self._brackets],
                "trial_brackets": {t: index.get(id(b), 0) for t, b in self._trial_info.items()},
                "num_stopped": self._num_stopped}

    def _load_state(self, data: dict[str, Any]) -> None:
        for bracket, rungs in zip(self._brackets, data.get("rungs") or [], strict=False):
            saved = {float(m): rec for m, rec in rungs}
            bracket._rungs = [(m, {str(k): float(v) for k, v in saved.get(float(m), {}).items()})
                              for m, _ in bracket._rungs]
        for trial_id, i in (data.get("trial_brackets") or {}).items():
            self._trial_info[str(trial_id)] = self._brackets[min(int(i), len(self._brackets) - 1)]
        self._num_stopped = int(data.get("num_stopped") or 0)

    def rung_records(self) -> list[tuple[float, dict[str, float]]]:
        """(milestone, {trial id: score}) of the first bracket, for tests and debugging."""
        return [(m, dict(rec)) for m, rec in self._brackets[0]._rungs]


class DurableMedianStoppingRule(_DurableStopping, MedianStoppingRule):  # type: ignore[misc]
    """Tune's ``MedianStoppingRule`` with durable history and recorded stops (see the module)."""

    kind = "median"

    def __init__(self, *, max_epochs: int, **kwargs: Any) -> None:
        MedianStoppingRule.__init__(self, **kwargs)
        self._init_durable(max_epochs)
        self._results = defaultdict(list)  # _TrialKey -> results (epoch + metric only)
        self._last_pause = {}  # type: ignore[assignment]  # Tune's is a defaultdict(lambda): plain pickle refuses it; never used (no PAUSE)

    def _on_add(self, tune_controller: Any, trial: Any) -> None:
        MedianStoppingRule.on_trial_add(self, tune_controller, trial)

    def _on_insufficient_samples(self, tune_controller: Any, trial: Any, time: float) -> str:
        return TrialScheduler.CONTINUE  # never PAUSE (see the module docstring)

    def _slim(self, result: dict[str, Any]) -> dict[str, Any]:
        return {self._time_attr: result.get(self._time_attr), self._metric: result.get(self._metric)}

    def _decide(self, tune_controller: Any, key: _TrialKey, result: dict[str, Any]
                ) -> tuple[str, dict[str, Any]]:
        epoch = result.get(self._time_attr)
        seen = self._results.get(key) or []
        if seen and isinstance(epoch, int | float) and epoch <= seen[-1][self._time_attr]:
            return TrialScheduler.CONTINUE, {}  # a result re-reported after a restore: decided already
        decision = MedianStoppingRule.on_trial_result(
            self, tune_controller, key, self._slim(result))  # type: ignore[arg-type]
        detail: dict[str, Any] = {}
        if decision == TrialScheduler.STOP and isinstance(epoch, int | float):
            others = [t for t in self._trials_beyond_time(epoch) if t != key]
            means = [m for m in (self._running_mean(t, epoch) for t in others) if np.isfinite(m)]
            detail = {"median": _finite(np.median(means)) if means else None, "samples": len(means),
                      "best": _finite(self._best_result(key))}
        return decision, detail

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        key = _TrialKey(trial.trial_id)
        epoch = result.get(self._time_attr)
        seen = self._results.get(key) or []
        if not (seen and isinstance(epoch, int | float) and epoch <= seen[-1][self._time_attr]):
            MedianStoppingRule.on_trial_complete(
                self, tune_controller, key, self._slim(result))  # type: ignore[arg-type]
        self.save_state()

    def _state(self) -> dict[str, Any]:
        return {"results": {k.trial_id: [[r[self._time_attr], r[self._metric]] for r in rs]
                            for k, rs in self._results.items()},
                "median_stopped": sorted(k.trial_id for k in self._stopped_trials)}

    def _load_state(self, data: dict[str, Any]) -> None:
        self._results = defaultdict(list)
        for trial_id, rows in (data.get("results") or {}).items():
            self._results[_TrialKey(str(trial_id))] = [{self._time_attr: t, self._metric: v} for t, v in rows]
        self._stopped_trials = {_TrialKey(str(t)) for t in data.get("median_stopped") or []}


def make_scheduler(cfg: AppConfig) -> Any:
    """The Tune scheduler ``tune.scheduler`` names.

    The study's metric and mode reach it through ``TuneConfig(metric=, mode=)`` (Tune calls
    ``set_search_properties``; a scheduler built with its own metric makes Tune refuse the pair).
    """
    t = cfg.tune
    grace = min(t.grace_period, t.max_epochs)  # a short study (tune.max_epochs=1) keeps the default valid
    if t.scheduler == "asha":
        return DurableASHAScheduler(max_epochs=t.max_epochs, time_attr=TIME_ATTR, max_t=t.max_epochs,
                                    grace_period=grace, reduction_factor=t.reduction_factor)
    if t.scheduler == "median":
        return DurableMedianStoppingRule(max_epochs=t.max_epochs, time_attr=TIME_ATTR,
                                         grace_period=grace, min_samples_required=t.min_samples)
    return FIFOScheduler()


# --- one trial at a time per process ----------------------------------------------------
_ACTIVE: dict[str, int] = {}
_ACTIVE_LOCK = threading.Lock()
#: Logged (ERROR) when a trial starts training while another one still trains in this process.
OVERLAP_MESSAGE = "starts training while another trial still trains in this process"


@contextmanager
def training_slot(trial_id: str) -> Iterator[list[str]]:
    """Mark ``trial_id`` as training in this process for the duration of the block.

    With ``tune.reuse_actors=true`` one worker runs trial after trial. When a scheduler stops
    a trial, Tune ends its training thread (``sys.exit`` inside ``tune.report``, where the
    thread waits for the driver) before ``reset_config`` hands the actor to the next trial;
    if that thread were still alive after ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` Tune would start
    a fresh actor instead. This guard makes a breach visible: it logs ``OVERLAP_MESSAGE``
    (tests look for it) and yields the trials found still training.
    """
    with _ACTIVE_LOCK:
        others = sorted(t for t in _ACTIVE if t != trial_id)
        _ACTIVE[trial_id] = os.getpid()
    if others:
        logger.error("trial %s %s (pid %d): %s", trial_id, OVERLAP_MESSAGE, os.getpid(), ", ".join(others))
    try:
        yield others
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(trial_id, None)
