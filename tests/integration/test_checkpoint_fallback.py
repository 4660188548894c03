"""Resume past corrupt checkpoints, and refuse an incompatible config with an actionable message.

One real study (2 trials x 4 epochs, retention=permissive so trial 2 keeps its last two
checkpoints) is interrupted with SIGINT during trial 2 after >= 2 of its epochs. The
stopped study is snapshotted; each scenario restores the snapshot at the same path,
damages it and resumes with ``python -m tune_app.run resume=DIR``:
* newest checkpoint corrupt -> ERROR naming the file, resume from the previous valid one;
* every checkpoint of the trial corrupt -> restart from epoch 1;
* study_config.yaml with a different architecture -> IncompatibleCheckpointError text, exit 1.
Metrics: trial_state.json history and MLflow hold epochs 1..N once each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.study_tools import (
    end_group,
    mlflow_runs,
    run,
    start_run,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.store import MODEL_FILE, checkpoint_index, is_tombstone, verify_checkpoint

pytestmark = pytest.mark.slow
SAMPLES, EPOCHS, NAME = 2, 4, "fallback"


def _trial(study: Path, number: int) -> Path | None:
    trials = {int(t.name.split("_")[3]): t for t in trial_dirs(study)} if study.is_dir() else {}
    return trials.get(number)


def _valid(trial: Path) -> list[Path]:
    """Verified (non-tombstone) checkpoints of a trial, oldest first."""
    found = [c for c in trial.glob("checkpoint_*") if not is_tombstone(c) and verify_checkpoint(c).ok]
    return sorted(found, key=lambda c: checkpoint_index(c) or 0)


def _tune_latest(trial: Path) -> Path:
    """The checkpoint Tune registered last (it resumes from it): ``checkpoint_dir_name`` of the last result.

    After SIGINT the trainable may have saved a newer folder that Tune never registered.
    """
    last = json.loads((trial / "result.json").read_text().splitlines()[-1])
    return trial / last["checkpoint_dir_name"]


def _registered(study: Path) -> bool:
    trial = _trial(study, 2)
    if trial is None or not (trial / "result.json").exists():
        return False
    return len((trial / "result.json").read_text().splitlines()) >= 2 and len(_valid(trial)) >= 2


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(storage, pristine snapshot of it) of a study stopped by SIGINT in trial 2."""
    root = tmp_path_factory.mktemp("fallback")
    storage, log = root / "experiments", root / "first.log"
    study = storage / NAME
    proc = start_run([f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}", "retention=permissive",
                      f"tune.storage_path={storage}", f"tune.name={NAME}"], log)
    try:
        wait_for(lambda: _registered(study), 400, "Tune registered two checkpoints of trial 2", proc, log)
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        end_group(proc)
    assert rc == 130, tail(log)
    trial2 = _trial(study, 2)
    assert trial2 is not None and trial_state(trial2)["status"] == "running"
    pristine = root / "pristine"
    shutil.copytree(storage, pristine, symlinks=True)
    yield storage, pristine


def _restore(stopped: tuple[Path, Path]) -> tuple[Path, Path, Path]:
    storage, pristine = stopped
    shutil.rmtree(storage)
    shutil.copytree(pristine, storage, symlinks=True)
    study = storage / NAME
    trial2 = _trial(study, 2)
    assert trial2 is not None
    return storage, study, trial2


def _check_complete(storage: Path, study: Path, trial2: Path, log: Path) -> dict:
    assert f"Study complete: {SAMPLES}/{SAMPLES}" in log.read_text(), tail(log)
    state = trial_state(trial2)
    assert state["status"] == "completed"
    assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))
    runs = [r for r in mlflow_runs(storage, NAME) if "tune_app.trial_id" in r["tags"]]
    assert len(runs) == SAMPLES, "one MLflow run per trial"
    for r in runs:
        for key in ("val_macro_f1", "epoch"):
            assert r["steps"][key] == list(range(1, EPOCHS + 1)), (key, r["steps"][key])
    return state


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_valid_one(stopped: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    storage, study, trial2 = _restore(stopped)
    newest = _tune_latest(trial2)
    _flip_byte(newest / MODEL_FILE)
    assert not verify_checkpoint(newest).ok
    # The newest valid one left: the previous of Tune's latest, or a later folder that the
    # SIGINT kept Tune from registering (the trial resumes from the newest valid checkpoint).
    previous = max(_valid(trial2), key=lambda c: checkpoint_index(c) or 0)
    log = tmp_path / "resume.log"
    assert run([f"resume={study}"], log) == 0, tail(log)
    text = log.read_text(errors="replace")
    # Logged at ERROR by the store; the worker's log line reaches the driver output without a level name.
    error_lines = [line for line in text.splitlines() if f"is not loadable: {newest / MODEL_FILE}" in line]
    assert error_lines, f"no error naming {newest / MODEL_FILE}\n{tail(log)}"
    assert "falling back to the previous one" in error_lines[0]
    state = _check_complete(storage, study, trial2, log)
    assert state["starts"][-1]["resumed_from"] == previous.name, state["starts"]
    assert state["starts"][-1]["start_epoch"] >= 2


def test_all_checkpoints_corrupt_restarts_from_epoch_one(stopped: tuple[Path, Path], tmp_path: Path) -> None:
    storage, study, trial2 = _restore(stopped)
    for ckpt in _valid(trial2):
        _flip_byte(ckpt / MODEL_FILE)
    assert not _valid(trial2)
    log = tmp_path / "resume.log"
    assert run([f"resume={study}"], log) == 0, tail(log)
    assert "no valid checkpoint left" in log.read_text(errors="replace"), tail(log)
    state = _check_complete(storage, study, trial2, log)
    assert state["starts"][-1] == {**state["starts"][-1], "start_epoch": 1, "resumed_from": None}


def test_incompatible_architecture_fails_with_an_actionable_message(stopped: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    storage, study, trial2 = _restore(stopped)
    config_file = study / "study_config.yaml"
    data = yaml.safe_load(config_file.read_text())
    assert data["model"]["pooling"] != "cls"
    data["model"]["pooling"] = "cls"  # not in the search space: every trial's architecture changes
    config_file.write_text(yaml.safe_dump(data))
    log = tmp_path / "resume.log"
    rc = run([f"resume={study}"], log)
    text = log.read_text(errors="replace")
    assert rc == 1, tail(log)
    assert "IncompatibleCheckpointError: checkpoint is incompatible with the current run" in text, tail(log)
    assert "pooling" in text and "How to proceed" in text, tail(log)
    # run.py's summary shows our message, not what Ray raised while wrapping it.
    assert " failed:\nIncompatibleCheckpointError: checkpoint is incompatible" in text, tail(log)
    assert _valid(trial2), "the refused resume deleted nothing"
