"""Kill a real study in the middle of trial 2 of 4, resume it, and check nothing was lost or repeated
(trial folders, checkpoints, MLflow runs, the Optuna study in ``optuna.db``).

SIGINT and SIGTERM go to the driver (a clean, resumable stop); SIGKILL goes to the
whole process group (driver, Ray workers, agents: a crash). Resume is by
``python -m tune_app.run resume=DIR`` and, once, by the documented ``Tuner.restore`` path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.study_tools import (
    REPO,
    check_optuna_db,
    end_group,
    kill_group,
    mlflow_artifacts,
    mlflow_runs,
    run,
    start_run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.store import is_tombstone, verify_checkpoint

pytestmark = pytest.mark.slow
SAMPLES, EPOCHS = 4, 3

README_STUDY = Path("experiments/redsm5_study")


def readme_restore_snippet() -> str:
    """The README's ``Tuner.restore`` example, verbatim (it names ``experiments/redsm5_study``)."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "Tuner.restore" in b).split("```")[0]
    assert f'Path("{README_STUDY}")' in block, "the README's restore example names another study: update this test"
    return block


def run_readme_restore(cwd: Path) -> subprocess.CompletedProcess[str]:
    """The README snippet run as a user would, from the folder its relative study path starts at."""
    return subprocess.run([sys.executable, "-c", readme_restore_snippet()], cwd=cwd, env=study_env(),
                          capture_output=True, text=True, timeout=600)




def _second_trial_reported(study: Path) -> bool:
    if not study.is_dir():
        return False
    # Trial folders are named train_trial_<id>_<number>_<params>: the number is the order.
    trials = {int(t.name.split("_")[3]): t for t in trial_dirs(study)}
    # result.json is written by Tune's driver when it takes the report (the checkpoint is on
    # disk by then); trial_state.json alone is not enough: it gets the epoch before the save.
    return 2 in trials and (trials[2] / "result.json").is_file() and (trials[2] / "result.json").stat().st_size > 0


def _interrupt(tmp_path: Path, sig: signal.Signals, name: str = "killed") -> tuple[Path, Path]:
    storage = tmp_path / "experiments"
    log = tmp_path / "run.log"
    study = storage / name
    proc = start_run([f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}", f"tune.storage_path={storage}",
                      f"tune.name={name}"], log)
    try:
        wait_for(lambda: _second_trial_reported(study), 400, "trial 2 reports its first epoch", proc, log)
        time.sleep(0.5)  # Tune syncs its experiment state right after it takes a report
        if sig == signal.SIGKILL:
            kill_group(proc)
        else:
            os.kill(proc.pid, sig)
        rc = proc.wait(timeout=120)
    finally:
        end_group(proc)
    if sig != signal.SIGKILL:
        assert rc == 130, tail(log)
        assert f"resume={study}" in log.read_text()
    return storage, study


