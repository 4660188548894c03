"""What to keep: a pure retention decision over checkpoint records (no I/O).

Rules (see :func:`plan_retention`): the study's best K checkpoints (ties kept, up to
``keep_best_k_max`` in all) are protected; a running trial keeps its newest checkpoint (its resume point),
its last N and its best K; a finished trial keeps only what is in the study's
best set, so disk use stays flat in the number of trials; then a size cap drops
unprotected checkpoints oldest first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "GB",
    "MAX_KEEP_BEST_K",
    "CheckpointRecord",
    "RetentionPlan",
    "RetentionPolicy",
    "escalate",
    "plan_retention",
    "plan_single_best",
    "protected_paths",
]

#: ``max_total_size_gb`` is in decimal gigabytes.
GB = 1_000_000_000
#: Hard cap on ``keep_best_k_max``.
MAX_KEEP_BEST_K = 2



@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint as retention sees it.

    ``index`` is the report order within its trial (higher = newer); ``score`` is
    the study metric (None or NaN: never "best"); ``path`` identifies the record.
    """

    trial_id: str
    path: str
    index: int
    score: float | None
    size_bytes: int
    trial_finished: bool


@dataclass(frozen=True)
class RetentionPolicy:
    """How many checkpoints to keep, and the total size cap (decimal GB)."""

    keep_last_n: int = 1
    keep_best_k: int = 1
    keep_best_k_max: int = 2
    max_total_size_gb: float = 10.0

    def __post_init__(self) -> None:
        for name in ("keep_last_n", "keep_best_k", "keep_best_k_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not 1 <= self.keep_best_k_max <= MAX_KEEP_BEST_K:
            raise ValueError(
                f"keep_best_k_max must be between 1 and {MAX_KEEP_BEST_K} (hard cap), "
                f"got {self.keep_best_k_max}"
            )
        if not 1 <= self.keep_best_k <= self.keep_best_k_max:
            raise ValueError(
                f"keep_best_k must be between 1 and keep_best_k_max={self.keep_best_k_max}, "
                f"got {self.keep_best_k}"
            )
        size = self.max_total_size_gb
        if (
            isinstance(size, bool)
            or not isinstance(size, int | float)
            or not math.isfinite(size)
            or size <= 0
        ):
            raise ValueError(f"max_total_size_gb must be a finite number > 0, got {size!r}")

    @property
    def max_total_bytes(self) -> int:
        """The size cap in bytes."""
        return int(self.max_total_size_gb * GB)


@dataclass(frozen=True)
class RetentionPlan:
    """Which record paths to keep and delete, why, and whether the cap is unreachable."""

    keep: frozenset[str]
    delete: frozenset[str]
    reasons: Mapping[str, str]
    over_budget: bool
    #: The newest checkpoint of each running trial: the only ones a trial resumes from.
    resume_points: frozenset[str] = frozenset()

    @property
    def weights_only(self) -> frozenset[str]:
        """Kept checkpoints that are not resume points (study bests, a running trial's older
        ones): only ever evaluated, so their optimiser state can go."""
        return self.keep - self.resume_points


def _has_score(r: CheckpointRecord) -> bool:
    return r.score is not None and not math.isnan(r.score)


def _best_with_ties(records: Iterable[CheckpointRecord], k: int, cap: int) -> set[str]:
    """Paths of the best ``k`` scored records, plus records tied with the k-th, ``cap`` in all.

    Ties are co-best and kept, but never more than ``cap`` (``keep_best_k_max``) records:
    a study whose metric takes few values (a small validation set) would otherwise keep
    every tied checkpoint of every trial, and its disk use would grow with the number of
    trials. Among equal scores the earlier epoch wins, then the trial id (deterministic).
    """
    scored = [r for r in records if _has_score(r)]
    if k <= 0 or not scored:
        return set()
    ranked = sorted(scored, key=lambda r: (-float(r.score or 0.0), r.index, r.trial_id, r.path))
    threshold = ranked[min(k, len(ranked)) - 1].score
    best = ranked[:k] + [r for r in ranked[k:] if r.score == threshold]
    return {r.path for r in best[:max(k, cap)]}


def _check(records: Sequence[CheckpointRecord]) -> None:
    seen: set[str] = set()
    for r in records:
        if r.path in seen:
            raise ValueError(f"duplicate checkpoint path in records: {r.path}")
        seen.add(r.path)


def _by_trial(records: Iterable[CheckpointRecord]) -> dict[str, list[CheckpointRecord]]:
    trials: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for r in records:
        trials[r.trial_id].append(r)
    return trials


def _newest_of_running(records: Sequence[CheckpointRecord]) -> set[str]:
    newest: set[str] = set()
    for trial in _by_trial(records).values():
        if not all(r.trial_finished for r in trial):
            newest.add(max(trial, key=lambda r: r.index).path)
    return newest


def protected_paths(
    records: Sequence[CheckpointRecord], policy: RetentionPolicy
) -> frozenset[str]:
    """Study best set (ties kept) plus the newest checkpoint of each running trial."""
    _check(records)
    return frozenset(
        _best_with_ties(records, policy.keep_best_k, policy.keep_best_k_max) | _newest_of_running(records)
    )


def plan_retention(
    records: Sequence[CheckpointRecord], policy: RetentionPolicy
) -> RetentionPlan:
    """Decide which checkpoints to keep.

    (a) the study's best ``keep_best_k`` over all records, ties at the K-th score
    included up to ``keep_best_k_max`` records in all, are protected; (b) a running trial (any record not finished) keeps
    its newest checkpoint (protected), its last ``keep_last_n`` by index and its
    best ``keep_best_k`` (ties kept); (c) a finished trial keeps only records in
    the study best set; (d) None/NaN scores are never best; (e) if kept bytes
    exceed ``max_total_size_gb``, unprotected kept records are dropped oldest
    first (by index, then trial id); ``over_budget`` is True when the protected
    records alone exceed the cap.
    """
    _check(records)
    reasons: dict[str, str] = {}
    study_best = _best_with_ties(records, policy.keep_best_k, policy.keep_best_k_max)
    newest = _newest_of_running(records)
    keep: set[str] = set()
    for r in records:
        if r.path in study_best:
            keep.add(r.path)
            reasons[r.path] = f"study best (top {policy.keep_best_k} incl. ties, score={r.score})"
    for trial in _by_trial(records).values():
        running = not all(r.trial_finished for r in trial)
        if not running:
            for r in trial:
                reasons.setdefault(r.path, "finished trial, not among the study's best")
            continue
        by_index = sorted(trial, key=lambda r: r.index, reverse=True)
        last_n = {r.path for r in by_index[: policy.keep_last_n]}
        best_k = _best_with_ties(trial, policy.keep_best_k, policy.keep_best_k_max)
        for r in trial:
            if r.path in keep:
                continue
            if r.path in newest:
                reasons[r.path] = "newest checkpoint of a running trial (resume point)"
            elif r.path in last_n:
                reasons[r.path] = f"last {policy.keep_last_n} of a running trial"
            elif r.path in best_k:
                reasons[r.path] = f"best {policy.keep_best_k} of a running trial (score={r.score})"
            else:
                reasons[r.path] = "running trial: outside last N and best K"
                continue
            keep.add(r.path)

    protected = study_best | newest
    size = {r.path: r.size_bytes for r in records}
    cap = policy.max_total_bytes
    kept_bytes = sum(size[p] for p in keep)
    if kept_bytes > cap:
        droppable = sorted(
            (r for r in records if r.path in keep and r.path not in protected),
            key=lambda r: (r.index, r.trial_id, r.path),
        )
        for r in droppable:
            if kept_bytes <= cap:
                break
            keep.discard(r.path)
            kept_bytes -= size[r.path]
            reasons[r.path] = (
                f"size cap: dropped oldest unprotected to fit {policy.max_total_size_gb} GB"
            )
    over_budget = sum(size[p] for p in protected) > cap
    all_paths = {r.path for r in records}
    return RetentionPlan(frozenset(keep), frozenset(all_paths - keep), reasons, over_budget, frozenset(newest))


def plan_single_best(
    records: Sequence[CheckpointRecord],
    *,
    policy: RetentionPolicy | None = None,
) -> RetentionPlan:
    """Storage-pressure step 3: keep the study's single best plus each running trial's newest.

    Exact ties for best go to the newest: higher index, then later in ``records``.
    With ``policy``, ``over_budget`` reports whether even this exceeds its cap.
    """
    _check(records)
    reasons: dict[str, str] = {}
    newest = _newest_of_running(records)
    keep = set(newest)
    for p in keep:
        reasons[p] = "newest checkpoint of a running trial (resume point)"
    scored = [(pos, r) for pos, r in enumerate(records) if _has_score(r)]
    if scored:
        _, best = max(scored, key=lambda pr: (pr[1].score or 0.0, pr[1].index, pr[0]))
        keep.add(best.path)
        reasons[best.path] = f"single best of the study (score={best.score})"
    for r in records:
        reasons.setdefault(r.path, "storage pressure: only the single best and resume points kept")
    over_budget = False
    if policy is not None:
        over_budget = sum(r.size_bytes for r in records if r.path in keep) > policy.max_total_bytes
    all_paths = {r.path for r in records}
    return RetentionPlan(frozenset(keep), frozenset(all_paths - keep), reasons, over_budget, frozenset(newest))


def escalate(policy: RetentionPolicy, step: int) -> RetentionPolicy:
    """Policy for storage-pressure escalation ``step`` (1..3).

    1: limits unchanged (the caller prunes unprotected checkpoints now);
    2: ``keep_best_k=1, keep_last_n=0``; 3: as 2, and the caller plans with
    :func:`plan_single_best` (only the study's single best stays protected).
    """
    if step not in (1, 2, 3):
        raise ValueError(f"escalation step must be 1, 2 or 3, got {step!r}")
    if step == 1:
        return policy
    return replace(policy, keep_best_k=1, keep_last_n=0)


def saves_resume_state(epoch: int, planned_epochs: int, *, keep_optimizer_state: bool) -> bool:
    """Whether epoch ``epoch``'s checkpoint is written with its optimiser and scheduler state.

    Only a running trial's newest checkpoint is ever resumed from, and a trial that trained
    all ``planned_epochs`` is never trained again (``outcome.completed_final_result``), so
    the last epoch's checkpoint can only be kept as a study best: weights only, as retention
    would demote it, unless kept bests keep their optimiser state (``keep_optimizer_state``).
    """
    return keep_optimizer_state or epoch < planned_epochs
