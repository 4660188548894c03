"""Issue 14 end to end: a bad tracking URI stops before anything starts; an unusable store
loses nothing, stays quiet on the console, and ``resume=`` of the finished study replays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.study_tools import (
    REPO,
    mlflow_runs,
    run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
)


@pytest.mark.parametrize("uri", ["notascheme://x", "sqlite:///{tmp}/a_file/sub/mlflow.db"])
def test_a_bad_tracking_uri_exits_2_before_any_study_folder(tmp_path: Path, uri: str) -> None:
    (tmp_path / "a_file").write_text("x")
    storage = tmp_path / "experiments"
    proc = subprocess.run([sys.executable, "-m", "tune_app.run", f"tracking.tracking_uri={uri.format(tmp=tmp_path)}",
                           f"tune.storage_path={storage}", "tune.name=bad_uri"],
                          cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: tracking.tracking_uri="), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not storage.exists()


def trial_id(trial: Path) -> str:
    return str(json.loads((trial / "result.json").read_text().splitlines()[0])["trial_id"])


@pytest.mark.slow
def test_unusable_store_buffers_quietly_and_resume_replays_everything_once(tmp_path: Path) -> None:
    storage = tmp_path / "experiments"
    storage.mkdir()
    study = storage / "lost_store"
    db = storage / "mlflow.db"  # the default store, broken before the study starts
    db.write_bytes(b"this is not a database " * 50)
    log = tmp_path / "run.log"
    rc = run(["model=tiny", "data.num_posts=20", "tune.num_samples=2", "tune.max_epochs=2",
              "evaluation.on_finish=false", "tracking.close_timeout_s=1", f"tune.storage_path={storage}",
              f"tune.name={study.name}"], log)
    out = log.read_text(errors="replace")
    assert rc == 0, tail(log)
    # Ray's trial worker sometimes prints a shutdown traceback of its own (SIGTERM in a GC callback): not ours.
    tracebacks = [line for line in out.splitlines() if "Traceback" in line and "(train_trial pid=" not in line]
    assert not tracebacks, tail(log, 200)
    about = [line for line in out.splitlines() if any(w in line.lower() for w in ("mlflow", "sqlalchemy", "sqlite"))]
    assert len(about) <= 3, about  # the outage's start, and the summary: still buffered + how to replay
    assert any("MLflow store unreachable: " in line for line in about), about
    assert f"replay them with: python -m tune_app.run resume={study}" in out, tail(log)
    assert (study / "mlflow_buffer.jsonl").exists()

    db.unlink()  # the store is back (empty: nothing of this study is in it)
    log2 = tmp_path / "resume.log"
    assert run([f"resume={study}"], log2) == 0, tail(log2)
    out2 = log2.read_text(errors="replace")
    assert "MLflow store back: replayed" in out2 and "already complete" in out2, tail(log2)
    assert "still buffered" not in out2 and not (study / "mlflow_buffer.jsonl").exists()
    assert not (study / "mlflow_rejected.jsonl").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = {r["tags"]["tune_app.trial_id"]: r for r in mlflow_runs(storage, study.name)}
    trials = trial_dirs(study)
    assert len(trials) == 2 and sorted(runs) == sorted(trial_id(t) for t in trials)  # one run per trial
    for trial in trials:
        found = runs[trial_id(trial)]
        assert found["status"] == "FINISHED" and "train.lr" in found["params"]
        history = trial_state(trial)["history"]
        assert [h["epoch"] for h in history] == [1, 2]
        for key in history[0]:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(found["run_id"], key))
            assert logged == [(h["epoch"], pytest.approx(float(h[key]))) for h in history], (key, logged)
