"""Issue 11 (state syncs at bounded cost) with the resume guarantees kept.

Tune no longer rewrites its state at every controller step: it saves its whole state on its
adaptive period and for the first trial of each start; every later trial is named by one
line of the study's trial journal before it starts. These tests pin the consequences a user
relies on: a trial killed before its first report is in Tune's saved state or the journal
(resume continues it in its own folder, no orphan, no second MLflow run); trials only the
journal names rejoin the study on resume, which then ends exactly as an uninterrupted one;
and each trial's entry in the state holds at most its best and latest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import (
    check_optuna_db,
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


def _journal_ids(study: Path) -> list[str]:
    from tune_app.trial_journal import read

    return [r.trial_id for r in read(study)]


def _params_by_number(study: Path) -> list[dict[str, Any]]:
    from tune_app.optuna_store import load_optuna_study

    loaded = load_optuna_study(study)
    assert loaded is not None
    return [t.params for t in sorted(loaded.get_trials(deepcopy=False), key=lambda t: t.number)]


@pytest.mark.slow
def test_trials_only_the_journal_names_rejoin_and_the_study_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """Killed while Tune's saved state lags the journal by several trials (some finished, one
    training): ``resume=`` ends with each trial once, in its own folder, with the Optuna study,
    DB and MLflow runs an uninterrupted study of the same seed has (the same params, trial by
    trial: the sampler went on from the state it had after the last journaled trial)."""
    args = ["model=tiny", "data.num_posts=20", "tune.max_epochs=2", "evaluation.on_finish=false",
            "tune.num_samples=14", "tune.n_startup_trials=3", "retention=minimal"]
    log = tmp_path / "run.log"
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run([*args, f"tune.storage_path={clean}"], log) == 0, tail(log)
    study = killed / "redsm5_study"
    proc = start_run([*args, f"tune.storage_path={killed}"], log)
    try:
        wait_for(lambda: len(_journal_ids(study)) >= 4, 300, "4 trials in the journal", proc, log)
        kill_group(proc)
    finally:
        end_group(proc)
    saved = {e["state"]["trial_id"] for e in _saved_trials(study)}
    only_journaled = [t for t in _journal_ids(study) if t not in saved]
    assert len(only_journaled) >= 3, (only_journaled, saved)
    assert any(t.name.split("_")[2] in only_journaled for t in trial_dirs(study)), "their folders exist"

    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)
    # The resume's first line counts them (Tune's saved state alone does not).
    assert f"; {len(only_journaled)} more trial(s) started after Tune's last full save" in resume_log.read_text()
    assert not _journal_ids(study), "the journal is gone once Tune's state names its trials"
    trials = trial_dirs(study)
    assert len(trials) == 14, [t.name for t in trials]
    assert {e["state"]["trial_id"] for e in _saved_trials(study)} >= set(only_journaled)
    assert all(trial_state(t)["status"] in ("completed", "stopped") for t in trials)
    check_optuna_db(study)
    assert _params_by_number(study) == _params_by_number(clean / "redsm5_study"), \
        "the resumed study sampled what the uninterrupted one did"
    runs = mlflow_runs(killed, "redsm5_study")
    assert len(runs) == 14 and all(r["status"] == "FINISHED" for r in runs)
    for r in runs:
        assert all(steps == sorted(set(steps)) for steps in r["steps"].values()), r["steps"]


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
