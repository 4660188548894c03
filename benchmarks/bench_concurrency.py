"""Concurrent trials on a cluster: the same study sequential vs N = 2 at once.

    python benchmarks/bench_concurrency.py [--trials 8] [--repeats 2] [overrides...]

Starts a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head without
CPUs, two worker nodes of one CPU each), then runs the same ``--trials``-trial study (FIFO, so
both run every trial to its planned epochs; ``retention=minimal``; every trial drawn by the seeded
random start-up sampler, ``tune.n_startup_trials=--trials``, so both modes train the same
configs in the same order, which is checked) through it with
``tune.max_concurrent_trials=1`` and ``=2`` (one CPU per trial), as a whole
``python -m tune_app.run`` process each, repeated and interleaved (the order alternates each
repeat) so machine noise hits both alike. While each runs, the study folder is polled for
checkpoint folders holding bytes plus saves in flight (``tmp-*``). Prints each run's wall time
and trial phase (first trial's start to last trial's last report, from ``result.json``), trial
count and peak, then min and median of

    speed-up = sequential wall / concurrent wall        (target >= 1.6x on 2 cores)

and of the same ratio over the trial phase alone (the set-up, imports and the end, ~12 s here,
are paid once by both and cannot shrink with N).

The trial-phase ratio splits into two losses, printed below it: the trials' summed busy time
(first report less its time to it, to last report) grows when two share 2 cores ("contention"),
and the N = 2 slots sit idle while the last trial runs alone or a slot waits for its next trial
("slot use" = summed busy time / (2 x trial phase)). Without either, the ratio would be 2.

and the peak against retention's bound ``K_best + N x (resume point + own best + 1 in flight)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tune_app.checkpoints.store import TMP_PREFIX, is_tombstone  # noqa: E402

DEFAULTS = ["model=tiny", "tune.max_epochs=8", "tune.scheduler=fifo", "retention=minimal",
            "tune.cpus_per_trial=1", "evaluation.on_finish=false"]


def checkpoints_on_disk(study: Path) -> int:
    """Checkpoint folders holding bytes (not tombstones) plus saves in flight (``tmp-*``)."""
    n = 0
    for t in study.glob("train_trial_*"):
        n += sum(1 for c in t.glob("checkpoint_*") if c.is_dir() and not is_tombstone(c))
        n += sum(1 for c in t.glob(f"{TMP_PREFIX}*") if c.is_dir())
    return n


def one_study(address: str, concurrent: int, storage: Path, name: str, trials: int, overrides: list[str],
              env: dict[str, str]) -> tuple[float, tuple[float, float], int, int, list[str]]:
    """Wall seconds, trial phase and summed busy seconds (:func:`trial_phase`), completed trials,
    peak checkpoints and the trials' configs (sorted ``params.json`` texts) of one study."""
    study = storage / name
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            if study.is_dir():
                peak = max(peak, checkpoints_on_disk(study))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tune_app.run", *overrides, f"tune.address={address}",
                             f"tune.max_concurrent_trials={concurrent}", f"tune.num_samples={trials}",
                             f"tune.storage_path={storage}", f"tune.name={name}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = list(proc.stdout)
    rc = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    if rc != 0:
        sys.exit(f"study failed ({rc}):\n{''.join(lines)[-3000:]}")
    completed = sum(1 for t in study.glob("train_trial_*/trial_state.json")
                    if json.loads(t.read_text()).get("status") == "completed")
    configs = sorted(t.read_text() for t in study.glob("train_trial_*/params.json"))
    return wall, trial_phase(study), completed, max(peak, checkpoints_on_disk(study)), configs


def trial_phase(study: Path) -> tuple[float, float]:
    """Seconds from the first trial's start (its first report less its time to it) to the last
    trial's last report: what concurrency can shorten (set-up, imports and the end are paid once);
    and the trials' busy seconds, each trial's own start to last report, summed."""
    starts, ends = [], []
    for result in study.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        starts.append(rows[0]["timestamp"] - rows[0]["time_total_s"])
        ends.append(rows[-1]["timestamp"])
    return max(ends) - min(starts), sum(e - s for s, e in zip(starts, ends, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [*DEFAULTS, f"tune.n_startup_trials={args.trials}", *args.overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    walls: dict[int, list[float]] = {1: [], 2: []}
    phases: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}
    configs: dict[int, list[str]] = {}
    peaks: dict[int, list[int]] = {1: [], 2: []}
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory(prefix="bench_concurrency_") as tmp:
            # One experiments folder for every run, as a user's: its MLflow store (~3 s to create)
            # is made once, before any run is timed; each study gets its own name.
            from tune_app.tracking.uri import create_sqlite_store

            storage = Path(tmp) / "experiments"
            create_sqlite_store(f"sqlite:///{storage / 'mlflow.db'}")
            for rep in range(args.repeats):
                for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    wall, (phase, busy_s), completed, peak, configs[n] = one_study(
                        cluster.address, n, storage, f"n{n}_r{rep}", args.trials, overrides, env)
                    if completed != args.trials:
                        sys.exit(f"N={n}: {completed} of {args.trials} trials completed")
                    walls[n].append(wall)
                    phases[n].append(phase)
                    busy[n].append(busy_s)
                    peaks[n].append(peak)
                    print(f"repeat {rep + 1}: N={n} {wall:.1f} s (trial phase {phase:.1f} s), {completed} trials completed, "
                          f"peak {peak} checkpoints on disk", flush=True)
                if configs[1] != configs[2]:
                    sys.exit(f"repeat {rep + 1}: N=1 and N=2 trained different configs; the ratio would "
                             "compare different work (pass tune.n_startup_trials >= --trials)")
    finally:
        cluster.shutdown()
    ratios = [s / c for s, c in zip(walls[1], walls[2], strict=True)]
    trials_only = [s / c for s, c in zip(phases[1], phases[2], strict=True)]
    bound = 1 + 2 * 3  # retention=minimal: K_best=1; per running trial resume point + own best + 1 in flight
    print(f"\noverrides: {' '.join(overrides)}; {args.trials} trials x {args.repeats} repeats, interleaved, "
          "2 nodes x 1 CPU")
    print(f"sequential (N=1) wall  min {min(walls[1]):.1f} s  median {statistics.median(walls[1]):.1f} s")
    print(f"concurrent (N=2) wall  min {min(walls[2]):.1f} s  median {statistics.median(walls[2]):.1f} s")
    print(f"speed-up N=2 vs N=1    min {min(ratios):.2f}x  median {statistics.median(ratios):.2f}x (target >= 1.6x)")
    print(f"  trial phase          min {min(trials_only):.2f}x  median {statistics.median(trials_only):.2f}x "
          "(first trial's start to last report; set-up, imports and the end are paid once by both)")
    contention = [c / s - 1 for s, c in zip(busy[1], busy[2], strict=True)]
    slot_use = [b / (2 * p) for b, p in zip(busy[2], phases[2], strict=True)]
    print(f"    contention         min {min(contention):+.0%}  median {statistics.median(contention):+.0%} "
          "(the trials' summed busy time, N=2 vs N=1: two trials sharing 2 cores)")
    print(f"    slot use           min {min(slot_use):.0%}  median {statistics.median(slot_use):.0%} "
          "(N=2 busy time / (2 x trial phase): the tail where one trial runs alone, and the gaps "
          "between a slot's trials)")
    print(f"peak checkpoints       N=1 max {max(peaks[1])} (bound {1 + 3}), N=2 max {max(peaks[2])} (bound {bound})")


if __name__ == "__main__":
    main()
