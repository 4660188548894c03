"""Issue 14: a study nothing can brick — kills during start-up, a kill between a checkpoint and
Tune's state, a second command on a running study, moved and copied study folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.integration.study_tools import (
    REPO,
    check_optuna_db,
    end_group,
    kill_group,
    mlflow_runs,
    run,
    start_run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.store import (
    is_tombstone,
    is_weights_only,
    prune_checkpoint,
    verify_checkpoint,
)
from tune_app.tracking.mlflow_callback import TRIAL_ID_TAG

pytestmark = pytest.mark.slow
BASE = ["model=tiny", "data.num_posts=20", "evaluation.on_finish=false"]


def _check_complete(storage: Path, study: Path, samples: int, epochs: int) -> list[Path]:
    trials = trial_dirs(study)
    assert len(trials) == samples, [t.name for t in trials]
    params = {json.dumps(json.loads((t / "params.json").read_text()), sort_keys=True) for t in trials}
    assert len(params) == samples, "a config was repeated"
    for t in trials:
        state = trial_state(t)
        assert state["status"] == "completed", (t.name, state.get("status"))
        assert [h["epoch"] for h in state["history"]] == list(range(1, epochs + 1))
        for ckpt in t.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok
    runs = mlflow_runs(storage, study.name)
    assert len(runs) == samples, "one MLflow run per trial"
    for r in runs:
        assert r["steps"]["val_macro_f1"] == list(range(1, epochs + 1)), r["steps"]["val_macro_f1"]
    return trials


def _study(tmp_path: Path, name: str, samples: int, epochs: int) -> tuple[Path, Path, Path, list[str]]:
    """(storage, study folder, log, start arguments) of a small study ``name``."""
    storage = tmp_path / "s"
    args = [*BASE, f"tune.num_samples={samples}", f"tune.max_epochs={epochs}", f"tune.storage_path={storage}",
            f"tune.name={name}"]
    return storage, storage / name, tmp_path / "run.log", args


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=300)


def test_a_kill_during_start_up_is_resumed_by_one_command(tmp_path: Path) -> None:
    storage, study, log, args = _study(tmp_path, "startup", samples=2, epochs=1)
    proc = start_run(args, log, failpoints="prepare=120")
    try:
        wait_for(lambda: (study / "study_config.yaml").is_file(), 120, "study_config.yaml written", proc, log)
        kill_group(proc)
    finally:
        end_group(proc)
    assert not (study / "meta" / "study.json").exists(), "killed before the preparation ended"
    (study / "tuner.pkl").write_bytes(b"")  # what a kill after fit() started, before Tune's first state, leaves
    # Starting again is refused (the folder is a study) and names the one command that works:
    assert run(args, log) == 2
    assert f"resume={study}" in tail(log, 5)
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)
    assert "starting the study from its saved config" in resume_log.read_text()
    _check_complete(storage, study, samples=2, epochs=1)


@pytest.mark.parametrize("epochs", [3, 1], ids=["mid-trial", "last-epoch"])
def test_a_checkpoint_tune_never_saw_is_resumed_from_and_its_epoch_reported_once(tmp_path: Path,
                                                                                  epochs: int) -> None:
    # last-epoch: the trial's own files say it finished, Tune's state says it runs; the study is
    # not complete until Tune and MLflow have that last result.
    storage, study, log, args = _study(tmp_path, "unseen", samples=1, epochs=epochs)
    proc = start_run(args, log, failpoints="report=120")
    try:
        wait_for(lambda: any(study.glob("*/checkpoint_000000/manifest.json")), 240, "epoch 1 saved", proc, log)
        kill_group(proc)  # the trial waits before reporting epoch 1 to Tune
    finally:
        end_group(proc)
    # A trial's last checkpoint is never resumed from for training: written weights only.
    (unseen,) = study.glob("*/checkpoint_000000")
    assert is_weights_only(unseen) == (epochs == 1), sorted(p.name for p in unseen.iterdir())
    (trial,) = [p.parent for p in study.glob("*/checkpoint_000000")]
    assert not (trial / "result.json").exists() or not (trial / "result.json").read_text().strip()
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)
    (trial,) = _check_complete(storage, study, samples=1, epochs=epochs)
    starts = trial_state(trial)["starts"]
    if epochs == 1:
        # All its epochs were trained: the resume reports the one Tune missed and trains nothing.
        assert [(s["start_epoch"], s["resumed_from"]) for s in starts] == [(1, None)], starts
        assert "not training it again" in (trial / "logs" / "trial.jsonl").read_text()
    else:
        assert (starts[-1]["start_epoch"], starts[-1]["resumed_from"]) == (2, "checkpoint_000000"), starts
    reported = [json.loads(line)["epoch"] for line in (trial / "result.json").read_text().splitlines() if line]
    assert reported == list(range(1, epochs + 1)), f"Tune's results of the trial: {reported}"
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == [f"checkpoint_00000{i}" for i in range(epochs)]
    assert "optimiser and the learning-rate schedule start afresh" not in (trial / "logs" / "trial.jsonl").read_text()


def test_a_trial_that_ended_before_tunes_state_recorded_it_is_not_trained_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after retention pruned (weights-only: demoted) an ended trial's checkpoints and before
    Tune's saved state recorded the end: ``resume=`` reports the trial's last result again and
    trains nothing, even when the checkpoint it would resume from is gone."""
    storage, study, log, args = _study(tmp_path, "ended", samples=1, epochs=3)
    marks = tmp_path / "marks"
    monkeypatch.setenv("TUNE_APP_FAILPOINT_MARKS", str(marks))
    proc = start_run([*args, "retention.keep_optimizer_state=false"], log, failpoints="trial_end=120")
    try:
        wait_for(lambda: (marks / "trial_end").exists(), 300, "retention ran for the ended trial", proc, log)
        kill_group(proc)
    finally:
        end_group(proc)
    (trial,) = trial_dirs(study)
    assert trial_state(trial)["status"] == "completed"
    # Retention kept the ended trial's best; when that is an earlier epoch the last checkpoint is
    # gone. Make it so whichever epoch scored best here: nothing is left to resume the last epoch from.
    last = max(trial.glob("checkpoint_*"))
    if not is_tombstone(last):
        prune_checkpoint(last, reason="test: an earlier epoch was the best")
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)
    _check_complete(storage, study, samples=1, epochs=3)
    assert len(trial_state(trial)["starts"]) == 1, f"trained again: {trial_state(trial)['starts']}"
    assert "not training it again" in (trial / "logs" / "trial.jsonl").read_text()
    reported = [json.loads(line)["epoch"] for line in (trial / "result.json").read_text().splitlines() if line]
    assert reported == [1, 2, 3], f"Tune's results of the trial: {reported}"


