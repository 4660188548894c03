"""A real MLflow tracking server that goes down mid-trial and comes back.

A tiny study (2 trials x 4 epochs) logs to ``mlflow server`` on loopback. The test stops
the server after the first epoch of trial 1 and starts it again once the outage buffer
holds data and trial 2 has begun (so trial 2's run is created while the server is
down). Then MLflow must hold exactly what the trainable reported (``trial_state.json``
history): every metric of every epoch, once, with the same value; one run per trial;
the buffer file gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.study_tools import (
    REPO,
    end_group,
    free_port,
    mlflow_artifacts,
    mlflow_runs,
    start_run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)

NAME = "outage"
pytestmark = pytest.mark.slow


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_server(storage: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{storage / 'mlflow.db'}",
         "--default-artifact-root", str(storage / "artifacts"), "--workers", "1"],
        cwd=storage, env=study_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: healthy(port), 180, "mlflow server answers /health", proc, log)
    return proc


def stop_server(proc: subprocess.Popen[bytes], port: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)
    wait_for(lambda: not healthy(port), 30, "mlflow server is down")


def trial_id(trial: Path) -> str:
    return str(json.loads((trial / "result.json").read_text().splitlines()[0])["trial_id"])


def epochs_done(study: Path) -> list[int]:
    if not study.exists():
        return []
    return [len(trial_state(t).get("history", [])) for t in trial_dirs(study)]


def test_metrics_survive_a_server_outage(tmp_path: Path) -> None:
    storage = tmp_path / "experiments"
    storage.mkdir()
    study = storage / NAME
    port = free_port()
    server_log, run_log = tmp_path / "server.log", tmp_path / "run.log"
    server = start_server(storage, port, server_log)
    proc = start_run(["tune.num_samples=2", "tune.max_epochs=4", "model=tiny", f"tune.storage_path={storage}",
                      f"tune.name={NAME}", f"tracking.tracking_uri=http://127.0.0.1:{port}"], run_log)
    try:
        wait_for(lambda: any(n >= 1 for n in epochs_done(study)), 400, "trial 1 finished epoch 1", proc, run_log)
        stop_server(server, port)
        outage_start = time.monotonic()
        wait_for(lambda: (study / "mlflow_buffer.jsonl").exists(), 300, "metrics buffered on disk", proc, run_log)
        wait_for(lambda: len(epochs_done(study)) == 2 and min(epochs_done(study)) >= 1, 400,
                 "trial 2 started during the outage", proc, run_log)
        assert (study / "mlflow_buffer.jsonl").exists()
        server = start_server(storage, port, server_log)
        outage_s = time.monotonic() - outage_start
        rc = proc.wait(timeout=600)
    finally:
        end_group(proc)
        stop_server(server, port)
    log = run_log.read_text(errors="replace")
    assert rc == 0, tail(run_log)
    assert "MLflow store unreachable: " in log and "MLflow store back: replayed" in log, tail(run_log)
    assert log.count("MLflow store unreachable") == 1, tail(run_log)  # one line per outage, no traceback
    assert not [line for line in log.splitlines() if "Traceback" in line and "(train_trial pid=" not in line]
    assert not (study / "mlflow_buffer.jsonl").exists(), "buffer must be removed after replay"

    runs = mlflow_runs(storage, NAME)
    trials = trial_dirs(study)
    assert len(trials) == 2 and len(runs) == 2, [r["tags"].get("tune_app.trial_id") for r in runs]
    by_trial = {r["tags"]["tune_app.trial_id"]: r for r in runs}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    for trial in trials:
        run = by_trial[trial_id(trial)]
        assert run["status"] == "FINISHED"
        assert "train.lr" in run["params"]
        history = trial_state(trial)["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3, 4]
        for key in history[0]:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"], key))
            expected = [(h["epoch"], pytest.approx(float(h[key]))) for h in history]
            assert logged == expected, (trial.name, key, logged)  # nothing missing, nothing twice
    study_runs = mlflow_runs(storage, NAME, kind="study")  # beside the trial runs, their parent
    assert len(study_runs) == 1 and study_runs[0]["tags"]["tune_app.progress.done"] == "2"
    assert study_runs[0]["tags"]["tune_app.trials.finished"] == "2"
    assert all(r["tags"]["mlflow.parentRunId"] == study_runs[0]["run_id"] for r in runs), "the parent survives replay"
    report = json.loads((study / "evaluation_report.json").read_text())  # logged through the server
    assert mlflow_artifacts(storage, study_runs[0]["run_id"]) == sorted(
        ["evaluation_report.json", *report["artifacts"].values()])
    print(f"outage lasted {outage_s:.0f} s")
