"""Harness overhead per trial: ``python -m tune_app.run`` vs a plain Optuna loop.

    python benchmarks/bench_trial_overhead.py [--trials 40] [--repeats 3] [overrides...]

Both run the same N trials of the smallest setting (default overrides: ``model=tiny
data.num_posts=20 tune.max_epochs=1``; the study's end-of-study test evaluation off, as
the loop has none) as a whole process each (imports, Ray start, everything), repeated
and interleaved (loop, harness, loop, harness...) so machine noise hits both alike.
The loop (``plain_optuna_loop.py``) calls the project's own per-trial steps with TPE on
the same space. Prints each run's wall time, then min and median of

    overhead per trial = (harness wall - loop wall) / N

pairing each harness run with the loop run just before it. Target: <= 1.0 s.
Extra arguments are Hydra overrides for both (e.g. ``model=minilm``, ``train.precision=bf16``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ["model=tiny", "data.num_posts=20", "tune.max_epochs=1"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [*DEFAULTS, *args.overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    loops, harness = [], []
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        for rep in range(args.repeats):
            loop_dir, study_dir = Path(tmp) / f"loop{rep}", Path(tmp) / f"study{rep}"
            loops.append(timed([sys.executable, "benchmarks/plain_optuna_loop.py", "--trials", str(args.trials),
                                "--storage", str(loop_dir), *overrides], env))
            harness.append(timed([sys.executable, "-m", "tune_app.run", *overrides,
                                  f"tune.num_samples={args.trials}", f"tune.storage_path={study_dir}",
                                  "evaluation.on_finish=false"], env))
            print(f"repeat {rep + 1}: plain loop {loops[-1]:.1f} s, tune_app.run {harness[-1]:.1f} s "
                  f"({args.trials} trials)", flush=True)
    per_trial = [(h - lo) / args.trials for h, lo in zip(harness, loops, strict=True)]
    print(f"\noverrides: {' '.join(overrides)}; {args.trials} trials x {args.repeats} repeats, interleaved")
    print(f"plain loop wall     min {min(loops):.1f} s  median {statistics.median(loops):.1f} s")
    print(f"tune_app.run wall   min {min(harness):.1f} s  median {statistics.median(harness):.1f} s")
    print(f"harness / loop      min {min(h / lo for h, lo in zip(harness, loops, strict=True)):.2f}x  "
          f"median {statistics.median(h / lo for h, lo in zip(harness, loops, strict=True)):.2f}x")
    print(f"overhead per trial  min {min(per_trial):.2f} s  median {statistics.median(per_trial):.2f} s "
          f"(target <= 1.0 s)")


if __name__ == "__main__":
    main()
