"""A full disk: the save is refused (or fails with a real ENOSPC) with an actionable message,
no partial checkpoint is visible and no finished epoch's metrics are lost.

The studies run on a small tmpfs (root only; skipped otherwise) with MLflow outside it.
The disk fills up *during* the study, as when another job writes to the same disk:
* bytes: after the first checkpoint, a filler leaves less than one checkpoint + margin
  free, so the next save's preflight (after reclaiming) stops before writing;
* inodes: after the first checkpoint, every inode but 4 is taken, so preflight (bytes)
  passes and the checkpoint write itself fails with a real ENOSPC;
* no_inodes: not one inode is left, so even trial_state.json and Tune's final state
  sync fail: the study still ends as failed (exit 1) with the trial's message.
Each study is then resumed once the filler is gone, and finishes with every epoch
logged once.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from tests.integration.study_tools import (
    run as run_study,
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


def test_metrics_file_on_a_full_disk_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "trial").mkdir()
    reported: list[str] = []

    def write_state() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "trial" / "trial_state.json"))

    with pytest.raises(InsufficientStorageError) as info:
        save_epoch_checkpoint(tmp_path / "trial" / "checkpoint_000002", tmp_path, projected_bytes=0,
                              safety_margin_bytes=0, before_save=write_state,
                              on_failure=lambda: reported.append("metrics reported"),
                              model_state={"w": torch.zeros(1)}, trainer_state={}, compat={})
    assert reported == ["metrics reported"]
    assert ("metrics went to Tune and MLflow, but trial_state.json could not be updated (a resume re-runs "
            "this epoch)") in str(info.value)
    assert not (tmp_path / "trial" / "checkpoint_000002").exists()


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


# --- a real study whose disk fills up, then is resumed once space is freed -------------
FILLS: dict[str, tuple[str, Callable[[Path], None]]] = {
    # less than one checkpoint + the 64 MiB margin: the save's preflight refuses it.
    "bytes": ("size=256m", lambda disk: fill_bytes(disk, 8 << 20)),
    # a checkpoint needs 7 inodes (folder + 6 files): its write hits a real ENOSPC.
    "inodes": ("size=256m,nr_inodes=3000", lambda disk: fill_inodes(disk, 4)),
    # not one inode: trial_state.json cannot be updated and Tune's final state sync
    # fails too (its error files stay in the driver's staging folder).
    "no_inodes": ("size=256m,nr_inodes=3000", lambda disk: fill_inodes(disk, 0)),
}


def _first_checkpoint(study: Path) -> bool:
    return study.is_dir() and any(verify_checkpoint(c).ok for c in study.glob("*/checkpoint_*"))


def _trial_runs(tmp_path: Path) -> list[dict[str, Any]]:
    return [r for r in mlflow_runs(tmp_path, "full") if "tune_app.trial_id" in r["tags"]]


@pytest.mark.slow
@pytest.mark.parametrize("fill", list(FILLS))
def test_study_on_a_filling_disk_stops_with_the_actionable_error_and_resumes(tmp_path: Path, fill: str) -> None:
    mount_options, fill_disk = FILLS[fill]
    with tmpfs(tmp_path / "disk", mount_options) as disk:
        storage = disk / "experiments"
        study = storage / "full"
        log = tmp_path / "run.log"
        proc = start_run(["tune.num_samples=1", "tune.max_epochs=4", f"tune.storage_path={storage}", "tune.name=full",
                          f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], log)
        try:
            wait_for(lambda: _first_checkpoint(study), 300, "the first checkpoint", proc, log)
            fill_disk(disk)
            rc = proc.wait(timeout=300)
        finally:
            end_group(proc)
        text = log.read_text(errors="replace")
        assert rc == 1, text[-4000:]  # failed, not "interrupted" (130), even when Tune could not save its state
        assert "InsufficientStorageError" in text and "failed:" in text, text[-4000:]
        if fill == "bytes":
            assert "Not enough disk space for the next checkpoint" in text, text[-4000:]
        else:
            assert "Disk full while saving checkpoint" in text and "inodes free" in text, text[-4000:]
        for needle in ACTIONABLE:
            assert needle in text, (needle, text[-4000:])
        assert "python -m tune_app.run resume=" in text
        _no_partial_checkpoint(study)
        (trial,) = trial_dirs(study)

        # No metric lost: MLflow holds every epoch up to the failed save; trial_state.json
        # too, unless not one inode was left to rewrite it (the message says so).
        (run,) = _trial_runs(tmp_path)
        steps = run["steps"]["val_macro_f1"]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2, steps
        history = [h["epoch"] for h in trial_state(trial)["history"]]
        if fill == "no_inodes":
            assert history == steps[:-1], (history, steps)
            assert "trial_state.json could not be updated (a resume re-runs this epoch)" in text, text[-4000:]
        else:
            assert history == steps, f"trial_state history {history} vs MLflow steps {steps}"
        print(f"{fill}: the save of epoch {len(steps)} failed; MLflow has epochs 1..{len(steps)}, "
              f"trial_state.json {history}")

        # Free the space and resume: the trial finishes, each epoch logged once.
        shutil.rmtree(disk / "inode_filler", ignore_errors=True)
        (disk / "filler.bin").unlink(missing_ok=True)
        resumed = run_study(["resume=" + str(study)], tmp_path / "resume.log")
        resume_text = (tmp_path / "resume.log").read_text(errors="replace")
        assert resumed == 0 and "Study complete: 1/1 trials" in resume_text, resume_text[-4000:]
        (run,) = _trial_runs(tmp_path)
        assert run["steps"]["val_macro_f1"] == [1, 2, 3, 4]
        assert [h["epoch"] for h in trial_state(trial)["history"]] == [1, 2, 3, 4]
        assert trial_state(trial)["status"] == "completed"
        _no_partial_checkpoint(study)
