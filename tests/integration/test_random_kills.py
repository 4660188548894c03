"""Issue 14: SIGKILLs at random moments over whole studies, start-up and shutdown included.

Each command (a study's start, then ``resume=``) is killed with its whole process group
after a random delay drawn from the seed the test prints (``TUNE_APP_KILL_SEED`` replays a
run, ``TUNE_APP_KILLS`` sets how many kills; default 30). After each kill the test notes
each trial's newest valid checkpoint, then runs the one command a user would: ``resume=``
of the study, or the start command again when the kill came before the study had its
config. A study that finishes before the kills are used up is checked and the next one
starts, so every kill lands in a real run. Each study must end holding exactly what an
uninterrupted study holds (its Optuna DB included), and every restart that had a valid checkpoint resumed from it.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import (
    check_optuna_db,
    end_group,
    kill_group,
    mlflow_runs,
    run,
    start_run,
    tail,
    trial_state,
)
from tune_app.checkpoints.store import checkpoint_index, is_tombstone, verify_checkpoint
from tune_app.tracking.mlflow_callback import TRIAL_ID_TAG

pytestmark = pytest.mark.slow
SAMPLES, EPOCHS = 3, 3
FIRST_STARTUP_GUESS_S = 15.0  # until the test has seen how long a resume takes to train here
TRAINING_WINDOW_S = 12.0


def _trial_folders(study: Path) -> list[Path]:
    if not study.is_dir():
        return []
    return sorted(p for p in study.iterdir() if p.is_dir() and (p / "trial_state.json").is_file())


def _newest_valid(trial: Path) -> str | None:
    found = sorted((p for p in trial.glob("checkpoint_*") if checkpoint_index(p) is not None),
                   key=lambda p: checkpoint_index(p) or 0, reverse=True)
    return next((p.name for p in found if not is_tombstone(p) and verify_checkpoint(p).ok), None)


def _progress(study: Path) -> int:
    """Trial (re)starts plus epochs recorded: grows whenever a command got as far as training."""
    states = [trial_state(t) for t in _trial_folders(study)]
    return sum(len(s.get("starts", [])) + len(s.get("history", [])) for s in states)


def _where(study: Path, resumed: bool, progress_before: int) -> str:
    if not (study / "study_config.yaml").is_file():
        return "start-up, before the study config"
    if not any(study.glob("experiment_state-*.json")):
        return "start-up, before Tune's first state"
    if _progress(study) == progress_before:
        return "resume start-up" if resumed else "start-up, before the first trial"
    return "training"


def _check_study(storage: Path, study: Path, seed: int,
                 snapshots: list[dict[str, tuple[str | None, int]]]) -> int:
    trials = _trial_folders(study)
    assert len(trials) == SAMPLES, f"seed {seed}, {study.name}: {[t.name for t in trials]}"
    params = {json.dumps(json.loads((t / "params.json").read_text()), sort_keys=True) for t in trials}
    assert len(params) == SAMPLES, f"seed {seed}, {study.name}: a config was repeated"
    for t in trials:
        state = trial_state(t)
        assert state["status"] == "completed", (seed, t.name, state["status"])
        assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1)), (seed, t.name)
        for ckpt in t.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok, (seed, ckpt)
    runs = mlflow_runs(storage, study.name)
    trial_ids = sorted(r["tags"][TRIAL_ID_TAG] for r in runs)
    assert len(trial_ids) == SAMPLES == len(set(trial_ids)), f"seed {seed}: one MLflow run per trial: {trial_ids}"
    for r in runs:
        assert r["steps"]["val_macro_f1"] == list(range(1, EPOCHS + 1)), (seed, r["steps"]["val_macro_f1"])
    check_optuna_db(study)  # each trial once in optuna.db, with its final value and params
    checked = 0
    final: dict[str, list[dict[str, Any]]] = {t.name: trial_state(t)["starts"] for t in trials}
    for k, snapshot in enumerate(snapshots):
        for name, (newest, n_starts) in snapshot.items():
            starts = final.get(name, [])
            if newest is None or len(starts) <= n_starts:
                continue
            checked += 1
            assert starts[n_starts]["resumed_from"] == newest, (
                f"seed {seed}, {study.name}, after its kill {k + 1}: {name} restarted from "
                f"{starts[n_starts]['resumed_from']} though {newest} was valid")
    return checked


def test_random_sigkills_over_whole_studies_then_resume(tmp_path: Path) -> None:
    seed = int(os.environ.get("TUNE_APP_KILL_SEED", random.randrange(2**32)))
    kills = int(os.environ.get("TUNE_APP_KILLS", "30"))
    print(f"\nrandom kills: seed={seed} kills={kills} (replay: TUNE_APP_KILL_SEED={seed} TUNE_APP_KILLS={kills})")
    rng = random.Random(seed)
    storage, log = tmp_path / "s", tmp_path / "runs.log"
    landed: dict[str, int] = {}
    done = resumes = restarts_checked = 0
    began = time.monotonic()
    studies = 0
    startups = [FIRST_STARTUP_GUESS_S]
    seen_progress = False
    while done < kills:
        study = storage / f"chaos{studies}"
        studies += 1
        start = ["model=tiny", "data.num_posts=60", f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}",
                 "evaluation.on_finish=false", f"tune.storage_path={storage}", f"tune.name={study.name}"]
        snapshots: list[dict[str, tuple[str | None, int]]] = []
        complete = False
        while not complete:
            resumed = (study / "study_config.yaml").is_file()
            args = [f"resume={study}"] if resumed else start
            resumes += resumed
            if done >= kills:  # the kills are used up: run this study to its end
                assert run(args, log) == 0, f"seed {seed}, {study.name}\n{tail(log)}"
                break
            # Uniform over the command's start-up (as long as it takes on this machine, learnt
            # from the commands so far) and some training after it.
            delay = rng.uniform(0.0, statistics.median(startups) + TRAINING_WINDOW_S)
            before = _progress(study)
            with log.open("a") as fh:
                fh.write(f"\n===== {study.name}: kill {done + 1}/{kills} of {args[0]}... after {delay:.2f} s\n")
            proc = start_run(args, log)
            began_command = time.monotonic()
            rc: int | None = None
            try:
                while (rc := proc.poll()) is None and time.monotonic() - began_command < delay:
                    if len(startups) < 50 and resumed and _progress(study) > before and not seen_progress:
                        seen_progress = True
                        startups.append(time.monotonic() - began_command)
                    time.sleep(0.2)
                if rc is None:
                    kill_group(proc)
            finally:
                end_group(proc, grace=5)
            seen_progress = False
            if rc is not None:  # ended on its own before its kill: the study is complete
                assert rc == 0, f"seed {seed}, {study.name}: a command ended with {rc}\n{tail(log)}"
                complete = True
                continue
            done += 1
            where = _where(study, resumed, before)
            landed[where] = landed.get(where, 0) + 1
            snapshots.append({t.name: (_newest_valid(t), len(trial_state(t).get("starts", [])))
                              for t in _trial_folders(study)})
        restarts_checked += _check_study(storage, study, seed, snapshots)
    wall = time.monotonic() - began
    print(f"random kills: {done} kills over {studies} studies ({resumes} resumes), wall {wall:.0f} s, resume "
          f"start-up median {statistics.median(startups):.1f} s; "
          f"where they landed: {landed}; {restarts_checked} restarts had a valid checkpoint and resumed from "
          f"the newest")
