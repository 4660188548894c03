"""Storage pressure: the callback escalates one step per critical check (fake disk), and a
real tiny study on a nearly full tmpfs escalates to step 3 and keeps only the study's best."""

from __future__ import annotations

import json
import logging
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.integration.study_tools import fill_bytes, mlflow_runs, run, tail, tmpfs, trial_dirs
from tune_app.callbacks import (
    PRESSURE_TAG,
    RetentionCallback,
    StoragePressureCallback,
    read_pressure_record,
)
from tune_app.checkpoints.retention import RetentionPolicy
from tune_app.checkpoints.store import is_tombstone, save_checkpoint, verify_checkpoint

Usage = namedtuple("Usage", "total used free")
METRIC = "val_macro_f1"


class FakeDisk:
    """``shutil.disk_usage`` stand-in whose free fraction the test sets."""

    def __init__(self) -> None:
        self.free_fraction = 0.5

    def __call__(self, path: Any) -> Usage:
        total = 1_000_000
        free = int(total * self.free_fraction)
        return Usage(total, total - free, free)


def _ckpt(trial: Path, index: int, score: float) -> str:
    path = trial / f"checkpoint_{index:06d}"
    save_checkpoint(path, model_state={"w": torch.full((256,), float(index))},
                    trainer_state={"epoch": index + 1, "metrics": {METRIC: score}}, compat={})
    return str(path)


def _trial(trial_dir: Path, trial_id: str, score: float | None = None) -> Any:
    return SimpleNamespace(trial_id=trial_id, storage=SimpleNamespace(trial_fs_path=str(trial_dir)),
                           last_result={METRIC: score} if score is not None else {})


def _live(paths: dict[str, str]) -> set[str]:
    return {k for k, p in paths.items() if verify_checkpoint(Path(p)).ok}


def _mlflow_run(tmp_path: Path, study: str, trial_id: str) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    from tune_app.tracking.mlflow_callback import STUDY_TAG, TRIAL_ID_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("pressure")
    run = client.create_run(exp, tags={STUDY_TAG: study, TRIAL_ID_TAG: trial_id})
    return uri, run.info.run_id


def test_critical_checks_escalate_one_step_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = tmp_path / "study"
    a, b = study / "trial_a", study / "trial_b"
    # Permissive base policy (last 2, best 2) so each step visibly keeps less.
    p = {"a0": _ckpt(a, 0, 0.5), "a1": _ckpt(a, 1, 0.3), "b0": _ckpt(b, 0, 0.45), "b1": _ckpt(b, 1, 0.1),
         "b2": _ckpt(b, 2, 0.2), "b3": _ckpt(b, 3, 0.15)}
    (a / "trial_state.json").write_text(json.dumps({"status": "completed"}))
    uri, run_id = _mlflow_run(tmp_path, "study", "bbb")
    retention = RetentionCallback(study, metric=METRIC,
                                  policy=RetentionPolicy(keep_last_n=2, keep_best_k=2, keep_best_k_max=2))
    disk = FakeDisk()
    pressure = StoragePressureCallback(study, retention, interval_s=3600, warn_free_fraction=0.10,
                                       error_free_fraction=0.05, tracking_uri=uri, experiment_name="pressure",
                                       disk_usage=disk)
    trial_b = _trial(b, "bbb", 0.15)
    pressure.setup()
    try:
        retention.apply()  # normal retention: a1 (finished, not best) and b1 (outside last 2 / best 2) go
        assert _live(p) == {"a0", "b0", "b2", "b3"}
        assert pressure.check(trial_b) == 0, "plenty of free space: no escalation"
        assert _live(p) == {"a0", "b0", "b2", "b3"}

        disk.free_fraction = 0.08  # below warn (10%): critical flag
        with caplog.at_level(logging.WARNING, logger="tune_app.callbacks"):
            assert pressure.check(trial_b) == 1
        assert "escalating retention to step 1" in caplog.text
        assert _live(p) == {"a0", "b0", "b3"}, "step 1: b2 (kept by last 2 / best 2) is not protected"

        p["b4"] = _ckpt(b, 4, 0.05)
        retention.on_checkpoint(0, [], trial_b, SimpleNamespace(path=p["b4"]))
        assert _live(p) == {"a0", "b0", "b3", "b4"}, "step 1 leaves the policy itself unchanged"
        assert pressure.check(trial_b) == 2
        assert _live(p) == {"a0", "b0", "b4"}, "step 2: keep_last_n=0, keep_best_k=1"
        assert pressure.check(trial_b) == 3
        assert _live(p) == {"a0", "b4"}, "step 3: the study's single best + the running trial's resume point"
        assert pressure.check(trial_b) == 3, "3 is the last step"
        assert "escalating retention to step 3" in caplog.text
    finally:
        pressure.on_experiment_end([])

    record = read_pressure_record(study)
    assert [e["step"] for e in record] == [1, 2, 3]
    assert all(e["trial_id"] == "bbb" and e["free_fraction"] == 0.08 for e in record)
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run_id).data.tags[PRESSURE_TAG] == "3"
    assert all(is_tombstone(Path(p[k])) for k in ("a1", "b0", "b1", "b2", "b3"))

    # A restored study continues at the recorded step (the pickled callback starts at 0).
    fresh = RetentionCallback(study, metric=METRIC, policy=RetentionPolicy())
    again = StoragePressureCallback(study, fresh, interval_s=3600, warn_free_fraction=0.10,
                                    error_free_fraction=0.05, tracking_uri=uri, experiment_name="pressure",
                                    disk_usage=FakeDisk())
    again.setup()
    again.on_experiment_end([])
    assert fresh.pressure_step == 3


