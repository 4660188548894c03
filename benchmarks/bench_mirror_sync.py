"""What keeping an object-store study's bucket in step (``object_store.StudyMirror.sync``) costs per event.

    python benchmarks/bench_mirror_sync.py [--sizes 100,1000] [--repeats 15] [--dir DIR]

An object-store study syncs its working copy to the bucket after each result, checkpoint and
trial end, and before each new trial starts (``state_sync.before_new_trial_starts``). Each sync
walks the working copy and stats every file; only what changed is uploaded. This builds
working copies shaped like real ones (per trial: Tune's four files, ``trial_state.json``, a
report, two live checkpoints and three tombstones; the study's state, journal, ``optuna.db``
and ``mlflow.db``) of each size, primes a mirror on each (everything uploaded once), then
times, interleaved across sizes and repeated:

* an idle sync (nothing changed: the walk and the stats alone);
* the sync after a result, walking every folder (one ``trial_state.json`` and one
  ``result.json`` changed: the walk plus two small uploads): what ``MirrorCallback`` does at
  most once a minute and when the study ends;
* the same, with every other trial ended and settled (``sync(settled=...)``): what an
  event's sync does in between (one trial running, as with ``max_concurrent_trials=1``).

The bucket is a local folder (``pyarrow.fs.LocalFileSystem``): this times the harness, not the
network; an upload to S3 adds one request per changed file (~10-50 ms each). Prints min and
median per size, and each size's ratio to the smallest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _build(study: Path, trials: int) -> None:
    """A working copy of ``trials`` trials (tiny files: the walk's cost is per file, not per byte)."""
    for name in ("study_config.yaml", "tuner.pkl", "experiment_state-2026-01-01_00-00-00.json",
                 "search_gen_state-2026-01-01_00-00-00.json", "searcher-state-2026-01-01_00-00-00.pkl",
                 "trial_journal.jsonl", "progress.json"):
        (study / name).parent.mkdir(parents=True, exist_ok=True)
        (study / name).write_text("{}")
    import sqlite3

    for db in ("optuna.db", "mlflow.db"):
        with sqlite3.connect(study / db) as conn:
            conn.execute("create table if not exists t (x)")
    for i in range(trials):
        trial = study / f"train_trial_{i:05d}_{i}_lr=0.001"
        trial.mkdir()
        for name in ("params.json", "params.pkl", "result.json", "progress.csv", "trial_state.json",
                     "trial_report.json"):
            (trial / name).write_text(json.dumps({"trial": i}))
        for k in range(5):
            ckpt = trial / f"checkpoint_{k:06d}"
            ckpt.mkdir()
            if k < 3:
                (ckpt / "PRUNED").write_text("pruned")
            else:
                for name in ("model.safetensors", "trainer_state.json", "manifest.json"):
                    (ckpt / name).write_text("x")


def _time(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    from pyarrow import fs as pafs

    from tune_app.object_store import StudyMirror

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-mirror-") as tmp:
        remote = pafs.LocalFileSystem()
        mirrors = {}
        for n in sizes:
            study, bucket = Path(tmp, f"copy-{n}"), Path(tmp, f"bucket-{n}")
            study.mkdir()
            bucket.mkdir()
            _build(study, n)
            for ckpt in study.glob("*/checkpoint_*"):  # as Tune's checkpoint copy would have put them
                for f in ckpt.iterdir():
                    target = bucket / f.relative_to(study)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(f.read_bytes())
            mirror = StudyMirror(study, remote, str(bucket))
            mirror.sync(force=True)  # everything uploaded once
            mirrors[n] = mirror
        kinds = ("idle, full walk", "after a result, full walk", "after a result, ended trials settled")
        times: dict[tuple[int, str], list[float]] = {(n, k): [] for n in sizes for k in kinds}
        for r in range(args.repeats):
            for n in sizes:  # interleaved: a noisy moment hits every size alike
                mirror = mirrors[n]
                times[n, kinds[0]].append(_time(mirror.sync))
                trials = sorted(p.name for p in mirror.local_dir.glob("train_trial_*"))
                for kind, settled in ((kinds[1], set()), (kinds[2], set(trials) - {trials[r % n]})):
                    for name in ("trial_state.json", "result.json"):
                        (mirror.local_dir / trials[r % n] / name).write_text(json.dumps({"repeat": r, "kind": kind}))
                    start = time.perf_counter()
                    uploaded = mirror.sync(settled=settled)
                    times[n, kind].append(time.perf_counter() - start)
                    assert len(uploaded) == 2, uploaded
        base = sizes[0]
        print(f"StudyMirror.sync per event ({args.repeats} repeats, interleaved; bucket = local folder)")
        for n in sizes:
            files = sum(1 for p in mirrors[n].local_dir.rglob("*") if p.is_file())
            print(f"  {n} trials ({files} files):")
            for kind in kinds:
                got = times[n, kind]
                print(f"    {kind:38s} min {min(got) * 1e3:7.1f} ms, median {statistics.median(got) * 1e3:7.1f} ms"
                      f" (median x{statistics.median(got) / statistics.median(times[base, kind]):.1f} of {base} trials)")


if __name__ == "__main__":
    main()
