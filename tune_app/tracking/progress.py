"""Study progress: ``Trial 42/1000 (4.2%) | best val_macro_f1 0.871 (trial 17) | ETA 3h 15m``.

``format_progress`` and ``eta_seconds`` are pure. ``ProgressCallback`` (driver) prints the
line after every finished trial, logs it (JSON log: ``extra.progress``), writes
``<study>/progress.json`` and sets it as tags on the study-level MLflow run.
``log_epoch_progress`` (trainable) logs one line per epoch, with the last study line,
so the progress is visible in the trial actor's logs (Ray dashboard) too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.callback import Callback

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from tune_app.tracking.mlflow_callback import ResumableMLflowLoggerCallback

logger = logging.getLogger("tune_app.progress")

PROGRESS_FILE = "progress.json"
_FINISHED = ("TERMINATED", "ERROR")


def eta_seconds(durations: Sequence[float], remaining: int) -> float | None:
    """Average trial duration x trials remaining; ``None`` before the first trial ends."""
    if remaining <= 0:
        return 0.0
    if not durations:
        return None
    return sum(durations) / len(durations) * remaining


def format_duration(seconds: float | None) -> str:
    """``3h 15m``, ``4m 05s``, ``12s``, ``2d 3h``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def format_progress(done: int, total: int, *, metric: str, best_value: float | None,
                    best_trial: int | str | None, eta_s: float | None) -> str:
    """The one-line study progress."""
    pct = 100.0 * done / total if total else 0.0
    best = f"best {metric} {best_value:.3f} (trial {best_trial})" if best_value is not None else f"best {metric} -"
    return f"Trial {done}/{total} ({pct:.1f}%) | {best} | ETA {format_duration(eta_s)}"


@dataclass
class StudyProgress:
    done: int
    total: int
    metric: str
    best_value: float | None
    best_trial: int | None
    best_trial_id: str | None
    eta_s: float | None
    mean_trial_s: float | None
    #: Of ``done``: trials the early-stopping scheduler ended before their planned epochs.
    stopped: int = 0

    @property
    def line(self) -> str:
        line = format_progress(self.done, self.total, metric=self.metric, best_value=self.best_value,
                               best_trial=self.best_trial, eta_s=self.eta_s)
        if self.stopped:
            head, sep, rest = line.partition(" | ")
            line = f"{head} | {self.stopped} stopped early{sep}{rest}"
        return line

    def as_tags(self) -> dict[str, str]:
        """Tags for the study-level MLflow run."""
        pct = 100.0 * self.done / self.total if self.total else 0.0
        tags = {"progress": self.line, "progress.done": self.done, "progress.total": self.total,
                "progress.stopped": self.stopped,
                "progress.percent": f"{pct:.1f}", "progress.best_value": self.best_value,
                "progress.best_trial": self.best_trial_id, "progress.eta_s": self.eta_s}
        return {f"tune_app.{k}": ("" if v is None else str(v)) for k, v in tags.items()}


def trial_was_stopped(trial: Trial) -> bool:
    """The trial's ``trial_state.json`` records an early stop (``tune_app.outcome``)."""
    from tune_app import outcome

    storage = getattr(trial, "storage", None)
    path = getattr(storage, "trial_fs_path", None)
    return isinstance(path, str | Path) and bool(path) and outcome.trial_outcome(path) == outcome.STOPPED


def study_progress(trials: Sequence[Trial], total: int, metric: str, mode: str,
                   finished: Trial | None = None, stopped: set[str] | None = None) -> StudyProgress:
    """Progress of Tune's ``trials`` (creation order): ended count, best, ETA.

    ``finished``: the trial Tune is completing right now (its status is not final yet).
    ``stopped``: ids of trials stopped early (default: read from each ended trial's state).
    A stopped trial is done, and its (shorter) duration feeds the ETA like any other: the
    mean over ended trials is what a trial costs in this study, early stopping included.
    """
    durations: list[float] = []
    best_value: float | None = None
    best_index: int | None = None
    best_id: str | None = None
    done = n_stopped = 0
    for index, trial in enumerate(trials, start=1):
        if trial.status in _FINISHED or trial is finished:
            done += 1
            if trial.status != "ERROR" and (trial.trial_id in stopped if stopped is not None
                                            else trial_was_stopped(trial)):
                n_stopped += 1
            seconds = (trial.last_result or {}).get("time_total_s")
            if isinstance(seconds, int | float) and seconds > 0:
                durations.append(float(seconds))
        value = (trial.metric_analysis or {}).get(metric, {}).get(mode)
        if isinstance(value, int | float) and math.isfinite(value) and (
                best_value is None or (value > best_value if mode == "max" else value < best_value)):
            best_value, best_index, best_id = float(value), index, trial.trial_id
    mean = sum(durations) / len(durations) if durations else None
    return StudyProgress(done=done, total=total, metric=metric, best_value=best_value, best_trial=best_index,
                         best_trial_id=best_id, eta_s=eta_seconds(durations, total - done), mean_trial_s=mean,
                         stopped=n_stopped)


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    from tune_app.tracking.sanitize import sanitize_value

    with os.fdopen(fd, "w") as fh:
        json.dump(sanitize_value(data), fh)
    os.replace(tmp, path)


