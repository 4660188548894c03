"""Retention: unit tests and hypothesis invariants of the pure planner."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tune_app.checkpoints.retention import (
    GB,
    CheckpointRecord,
    RetentionPolicy,
    _best_with_ties,
    escalate,
    plan_retention,
    plan_single_best,
    protected_paths,
)


def rec(
    trial: str, index: int, score: float | None, *, finished: bool = False, size: int = GB // 10
) -> CheckpointRecord:
    return CheckpointRecord(trial, f"{trial}/checkpoint_{index:06d}", index, score, size, finished)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_last_n": -1}, "keep_last_n"),
        ({"keep_best_k": 0}, "keep_best_k"),
        ({"keep_best_k": 3, "keep_best_k_max": 2}, "keep_best_k"),
        ({"keep_best_k_max": 3}, "keep_best_k_max"),
        ({"keep_best_k": 2, "keep_best_k_max": 1}, "keep_best_k"),
        ({"max_total_size_gb": 0}, "max_total_size_gb"),
        ({"max_total_size_gb": float("nan")}, "max_total_size_gb"),
        ({"keep_last_n": 1.5}, "keep_last_n"),
    ],
)
def test_policy_validation_names_field_and_range(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        RetentionPolicy(**kwargs)
    assert any(w in str(info.value) for w in ("between", ">= 0", "> 0"))


def test_escalate() -> None:
    base = RetentionPolicy(keep_last_n=3, keep_best_k=2)
    assert escalate(base, 1) == base
    assert escalate(base, 2) == RetentionPolicy(keep_last_n=0, keep_best_k=1)
    assert escalate(base, 3) == escalate(base, 2)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        escalate(base, 4)


# --------------------------------------------------------------------------- examples


def test_finished_trials_keep_only_study_best() -> None:
    records = [
        rec("a", 1, 0.1, finished=True),
        rec("a", 2, 0.9, finished=True),
        rec("b", 1, 0.5, finished=True),
        rec("b", 2, 0.9, finished=True),  # co-best
        rec("c", 1, 0.3),
        rec("c", 2, 0.2),
        rec("c", 3, None),
    ]
    plan = plan_retention(records, RetentionPolicy(keep_last_n=1, keep_best_k=1))
    assert plan.keep == {
        "a/checkpoint_000002",
        "b/checkpoint_000002",
        "c/checkpoint_000003",
        "c/checkpoint_000001",
    }
    assert not plan.over_budget
    assert "study best" in plan.reasons["b/checkpoint_000002"]
    assert "resume point" in plan.reasons["c/checkpoint_000003"]
    assert "finished" in plan.reasons["a/checkpoint_000001"]


def test_nan_is_never_best() -> None:
    records = [rec("a", 1, float("nan")), rec("a", 2, 0.4), rec("a", 3, 0.2), rec("a", 4, 0.3)]
    plan = plan_retention(records, RetentionPolicy(keep_last_n=0, keep_best_k=1))
    assert plan.keep == {"a/checkpoint_000002", "a/checkpoint_000004"}


def test_size_cap_drops_oldest_unprotected_first() -> None:
    records = [rec("a", i, float(i % 3), size=GB) for i in range(1, 7)]  # running trial
    policy = RetentionPolicy(keep_last_n=4, keep_best_k=1, max_total_size_gb=3)
    plan = plan_retention(records, policy)
    # best (score 2.0) = indices 2 and 5 (tie), newest = 6; last 4 = 3..6.
    assert plan.keep == {"a/checkpoint_000002", "a/checkpoint_000005", "a/checkpoint_000006"}
    assert "size cap" in plan.reasons["a/checkpoint_000003"]
    assert not plan.over_budget
    tight = plan_retention(records, RetentionPolicy(keep_last_n=4, max_total_size_gb=2))
    assert tight.over_budget
    assert tight.keep == {"a/checkpoint_000002", "a/checkpoint_000005", "a/checkpoint_000006"}


def test_plan_single_best() -> None:
    records = [
        rec("a", 1, 0.9, finished=True),
        rec("b", 1, 0.9, finished=True),
        rec("b", 2, 0.9, finished=True),  # newest among exact ties
        rec("c", 1, 0.95),
        rec("c", 2, 0.1),
    ]
    plan = plan_single_best(records)
    assert plan.keep == {"c/checkpoint_000001", "c/checkpoint_000002"}
    plan = plan_single_best(records[:3], policy=RetentionPolicy(max_total_size_gb=0.01))
    assert plan.keep == {"b/checkpoint_000002"} and plan.over_budget
    assert plan_single_best([]).keep == frozenset()


def test_duplicate_paths_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        plan_retention([rec("a", 1, 0.1), rec("a", 1, 0.2)], RetentionPolicy())


# --------------------------------------------------------------------------- properties

SCORES = st.one_of(
    st.none(),
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),  # frequent ties
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def studies(draw: st.DrawFn) -> list[CheckpointRecord]:
    records: list[CheckpointRecord] = []
    for t in range(draw(st.integers(0, 6))):
        finished = draw(st.booleans())
        indices = draw(st.lists(st.integers(0, 40), min_size=0, max_size=8, unique=True))
        for i in indices:
            size = draw(st.integers(1, 4 * GB))
            records.append(CheckpointRecord(f"t{t}", f"t{t}/c{i}", i, draw(SCORES), size, finished))
    return draw(st.permutations(records))


POLICIES = st.builds(
    RetentionPolicy,
    keep_last_n=st.integers(0, 3),
    keep_best_k=st.integers(1, 2),
    keep_best_k_max=st.just(2),
    max_total_size_gb=st.floats(0.5, 40.0),
)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _better(a: float, b: float) -> bool:
    return a > b


def _best_k_with_ties(records: list[CheckpointRecord], k: int, cap: int = 2) -> set[str]:
    """The study-best set the plan uses, checked against its definition: every record better
    than the K-th score, then records tied at it, ``max(k, cap)`` records in all."""
    best = set(_best_with_ties(records, k, cap))
    scored = [r for r in records if r.score is not None and not math.isnan(r.score)]
    if not scored:
        assert best == set()
        return best
    ranked = sorted((r.score for r in scored if r.score is not None), reverse=True)
    kth = ranked[min(k, len(ranked)) - 1]
    strictly_better = {r.path for r in scored if r.score is not None and _better(r.score, kth)}
    at_least_kth = {r.path for r in scored if r.score is not None and not _better(kth, r.score)}
    assert strictly_better <= best <= at_least_kth
    assert len(best) == min(len(at_least_kth), max(k, cap))
    return best


@PROPS
@given(records=studies(), policy=POLICIES)
def test_retention_invariants(
    records: list[CheckpointRecord], policy: RetentionPolicy
) -> None:
    plan = plan_retention(records, policy)
    paths = {r.path for r in records}
    by_path = {r.path: r for r in records}
    trials: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for r in records:
        trials[r.trial_id].append(r)
    running = {t: rs for t, rs in trials.items() if not all(r.trial_finished for r in rs)}

    # Partition.
    assert plan.keep | plan.delete == paths
    assert not plan.keep & plan.delete
    assert set(plan.reasons) == paths

    # Study best (co-best ties at the K-th score, keep_best_k_max in all) is never deleted.
    study_best = _best_k_with_ties(records, policy.keep_best_k, policy.keep_best_k_max)
    assert study_best <= plan.keep
    scored = [r for r in records if r.score is not None]
    if scored:
        top = max(r.score for r in scored if r.score is not None)
        tied_top = {r.path for r in scored if r.score == top}
        assert len(tied_top & plan.keep) >= min(len(tied_top), policy.keep_best_k_max)

    # Each running trial keeps its newest checkpoint (hence >= 1).
    newest = {max(rs, key=lambda r: r.index).path for rs in running.values()}
    assert newest <= plan.keep
    # Resume points keep their optimiser state; every other kept checkpoint goes weights-only.
    assert plan.resume_points == newest
    assert plan.weights_only == plan.keep - newest and not plan.weights_only & newest

    # Finished trials keep only study-best checkpoints.
    for rs in trials.values():
        if all(r.trial_finished for r in rs):
            assert {r.path for r in rs if r.path in plan.keep} <= study_best

    # Size cap.
    kept_bytes = sum(by_path[p].size_bytes for p in plan.keep)
    protected = study_best | newest
    protected_bytes = sum(by_path[p].size_bytes for p in protected)
    assert protected == protected_paths(records, policy)
    assert plan.over_budget == (protected_bytes > policy.max_total_bytes)
    if not plan.over_budget:
        assert kept_bytes <= policy.max_total_bytes
    # ...and it drops no more than needed: oldest first, stopping once under the cap.
    dropped = [by_path[p] for p in plan.delete if "size cap" in plan.reasons[p]]
    if dropped:
        last = max(dropped, key=lambda r: (r.index, r.trial_id, r.path))
        assert kept_bytes + last.size_bytes > policy.max_total_bytes
        assert not protected & {r.path for r in dropped}

    # Bounded independently of the number of finished trials.
    bound = len(study_best)
    for rs in running.values():
        trial_best = _best_k_with_ties(rs, policy.keep_best_k, policy.keep_best_k_max)
        bound += policy.keep_last_n + 1 + max(policy.keep_best_k, len(trial_best))
    assert len(plan.keep) <= bound

    # Idempotent: planning again over what was kept deletes nothing.
    kept_records = [r for r in records if r.path in plan.keep]
    again = plan_retention(kept_records, policy)
    assert again.delete == frozenset()
    assert again.over_budget == plan.over_budget


@PROPS
@given(records=studies(), policy=POLICIES, extra=st.integers(1, 30))
def test_finished_trials_do_not_grow_kept_count(
    records: list[CheckpointRecord], policy: RetentionPolicy, extra: int
) -> None:
    """Adding finished trials that are worse than everything adds nothing to disk."""
    plan = plan_retention(records, policy)
    worst = -2e6
    more = [
        CheckpointRecord(f"f{j}", f"f{j}/c{i}", i, worst if i else None, GB, True)
        for j in range(extra)
        for i in range(3)
    ]
    scored = any(r.score is not None for r in records)
    bigger = plan_retention([*records, *more], policy)
    if scored and len({r.path for r in records if r.score is not None}) >= policy.keep_best_k:
        assert bigger.keep == plan.keep
    else:
        assert len(bigger.keep) <= len(plan.keep) + extra * 3  # sanity only: few scored records


@PROPS
@given(records=studies())
def test_single_best_invariants(records: list[CheckpointRecord]) -> None:
    plan = plan_single_best(records)
    assert plan.keep | plan.delete == {r.path for r in records}
    trials: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for r in records:
        trials[r.trial_id].append(r)
    for rs in trials.values():
        if not all(r.trial_finished for r in rs):
            assert max(rs, key=lambda r: r.index).path in plan.keep
            assert max(rs, key=lambda r: r.index).path in plan.resume_points
    assert plan.weights_only == plan.keep - plan.resume_points
    scored = [r for r in records if r.score is not None]
    best_kept = [r for r in scored if r.path in plan.keep]
    if scored:
        values = [r.score for r in scored if r.score is not None]
        top = max(values)
        assert any(r.score == top for r in best_kept)
    assert (
        len(plan.keep)
        <= len([t for t in trials.values() if not all(r.trial_finished for r in t)]) + 1
    )


def test_many_exact_ties_keep_at_most_keep_best_k_max() -> None:
    # A small validation set gives few distinct scores: 50 finished trials all at 0.5.
    records = [rec(f"t{i:02d}", 1, 0.5, finished=True) for i in range(50)]
    plan = plan_retention(records, RetentionPolicy(keep_last_n=0, keep_best_k=1, keep_best_k_max=2))
    assert plan.keep == {"t00/checkpoint_000001", "t01/checkpoint_000001"}
    single = plan_retention(records, RetentionPolicy(keep_last_n=0, keep_best_k=1, keep_best_k_max=1))
    assert len(single.keep) == 1
