"""A full disk: the save is refused (or fails with a real ENOSPC) with an actionable message,
no partial checkpoint is visible and no finished epoch's metrics are lost.

The studies run on a small tmpfs (root only; skipped otherwise) with MLflow outside it.
The disk fills up *during* the study, as when another job writes to the same disk:
* bytes: after the first checkpoint, a filler leaves less than one checkpoint + margin
  free, so the next save's preflight (after reclaiming) stops before writing;
* inodes: after the first checkpoint, every inode but 4 is taken, so preflight (bytes)
  passes and the checkpoint write itself fails with a real ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from tests.integration.study_tools import (
    end_group,
    fill_bytes,
    mlflow_runs,
    start_run,
    tmpfs,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.guard import save_epoch_checkpoint
from tune_app.checkpoints.preflight import InsufficientStorageError
from tune_app.checkpoints.store import TMP_PREFIX, is_tombstone, verify_checkpoint

ACTIONABLE = ("free on its filesystem:", "projected checkpoint size:", "Largest artifacts under the study directory:",
              "python -m tune_app.cleanup --study", "retention=minimal", "tune.storage_path=")


def fill_inodes(path: Path, leave_free: int) -> None:
    folder = path / "inode_filler"
    folder.mkdir()
    i = 0
    while os.statvfs(path).f_ffree > leave_free:
        (folder / str(i)).touch()
        i += 1


def _no_partial_checkpoint(study: Path) -> None:
    assert not list(study.rglob(f"{TMP_PREFIX}*")), "a temp folder of the failed save is left"
    for ckpt in study.glob("*/checkpoint_*"):
        assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok, f"partial checkpoint visible: {ckpt}"


# --- the guard on a real full filesystem ------------------------------------------------
def test_real_enospc_becomes_the_actionable_error_and_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        study = disk / "study"
        trial = study / "trial"
        trial.mkdir(parents=True)
        (trial / "result.json").write_bytes(b"{}" * 1000)
        calls: list[str] = []
        with pytest.raises(InsufficientStorageError) as info:
            # projected 0 and no margin: preflight passes, the write itself hits ENOSPC.
            save_epoch_checkpoint(trial / "checkpoint_000001", study, projected_bytes=0, safety_margin_bytes=0,
                                  before_save=lambda: calls.append("metrics written"),
                                  on_failure=lambda: calls.append("metrics reported"),
                                  model_state={"w": torch.zeros(1_000_000)}, trainer_state={"epoch": 1}, compat={})
        assert calls == ["metrics written", "metrics reported"]
        message = str(info.value)
        assert "Disk full while saving checkpoint checkpoint_000001" in message
        assert f"{trial / 'result.json'}" in message, "the largest artifacts are listed"
        assert all(text in message for text in ACTIONABLE), message
        assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
        assert not (trial / "checkpoint_000001").exists()
        assert not list(trial.glob(f"{TMP_PREFIX}*"))


def test_short_space_reclaims_before_refusing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "size=8m") as disk:
        study = disk / "study"
        (study / "trial").mkdir(parents=True)
        reclaimed: list[int] = []

        def reclaim() -> int:
            reclaimed.append(1)
            return 0

        with pytest.raises(InsufficientStorageError, match="projected checkpoint size"):
            save_epoch_checkpoint(study / "trial" / "checkpoint_000001", study, projected_bytes=1 << 20,
                                  reclaim=reclaim,
                                  model_state={"w": torch.zeros(10)}, trainer_state={}, compat={})
        assert reclaimed == [1], "step 3 is tried before giving up"
        assert not (study / "trial" / "checkpoint_000001").exists()
        saved = save_epoch_checkpoint(study / "trial" / "checkpoint_000001", study, projected_bytes=1 << 20,
                                      safety_margin_bytes=0, model_state={"w": torch.zeros(10)},
                                      trainer_state={}, compat={})
        assert verify_checkpoint(saved.path).ok


# --- a real study whose disk fills up ----------------------------------------------------
def _first_checkpoint(study: Path) -> bool:
    return study.is_dir() and any(verify_checkpoint(c).ok for c in study.glob("*/checkpoint_*"))


def _run_until_full(tmp_path: Path, mount_options: str, fill: str) -> tuple[int, str, Path]:
    with tmpfs(tmp_path / "disk", mount_options) as disk:
        storage = disk / "experiments"
        study = storage / "full"
        log = tmp_path / "run.log"
        proc = start_run(["tune.num_samples=1", "tune.max_epochs=4", f"tune.storage_path={storage}", "tune.name=full",
                          f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], log)
        try:
            wait_for(lambda: _first_checkpoint(study), 300, "the first checkpoint", proc, log)
            if fill == "bytes":
                fill_bytes(disk, 8 << 20)  # < one checkpoint + the 64 MiB margin
            else:
                fill_inodes(disk, 4)  # a checkpoint needs 7 (folder + 6 files)
            rc = proc.wait(timeout=300)
        finally:
            end_group(proc)
        _no_partial_checkpoint(study)
        (trial,) = trial_dirs(study)
        state = trial_state(trial)
        kept = tmp_path / "trial_state.json"  # what the assertions need after the tmpfs is gone
        kept.write_text(json.dumps(state))
        return rc, log.read_text(errors="replace"), kept


def _check_metrics_kept(tmp_path: Path, state_file: Path) -> int:
    history = [h["epoch"] for h in json.loads(state_file.read_text())["history"]]
    (run,) = [r for r in mlflow_runs(tmp_path, "full") if "tune_app.trial_id" in r["tags"]]  # the trial runs
    steps = run["steps"]["val_macro_f1"]
    assert steps == list(range(1, len(steps) + 1)), steps
    assert history == steps, f"trial_state history {history} vs MLflow steps {steps}"
    assert len(steps) >= 2, "the failing epoch's metrics are logged too"
    return len(steps)


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["bytes", "inodes"])
def test_study_on_a_filling_disk_stops_with_the_actionable_error(tmp_path: Path, fill: str) -> None:
    options = "size=256m" if fill == "bytes" else "size=256m,nr_inodes=3000"
    rc, text, state_file = _run_until_full(tmp_path, options, fill)
    assert rc == 1, text[-4000:]
    assert "InsufficientStorageError" in text and "failed:" in text, text[-4000:]
    if fill == "inodes":
        assert "Disk full while saving checkpoint" in text and "inodes free" in text, text[-4000:]
    else:
        assert "Not enough disk space for the next checkpoint" in text, text[-4000:]
    for needle in ACTIONABLE:
        assert needle in text, (needle, text[-4000:])
    assert "python -m tune_app.run resume=" in text
    epochs = _check_metrics_kept(tmp_path, state_file)
    print(f"{fill}: the save of epoch {epochs} failed; epochs 1..{epochs} kept in trial_state.json and MLflow")
