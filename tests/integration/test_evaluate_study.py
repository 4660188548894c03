"""A real study (Ray Tune + Optuna, tiny model) evaluates its test split once when it ends.

Needs the wiring in tune_app/trainable.py (per-trial report each epoch) and
tune_app/run.py (study evaluation on completion); see docs/reports.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.study_tools import REPO, run, study_env, tail, trial_dirs
from tune_app.evaluation.contracts import errors
from tune_app.evaluation.report import max_abs_difference
from tune_app.study import STUDY_META

NAME = "evalrun"
pytestmark = pytest.mark.slow  # a real Ray study: ~2 min


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    storage = tmp_path_factory.mktemp("experiments")
    log = storage / "run.log"
    rc = run(["tune.num_samples=2", "tune.max_epochs=2", "model=tiny", "data.num_posts=120",
              f"tune.storage_path={storage}", f"tune.name={NAME}"], log)
    return storage / NAME, log, rc


def test_each_trial_writes_a_validation_report(study: tuple[Path, Path, int]) -> None:
    study_dir, log, rc = study
    assert rc == 0, tail(log)
    for trial in trial_dirs(study_dir):
        doc = json.loads((trial / "evaluation_report.json").read_text())
        assert errors(doc, "trial_report") == []
        assert [h["epoch"] for h in doc["history"]] == [1, 2]
        assert doc["trial_id"] in trial.name and doc["status"] == "completed"
        assert all(not k.startswith("test") for k in doc["validation_metrics"])


def test_study_end_evaluates_the_best_checkpoints_on_test_once(study: tuple[Path, Path, int]) -> None:
    study_dir, log, rc = study
    assert rc == 0, tail(log)
    report = json.loads((study_dir / "evaluation_report.json").read_text())
    assert errors(report, "study_report") == [] and report["source"] == "on_finish"
    evaluated = sorted(c["path"] for c in report["evaluated_checkpoints"])
    (best_trial,) = {p.split("/")[0] for p in evaluated}  # one trial: the best one
    # every live (co-best) checkpoint of that trial; another trial tied at the same
    # score keeps its checkpoint too, but only the best trial is evaluated
    live = sorted(f"{c.parent.name}/{c.name}" for c in (study_dir / best_trial).glob("checkpoint_*")
                  if not (c / "PRUNED").exists())
    assert evaluated == live
    best = max(h["val_macro_f1"] for t in trial_dirs(study_dir)
               for h in json.loads((t / "trial_state.json").read_text())["history"])
    assert report["best_validation_score"] == pytest.approx(best)
    assert json.loads((study_dir / STUDY_META).read_text())["test_evaluation"]["report_id"] == report["report_id"]
    assert (study_dir / "evaluation_report.html").stat().st_size > 10_000

    resumed = study_dir.parent / "resume.log"
    assert run([f"resume={study_dir}"], resumed) == 0, tail(resumed)
    assert json.loads((study_dir / "evaluation_report.json").read_text())["report_id"] == report["report_id"]

    manual = subprocess.run([sys.executable, "-m", "tune_app.evaluate", "--study", str(study_dir), "--no-plots"],
                            cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=600)
    assert manual.returncode == 0, manual.stderr
    again = json.loads((study_dir / "manual_evaluation" / "evaluation_report.json").read_text())
    assert max_abs_difference(again["test_metrics"], report["test_metrics"]) <= 1e-6
