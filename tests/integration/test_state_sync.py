"""Issue 11 (state syncs at bounded cost) with the resume guarantees kept.

Tune no longer rewrites its state at every controller step: it syncs when a trial is
added, after each checkpoint, and on its adaptive period. These tests pin the two
consequences a user relies on: a trial killed before its first report is in Tune's saved
state (resume continues it in its own folder, no orphan, no second MLflow run), and each
trial's entry in the state holds at most its best and latest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import (
    end_group,
    kill_group,
    mlflow_runs,
    run,
    start_run,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)

BASE = ["model=tiny", "data.num_posts=40", "tune.max_epochs=3", "evaluation.on_finish=false",
        "tune.num_samples=2"]


def _state_files(study: Path) -> list[Path]:
    return sorted(study.glob("experiment_state-*.json"))


def _saved_trials(study: Path) -> list[dict[str, Any]]:
    """Tune's saved trial entries: trial state (JSON) and run metadata (Tune's own decoder)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    out = []
    for path in _state_files(study):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for state, meta in data["trial_data"]:
            out.append({"state": json.loads(state), "meta": _TrainingRunMetadata.from_json_state(meta)})
    return out


@pytest.mark.slow
def test_a_trial_killed_before_its_first_report_is_resumed_not_resampled(tmp_path: Path) -> None:
    storage, log = tmp_path / "s", tmp_path / "run.log"
    study = storage / "redsm5_study"
    proc = start_run([*BASE, f"tune.storage_path={storage}"], log, failpoints="trial_start=120")
    try:
        wait_for(lambda: study.is_dir() and any(study.glob("*/trial_config.yaml")), 120, "trial 1 started", proc,
                 log)
        (first,) = [p.parent for p in study.glob("*/trial_config.yaml")]
        # The trial is paused before any report: only the sync before its start can have saved
        # it, and that sync was waited for before the trial's actor started.
        assert any(first.name == e["state"].get("relative_logdir") for e in _saved_trials(study)), \
            "Tune's saved state lists the new trial and its folder before the trial starts"
        assert not (first / "result.json").exists(), "the trial has not reported yet"
        kill_group(proc)
    finally:
        end_group(proc)

    rc = run([f"resume={study}"], log)
    assert rc == 0, tail(log)
    trials = trial_dirs(study)
    assert len(trials) == 2, f"the killed trial was resumed, not sampled again: {[t.name for t in trials]}"
    assert first in trials, "it continued in its own folder"
    assert trial_state(first)["status"] == "completed"
    runs = mlflow_runs(storage, "redsm5_study")
    assert len(runs) == 2 and all(r["status"] == "FINISHED" for r in runs)
    for r in runs:
        assert all(steps == [1, 2, 3] for steps in r["steps"].values()), r["steps"]


def test_tunes_state_keeps_two_checkpoint_entries_per_trial(tmp_path: Path) -> None:
    """3 epochs per trial, a checkpoint each: Tune's saved entry of a trial holds at most
    its best and latest checkpoint, and no trial file is copied through its staging sync;
    every checkpoint folder is still there (only retention deletes them)."""
    storage, log = tmp_path / "s", tmp_path / "run.log"
    rc = run([*BASE, f"tune.storage_path={storage}", "retention=permissive"], log)
    assert rc == 0, tail(log)
    study = storage / "redsm5_study"
    entries = _saved_trials(study)
    assert len(entries) == 2
    for e in entries:
        results = e["meta"].checkpoint_manager._checkpoint_results
        assert 1 <= len(results) <= 2, results
    for trial in trial_dirs(study):
        assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
            "checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
        assert not list(trial.glob("events.out.tfevents*")), "no TensorBoard files"
        assert len((trial / "result.json").read_text().splitlines()) == 3
        assert len((trial / "progress.csv").read_text().splitlines()) == 4  # header + 3 epochs
