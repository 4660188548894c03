"""RetentionCallback's view of a study rebuilt from disk after a restore."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tune_app.callbacks import scan_records
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

    records = scan_records(tmp_path, "val_macro_f1")

    assert [p.name for p in half.iterdir()] == [PRUNED_FILE] and is_tombstone(half)
    assert set(records) == {str(trial / "checkpoint_000001")}
    assert records[str(trial / "checkpoint_000001")].score == 0.6
