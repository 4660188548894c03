"""Weights-only retained checkpoints: ``store.demote_checkpoint`` and the keeper's use of it."""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import pytest
import torch

from tests.checkpoints.forking import kill_forked_loop
from tune_app.checkpoints.keeper import CheckpointKeeper
from tune_app.checkpoints.retention import RetentionPolicy, saves_resume_state
from tune_app.checkpoints.store import (
    OPTIMIZER_FILE,
    TMP_PREFIX,
    demote_checkpoint,
    dir_nbytes,
    is_weights_only,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from tune_app.evaluation.contracts import validate_checkpoint_metadata

COMPAT = {"package_version": "0.1.0", "git_commit": "abc", "heads": {},
          "architecture": {"num_outputs": 1, "criteria_head": "linear", "evidence_head": "start_end_linear",
                           "pooling": "mean", "state_dict_hash": "h"}}


def _save_full(path: Path, *, score: float = 0.5, width: int = 64) -> dict[str, torch.Tensor]:
    model = torch.nn.Linear(width, width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    save_checkpoint(path, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                    scheduler_state=sched.state_dict(),
                    trainer_state={"epoch": 1, "metrics": {"val_macro_f1": score}}, compat=COMPAT,
                    rng_state={"torch": torch.get_rng_state()})
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_demote_keeps_weights_and_drops_optimizer_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "t" / "checkpoint_000000"
    weights = _save_full(ckpt)
    model_bytes = (ckpt / "model.safetensors").read_bytes()
    before, opt_bytes = dir_nbytes(ckpt), (ckpt / OPTIMIZER_FILE).stat().st_size
    assert not is_weights_only(ckpt)

    freed = demote_checkpoint(ckpt)

    assert freed >= opt_bytes and dir_nbytes(ckpt) == before - freed
    assert is_weights_only(ckpt) and verify_checkpoint(ckpt).ok
    assert (ckpt / "model.safetensors").read_bytes() == model_bytes
    assert json.loads((ckpt / "manifest.json").read_text())["weights_only"] is True
    validate_checkpoint_metadata(ckpt)  # the report's contract: what evaluation accepts
    loaded = load_checkpoint(ckpt)
    assert loaded.optimizer_state is None and loaded.scheduler_state is None
    assert loaded.rng_state is not None and loaded.trainer_state["epoch"] == 1
    assert all(torch.equal(loaded.model_state[k], v) for k, v in weights.items())
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert demote_checkpoint(ckpt) == 0  # idempotent


def test_a_failed_demotion_leaves_the_full_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tune_app.checkpoints import store

    ckpt = tmp_path / "t" / "checkpoint_000000"
    _save_full(ckpt)

    def disk_full(tmp: Path, final: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_publish", disk_full)
    with pytest.raises(OSError):
        demote_checkpoint(ckpt)
    assert not is_weights_only(ckpt) and verify_checkpoint(ckpt).ok
    assert load_checkpoint(ckpt).optimizer_state is not None
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint_000000"]


def _save_and_demote(root: Path, i: int) -> None:
    _save_full(root / "checkpoint_000000", score=float(i), width=256)
    demote_checkpoint(root / "checkpoint_000000")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_demotion_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """SIGKILLs at random moments of a save/demote loop: the checkpoint is always whole,
    full or weights-only, never a mix; a leftover temp is removed by the cleanup of torn temps."""
    from tune_app.checkpoints.cleanup_scan import remove_torn_temps

    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    kinds = set()
    for _ in range(15):
        kill_forked_loop(functools.partial(_save_and_demote, tmp_path), rng.uniform(0.02, 0.3))
        ckpt = tmp_path / "checkpoint_000000"
        if not ckpt.exists():  # killed before the first save was published
            continue
        assert verify_checkpoint(ckpt).ok, (seed, sorted(p.name for p in ckpt.iterdir()))
        loaded = load_checkpoint(ckpt)
        weights_only = is_weights_only(ckpt)
        assert (loaded.optimizer_state is None) == weights_only, seed
        kinds.add(weights_only)
        remove_torn_temps(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000000"], seed
    assert kinds, f"no checkpoint was ever published (seed {seed})"


def test_keeper_demotes_kept_bests_but_not_resume_points(tmp_path: Path) -> None:
    done, running = tmp_path / "done", tmp_path / "running"
    _save_full(done / "checkpoint_000000", score=0.9)
    (done / "trial_state.json").write_text(json.dumps({"status": "completed"}))
    _save_full(running / "checkpoint_000000", score=0.2)
    _save_full(running / "checkpoint_000001", score=0.3)
    (running / "trial_state.json").write_text(json.dumps({"status": "running"}))
    policy = RetentionPolicy(keep_last_n=1, keep_best_k=1)

    untouched = CheckpointKeeper(tmp_path, metric="val_macro_f1", keep_optimizer_state=True)
    assert untouched.enforce(policy)[0] == 1  # the running trial's older checkpoint
    assert not is_weights_only(done / "checkpoint_000000")

    keeper = CheckpointKeeper(tmp_path, metric="val_macro_f1", keep_optimizer_state=False)
    size_before = keeper.records[str(done / "checkpoint_000000")].size_bytes
    pruned, freed, _ = keeper.enforce(policy)
    assert pruned == 0 and freed > 0
    assert is_weights_only(done / "checkpoint_000000")  # the study best of an ended trial
    assert not is_weights_only(running / "checkpoint_000001")  # the running trial's resume point
    # The record follows the demotion, so the size cap sees what is on disk.
    kept = keeper.records[str(done / "checkpoint_000000")].size_bytes
    assert kept == dir_nbytes(done / "checkpoint_000000") < size_before


def test_a_checkpoint_saved_without_optimizer_state_is_weights_only_like_a_demoted_one(tmp_path: Path) -> None:
    """A trial's last epoch is saved weights only (``retention.saves_resume_state``): the
    same manifest as a demoted checkpoint, and demoting it again changes nothing."""
    ckpt = tmp_path / "t" / "checkpoint_000001"
    model = torch.nn.Linear(8, 8)
    save_checkpoint(ckpt, model_state=model.state_dict(), trainer_state={"epoch": 2, "metrics": {}}, compat=COMPAT,
                    rng_state={"torch": torch.get_rng_state()})
    assert is_weights_only(ckpt) and verify_checkpoint(ckpt).ok
    assert json.loads((ckpt / "manifest.json").read_text())["weights_only"] is True
    validate_checkpoint_metadata(ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert demote_checkpoint(ckpt) == 0
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


@pytest.mark.parametrize(("epoch", "planned", "keep", "expected"), [
    (1, 3, False, True), (2, 3, False, True), (3, 3, False, False), (1, 1, False, False),
    (3, 3, True, True), (1, 1, True, True),
])
def test_only_a_trials_last_epoch_is_saved_without_resume_state(epoch: int, planned: int, keep: bool,
                                                                 expected: bool) -> None:
    assert saves_resume_state(epoch, planned, keep_optimizer_state=keep) is expected
