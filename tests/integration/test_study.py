"""A real sequential Ray Tune + Optuna study on the embedded default, end to end.

One study (2 trials x 2 epochs, ``train.seed_policy=per_trial``) in a subprocess, then
everything it must leave behind: config snapshots, split ids, reports per epoch, MLflow
runs (trial runs nested under one study run that holds the best trial, the counts and the
report's files), retention, the behaviour of a second start and of resuming a finished
study, and a re-evaluation with ``python -m tune_app.evaluate``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.study_tools import (
    REPO,
    mlflow_artifacts,
    mlflow_runs,
    run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
)
from tune_app.checkpoints.store import is_tombstone, verify_checkpoint
from tune_app.study import SPLITS_FILE

NAME = "e2e"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    storage = tmp_path_factory.mktemp("experiments")
    log = storage / "run.log"
    rc = run(["tune.num_samples=2", "tune.max_epochs=2", "model=tiny", f"tune.storage_path={storage}",
              f"tune.name={NAME}", "train.seed_policy=per_trial"], log)
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
    assert len(mlflow_runs(storage, NAME, kind="all")) == 3, "2 trial runs + 1 study run, one experiment"
    (study_run,) = mlflow_runs(storage, NAME, kind="study")
    seeds = {t.name.split("_")[2]: trial_state(t)["seed"] for t in trial_dirs(storage / NAME)}
    assert len(runs) == 2
    for r in runs:
        assert r["status"] == "FINISHED"
        assert "train.lr" in r["params"]
        assert r["tags"]["tune_app.study"] == NAME and r["tags"]["tune_app.trial_id"]
        assert r["tags"]["tune_app.kind"] == "trial"
        assert r["tags"]["mlflow.parentRunId"] == study_run["run_id"], "nested under the study run"
        # per_trial: the seed it trained with (trial_state.json), not the study's seed 0
        real = str(seeds[r["tags"]["tune_app.trial_id"]])
        assert r["tags"]["tune_app.seed"] == real == r["params"]["trial_seed"] != "0"
        assert r["steps"]["val_macro_f1"] == [1, 2]
        assert r["steps"]["val_loss"] == [1, 2]


def test_mlflow_study_run_holds_best_trial_counts_and_the_report(study: tuple[Path, Path, int]) -> None:
    from tune_app import outcome

    storage, _, _ = study
    study_dir = storage / NAME
    (study_run,) = mlflow_runs(storage, NAME, kind="study")
    tags = study_run["tags"]
    assert study_run["status"] == "FINISHED" and tags["tune_app.study"] == NAME
    assert study_run["params"]["num_samples"] == "2" and study_run["params"]["seed_policy"] == "per_trial"
    best = {t.name.split("_")[2]: outcome.best_epoch(trial_state(t)["history"], "val_macro_f1")
            for t in trial_dirs(study_dir)}
    top = max(score for score, _ in best.values() if score is not None)
    assert float(tags["tune_app.best_score"]) == pytest.approx(top)
    assert best[tags["tune_app.best_trial_id"]] == (pytest.approx(top), int(tags["tune_app.best_epoch"]))
    counts = (tags["tune_app.trials.finished"], tags["tune_app.trials.stopped_early"], tags["tune_app.trials.failed"])
    assert counts == ("2", "0", "0") and tags["tune_app.trials.planned"] == "2"
    report = json.loads((study_dir / "evaluation_report.json").read_text())
    assert tags["tune_app.test_report_id"] == report["report_id"]
    assert study_run["metrics"]["test.model.criteria.macro_f1"] == pytest.approx(
        report["test_metrics"]["criteria_matching"]["macro_f1"])
    files = mlflow_artifacts(storage, study_run["run_id"])
    assert files == sorted(["evaluation_report.json", *report["artifacts"].values()])
    assert "evaluation_report.html" in files and len([f for f in files if f.startswith("plots/")]) >= 5
    # The artifact root is a folder of the storage path (not ./mlruns of whatever folder the command ran in).
    held = storage / "mlartifacts" / NAME / study_run["run_id"] / "artifacts"
    assert json.loads((held / "evaluation_report.json").read_text())["report_id"] == report["report_id"]
    assert not (REPO / "mlruns").exists()


def test_second_start_refuses_and_resume_of_finished_study_reruns_nothing(study: tuple[Path, Path, int]) -> None:
    storage, log, _ = study
    study_dir = storage / NAME
    (study_run,) = mlflow_runs(storage, NAME, kind="study")
    again = storage / "again.log"
    assert run([f"tune.storage_path={storage}", f"tune.name={NAME}"], again) == 2
    assert f"resume={study_dir}" in again.read_text()
    results_before = {t.name: (t / "result.json").read_text() for t in trial_dirs(study_dir)}
    resumed = storage / "resume.log"
    assert run([f"resume={study_dir}"], resumed) == 0, tail(resumed)
    assert "already complete" in resumed.read_text() and "Nothing was re-run" in resumed.read_text()
    assert {t.name: (t / "result.json").read_text() for t in trial_dirs(study_dir)} == results_before
    assert len(mlflow_runs(storage, NAME)) == 2
    (after,) = mlflow_runs(storage, NAME, kind="study")
    assert after["run_id"] == study_run["run_id"] and after["steps"] == study_run["steps"], "nothing logged twice"
    assert mlflow_artifacts(storage, after["run_id"]) == mlflow_artifacts(storage, study_run["run_id"])


def test_evaluate_logs_its_report_in_place_of_the_last_set(study: tuple[Path, Path, int]) -> None:
    """``python -m tune_app.evaluate --study``: the study run shows the new evaluation, one set of files."""
    storage, _, _ = study
    study_dir = storage / NAME
    (before,) = mlflow_runs(storage, NAME, kind="study")
    out = subprocess.run([sys.executable, "-m", "tune_app.evaluate", "--study", str(study_dir)], cwd=REPO,
                         env=study_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    manual = json.loads((study_dir / "manual_evaluation" / "evaluation_report.json").read_text())
    (after,) = mlflow_runs(storage, NAME, kind="study")
    assert after["run_id"] == before["run_id"] and len(mlflow_runs(storage, NAME)) == 2
    assert after["tags"]["tune_app.test_report_id"] == manual["report_id"] != before["tags"]["tune_app.test_report_id"]
    assert mlflow_artifacts(storage, after["run_id"]) == sorted(["evaluation_report.json", *manual["artifacts"].values()])
    held = storage / "mlartifacts" / NAME / after["run_id"] / "artifacts" / "evaluation_report.json"
    assert json.loads(held.read_text())["report_id"] == manual["report_id"]
    assert after["steps"]["test.model.criteria.macro_f1"] == [0, 1], "each evaluation at its own step"
