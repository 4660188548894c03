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

def readme_restore_snippet() -> str:
    """The README's ``Tuner.restore`` example, run as documented on the test's study (argv[1])."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "Tuner.restore" in b).split("```")[0]
    documented = 'study = Path("experiments/redsm5_study")'
    assert documented in block, "the README's restore example changed: update this test"
    return "import sys\n" + block.replace(documented, "study = Path(sys.argv[1])")




def _second_trial_reported(study: Path) -> bool:
    if not study.is_dir():
        return False
    # Trial folders are named train_trial_<id>_<number>_<params>: the number is the order.
    trials = {int(t.name.split("_")[3]): t for t in trial_dirs(study)}
    # result.json is written by Tune's driver when it takes the report (the checkpoint is on
    # disk by then); trial_state.json alone is not enough: it gets the epoch before the save.
    return 2 in trials and (trials[2] / "result.json").is_file() and (trials[2] / "result.json").stat().st_size > 0


def _interrupt(tmp_path: Path, sig: signal.Signals) -> tuple[Path, Path]:
    storage = tmp_path / "experiments"
    log = tmp_path / "run.log"
    study = storage / "killed"
    proc = start_run([f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}", f"tune.storage_path={storage}",
                      "tune.name=killed"], log)
    try:
        wait_for(lambda: _second_trial_reported(study), 400, "trial 2 reports its first epoch", proc, log)
        time.sleep(0.5)  # Tune syncs its experiment state right after it takes a report
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, sig)
        rc = proc.wait(timeout=120)
    finally:
        end_group(proc)
    if sig != signal.SIGKILL:
        assert rc == 130, tail(log)
        assert f"resume={study}" in log.read_text()
    return storage, study


def _check_finished_study(storage: Path, study: Path) -> None:
    trials = trial_dirs(study)
    assert len(trials) == SAMPLES, [t.name for t in trials]
    params = [json.loads((t / "params.json").read_text()) for t in trials]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == SAMPLES, "a config was repeated"
    states = [trial_state(t) for t in trials]
    assert all(s["status"] == "completed" for s in states)
    assert all([h["epoch"] for h in s["history"]] == list(range(1, EPOCHS + 1)) for s in states)
    resumed = [s for s in states if len(s["starts"]) > 1]
    assert len(resumed) == 1, "exactly the interrupted trial restarts"
    assert resumed[0]["starts"][-1]["start_epoch"] > 1, "it continues from its checkpoint, not epoch 1"
    runs = mlflow_runs(storage, "killed")
    assert len(runs) == SAMPLES, "one MLflow run per trial, no duplicate run after restore"
    for r in runs:
        for key in ("val_macro_f1", "val_loss", "epoch"):
            assert r["steps"][key] == list(range(1, EPOCHS + 1)), (key, r["steps"][key])
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
    _check_finished_study(storage, study)


def test_sigint_then_documented_tuner_restore_finishes_the_study(tmp_path: Path) -> None:
    storage, study = _interrupt(tmp_path, signal.SIGINT)
    proc = subprocess.run([sys.executable, "-c", readme_restore_snippet(), str(study)], cwd=REPO, env=study_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_finished_study(storage, study)
