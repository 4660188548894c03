"""What the study-level MLflow run says about the study: best trial, best score, counts.

The study run (``tune_app.kind=study``) is the parent of the study's trial runs in the
same experiment. :class:`StudySummary` keeps one entry per trial (its outcome once it
ended, its best epoch: ``tune_app.outcome.best_epoch``, the project's one definition of a
trial's score) and turns them into the run's tags (:meth:`StudySummary.tags`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tune_app import outcome

#: Tags of the study run (besides ``tune_app.kind``/``tune_app.study`` and the progress tags).
BEST_TRIAL_TAG = "tune_app.best_trial_id"
BEST_SCORE_TAG = "tune_app.best_score"
BEST_EPOCH_TAG = "tune_app.best_epoch"
BEST_METRIC_TAG = "tune_app.best_metric"
FINISHED_TAG = "tune_app.trials.finished"
STOPPED_TAG = "tune_app.trials.stopped_early"
FAILED_TAG = "tune_app.trials.failed"
PLANNED_TAG = "tune_app.trials.planned"


@dataclass(frozen=True)
class TrialEntry:
    """A trial as the study run counts it: ``kind`` (finished / stopped / failed; ``None``
    while it may still train) and its best epoch's score."""

    kind: str | None
    best: float | None
    epoch: int | None


def trial_entry(trial: Any, metric: str, *, ended: bool, failed: bool) -> TrialEntry:
    """The entry of Tune's ``trial`` from its ``trial_state.json`` (history, stop record)."""
    path = getattr(getattr(trial, "storage", None), "trial_fs_path", None)
    state = outcome.read_trial_state(path) if path else {}
    history = [*state.get("history", []), getattr(trial, "last_result", None) or {}]
    best, epoch = outcome.best_epoch(history, metric)
    kind: str | None = None
    if failed:
        kind = outcome.FAILED
    elif ended:
        kind = outcome.STOPPED if outcome.outcome_from_state(state) == outcome.STOPPED else outcome.FINISHED
    return TrialEntry(kind, best, epoch)


@dataclass
class StudySummary:
    """The study run's view of the study; ended trials are read once (they do not change)."""

    metric: str
    planned: int | None = None
    entries: dict[str, TrialEntry] = field(default_factory=dict)

    def update(self, trials: list[Any], ending: Any | None = None, failed: bool = False) -> None:
        """Refresh from Tune's ``trials``; ``ending`` is the trial Tune is ending now (its
        status is not final yet when the callbacks run), ``failed`` whether it failed."""
        for trial in trials:
            known = self.entries.get(trial.trial_id)
            is_ending = trial is ending
            if known is not None and known.kind is not None and not is_ending:
                continue
            status = getattr(trial, "status", None)
            ended = is_ending or outcome.tune_ended(status)
            self.entries[trial.trial_id] = trial_entry(
                trial, self.metric, ended=ended,
                failed=(failed if is_ending else outcome.tune_failed(status)))

    def best(self) -> tuple[str | None, float | None, int | None]:
        """``(trial id, score, epoch)`` of the best epoch of any trial (ties: the first trial)."""
        found: tuple[str | None, float | None, int | None] = (None, None, None)
        for trial_id, entry in self.entries.items():
            if entry.best is not None and (found[1] is None or entry.best > found[1]):
                found = (trial_id, entry.best, entry.epoch)
        return found

    def counts(self) -> dict[str, int]:
        kinds = [e.kind for e in self.entries.values()]
        return {k: kinds.count(k) for k in (outcome.FINISHED, outcome.STOPPED, outcome.FAILED)}

    def tags(self) -> dict[str, str]:
        """The study run's tags: best trial id / score / epoch / metric and the trial counts."""
        trial_id, score, epoch = self.best()
        counts = self.counts()
        tags = {BEST_METRIC_TAG: f"{self.metric} (max)",
                FINISHED_TAG: str(counts[outcome.FINISHED]), STOPPED_TAG: str(counts[outcome.STOPPED]),
                FAILED_TAG: str(counts[outcome.FAILED])}
        if self.planned is not None:
            tags[PLANNED_TAG] = str(self.planned)
        if trial_id is not None and score is not None:
            tags.update({BEST_TRIAL_TAG: trial_id, BEST_SCORE_TAG: repr(score),
                         BEST_EPOCH_TAG: "" if epoch is None else str(epoch)})
        return tags
