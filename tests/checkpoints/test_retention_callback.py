"""RetentionCallback's view of a study rebuilt from disk after a restore."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tune_app.callbacks import RetentionCallback
from tune_app.checkpoints.keeper import CheckpointKeeper, scan_checkpoints
from tune_app.checkpoints.retention import RetentionPolicy
from tune_app.checkpoints.store import PRUNED_FILE, is_tombstone, save_checkpoint


def _save(path: Path, score: float) -> None:
    save_checkpoint(path, model_state={"w": torch.zeros(64), "b": torch.ones(8)},
                    trainer_state={"epoch": 1, "metrics": {"val_macro_f1": score}}, compat={})


def test_scan_finishes_an_interrupted_prune_and_skips_it(tmp_path: Path) -> None:
    trial = tmp_path / "trial_a"
    _save(trial / "checkpoint_000000", 0.4)
    _save(trial / "checkpoint_000001", 0.6)
    half = trial / "checkpoint_000000"
    # A crash between writing the marker and deleting the files.
    (half / PRUNED_FILE).write_text(json.dumps({"reason": "retention"}))
    (half / "model.safetensors").unlink()
    assert len(list(half.iterdir())) > 1

    scanned = {f.path.name: f.kind for f in scan_checkpoints(tmp_path, "val_macro_f1")}
    assert scanned == {"checkpoint_000000": "half_pruned", "checkpoint_000001": "valid"}
    records = CheckpointKeeper(tmp_path, metric="val_macro_f1").records

    assert [p.name for p in half.iterdir()] == [PRUNED_FILE] and is_tombstone(half)
    assert set(records) == {str(trial / "checkpoint_000001")}
    assert records[str(trial / "checkpoint_000001")].score == 0.6


def test_a_callback_pickled_without_a_keeper_gets_one(tmp_path: Path) -> None:
    """A study saved by an older version restores a RetentionCallback whose state has
    ``_records`` and no keeper; it reads the study again and prunes through a keeper."""
    trial = tmp_path / "trial_a"
    for i, score in enumerate((0.4, 0.6, 0.5)):
        _save(trial / f"checkpoint_{i:06d}", score)
    (trial / "trial_state.json").write_text(json.dumps({"status": "completed"}))
    cb = RetentionCallback.__new__(RetentionCallback)
    cb.__dict__.update(study_dir=tmp_path, metric="val_macro_f1", mode="max", pressure_step=0, _records=None,
                       base_policy=RetentionPolicy(keep_last_n=1, keep_best_k=1))
    assert cb.apply() > 0
    assert [p.name for p in sorted(trial.iterdir()) if p.is_dir() and not is_tombstone(p)] == ["checkpoint_000001"]
    assert "_keeper" in cb.__dict__ and cb.__getstate__()["_keeper"] is None and "_records" not in cb.__getstate__()
