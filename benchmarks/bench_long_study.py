"""A long study of the smallest setting: is the cost per trial flat, and Tune's state bounded?

    python benchmarks/bench_long_study.py [--trials 1000] [--storage DIR] [overrides...]

Runs ``python -m tune_app.run`` in this process (``model=tiny data.num_posts=20
tune.max_epochs=1 retention=minimal``, no end-of-study evaluation) and instruments
Tune's controller: every experiment-state rewrite (``TuneController.save_to_dir``) is
timed and the state file's size recorded, and each trial's completion time is taken, so
a trial's wall time is the time between two completions (harness included). Prints:

* mean wall time per trial of the first and the last 100 trials (after the first,
  which starts the worker) and their ratio (target <= 1.2);
* state size and the slowest rewrite around 100 trials and at the end;
* number of rewrites per trial, total wall time, study disk at the end, and the live
  checkpoint bytes after 10, 100, 300, 600 and all trials (flat when retention works);
* the controller's time in state syncs per trial, early and late.

Measured (quiet 2-core machine, 1000 trials, one run each, 2026-12-02):

    one rewrite per trial (no forced sync after each checkpoint), re-encoding only changed
    trials, written once into the study, searcher pickle without told trials' handles
                                    first 100 0.210 s/trial, last 100 0.407 s: ratio 1.93; 349 s total
    + no sanitiser walk of the early-stopping state, ended trials' empty staging folders removed
                                    first 100 0.186 s/trial, last 100 0.330 s: ratio 1.78; 276 s total;
                                    state 1.21 MB at 100 trials, 11.46 MB at 1000; slowest rewrite
                                    16 ms at 100, 210 ms at 1000; syncs 13 -> 82 ms per trial;
                                    live checkpoints 2.3 -> 2.6 MB (flat)

(Before all of it: 2 rewrites per trial; stop 21 measured a ratio of 1.50 on a loaded machine,
where the first trials were slower; not rerun quiet.)

Measured 2026-12-05 (quiet 2-core machine, 1000 trials, one run each):

    before the journal (one waited full rewrite per trial; Optuna DB mirrored at each)
                                    first 100 0.273 s/trial (median 0.221), last 100 0.410 s (median
                                    0.403): ratio 1.50; 337 s total; syncs 34 -> 129 ms per trial
    a trial journal line per new trial, a full save every 20 trials at most (and Tune's period)
                                    first 100 0.218 s/trial (median 0.201), last 100 0.244 s (median
                                    0.225): ratio 1.12; 252 s total; 49 rewrites; journal line
                                    median 2.2 ms; syncs 16 -> 21 ms per trial
                                    (run 2: 0.218 -> 0.246 s, median 0.202 -> 0.224: ratio 1.13; 272 s)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULTS = ["model=tiny", "data.num_posts=20", "tune.max_epochs=1", "retention=minimal",
            "evaluation.on_finish=false", "tune.verbose=0"]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def live_checkpoint_bytes(study: Path) -> int:
    return sum(du(p) for p in study.glob("*/checkpoint_*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--storage", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController

    from tune_app import run, state_sync, tuner
    from tune_app.tracking.progress import ProgressCallback

    rewrites: list[tuple[int, float, int]] = []  # (finished trials, seconds, state bytes)
    syncs: list[tuple[int, float]] = []  # (finished trials, seconds the controller waited for a sync)
    finished: list[float] = []
    disk: dict[int, int] = {}  # finished trials -> bytes of live checkpoints (sampled)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="bench_long_"))

    tuner._env_for_tune()  # the study's own patches of Tune first: the timers below wrap them
    original_save = TuneController.save_to_dir
    original_sync = _ExperimentCheckpointManager.sync_up_experiment_state

    @functools.wraps(original_sync)
    def sync_up_experiment_state(self: Any, *a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        out = original_sync(self, *a, **kw)
        syncs.append((len(finished), time.perf_counter() - start))
        return out

    @functools.wraps(original_save)  # keeps state_sync's mark: run.main does not patch it again
    def save_to_dir(self: Any) -> None:
        start = time.perf_counter()
        original_save(self)
        path = Path(self._storage.experiment_fs_path, self.experiment_state_file_name)
        rewrites.append((len(finished), time.perf_counter() - start, path.stat().st_size if path.exists() else 0))

    original_journal = state_sync.journal_new_trial
    journaled: list[tuple[int, float]] = []  # (finished trials, seconds to journal a new trial)

    @functools.wraps(original_journal)
    def journal_new_trial(*a: Any, **kw: Any) -> bool:
        start = time.perf_counter()
        out = original_journal(*a, **kw)
        if out:
            journaled.append((len(finished), time.perf_counter() - start))
        return out

    state_sync.journal_new_trial = journal_new_trial  # looked up at each call by the wrapped scheduler
    original_complete = ProgressCallback.on_trial_complete

    def on_trial_complete(self: Any, *a: Any, **kw: Any) -> None:
        finished.append(time.perf_counter())
        original_complete(self, *a, **kw)
        if len(finished) in {10, 100, 300, 600} or len(finished) == args.trials:
            disk[len(finished)] = live_checkpoint_bytes(storage / "long")

    TuneController.save_to_dir = save_to_dir  # type: ignore[method-assign]
    _ExperimentCheckpointManager.sync_up_experiment_state = sync_up_experiment_state  # type: ignore[method-assign]
    ProgressCallback.on_trial_complete = on_trial_complete  # type: ignore[method-assign]

    start = time.perf_counter()
    rc = run.main([*DEFAULTS, *args.overrides, f"tune.num_samples={args.trials}",
                   f"tune.storage_path={storage}", "tune.name=long"])
    wall = time.perf_counter() - start

    per_trial = [b - a for a, b in zip(finished, finished[1:], strict=False)]
    window = min(100, max(1, len(per_trial) // 3))
    first, last = per_trial[:window], per_trial[-window:]

    def around(n: int) -> tuple[int, float]:
        """State size and slowest rewrite among the rewrites nearest to ``n`` finished trials."""
        gap = min(abs(r[0] - n) for r in rewrites)
        near = [r for r in rewrites if abs(r[0] - n) <= max(gap, 5, n // 20)]
        return max(r[2] for r in near), max(r[1] for r in near)

    print(f"\nexit code {rc}; {len(finished)} trials in {wall:.0f} s ({wall / max(len(finished), 1):.2f} s/trial)")
    print(f"wall per trial: first {window} mean {statistics.mean(first):.3f} s (median "
          f"{statistics.median(first):.3f}), last {window} mean {statistics.mean(last):.3f} s (median "
          f"{statistics.median(last):.3f}); last/first = {statistics.mean(last) / statistics.mean(first):.2f} "
          "(target <= 1.2)")
    for n in sorted({min(100, len(finished)), len(finished)}):
        size, slowest = around(n)
        print(f"at ~{n} trials: experiment state {size / 1e6:.2f} MB, slowest rewrite {slowest * 1000:.0f} ms")
    early = sum(t for n, t in syncs if 1 <= n <= window) / window
    late = sum(t for n, t in syncs if n >= len(finished) - window) / window
    print(f"controller time in state syncs (rewrite + the wait before a trial starts): total "
          f"{sum(t for _, t in syncs):.1f} s; per trial {early * 1000:.0f} ms in the first {window}, "
          f"{late * 1000:.0f} ms in the last {window}")
    if journaled:
        print(f"trials journaled instead of a rewrite: {len(journaled)}; journal line median "
              f"{statistics.median(t for _, t in journaled) * 1000:.1f} ms, largest "
              f"{max(t for _, t in journaled) * 1000:.1f} ms")
    print(f"state rewrites: {len(rewrites)} ({len(rewrites) / max(len(finished), 1):.2f} per trial), "
          f"total {sum(r[1] for r in rewrites):.1f} s; largest {max(r[1] for r in rewrites) * 1000:.0f} ms")
    study = storage / "long"
    print("live checkpoint bytes after N trials (flat = retention bounds the disk): "
          + ", ".join(f"{n}: {b / 1e6:.1f} MB" for n, b in sorted(disk.items())))
    print(f"study folder {du(study) / 1e6:.1f} MB; checkpoints "
          f"{sum(du(p) for p in study.glob('*/checkpoint_*')) / 1e6:.1f} MB ({storage})")


if __name__ == "__main__":
    main()
