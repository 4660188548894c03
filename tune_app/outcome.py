"""What a trial's outcome is: the one definition every reader uses.

Outcomes:

* ``running``     - it may still train (it is running now, or it was cut off and a resume continues it);
* ``finished``    - it trained all its planned epochs (``train.epochs``, else ``tune.max_epochs``);
* ``stopped``     - the early-stopping scheduler (ASHA / median) ended it before its planned epochs;
* ``failed``      - Tune holds it in ERROR (``resume=`` retries it);
* ``interrupted`` - the study stopped (SIGINT, SIGTERM, a kill) before it ended; a resume continues it.

``finished`` and ``stopped`` are *ended*: nothing will train again, its non-best checkpoint
bytes may go at once, and it never holds a resume point. ``running``/``interrupted`` keep
their newest checkpoint; a ``failed`` trial does too (``resume=`` retries it).

On disk the trial's ``trial_state.json`` ``status`` says ``running`` or ``completed`` (the
trainable writes them) or ``stopped`` (the driver writes it when the scheduler stops the
trial, with the epoch and the rung / median it lost to under ``stopped_early``).
``failed`` and ``interrupted`` are only known to the driver (Tune's status, the study's end).

Pure functions and small file readers only: no Ray, no torch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
INTERRUPTED = "interrupted"
OUTCOMES: tuple[str, ...] = (RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED)
#: Outcomes after which the trial never trains again.
ENDED: frozenset[str] = frozenset({FINISHED, STOPPED})

#: The trial's own state file (status, metric history, (re)starts); written atomically.
TRIAL_STATE_FILE = "trial_state.json"
#: ``trial_state.json`` ``status`` values.
STATE_RUNNING = "running"
STATE_COMPLETED = "completed"
STATE_STOPPED = "stopped"
STATE_STATUSES: tuple[str, ...] = (STATE_RUNNING, STATE_COMPLETED, STATE_STOPPED)
#: Key of the stop decision in ``trial_state.json`` (epoch, scheduler, rung/median, value).
STOP_KEY = "stopped_early"

#: MLflow tags of a trial's run: its outcome and, when stopped, where.
OUTCOME_TAG = "tune_app.outcome"
STOPPED_EARLY_TAG = "tune_app.stopped_early"
STOPPED_AT_EPOCH_TAG = "tune_app.stopped_at_epoch"
STOPPED_BY_TAG = "tune_app.stopped_by"


# --- trial_state.json -------------------------------------------------------------------
def read_trial_state(trial_dir: Path | str) -> dict[str, Any]:
    """The trial's ``trial_state.json`` (``{}`` when missing or unreadable)."""
    try:
        data = json.loads((Path(trial_dir) / TRIAL_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def outcome_from_state(state: Mapping[str, Any]) -> str:
    """The outcome a trial's saved state shows: finished, stopped, else running (may train again)."""
    status = state.get("status")
    if status == STATE_COMPLETED:
        return FINISHED
    if status == STATE_STOPPED:
        return STOPPED
    return RUNNING


def trial_outcome(trial_dir: Path | str) -> str:
    """The on-disk outcome of ``trial_dir`` (``running`` when unknown: keeps its resume point)."""
    return outcome_from_state(read_trial_state(trial_dir))


def trial_ended(trial_dir: Path | str) -> bool:
    """True when the trial will never train again (finished or stopped early)."""
    return trial_outcome(trial_dir) in ENDED


def stop_record(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stop decision saved with a stopped trial (``None`` when it was not stopped)."""
    if state.get("status") != STATE_STOPPED:
        return None
    record = state.get(STOP_KEY)
    return dict(record) if isinstance(record, Mapping) else {}


def describe_stop(record: Mapping[str, Any]) -> str:
    """``asha rung 1 (cutoff 0.412, value 0.250)`` / ``median 0.41 at epoch 2 (best 0.30)``."""
    def num(key: str) -> str:
        value = record.get(key)
        return f"{value:.4g}" if isinstance(value, int | float) and math.isfinite(value) else "?"

    scheduler = record.get("scheduler", "scheduler")
    if scheduler == "asha":
        return f"asha rung {record.get('rung')} (cutoff {num('cutoff')}, value {num('value')})"
    if scheduler == "median":
        return f"median {num('median')} at epoch {record.get('epoch')} (best {num('value')})"
    return str(scheduler)


def record_stopped(trial_dir: Path | str, decision: Mapping[str, Any]) -> dict[str, Any]:
    """Mark the trial stopped early in its ``trial_state.json`` (atomic); returns the new state.

    Called on the driver when the scheduler stops the trial (Tune ends the trainable,
    which cannot write this itself). The metric history and starts are kept.
    """
    from tune_app.study import write_json_atomic

    trial_dir = Path(trial_dir)
    state = read_trial_state(trial_dir)
    record = {**dict(decision), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state.update({"status": STATE_STOPPED, STOP_KEY: record})
    if isinstance(decision.get("epoch"), int):
        state["epoch"] = decision["epoch"]
    write_json_atomic(trial_dir / TRIAL_STATE_FILE, state)
    return state


def stopped_final_result(trial_dir: Path | str) -> dict[str, Any] | None:
    """For a trial recorded as stopped: its last epoch's metrics (what a revived trial reports
    instead of training again); ``None`` when the trial was not stopped."""
    state = read_trial_state(trial_dir)
    if stop_record(state) is None:
        return None
    history = [h for h in state.get("history", []) if isinstance(h, dict)]
    return dict(history[-1]) if history else {"epoch": int(state.get("epoch") or 0)}


def completed_final_result(trial_dir: Path | str, planned_epochs: int) -> dict[str, Any] | None:
    """For a trial whose ``trial_state.json`` shows it trained all ``planned_epochs``: its last
    epoch's metrics (what a revived trial reports instead of training again); else ``None``."""
    state = read_trial_state(trial_dir)
    history = [h for h in state.get("history", []) if isinstance(h, dict)]
    if state.get("status") != STATE_COMPLETED or not history:
        return None
    last = history[-1].get("epoch")
    return dict(history[-1]) if isinstance(last, int) and last >= planned_epochs else None


# --- planned epochs and the driver's view ----------------------------------------------
def best_epoch(history: Sequence[Any], metric: str) -> tuple[float | None, int | None]:
    """A trial's best ``metric`` over its epochs (finite values only) and that epoch: the one
    definition of a trial's score, used by the console summary and the study report."""
    best: float | None = None
    epoch: int | None = None
    for h in history:
        value = h.get(metric) if isinstance(h, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and (best is None or value > best):
            best, epoch = float(value), int(h.get("epoch", 0)) or None
    return best, epoch


def planned_epochs(params: Mapping[str, Any] | None, max_epochs: int) -> int:
    """The epochs a trial is to train: its sampled ``train.epochs``, else ``tune.max_epochs``."""
    value = (params or {}).get("train.epochs")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value else max_epochs


#: Tune's ``Trial.status`` values (strings, so readers need not import Ray).
TUNE_TERMINATED = "TERMINATED"
TUNE_ERROR = "ERROR"


def tune_ended(status: Any) -> bool:
    """Tune is done with the trial (``TERMINATED`` or ``ERROR``). Not an outcome: after a
    SIGINT Tune's in-memory trials read TERMINATED too (see :func:`classify`)."""
    return status in (TUNE_TERMINATED, TUNE_ERROR)


def tune_failed(status: Any) -> bool:
    """Tune holds the trial in ``ERROR`` (the ``failed`` outcome; ``resume=`` retries it)."""
    return status == TUNE_ERROR


def classify(*, errored: bool, state: Mapping[str, Any], last_epoch: Any, planned: int,
             done: bool = False, study_running: bool = False) -> str:
    """A trial's outcome as the driver sees it after (or during) a study.

    ``errored``: Tune holds it in ERROR. ``state``: its ``trial_state.json``. ``last_epoch``:
    the epoch of its last result Tune took. ``done``: that result ended the function (not a
    scheduler's stop; Tune marks a stopped trial's result ``done`` too, so a stop record wins).
    Tune's TERMINATED alone means nothing: after a SIGINT its in-memory trials read TERMINATED.
    """
    if errored:
        return FAILED
    by_state = outcome_from_state(state)
    if by_state in ENDED:
        return by_state
    if (isinstance(last_epoch, int) and last_epoch >= planned) or done:
        return FINISHED
    return RUNNING if study_running else INTERRUPTED


def count(outcomes: list[str] | tuple[str, ...]) -> dict[str, int]:
    """How many trials have each outcome (every outcome present, 0 when none)."""
    return {o: sum(1 for x in outcomes if x == o) for o in OUTCOMES}


def summary_line(counts: Mapping[str, int]) -> str:
    """``3 finished, 5 stopped early, 0 failed`` (+ ``, 1 interrupted`` when any)."""
    line = f"{counts.get(FINISHED, 0)} finished, {counts.get(STOPPED, 0)} stopped early, {counts.get(FAILED, 0)} failed"
    if counts.get(INTERRUPTED, 0):
        line += f", {counts[INTERRUPTED]} interrupted"
    return line