def _check_finished_study(storage: Path, study: Path, *, graceful: bool) -> None:
    """The resumed study ended as an uninterrupted one would. ``graceful``: it was stopped by
    SIGINT/SIGTERM, which lets the running trial go on until Tune stops it."""
    trials = trial_dirs(study)
    assert len(trials) == SAMPLES, [t.name for t in trials]
    params = [json.loads((t / "params.json").read_text()) for t in trials]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == SAMPLES, "a config was repeated"
    states = [trial_state(t) for t in trials]
    assert all(s["status"] == "completed" for s in states)
    assert all([h["epoch"] for h in s["history"]] == list(range(1, EPOCHS + 1)) for s in states)
    resumed = [s for s in states if len(s["starts"]) > 1]
    # At most the interrupted trial is trained again, from its checkpoint. A trial whose last
    # epoch was durable before the interruption (the interrupted one, or an earlier one whose end
    # Tune's state had not saved yet) reports what Tune missed and is not trained again. A
    # graceful stop lets the running trial go on, and may end between two trials.
    not_again = [t.name for t in trials if "not training it again" in (t / "logs" / "trial.jsonl").read_text()]
    assert len(resumed) <= 1, ("only the interrupted trial is trained again", [s["starts"] for s in states])
    assert graceful or resumed or not_again, "a SIGKILL mid-trial leaves a trial to take up"
    assert all(s["starts"][-1]["start_epoch"] > 1 for s in resumed), "it continues from its checkpoint, not epoch 1"
    runs = mlflow_runs(storage, study.name)
    assert len(runs) == SAMPLES, "one MLflow run per trial, no duplicate run after restore"
    (study_run,) = mlflow_runs(storage, study.name, kind="study")  # found again by the resume, not recreated
    seeds = {t.name.split("_")[2]: str(s["seed"]) for t, s in zip(trials, states, strict=True)}
    for r in runs:
        for key in ("val_macro_f1", "val_loss", "epoch"):
            assert r["steps"][key] == list(range(1, EPOCHS + 1)), (key, r["steps"][key])
        assert r["tags"]["mlflow.parentRunId"] == study_run["run_id"], "nested under the one study run"
        assert r["tags"]["tune_app.seed"] == r["params"]["trial_seed"] == seeds[r["tags"]["tune_app.trial_id"]]
    tags = study_run["tags"]
    assert study_run["status"] == "FINISHED" and tags["tune_app.trials.finished"] == str(SAMPLES)
    assert tags["tune_app.trials.failed"] == "0" and tags["tune_app.trials.stopped_early"] == "0"
    best = max(h["val_macro_f1"] for s in states for h in s["history"])
    assert float(tags["tune_app.best_score"]) == pytest.approx(best) and tags["tune_app.best_trial_id"] in seeds
    if (study / "evaluation_report.json").is_file():  # the report's files, one set
        report = json.loads((study / "evaluation_report.json").read_text())
        assert tags["tune_app.test_report_id"] == report["report_id"]
        assert mlflow_artifacts(storage, study_run["run_id"]) == sorted(
            ["evaluation_report.json", *report["artifacts"].values()])
    for t in trials:
        for ckpt in t.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok
    check_optuna_db(study)  # each trial once in optuna.db, with its final value and params


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_kill_in_trial_two_then_resume_finishes_the_study(tmp_path: Path, sig: signal.Signals) -> None:
    storage, study = _interrupt(tmp_path, sig)
    log = tmp_path / "resume.log"
    assert run([f"resume={study}"], log) == 0, tail(log)
    assert f"Study complete: {SAMPLES}/{SAMPLES}" in log.read_text()
    _check_finished_study(storage, study, graceful=sig != signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_documented_tuner_restore_verbatim_finishes_the_study_like_resume(tmp_path: Path, sig: signal.Signals) -> None:
    storage, study = _interrupt(tmp_path, sig, name=README_STUDY.name)
    assert study == tmp_path / README_STUDY
    proc = run_readme_restore(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_finished_study(storage, study, graceful=sig != signal.SIGKILL)
    assert (study / "evaluation_report.json").is_file(), "the snippet ends with the test evaluation, as resume= does"
    log = tmp_path / "again.log"
    assert run([f"resume={study}"], log) == 0, tail(log)
    assert "already complete" in log.read_text() and "Nothing was re-run" in log.read_text()


def _files(study: Path) -> dict[str, bytes]:
    """Every file of the study and its bytes (the lock file names its last holder: left out)."""
    return {str(p.relative_to(study)): p.read_bytes() for p in sorted(study.rglob("*"))
            if p.is_file() and p.name != ".study.lock"}


def test_failed_documented_restore_leaves_the_study_as_it_was(tmp_path: Path) -> None:
    """Tune would start a new experiment in the folder when it cannot read the saved state."""
    _, study = _interrupt(tmp_path, signal.SIGINT, name=README_STUDY.name)
    state = max(study.glob("experiment_state-*.json"))
    good = state.read_bytes()
    state.write_text('{"torn')
    before = _files(study)
    proc = run_readme_restore(tmp_path)
    assert proc.returncode != 0
    assert _files(study) == before, "a failed restore changed the study"
    log = tmp_path / "resume.log"
    assert run([f"resume={study}"], log) == 2, tail(log)
    assert state.name in log.read_text() and "Traceback" not in log.read_text(), tail(log)
    state.write_bytes(good)
    assert run([f"resume={study}"], log) == 0, tail(log)
    _check_finished_study(tmp_path / "experiments", study, graceful=True)
