"""Study-wide retention with N trials writing at once: a property test over interleaved studies.

The driver's ``RetentionCallback`` plans after every checkpoint any trial reports and at every
trial end; meanwhile each other running trial may be writing its next checkpoint (one in flight
each). Whatever the interleaving, the checkpoints on disk stay within

    keep_best_k_max  +  N x (max(keep_last_n, 1) + keep_best_k_max  +  1 in flight)

(the study's best; per running trial its resume point / last N, its own best, its next save).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tune_app.checkpoints.retention import CheckpointRecord, RetentionPolicy, plan_retention

SCORES = st.one_of(st.none(), st.sampled_from([0.1, 0.5, 0.9]),  # ties across trials
                   st.floats(0, 1, allow_nan=False))
POLICIES = st.builds(RetentionPolicy, keep_last_n=st.integers(0, 2), keep_best_k=st.integers(1, 2),
                     keep_best_k_max=st.just(2), max_total_size_gb=st.just(1e6))


@st.composite
def concurrent_studies(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, float | None]]]:
    """N, and the order in which trials report checkpoints (``epoch``) and end (``-1``):
    at most N trials running at any moment, a new one starting when one ends."""
    n = draw(st.integers(1, 4))
    total = draw(st.integers(n, 3 * n + 2))
    epochs = [draw(st.integers(1, 6)) for _ in range(total)]
    events: list[tuple[str, int, float | None]] = []
    running: dict[str, int] = {}
    started = 0
    while started < total or running:
        while started < total and len(running) < n:
            running[f"t{started}"] = 0
            started += 1
        trial = draw(st.sampled_from(sorted(running)))
        running[trial] += 1
        events.append((trial, running[trial], draw(SCORES)))
        if running[trial] >= epochs[int(trial[1:])]:
            events.append((trial, -1, None))
            del running[trial]
    return n, events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(study=concurrent_studies(), policy=POLICIES)
def test_n_writers_stay_within_one_disk_budget(study: tuple[int, list[tuple[str, int, float | None]]],
                                               policy: RetentionPolicy) -> None:
    n, events = study
    on_disk: dict[str, CheckpointRecord] = {}
    running: set[str] = set()
    bound = policy.keep_best_k_max + n * (max(policy.keep_last_n, 1) + policy.keep_best_k_max + 1)
    peak = 0
    for trial, epoch, score in events:
        if epoch == -1:
            running.discard(trial)
            for path, r in list(on_disk.items()):
                if r.trial_id == trial:
                    on_disk[path] = CheckpointRecord(r.trial_id, r.path, r.index, r.score, r.size_bytes, True)
        else:
            running.add(trial)
            path = f"{trial}/checkpoint_{epoch:06d}"
            on_disk[path] = CheckpointRecord(trial, path, epoch, score, 1, False)
        # Before retention acts: this save is on disk, each other running trial may be writing one.
        in_flight = len(running - {trial})
        peak = max(peak, len(on_disk) + in_flight)
        assert len(on_disk) + in_flight <= bound, (n, policy, sorted(on_disk))
        plan = plan_retention(list(on_disk.values()), policy)
        for path in plan.delete:
            del on_disk[path]
        # Every running trial can resume: its newest checkpoint stays.
        for t in running:
            mine = [r for r in on_disk.values() if r.trial_id == t]
            assert not mine or max(mine, key=lambda r: r.index).path in plan.resume_points
    # Once every trial ended, only the study's best remain.
    assert len(on_disk) <= policy.keep_best_k_max
    assert peak <= bound
