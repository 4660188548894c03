"""The study's console and progress: one line per ended trial, a live line on a terminal.

``trial 3/50 d1c90f4e | stopped early after 1/8 epochs | best val_macro_f1 0.2641 (epoch 1) | 1.2 s | lr=0.004032 ... | study ETA 1m 05s``

``format_progress``, ``format_trial_line`` and ``eta_seconds`` are pure. ``ProgressCallback``
(driver) prints a trial's line when it ends, keeps a live line on a terminal, and after
every ended trial logs the study line (JSON log: ``extra.progress``), writes
``<study>/progress.json`` and sets it as tags on the study-level MLflow run.
``log_epoch_progress`` (trainable) logs one line per epoch, with the last study line,
so the progress is visible in the trial's own log too. Numbers show 4 significant digits.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.callback import Callback

from tune_app import outcome

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from tune_app.tracking.mlflow_callback import ResumableMLflowLoggerCallback

logger = logging.getLogger("tune_app.progress")

PROGRESS_FILE = "progress.json"


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


def fmt(value: Any) -> str:
    """A number as the console shows it: 4 significant digits (``0.8912``, ``0.004838``, ``128``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


def format_progress(done: int, total: int, *, metric: str, best_value: float | None,
                    best_trial: int | str | None, eta_s: float | None) -> str:
    """The one-line study progress."""
    pct = 100.0 * done / total if total else 0.0
    best = f"best {metric} {fmt(best_value)} (trial {best_trial})" if best_value is not None else f"best {metric} -"
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
    storage = getattr(trial, "storage", None)
    path = getattr(storage, "trial_fs_path", None)
    return isinstance(path, str | Path) and bool(path) and outcome.trial_outcome(path) == outcome.STOPPED


def trial_number(trial: Trial, default: int) -> int:
    """The trial's number in the study (Tune's creation counter, kept across restores)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else default


def study_progress(trials: Sequence[Trial], total: int, metric: str,
                   finished: Trial | None = None, stopped: set[str] | None = None,
                   durations: Sequence[float] | None = None,
                   best: Mapping[str, float] | None = None) -> StudyProgress:
    """Progress of Tune's ``trials`` (creation order): ended count, best, ETA.

    ``finished``: the trial Tune is completing right now (its status is not final yet).
    ``stopped``: ids of trials stopped early (default: read from each ended trial's state).
    ``durations``: what each ended trial cost (default: each trial's ``time_total_s``); the
    callback passes the wall time between trial ends, which counts the harness's share too.
    ``best``: each trial's best score by id (default: Tune's ``metric_analysis``).
    A stopped trial is done, and its (shorter) duration feeds the ETA like any other: the
    mean over ended trials is what a trial costs in this study, early stopping included.
    """
    measured: list[float] = []
    best_value: float | None = None
    best_index: int | None = None
    best_id: str | None = None
    done = n_stopped = 0
    for index, trial in enumerate(trials, start=1):
        if outcome.tune_ended(trial.status) or trial is finished:
            done += 1
            if not outcome.tune_failed(trial.status) and (trial.trial_id in stopped if stopped is not None
                                            else trial_was_stopped(trial)):
                n_stopped += 1
            seconds = (trial.last_result or {}).get("time_total_s")
            if isinstance(seconds, int | float) and seconds > 0:
                measured.append(float(seconds))
        value = (best.get(trial.trial_id) if best is not None
                 else (trial.metric_analysis or {}).get(metric, {}).get("max"))
        if isinstance(value, int | float) and math.isfinite(value) and (
                best_value is None or value > best_value):
            best_value, best_index, best_id = float(value), trial_number(trial, index), trial.trial_id
    durations = list(durations) if durations is not None else measured
    mean = sum(durations) / len(durations) if durations else None
    return StudyProgress(done=done, total=total, metric=metric, best_value=best_value, best_trial=best_index,
                         best_trial_id=best_id, eta_s=eta_seconds(durations, total - done), mean_trial_s=mean,
                         stopped=n_stopped)


def short_params(config: Mapping[str, Any] | None) -> str:
    """``lr=0.004838 batch_size=8 criteria_head=mlp``: a trial's sampled values, last key part only."""
    return " ".join(f"{str(k).rsplit('.', 1)[-1]}={fmt(v)}" for k, v in (config or {}).items()
                    if not str(k).startswith("__"))


def format_trial_line(*, number: int, total: int, trial_id: str, outcome: str, epochs: int | None,
                      planned: int, metric: str, best: float | None, best_epoch: int | None,
                      seconds: float | None, params: str, eta_s: float | None) -> str:
    """One console line per ended trial (see ``ProgressCallback``)."""
    ran = f"{epochs if epochs is not None else '?'}/{planned} epochs"
    what = {"finished": f"finished {ran}", "stopped": f"stopped early after {ran}",
            "failed": f"FAILED after {ran}"}.get(outcome, f"{outcome} after {ran}")
    score = (f"best {metric} {fmt(best)}" + (f" (epoch {best_epoch})" if best_epoch else "")
             if best is not None else f"best {metric} -")
    took = f"{seconds:.1f} s" if seconds is not None else "? s"
    return (f"trial {number}/{total} {trial_id} | {what} | {score} | {took} | {params} "
            f"| study ETA {format_duration(eta_s)}")


def _position(trials: Sequence[Trial], trial: Trial) -> int:
    return next((i for i, t in enumerate(trials, start=1) if t is trial), len(trials))


class LiveLine:
    """One line rewritten in place on a terminal (nothing when stdout is not a TTY)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stdout.write(f"\r\x1b[K{text}")
            sys.stdout.flush()
            self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self.shown = False


class ProgressCallback(Callback):
    """The study's console and progress record, on the driver.

    * One line per ended trial on stdout (number, outcome, best score and epoch, wall time,
      its params in short, the study's ETA), via :func:`format_trial_line`.
    * On a terminal, one live line rewritten at every result (trial, epoch, score, ETA).
    * After every ended trial: the study line in the JSON log (``extra.progress``, not the
      console), ``<study>/progress.json`` and tags on the study-level MLflow run.

    A trial's best is its best epoch (``tune_app.outcome.best_epoch``, as the report), from
    its ``trial_state.json`` once it ended; the ETA is the mean wall time between trial ends
    in this session (the harness's share included) times the trials left.
    """

    _RUNTIME = ("_stopped", "_best", "_started", "_ends", "_last_end", "_live_line")
    # Defaults for the attributes added since the first release: a study's tuner.pkl holds
    # the callback as it was pickled then, and ``Tuner.restore`` (the README's) unpickles it.
    max_epochs: int | None = None
    live: bool | None = None

    def __init__(self, *, num_samples: int, metric: str, study_dir: Path | str,
                 mlflow_callback: ResumableMLflowLoggerCallback | None = None, max_epochs: int | None = None,
                 live: bool | None = None) -> None:
        self.num_samples = num_samples
        self.metric = metric
        self.study_dir = Path(study_dir)
        self.mlflow_callback = mlflow_callback
        self.max_epochs = max_epochs
        self.live = live

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def _rt(self, name: str, default: Any) -> Any:
        return self.__dict__.setdefault(name, default)

    def setup(self, *args: Any, **info: Any) -> None:
        self.__dict__["_last_end"] = time.monotonic()

    def _live(self) -> LiveLine:
        line: LiveLine = self._rt("_live_line", LiveLine(self.live if self.live is not None else None))
        return line

    def _trial_best(self, trial: Trial, ended: bool) -> tuple[float | None, int | None]:
        """The trial's best epoch: from its own state file once ended, else Tune's running max."""
        cache: dict[str, tuple[float | None, int | None]] = self._rt("_best", {})
        if trial.trial_id in cache:
            return cache[trial.trial_id]
        value = (getattr(trial, "metric_analysis", None) or {}).get(self.metric, {}).get("max")
        best: tuple[float | None, int | None] = (float(value), None) if isinstance(value, int | float) else (None, None)
        path = getattr(getattr(trial, "storage", None), "trial_fs_path", None)
        if ended and path:
            from tune_app import outcome

            state = outcome.read_trial_state(path)
            found = outcome.best_epoch([*state.get("history", []), trial.last_result or {}], self.metric)
            if found[0] is not None:
                best = found
            cache[trial.trial_id] = best
        return best

    def report(self, trials: Sequence[Trial], finished: Trial | None = None) -> StudyProgress:
        # Which ended trials were stopped early: read once per trial (an ended trial stays ended).
        stopped = self._rt("_stopped", {})
        for trial in trials:
            if (trial.status == outcome.TUNE_TERMINATED or trial is finished) and trial.trial_id not in stopped:
                stopped[trial.trial_id] = trial_was_stopped(trial)
        ends: list[float] = self._rt("_ends", [])
        best = {t.trial_id: b for t in trials
                if (b := self._trial_best(t, outcome.tune_ended(t.status) or t is finished)[0]) is not None}
        progress = study_progress(trials, self.num_samples, self.metric, finished,
                                  stopped={t for t, s in stopped.items() if s}, durations=ends or None, best=best)
        logger.info(progress.line, extra={"progress": asdict(progress), "console": False})
        from tune_app.study import write_json_atomic

        try:
            write_json_atomic(self.study_dir / PROGRESS_FILE, {**asdict(progress), "line": progress.line})
        except OSError as exc:
            logger.warning("could not write %s: %s", PROGRESS_FILE, exc)
        if self.mlflow_callback is not None:
            self.mlflow_callback.set_study_tags(progress.as_tags())
        return progress

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._rt("_started", {})[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        live = self._live()
        if not live.enabled:
            return
        done = sum(1 for t in trials if outcome.tune_ended(t.status))
        ends: list[float] = self._rt("_ends", [])
        eta = eta_seconds(ends, self.num_samples - done) if ends else None
        value = result.get(self.metric)
        number = trial_number(trial, _position(trials, trial))
        live.show(f"trial {number}/{self.num_samples} {trial.trial_id} epoch {result.get('epoch', '?')}"
                  f"/{self._planned(trial)} | {self.metric} {fmt(value) if value is not None else '-'} "
                  f"| {done} ended | study ETA {format_duration(eta)}")

    def _planned(self, trial: Trial) -> int | str:
        from tune_app import outcome

        return outcome.planned_epochs(getattr(trial, "config", None), self.max_epochs) if self.max_epochs else "?"

    def _ended(self, trials: list[Trial], trial: Trial, failed: bool) -> None:
        now = time.monotonic()
        if "_last_end" in self.__dict__:  # set by setup() when Tune starts (or restores) the study
            self._rt("_ends", []).append(now - self.__dict__["_last_end"])
        self.__dict__["_last_end"] = now
        progress = self.report(trials, finished=trial)
        started = self._rt("_started", {}).pop(trial.trial_id, None)
        best, epoch = self._trial_best(trial, ended=True)
        kind = "failed" if failed else ("stopped" if self._rt("_stopped", {}).get(trial.trial_id) else "finished")
        line = format_trial_line(
            number=trial_number(trial, _position(trials, trial)), total=self.num_samples, trial_id=trial.trial_id, outcome=kind,
            epochs=(trial.last_result or {}).get("epoch"), planned=self._planned(trial),  # type: ignore[arg-type]
            metric=self.metric, best=best, best_epoch=epoch, seconds=None if started is None else now - started,
            params=short_params(getattr(trial, "config", None)), eta_s=progress.eta_s)
        self._live().clear()
        print(line, flush=True)
        logger.info(line, extra={"console": False})  # the study log and the Ray session's driver log

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended(trials, trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._ended(trials, trial, failed=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._live().clear()


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