def test_step_one_prunes_every_trial_running_at_once(tmp_path: Path) -> None:
    """N trials write to one disk: step 1 prunes the unprotected checkpoints of each running trial,
    not only of the trial whose result triggered the check."""
    study = tmp_path / "study"
    a, b, c = study / "trial_a", study / "trial_b", study / "trial_c"
    p = {"a0": _ckpt(a, 0, 0.9), "a1": _ckpt(a, 1, 0.3), "a2": _ckpt(a, 2, 0.2),
         "b0": _ckpt(b, 0, 0.4), "b1": _ckpt(b, 1, 0.1), "b2": _ckpt(b, 2, 0.2),
         "c0": _ckpt(c, 0, 0.35), "c1": _ckpt(c, 1, 0.1), "c2": _ckpt(c, 2, 0.15)}
    retention = RetentionCallback(study, metric=METRIC,
                                  policy=RetentionPolicy(keep_last_n=2, keep_best_k=1, keep_best_k_max=1))
    disk = FakeDisk()
    pressure = StoragePressureCallback(study, retention, interval_s=3600, warn_free_fraction=0.10,
                                       error_free_fraction=0.05, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                                       experiment_name="pressure", disk_usage=disk)
    trials = [_trial(a, "aaa", 0.2), _trial(b, "bbb", 0.2), _trial(c, "ccc", 0.15)]
    for t, status in zip(trials, ("RUNNING", "RUNNING", "PENDING"), strict=True):
        t.status = status
    pressure.setup()
    try:
        retention.apply()  # last 2 + own best of each running trial: nothing goes yet
        assert _live(p) == set(p)
        disk.free_fraction = 0.08
        assert pressure.check(trials[0], trials) == 1
    finally:
        pressure.on_experiment_end([])
    # a (the reporting trial) and b (running beside it) keep the study best and their resume
    # points; c is not running (its records are left to the plan).
    assert _live(p) == {"a0", "a2", "b2", "c0", "c1", "c2"}


