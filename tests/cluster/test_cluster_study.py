"""A study on a multi-node Ray cluster (simulated on this machine with ``ray.cluster_utils.Cluster``):
N = 2 trials at once, a worker node lost mid-trial, the driver SIGKILLed at a random moment after
that (seed printed; ``TUNE_APP_KILL_SEED`` replays it) and the study resumed by a new command.

The nodes share this machine's disk, which stands for the filesystem every node of a real
cluster mounts (``tune.storage_path`` on NFS or alike).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_concurrency import checkpoints_on_disk
from tests.integration.study_tools import (
    check_optuna_db,
    end_group,
    kill_group,
    mlflow_runs,
    run,
    start_run,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.store import is_tombstone, verify_checkpoint

pytestmark = pytest.mark.slow

SAMPLES, EPOCHS, N = 4, 5, 2
#: retention=minimal: the study's best (K=1), and per running trial its resume point, its own
#: best and one save in flight.
PEAK_BOUND = 1 + N * (1 + 1 + 1)


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head without CPUs (only the driver attaches there) and three 1-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(3):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def test_two_trials_at_once_survive_a_lost_node_and_a_killed_driver(cluster: Any, tmp_path: Path) -> None:
    seed = int(os.environ.get("TUNE_APP_KILL_SEED", random.randrange(2**32)))
    print(f"\ncluster driver kill: seed={seed} (replay: TUNE_APP_KILL_SEED={seed})")
    storage, name = tmp_path / "shared", "cluster_study"
    study, log = storage / name, tmp_path / "run.log"
    args = [f"tune.address={cluster.address}", f"tune.max_concurrent_trials={N}", "tune.cpus_per_trial=1",
            "tune.max_failures=1", "retention=minimal", f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}",
            f"tune.storage_path={storage}", f"tune.name={name}", "evaluation.on_finish=false"]
    peak = 0

    def watch(cond: Any) -> Any:
        def check() -> bool:
            nonlocal peak
            peak = max(peak, checkpoints_on_disk(study))
            return bool(cond())
        return check

    def running_with(epochs: int) -> list[Path]:
        return [t for t in trial_dirs(study) if trial_state(t).get("status") == "running"
                and len(trial_state(t).get("history", [])) >= epochs] if study.is_dir() else []

    proc = start_run(args, log)
    try:
        # Two trials train at once, each on a node of its own.
        wait_for(watch(lambda: len(running_with(1)) == N), 300, "two trials running at once", proc, log)
        nodes = {trial_state(t)["starts"][-1]["node_id"] for t in running_with(1)}
        assert len(nodes) == N, "the concurrent trials run on different nodes"
        # A worker node dies mid-trial: its trial's attempt ends, Tune retries it on another node.
        wait_for(watch(lambda: running_with(2)), 300, "a trial with two epochs", proc, log)
        victim = running_with(2)[0]
        lost = trial_state(victim)["starts"][-1]["node_id"]
        (node,) = [n for n in cluster.worker_nodes if n.node_id == lost]
        cluster.remove_node(node, allow_graceful=False)
        wait_for(watch(lambda: len(trial_state(victim).get("starts", [])) == 2), 300,
                 f"{victim.name} retried after its node was lost", proc, log)
        # Then the driver dies at a random moment of the rest of the run (maybe after its end).
        delay = random.Random(seed).uniform(0.0, 25.0)
        deadline = time.monotonic() + delay
        wait_for(watch(lambda: time.monotonic() >= deadline or proc.poll() is not None), delay + 5,
                 f"{delay:.1f} s")
        kill_group(proc)
        proc.wait(timeout=60)
    finally:
        end_group(proc)
    resumed = storage / "resume.log"
    # A new driver (another command) finishes the study from the shared storage.
    rc = run([f"resume={study}", f"tune.address={cluster.address}"], resumed, timeout=600)
    assert rc == 0, tail(resumed) + tail(log)
    peak = max(peak, checkpoints_on_disk(study))

    trials = trial_dirs(study)
    assert len(trials) == SAMPLES, [t.name for t in trials]
    states = {t.name: trial_state(t) for t in trials}
    for t, s in states.items():
        assert s["status"] == "completed", (t, s["status"])
        assert [h["epoch"] for h in s["history"]] == list(range(1, EPOCHS + 1)), t
        assert all(start["start_epoch"] > 1 for start in s["starts"][1:]), ("resumed from a checkpoint", s["starts"])
    retried = states[victim.name]["starts"]
    assert retried[0]["node_id"] == lost and retried[1]["node_id"] != lost, "retried on another node"
    assert retried[1]["start_epoch"] > 1 and retried[1]["resumed_from"], "from its last valid checkpoint"
    runs = mlflow_runs(storage, name)
    assert len(runs) == SAMPLES, "one MLflow run per trial"
    for r in runs:
        for key in ("val_macro_f1", "epoch"):
            assert r["steps"][key] == list(range(1, EPOCHS + 1)), ("no metric step twice", key, r["steps"][key])
    check_optuna_db(study)
    for t in trials:
        for ckpt in t.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok
    print(f"peak checkpoints on disk: {peak} (bound {PEAK_BOUND})")
    assert peak <= PEAK_BOUND
    assert checkpoints_on_disk(study) <= 1, "once the study ended only its best checkpoint holds bytes"

