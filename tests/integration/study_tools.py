"""Helpers for tests that run real studies in a subprocess and inspect what they left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def study_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def pin_scheduler(args: list[str]) -> list[str]:
    """``args`` with ``tune.scheduler=fifo`` added unless they name a scheduler or resume a study.

    The default scheduler stops hopeless trials early (ASHA); tests written for studies whose
    trials all train every epoch run them under FIFO. Early-stopping tests pass their own.
    """
    if any(a.startswith(("tune.scheduler=", "resume=")) for a in args):
        return list(args)
    return [*args, "tune.scheduler=fifo"]


def start_run(args: list[str], log: Path, failpoints: str | None = None) -> subprocess.Popen[bytes]:
    """``python -m tune_app.run ARGS`` in its own process group, output to ``log`` (FIFO unless
    ``args`` name a scheduler: see :func:`pin_scheduler`); ``failpoints`` sets ``TUNE_APP_FAILPOINTS``."""
    args = pin_scheduler(args)
    env = study_env()
    if failpoints is not None:
        env["TUNE_APP_FAILPOINTS"] = failpoints
    fh = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "tune_app.run", *args], cwd=REPO, env=env,
                            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def run(args: list[str], log: Path, timeout: float = 600) -> int:
    proc = start_run(args, log)
    try:
        return proc.wait(timeout=timeout)
    finally:
        end_group(proc)


_KILLED_TREES: dict[int, list[psutil.Process]] = {}


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the run's process group, as ``kill -9 -PGID`` by a user does.

    Ray starts each trial worker in a process group of its own, so a worker outlives the
    group for a moment (until its watchdog sees the raylet gone) and may still finish a
    save. The run's whole process tree is remembered here, and :func:`end_group` waits for
    all of it: what a test inspects after a kill is what the next command will find.
    """
    with contextlib.suppress(psutil.Error):
        _KILLED_TREES[proc.pid] = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def end_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Wait for the group's leftovers (Ray agents outlive the driver) and end them, then wait
    for the processes of a tree :func:`kill_group` signalled (trial workers in their own groups)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.5)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(_KILLED_TREES.pop(proc.pid, []), timeout=grace)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(alive, timeout=10)


def trial_dirs(study: Path) -> list[Path]:
    return sorted(p for p in study.iterdir() if p.is_dir() and (p / "params.json").exists())


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc={proc.returncode}) before: {what}\n{tail(log)}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for: {what}\n{tail(log)}")


def tail(log: Path | None, n: int = 60) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def trial_state(trial_dir: Path) -> dict[str, Any]:
    path = trial_dir / "trial_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def mlflow_runs(storage: Path, experiment: str, *, kind: str = "trial") -> list[dict[str, Any]]:
    """The runs of ``experiment`` in ``<storage>/mlflow.db`` with params, tags and metric steps:
    the trial runs (``kind="trial"``, every run but the study run), the study-level run
    (``kind="study"``) or every run (``kind="all"``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    out = []
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        is_study = run.data.tags.get("tune_app.kind") == "study"
        if (kind == "trial" and is_study) or (kind == "study" and not is_study):
            continue
        steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
                 for key in run.data.metrics}
        out.append({"run_id": run.info.run_id, "status": run.info.status, "params": run.data.params,
                    "tags": run.data.tags, "steps": steps, "metrics": run.data.metrics})
    return out


def mlflow_artifacts(storage: Path, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of ``run_id`` in ``<storage>/mlflow.db`` (paths, sorted)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    out: list[str] = []
    for item in client.list_artifacts(run_id, path):
        out.extend(mlflow_artifacts(storage, run_id, item.path) if item.is_dir else [item.path])
    return sorted(out)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real, size-limited filesystem at ``path`` (``mount -t tmpfs -o OPTIONS``); skips without root."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_bytes(path: Path, leave_free: int) -> None:
    """Allocate a file on ``path``'s filesystem so that ``leave_free`` bytes stay free."""
    with (path / "filler.bin").open("wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(0, shutil.disk_usage(path).free - leave_free))


def check_optuna_db(study: Path, metric: str = "val_macro_f1") -> None:
    """``<study>/optuna.db`` holds each trial of the study exactly once, as Tune's files say it ended.

    Per trial folder: one Optuna trial with its Tune trial id, the params of ``params.json``, one
    intermediate value per epoch of ``result.json``, ``PRUNED`` if ``trial_state.json`` says it
    was stopped early else ``COMPLETE``, and the last result's ``metric`` as its value.
    """
    from optuna.trial import TrialState

    from tune_app.optuna_store import load_optuna_study

    loaded = load_optuna_study(study)
    assert loaded is not None, f"no readable optuna.db in {study}"
    trials = loaded.get_trials(deepcopy=False)
    ids = [t.user_attrs.get("tune_trial_id") for t in trials]
    folders = trial_dirs(study)
    assert len(trials) == len(set(ids)) == len(folders), f"Optuna DB trials {ids} vs {len(folders)} trial folders"
    assert [t.number for t in trials] == list(range(len(trials)))
    by_id = dict(zip(ids, trials, strict=True))
    for folder in folders:
        results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        ot = by_id.get(results[-1]["trial_id"])
        assert ot is not None, f"{folder.name} is not in the Optuna DB"
        assert ot.params == json.loads((folder / "params.json").read_text()), folder.name
        stopped = trial_state(folder).get("status") == "stopped"
        assert ot.state == (TrialState.PRUNED if stopped else TrialState.COMPLETE), (folder.name, ot.state)
        assert ot.value == pytest.approx(results[-1][metric]), folder.name
        assert ot.intermediate_values == {r["epoch"]: pytest.approx(r[metric]) for r in results}, folder.name
