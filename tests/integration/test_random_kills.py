"""Issue 14: SIGKILLs at random moments over a whole study, start-up and shutdown included.

Each command (the start, then ``resume=``) is killed with its whole process group after a
random delay drawn from the seed the test prints (``TUNE_APP_KILL_SEED`` replays a run,
``TUNE_APP_KILLS`` sets how many kills; default 30). After each kill the test notes each
trial's newest valid checkpoint, then runs the one command a user would: ``resume=`` of the
study, or the start command again when the kill came before the study folder had its
config. After the last kill the study must finish and hold exactly what an uninterrupted
study holds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import end_group, mlflow_runs, run, start_run, tail, trial_state
from tune_app.checkpoints.store import checkpoint_index, is_tombstone, verify_checkpoint
from tune_app.tracking.mlflow_callback import TRIAL_ID_TAG

pytestmark = pytest.mark.slow
SAMPLES, EPOCHS = 4, 2
MAX_DELAY_S = 30.0


def _trial_folders(study: Path) -> list[Path]:
    return sorted(p for p in study.iterdir() if p.is_dir() and (p / "trial_state.json").is_file()) \
        if study.is_dir() else []


def _newest_valid(trial: Path) -> str | None:
    found = sorted((p for p in trial.glob("checkpoint_*") if checkpoint_index(p) is not None),
                   key=lambda p: checkpoint_index(p) or 0, reverse=True)
    return next((p.name for p in found if not is_tombstone(p) and verify_checkpoint(p).ok), None)


def _phase(study: Path) -> str:
    if not (study / "study_config.yaml").is_file():
        return "before the study config"
    if not any(study.glob("experiment_state-*.json")):
        return "before Tune's first state"
    if not _trial_folders(study):
        return "before the first trial"
    return "during trials"


def test_random_sigkills_over_the_whole_run_then_resume(tmp_path: Path) -> None:
    seed = int(os.environ.get("TUNE_APP_KILL_SEED", random.randrange(2**32)))
    kills = int(os.environ.get("TUNE_APP_KILLS", "30"))
    print(f"\nrandom kills: seed={seed} kills={kills} (replay: TUNE_APP_KILL_SEED={seed})")
    rng = random.Random(seed)
    storage = tmp_path / "s"
    study = storage / "chaos"
    start = ["model=tiny", "data.num_posts=20", f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}",
             "evaluation.on_finish=false", f"tune.storage_path={storage}", "tune.name=chaos"]
    snapshots: list[dict[str, tuple[str | None, int]]] = []
    phases: dict[str, int] = {}
    began = time.monotonic()
    log = tmp_path / "runs.log"
    for k in range(kills):
        args = [f"resume={study}"] if (study / "study_config.yaml").is_file() else start
        delay = rng.uniform(0.0, MAX_DELAY_S)
        with log.open("a") as fh:
            fh.write(f"\n===== kill {k + 1}/{kills}: {' '.join(args[:1])}... killed after {delay:.2f} s\n")
        proc = start_run(args, log)
        try:
            try:
                rc: int | None = proc.wait(timeout=delay)
            except Exception:
                rc = None
            if rc is None:
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            end_group(proc, grace=5)
        if rc is not None:  # the command ended on its own before its kill (the study may be done)
            assert rc == 0, f"kill {k + 1}: command ended with {rc} before its kill (seed {seed})\n{tail(log)}"
        phase = _phase(study)
        phases[phase] = phases.get(phase, 0) + 1
        snapshots.append({t.name: (_newest_valid(t), len(trial_state(t).get("starts", [])))
                          for t in _trial_folders(study)})

    final_log = tmp_path / "final.log"
    args = [f"resume={study}"] if (study / "study_config.yaml").is_file() else start
    assert run(args, final_log) == 0, f"seed {seed}\n{tail(final_log)}"
    wall = time.monotonic() - began
    print(f"random kills: {kills} kills, wall {wall:.0f} s, where they landed: {phases}")

    trials = _trial_folders(study)
    assert len(trials) == SAMPLES, f"seed {seed}: {[t.name for t in trials]}"
    params = {json.dumps(json.loads((t / "params.json").read_text()), sort_keys=True) for t in trials}
    assert len(params) == SAMPLES, f"seed {seed}: a config was repeated"
    for t in trials:
        state = trial_state(t)
        assert state["status"] == "completed", (seed, t.name, state["status"])
        assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1)), (seed, t.name)
        for ckpt in t.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok, (seed, ckpt)
    runs = mlflow_runs(storage, "chaos")
    trial_ids = sorted(r["tags"][TRIAL_ID_TAG] for r in runs)
    assert len(trial_ids) == SAMPLES == len(set(trial_ids)), f"seed {seed}: one MLflow run per trial: {trial_ids}"
    for r in runs:
        assert r["steps"]["val_macro_f1"] == list(range(1, EPOCHS + 1)), (seed, r["steps"]["val_macro_f1"])

    restarts_checked = 0
    final: dict[str, list[dict[str, Any]]] = {t.name: trial_state(t)["starts"] for t in trials}
    for k, snapshot in enumerate(snapshots):
        for name, (newest, n_starts) in snapshot.items():
            starts = final.get(name, [])
            if newest is None or len(starts) <= n_starts:
                continue
            restarts_checked += 1
            assert starts[n_starts]["resumed_from"] == newest, (
                f"seed {seed}, after kill {k + 1}: {name} restarted from {starts[n_starts]['resumed_from']} "
                f"though {newest} was valid")
    print(f"random kills: {restarts_checked} restarts with a valid checkpoint, each resumed from the newest")
