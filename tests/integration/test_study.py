"""A real sequential Ray Tune + Optuna study on the embedded default, end to end.

One study (2 trials x 2 epochs) in a subprocess, then everything it must leave behind:
config snapshots, split ids, reports per epoch, MLflow runs, retention, and the
behaviour of a second start and of resuming a finished study.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.study_tools import mlflow_runs, run, tail, trial_dirs, trial_state
from tune_app.checkpoints.store import is_tombstone, verify_checkpoint
from tune_app.study import SPLITS_FILE

NAME = "e2e"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    storage = tmp_path_factory.mktemp("experiments")
    log = storage / "run.log"
    rc = run(["tune.num_samples=2", "tune.max_epochs=2", "model=tiny", f"tune.storage_path={storage}",
              f"tune.name={NAME}"], log)
    return storage, log, rc


def test_study_completes(study: tuple[Path, Path, int]) -> None:
    storage, log, rc = study
    assert rc == 0, tail(log)
    assert "Study complete: 2/2 trials" in log.read_text()


def test_console_is_quiet_one_line_per_trial_and_a_summary(study: tuple[Path, Path, int]) -> None:
    """stdout + stderr of the default (quiet) console, written to a file: what a new user reads."""
    import re

    from tune_app import outcome

    storage, log, _ = study
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert "\x1b[" not in text, "colour codes in a file"
    for noise in ("Checkpoint successfully created", "Trial status", "A new study created", "Token authentication",
                  "View detailed results", "INFO", "Creating initial MLflow database", "╭"):
        assert noise not in text, (noise, text[-3000:])
    study_dir = storage / NAME
    assert lines[0].startswith(f"Study {study_dir}: 2 trials of up to 2 epochs | model tiny | data synthetic")
    trial_lines = [line for line in lines if re.match(r"trial \d/2 [0-9a-f]{8} \| ", line)]
    assert len(trial_lines) == 2, lines
    best: dict[str, float] = {}
    for folder in trial_dirs(study_dir):
        state = trial_state(folder)
        score, epoch = outcome.best_epoch(state["history"], "val_macro_f1")
        assert score is not None
        tid = folder.name.split("_")[2]
        best[tid] = score
        line = next(line for line in trial_lines if f" {tid} |" in line)
        assert f"best val_macro_f1 {score:.4g} (epoch {epoch})" in line and "| lr=" in line, line
    top = max(best, key=lambda t: best[t])
    summary = next(line for line in lines if line.startswith("Study complete: 2/2 trials"))
    assert f"best trial {top}: val_macro_f1 {best[top]:.4g}" in summary
    assert any(line.startswith("Test evaluation: test macro-F1 ") for line in lines)
    assert any(f"mlflow ui --backend-store-uri sqlite:///{storage}/mlflow.db" in line for line in lines)
    assert len(lines) <= 8, lines
    kept = (study_dir / "logs" / "study.jsonl").read_text()
    assert "trials of up to 2 epochs" in kept and "Study complete" in kept, "console lines stay in the study log"


def test_study_folder_holds_config_splits_and_trials(study: tuple[Path, Path, int]) -> None:
    storage, _, _ = study
    study_dir = storage / NAME
    saved = yaml.safe_load((study_dir / "study_config.yaml").read_text())
    assert saved["tune"]["num_samples"] == 2 and saved["model"]["name"] == "tiny"
    splits = json.loads((study_dir / SPLITS_FILE).read_text())
    ids = [set(splits[k]) for k in ("train", "validation", "test")]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    trials = trial_dirs(study_dir)
    assert len(trials) == 2
    for trial in trials:
        cfg = yaml.safe_load((trial / "trial_config.yaml").read_text())
        params = json.loads((trial / "params.json").read_text())
        assert cfg["train"]["lr"] == pytest.approx(params["train.lr"])
        state = trial_state(trial)
        assert state["status"] == "completed" and [h["epoch"] for h in state["history"]] == [1, 2]
        assert all("val_macro_f1" in h and "val_loss" in h for h in state["history"])


def test_retention_keeps_only_the_study_best_checkpoint(study: tuple[Path, Path, int]) -> None:
    storage, _, _ = study
    checkpoints = [c for t in trial_dirs(storage / NAME) for c in sorted(t.glob("checkpoint_*"))]
    assert len(checkpoints) == 4  # 2 trials x 2 epochs, as Tune registered them
    live = [c for c in checkpoints if not is_tombstone(c)]
    assert 1 <= len(live) <= 2, live  # the study best (ties kept); the rest are tombstones
    for c in live:
        assert verify_checkpoint(c).ok
    scores = {c: json.loads((c / "state.json").read_text())["trainer_state"]["metrics"]["val_macro_f1"] for c in live}
    best = max(h["val_macro_f1"] for t in trial_dirs(storage / NAME) for h in trial_state(t)["history"])
    assert all(s == pytest.approx(best) for s in scores.values())


def test_mlflow_one_run_per_trial_with_params_steps_and_tags(study: tuple[Path, Path, int]) -> None:
    storage, _, _ = study
    runs = mlflow_runs(storage, NAME)
    assert len(runs) == 2
    for r in runs:
        assert r["status"] == "FINISHED"
        assert "train.lr" in r["params"]
        assert r["tags"]["tune_app.study"] == NAME and r["tags"]["tune_app.trial_id"]
        assert r["tags"]["tune_app.seed"] == "0"
        assert r["steps"]["val_macro_f1"] == [1, 2]
        assert r["steps"]["val_loss"] == [1, 2]


def test_second_start_refuses_and_resume_of_finished_study_reruns_nothing(study: tuple[Path, Path, int]) -> None:
    storage, log, _ = study
    study_dir = storage / NAME
    again = storage / "again.log"
    assert run([f"tune.storage_path={storage}", f"tune.name={NAME}"], again) == 2
    assert f"resume={study_dir}" in again.read_text()
    results_before = {t.name: (t / "result.json").read_text() for t in trial_dirs(study_dir)}
    resumed = storage / "resume.log"
    assert run([f"resume={study_dir}"], resumed) == 0, tail(resumed)
    assert "already complete" in resumed.read_text() and "Nothing was re-run" in resumed.read_text()
    assert {t.name: (t / "result.json").read_text() for t in trial_dirs(study_dir)} == results_before
    assert len(mlflow_runs(storage, NAME)) == 2