class ProgressCallback(Callback):
    """After every finished trial: stdout, JSON log, ``progress.json``, MLflow study tags."""

    def __init__(self, *, num_samples: int, metric: str, mode: str, study_dir: Path | str,
                 mlflow_callback: ResumableMLflowLoggerCallback | None = None) -> None:
        self.num_samples = num_samples
        self.metric = metric
        self.mode = mode
        self.study_dir = Path(study_dir)
        self.mlflow_callback = mlflow_callback

    def report(self, trials: Sequence[Trial], finished: Trial | None = None) -> StudyProgress:
        # Which ended trials were stopped early: read once per trial (an ended trial stays ended).
        stopped = self.__dict__.setdefault("_stopped", {})
        for trial in trials:
            if (trial.status == "TERMINATED" or trial is finished) and trial.trial_id not in stopped:
                stopped[trial.trial_id] = trial_was_stopped(trial)
        progress = study_progress(trials, self.num_samples, self.metric, self.mode, finished,
                                  stopped={t for t, s in stopped.items() if s})
        print(progress.line, flush=True)
        logger.info(progress.line, extra={"progress": asdict(progress)})
        try:
            _write_json_atomic(self.study_dir / PROGRESS_FILE, {**asdict(progress), "line": progress.line})
        except OSError as exc:
            logger.warning("could not write %s: %s", PROGRESS_FILE, exc)
        if self.mlflow_callback is not None:
            self.mlflow_callback.set_study_tags(progress.as_tags())
        return progress

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.report(trials, finished=trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.report(trials, finished=trial)


def read_study_line(study_dir: Path | str) -> str | None:
    """The last study progress line written by ``ProgressCallback`` (None if none yet)."""
    try:
        return str(json.loads((Path(study_dir) / PROGRESS_FILE).read_text())["line"])
    except (OSError, ValueError, KeyError):
        return None


def format_epoch_progress(epoch: int, max_epochs: int, *, trial_id: str, metrics: Mapping[str, Any],
                          metric: str, epoch_times: Sequence[float], study_line: str | None = None) -> str:
    """``trial abc epoch 2/4 [#####.....] 50% | val_macro_f1 0.512 | 1.2 s/epoch | trial ETA 2s``."""
    frac = epoch / max_epochs if max_epochs else 1.0
    bar = "#" * round(frac * 10) + "." * (10 - round(frac * 10))
    value = metrics.get(metric)
    shown = f"{metric} {value:.3f}" if isinstance(value, int | float) else f"{metric} -"
    per_epoch = sum(epoch_times) / len(epoch_times) if epoch_times else None
    eta = per_epoch * (max_epochs - epoch) if per_epoch is not None else None
    speed = f"{per_epoch:.1f} s/epoch" if per_epoch is not None else "? s/epoch"
    line = (f"trial {trial_id} epoch {epoch}/{max_epochs} [{bar}] {100 * frac:.0f}% | {shown} | {speed} "
            f"| trial ETA {format_duration(eta)}")
    return f"{line} || study: {study_line}" if study_line else line


def log_epoch_progress(epoch: int, max_epochs: int, *, trial_id: str, metrics: Mapping[str, Any], metric: str,
                       epoch_times: Sequence[float], study_dir: Path | str | None = None) -> str:
    """Log (stdout + trial JSON log) the per-epoch progress line; returns it."""
    study_line = read_study_line(study_dir) if study_dir is not None else None
    line = format_epoch_progress(epoch, max_epochs, trial_id=trial_id, metrics=metrics, metric=metric,
                                 epoch_times=epoch_times, study_line=study_line)
    logger.info(line, extra={"epoch": epoch, "max_epochs": max_epochs})
    return line
