"""Where an interrupted trial resumes (checkpoints.resume.plan_resume), on real checkpoint folders."""

from __future__ import annotations

from pathlib import Path

import torch

from tune_app.checkpoints.resume import checkpoint_dir_name, plan_resume
from tune_app.checkpoints.store import MODEL_FILE, save_checkpoint


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "val_macro_f1": 0.1 * epoch}


def _save(trial: Path, index: int, epoch: int, history_epochs: list[int] | None = None) -> Path:
    history = [_metrics(e) for e in (history_epochs or list(range(1, epoch + 1)))]
    path = trial / checkpoint_dir_name(index)
    save_checkpoint(path, model_state={"w": torch.full((2,), float(epoch))}, compat={},
                    trainer_state={"epoch": epoch, "metrics": _metrics(epoch), "history": history})
    return path


def _summary(plan: object) -> tuple[str | None, list[tuple[int, bool]]]:
    resume_from = getattr(plan, "resume_from", None)
    return (resume_from.name if resume_from else None,
            [(int(r.metrics["epoch"]), r.registers) for r in getattr(plan, "catch_up", ())])


def test_tune_has_no_checkpoint_but_the_disk_has_two(tmp_path: Path) -> None:
    _save(tmp_path, 0, 1)
    _save(tmp_path, 1, 2)
    plan = plan_resume(tmp_path, tune_checkpoint=None, next_index=0)
    assert _summary(plan) == ("checkpoint_000001", [(1, True), (2, True)])


def test_tune_saw_the_first_checkpoint_only(tmp_path: Path) -> None:
    first = _save(tmp_path, 0, 1)
    _save(tmp_path, 1, 2)
    assert _summary(plan_resume(tmp_path, tune_checkpoint=first, next_index=1)) == (
        "checkpoint_000001", [(2, True)])


def test_nothing_newer_than_tunes_checkpoint(tmp_path: Path) -> None:
    _save(tmp_path, 0, 1)
    second = _save(tmp_path, 1, 2)
    assert _summary(plan_resume(tmp_path, tune_checkpoint=second, next_index=2)) == ("checkpoint_000001", [])


def test_no_checkpoint_anywhere(tmp_path: Path) -> None:
    assert _summary(plan_resume(tmp_path, tune_checkpoint=None, next_index=0)) == (None, [])


def test_the_chain_stops_at_a_corrupt_folder(tmp_path: Path) -> None:
    first = _save(tmp_path, 0, 1)
    broken = _save(tmp_path, 1, 2)
    _save(tmp_path, 2, 3)
    with (broken / MODEL_FILE).open("r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    # Folder 2 cannot be registered at index 2 while index 1 is unusable: training resumes
    # from epoch 1 and rewrites both.
    assert _summary(plan_resume(tmp_path, tune_checkpoint=first, next_index=1)) == ("checkpoint_000000", [])


def test_epochs_reported_without_a_checkpoint_are_reported_again(tmp_path: Path) -> None:
    first = _save(tmp_path, 0, 1)
    _save(tmp_path, 1, 3)  # epoch 2's save was refused (disk full): its result only is in the history
    assert _summary(plan_resume(tmp_path, tune_checkpoint=first, next_index=1)) == (
        "checkpoint_000001", [(2, False), (3, True)])


def test_a_folder_of_an_earlier_run_is_not_a_continuation(tmp_path: Path) -> None:
    tune_ckpt = _save(tmp_path, 2, 2)
    _save(tmp_path, 3, 1)  # left by an earlier start of the trial from epoch 1
    assert _summary(plan_resume(tmp_path, tune_checkpoint=tune_ckpt, next_index=3)) == ("checkpoint_000002", [])


def test_a_corrupt_tune_checkpoint_falls_back_and_the_chain_continues(tmp_path: Path) -> None:
    _save(tmp_path, 0, 1)
    bad = _save(tmp_path, 1, 2)
    _save(tmp_path, 2, 3)
    (bad / MODEL_FILE).write_bytes(b"not a tensor file")
    assert _summary(plan_resume(tmp_path, tune_checkpoint=bad, next_index=2)) == (
        "checkpoint_000002", [(2, False), (3, True)])


def test_the_chain_walks_past_checkpoints_retention_pruned(tmp_path: Path) -> None:
    """Tune's state is synced when a trial starts, not after each checkpoint: after a kill it may
    know none of the trial's checkpoints, while retention already pruned the older ones."""
    from tune_app.checkpoints.store import prune_checkpoint

    for index in range(4):
        _save(tmp_path, index, index + 1)
    for index in range(3):
        prune_checkpoint(tmp_path / checkpoint_dir_name(index), reason="not a resume point")
    plan = plan_resume(tmp_path, tune_checkpoint=None, next_index=0)
    assert _summary(plan) == ("checkpoint_000003", [(1, True), (2, True), (3, True), (4, True)])
    # Tune knew the first (now pruned): the walk goes on from its next index; epoch 1 is
    # reported again without a checkpoint (harmless), Tune's index stays on the folders.
    plan = plan_resume(tmp_path, tune_checkpoint=tmp_path / checkpoint_dir_name(0), next_index=1)
    assert _summary(plan) == ("checkpoint_000003", [(1, False), (2, True), (3, True), (4, True)])


def test_pruned_checkpoints_among_epochs_saved_without_one(tmp_path: Path) -> None:
    """More epochs than pruned checkpoints in between (no checkpoint saved at some epoch): as many
    reports register as there are pruned folders, so Tune's index meets the next folder's."""
    from tune_app.checkpoints.store import prune_checkpoint

    _save(tmp_path, 0, 2)  # epoch 1 had no checkpoint
    _save(tmp_path, 1, 4)
    prune_checkpoint(tmp_path / checkpoint_dir_name(0), reason="not a resume point")
    plan = plan_resume(tmp_path, tune_checkpoint=None, next_index=0)
    assert _summary(plan) == ("checkpoint_000001", [(1, False), (2, False), (3, True), (4, True)])
