"""What the Ray dashboard shows of a study: named trial tasks and the driver's log.

* **Named tasks.** With actor reuse one worker process runs every trial, so an actor's name
  or repr (fixed when Ray creates it) cannot say which trial it runs. Tune calls the
  actor's ``train`` once per reported epoch, so each call is a task of its own: it is named
  ``trial 3 (ab12c_00002): epoch 4/8, val_macro_f1 0.5123 (best 0.5301)`` — the epoch it
  trains and the trial's last and best score — on the dashboard's Jobs → Tasks page and in
  ``ray list tasks`` / ``ray.util.state.list_tasks``. Tune offers no hook for a task's
  options, so :func:`name_trial_tasks` wraps ``TuneController._schedule_trial_task`` (to
  pick the name) and ``RayActorManager._schedule_tracked_actor_task`` (to pass it to Ray).
* **The driver's log.** The driver's lines (header, one line per ended trial, progress,
  warnings) are also written to ``<ray session>/logs/tune_app_driver.log``, which the
  dashboard's Logs page lists beside the workers' logs (:func:`log_to_ray_session`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from tune_app.logs import SanitizingFilter

__all__ = ["DRIVER_LOG", "log_to_ray_session", "name_trial_tasks", "trial_task_name"]

DRIVER_LOG = "tune_app_driver.log"
_MARK = "_tune_app_names_tasks"
_NAMES_ATTR = "_tune_app_task_names"

#: What the task names show (set by :func:`name_trial_tasks`, read on the driver only).
_settings: dict[str, Any] = {"metric": "val_macro_f1", "max_epochs": None}


def _score(value: Any) -> str:
    from tune_app.tracking.progress import fmt

    return fmt(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def trial_task_name(trial: Any, method: str, *, metric: str, max_epochs: int | None) -> str:
    """The dashboard name of ``trial``'s next ``method`` call (``train``: the epoch it trains)."""
    from tune_app.tracking.progress import trial_number

    last = dict(getattr(trial, "last_result", None) or {})
    head = f"trial {trial_number(trial, 0) or '?'} ({trial.trial_id})"
    if method not in ("train", "train_buffered"):
        return f"{head}: {method}"
    done = last.get("epoch")
    epoch = (int(done) + 1) if isinstance(done, (int, float)) else 1
    text = f"{head}: epoch {epoch}" + (f"/{max_epochs}" if max_epochs else "")
    if metric in last:
        analysis = getattr(getattr(trial, "run_metadata", None), "metric_analysis", {}) or {}
        best = analysis.get(metric, {}).get("max")
        text += f", {metric} {_score(last[metric])} (best {_score(best)})"
    return text


class _NamedCalls:
    """An actor handle whose ``method`` calls carry a task name (every other attribute passes)."""

    def __init__(self, handle: Any, method: str, name: str) -> None:
        self._handle, self._method, self._name = handle, method, name

    def __getattr__(self, item: str) -> Any:
        attr = getattr(self._handle, item)
        return attr.options(name=self._name) if item == self._method else attr


def name_trial_tasks(*, metric: str, max_epochs: int | None) -> None:
    """Name every trial task Tune schedules from now on in this process (idempotent)."""
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController

    _settings.update(metric=metric, max_epochs=max_epochs)
    if getattr(TuneController._schedule_trial_task, _MARK, False):
        return
    schedule_trial_task = TuneController._schedule_trial_task
    schedule_actor_task = RayActorManager._schedule_tracked_actor_task

    # A name is cosmetic: whatever fails here (e.g. a Ray upgrade renamed a private field)
    # schedules the task unnamed, and tests/integration/test_dashboard.py fails.
    def named_trial_task(self: Any, trial: Any, method_name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            tracked = self._trial_to_actor[trial]
            tracked.__dict__.setdefault(_NAMES_ATTR, {})[method_name] = trial_task_name(trial, method_name,
                                                                                       **_settings)
        except Exception:
            logging.getLogger(__name__).debug("no task name for %s", trial, exc_info=True)
        return schedule_trial_task(self, trial, method_name, *args, **kwargs)

    def named_actor_task(self: Any, tracked_actor_task: Any, method_name: str, **kwargs: Any) -> Any:
        try:
            tracked = tracked_actor_task._tracked_actor
            name = tracked.__dict__.get(_NAMES_ATTR, {}).get(method_name)
            live = self._live_actors_to_ray_actors_resources
            entry = live.get(tracked) if name else None
        except Exception:
            entry = None
        if entry is None:
            return schedule_actor_task(self, tracked_actor_task, method_name, **kwargs)
        # The original looks the handle up here and only calls getattr(handle, method).remote.
        live[tracked] = (_NamedCalls(entry[0], method_name, name), *entry[1:])
        try:
            return schedule_actor_task(self, tracked_actor_task, method_name, **kwargs)
        finally:
            live[tracked] = entry

    for fn in (named_trial_task, named_actor_task):
        setattr(fn, _MARK, True)
    TuneController._schedule_trial_task = named_trial_task  # type: ignore[method-assign]
    RayActorManager._schedule_tracked_actor_task = named_actor_task  # type: ignore[method-assign]


class _DriverLogHandler(logging.FileHandler):
    """The driver's copy of tune_app's records in the Ray session's log folder."""


def log_to_ray_session(session_dir: str | Path) -> Path:
    """Write tune_app's driver records (INFO and up, secrets masked) to
    ``<session_dir>/logs/tune_app_driver.log`` as well; replaces an earlier session's copy."""
    path = Path(session_dir) / "logs" / DRIVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    app = logging.getLogger("tune_app")
    for old in [h for h in app.handlers if isinstance(h, _DriverLogHandler)]:
        app.removeHandler(old)
        old.close()
    handler = _DriverLogHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(SanitizingFilter())
    app.addHandler(handler)
    return path