def test_a_second_command_on_a_running_study_is_refused(tmp_path: Path) -> None:
    storage, study, log, args = _study(tmp_path, "busy", samples=2, epochs=1)
    proc = start_run(args, log, failpoints="trial_start=120")
    try:
        wait_for(lambda: any(study.glob("*/trial_config.yaml")), 180, "trial 1 started", proc, log)
        for command in (["tune_app.run", f"resume={study}"], ["tune_app.evaluate", "--study", str(study)],
                        ["tune_app.cleanup", "--study", str(study), "--execute"]):
            out = _cli(*command)
            assert out.returncode == 2, (command, out.stdout[-2000:], out.stderr[-2000:])
            assert f"is in use by PID {proc.pid}" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert _cli("tune_app.cleanup", "--study", str(study)).returncode == 0, "a dry run only reads"
        assert _cli("tune_app.run", *args).returncode == 2, "starting it again is refused too"
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        kill_group(proc)
    finally:
        end_group(proc)
    # No Ray process of the killed study outlives it (raylet, agents, the trial's worker).
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)  # the dead holder's lock is taken over
    _check_complete(storage, study, samples=2, epochs=1)


def test_moved_and_copied_study_folders(tmp_path: Path) -> None:
    storage, log = tmp_path / "first", tmp_path / "run.log"
    study = storage / "mobile"
    args = [*BASE, "tune.num_samples=3", "tune.max_epochs=1", f"tune.storage_path={storage}", "tune.name=mobile"]
    proc = start_run(args, log, failpoints="trial_start=4")  # time to interrupt it after trial 1
    try:
        wait_for(lambda: study.is_dir() and any((t / "result.json").is_file() for t in trial_dirs(study)), 300,
                 "trial 1 reported", proc, log)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130, tail(log)
    finally:
        end_group(proc)
    finished_before = sum(trial_state(t).get("status") == "completed" for t in trial_dirs(study))
    assert finished_before < 3, "interrupted before the end"

    # A copy beside the original would share its MLflow store: refused, naming both.
    copy = storage / "mobile-copy"
    shutil.copytree(study, copy)
    out = _cli("tune_app.run", f"resume={copy}")
    assert out.returncode == 2 and str(study) in out.stderr and str(copy) in out.stderr, out.stderr
    shutil.rmtree(copy)

    # Moved (with or without its storage folder's MLflow store): everything goes to the new place.
    elsewhere = tmp_path / "second"
    elsewhere.mkdir()
    moved = elsewhere / "mobile"
    shutil.move(str(study), moved)
    before = sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*"))
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={moved}"], resume_log) == 0, tail(resume_log)
    assert sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*")) == before, \
        "nothing was written under the old location"
    trials = trial_dirs(moved)
    assert len(trials) == 3 and all(trial_state(t)["status"] == "completed" for t in trials)
    # The new location's own store has one run for each trial Tune had not ended before the move.
    runs = mlflow_runs(elsewhere, "mobile")
    trial_ids = [r["tags"][TRIAL_ID_TAG] for r in runs]
    assert len(set(trial_ids)) == len(trial_ids) and 3 - finished_before <= len(runs) <= 3, trial_ids
    assert json.loads((moved / "meta" / "study.json").read_text())["study_dir"] == str(moved)
    check_optuna_db(moved)  # the Optuna DB moved with the folder and holds every trial once
