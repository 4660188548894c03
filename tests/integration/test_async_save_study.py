"""A real study with background checkpoint saves (``checkpoint.async_save=true``), killed while
the last epoch's checkpoint is being written, then resumed.

One trial x 2 epochs on the tiny model; the failpoint ``save`` holds each write open for a
moment so the SIGKILL lands inside the background write of checkpoint 2 (epoch 1 has been
reported by then). What the kill leaves: checkpoint 1 valid and the resume point, checkpoint 2
only as a ``tmp-*`` folder, epoch 2's metrics in ``trial_state.json``. After ``resume=``: each
epoch once in Tune's ``result.json``, each with the checkpoint folder Tune registered for it,
which verifies and holds that epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.study_tools import (
    end_group,
    kill_group,
    run,
    start_run,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tune_app.checkpoints.resume import find_resumable_checkpoint
from tune_app.checkpoints.store import (
    TMP_PREFIX,
    read_trainer_state,
    verify_checkpoint,
)

pytestmark = pytest.mark.slow
NAME = "async_save"


def _results(trial: Path) -> list[dict[str, object]]:
    path = trial / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _writing_checkpoint_2(study: Path) -> bool:
    trials = trial_dirs(study) if study.is_dir() else []
    if not trials:
        return False
    trial = trials[0]
    reported = [r.get("epoch") for r in _results(trial)]
    return reported == [1] and any(p.name.startswith(TMP_PREFIX) for p in trial.iterdir())


def test_background_saves_kill_during_a_write_and_resume(tmp_path: Path) -> None:
    storage = tmp_path / "experiments"
    study = storage / NAME
    log = tmp_path / "run.log"
    args = ["tune.num_samples=1", "tune.max_epochs=2", "model=tiny", "data.num_posts=60", "data.max_length=64",
            "checkpoint.async_save=true",
            "retention.keep_best_k=2", f"tune.storage_path={storage}", f"tune.name={NAME}"]
    proc = start_run(args, log, failpoints="save=2")
    try:
        wait_for(lambda: _writing_checkpoint_2(study), 240, "epoch 1 reported, checkpoint 2 being written", proc, log)
        kill_group(proc)
    finally:
        end_group(proc)
    (trial,) = trial_dirs(study)
    assert "checkpoint_000001 snapshotted" in (trial / "logs" / "trial.jsonl").read_text(), "not a background save"
    (first,) = _results(trial)
    assert first["epoch"] == 1
    assert [h["epoch"] for h in trial_state(trial)["history"]] == [1, 2]  # metrics reach the disk first
    checkpoint_1 = trial / str(first["checkpoint_dir_name"])
    assert verify_checkpoint(checkpoint_1).ok
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == [checkpoint_1.name]  # 2: only a tmp-* folder
    assert find_resumable_checkpoint(trial) == checkpoint_1

    rc = run([f"resume={study}"], log, timeout=300)
    assert rc == 0, tail(log)
    rows = _results(trial)
    assert [r["epoch"] for r in rows] == [1, 2], "each epoch exactly once in Tune's result.json"
    for row in rows:
        folder = trial / str(row["checkpoint_dir_name"])
        assert verify_checkpoint(folder).ok, folder
        assert read_trainer_state(folder)["epoch"] == row["epoch"]
    state = trial_state(trial)
    assert state["status"] == "completed"
    assert [s["resumed_from"] for s in state["starts"]] == [None, checkpoint_1.name]