def test_with_trials_at_once_a_step_waits_for_every_running_trial_to_report(tmp_path: Path) -> None:
    """N trials report N times as often as one: the next step waits until each trial running at
    the last step has reported again (or ended), so the escalation climbs as fast as with one."""
    study = tmp_path / "study"
    a, b, c = study / "trial_a", study / "trial_b", study / "trial_c"
    for d in (a, b, c):
        _ckpt(d, 0, 0.3)
    retention = RetentionCallback(study, metric=METRIC, policy=RetentionPolicy())
    disk = FakeDisk()
    pressure = StoragePressureCallback(study, retention, interval_s=3600, warn_free_fraction=0.10,
                                       error_free_fraction=0.05, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                                       experiment_name="pressure", disk_usage=disk)
    ta, tb, tc = _trial(a, "aaa", 0.3), _trial(b, "bbb", 0.3), _trial(c, "ccc", 0.3)
    for t in (ta, tb, tc):
        t.status = "RUNNING"
    pressure.setup()
    try:
        disk.free_fraction = 0.08
        assert pressure.on_trial_result(0, [ta, tb], ta, {}) is None and retention.pressure_step == 1
        pressure.on_trial_result(0, [ta, tb], ta, {})  # a again: b has not saved since step 1
        assert retention.pressure_step == 1
        pressure.on_trial_result(0, [ta, tb], tb, {})  # each trial has reported since step 1
        assert retention.pressure_step == 2
        # b ends before reporting again: it is not waited for; c starts in its slot
        tb.status = "TERMINATED"
        pressure.on_trial_complete(0, [ta, tb, tc], tb)
        pressure.on_trial_start(0, [ta, tb, tc], tc)
        assert retention.pressure_step == 2, "a has not reported since step 2"
        pressure.on_trial_result(0, [ta, tb, tc], ta, {})
        assert retention.pressure_step == 3
    finally:
        pressure.on_experiment_end([])
    assert [(e["step"], e["trial_id"]) for e in read_pressure_record(study)] == [(1, "aaa"), (2, "bbb"),
                                                                              (3, "aaa")]


def test_warning_band_is_critical_but_ok_is_not(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    retention = RetentionCallback(study, metric=METRIC, policy=RetentionPolicy())
    disk = FakeDisk()
    pressure = StoragePressureCallback(study, retention, interval_s=3600, warn_free_fraction=0.10,
                                       error_free_fraction=0.05, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                                       experiment_name="none", disk_usage=disk)
    pressure.setup()
    try:
        disk.free_fraction = 0.10
        assert pressure.check(None) == 0
        disk.free_fraction = 0.03
        assert pressure.check(None) == 1
        disk.free_fraction = 0.5
        assert pressure.check(None) == 1, "escalation is one-way within a study"
    finally:
        pressure.on_experiment_end([])


# --- a real study on a nearly full disk ------------------------------------------------
TMPFS_MIB = 1024
LEAVE_FREE_MIB = 95  # 9.3% free: critical (< 10%), yet above the 64 MiB preflight margin + checkpoints


@pytest.mark.slow
def test_real_study_on_a_nearly_full_disk_escalates_and_keeps_the_single_best(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", f"size={TMPFS_MIB}m") as disk:
        fill_bytes(disk, LEAVE_FREE_MIB << 20)
        storage = disk / "experiments"
        log = tmp_path / "run.log"
        rc = run(["tune.num_samples=3", "tune.max_epochs=2", f"tune.storage_path={storage}", "tune.name=full",
                  f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], log)
        text = log.read_text(errors="replace")
        assert rc == 0, tail(log)
        study = storage / "full"
        for step in (1, 2, 3):
            assert f"escalating retention to step {step}" in text, tail(log)
        assert [e["step"] for e in read_pressure_record(study)] == [1, 2, 3]
        live = [c for t in trial_dirs(study) for c in t.glob("checkpoint_*") if not is_tombstone(c)]
        assert len(live) == 1 and verify_checkpoint(live[0]).ok, live
        runs = [r for r in mlflow_runs(tmp_path, "full") if "tune_app.trial_id" in r["tags"]]  # <dir>/mlflow.db
        assert len(runs) == 3
        assert all(r["tags"].get(PRESSURE_TAG) in {"1", "2", "3"} for r in runs), [r["tags"] for r in runs]
        assert max(int(r["tags"][PRESSURE_TAG]) for r in runs) == 3

