"""Early stopping with the real Tuner: a stopped trial is an outcome everywhere, and survives kills.

* ``test_an_asha_study_*`` (default suite): one short ASHA study with ``tune.reuse_actors=true``
  (one worker runs every trial), then summary + exit code, ``trial_state.json``, MLflow,
  retention, reports, cleanup, progress, and "never two trials training in one process".
* ``test_kill_*`` (slow): SIGINT or SIGKILL at a random moment after the first stop, resume (a
  SIGKILL twice), and check the decisions carried over: no stopped trial revived, no rung
  record lost, no trial restarted from epoch 1 when it had a valid checkpoint. The random
  seed is printed; ``TUNE_APP_KILL_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
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
from tune_app import outcome
from tune_app.checkpoints.store import checkpoint_index, is_tombstone, verify_checkpoint
from tune_app.early_stopping import OVERLAP_MESSAGE, STATE_FILE

METRIC = "val_macro_f1"


def _args(storage: Path, name: str, samples: int, epochs: int, *extra: str) -> list[str]:
    return [f"tune.num_samples={samples}", f"tune.max_epochs={epochs}", f"tune.storage_path={storage}",
            f"tune.name={name}", "tune.scheduler=asha", "tune.grace_period=1", "tune.reduction_factor=4",
            "tune.reuse_actors=true",
            "data.num_posts=60", *extra]


def _checkpoints(trial: Path) -> list[Path]:
    return sorted((c for c in trial.glob("checkpoint_*") if c.is_dir()), key=lambda c: checkpoint_index(c) or 0)


def _stopped_trials_are_consistent(study: Path) -> dict[str, dict[str, Any]]:
    """Every stopped trial trained exactly its epochs up to the stop, no more; returns {trial dir: state}."""
    stopped = {}
    for trial in trial_dirs(study):
        state = trial_state(trial)
        if state.get("status") != "stopped":
            continue
        rec = state["stopped_early"]
        epochs = [h["epoch"] for h in state["history"]]
        assert epochs == list(range(1, rec["epoch"] + 1)), (trial.name, epochs, rec)
        assert rec["epoch"] < rec["planned_epochs"] and rec["scheduler"] == "asha"
        assert rec["cutoff"] is not None and rec["value"] < rec["cutoff"], rec
        # Tune ended its thread at the report: no later epoch was trained or saved.
        assert len(_checkpoints(trial)) == rec["epoch"], (trial.name, [c.name for c in _checkpoints(trial)])
        stopped[trial.name] = state
    return stopped


# --- one short study, default suite -----------------------------------------------------------
SAMPLES, EPOCHS = 6, 3


@pytest.fixture(scope="module")
def asha_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    storage = tmp_path_factory.mktemp("experiments")
    log = storage / "run.log"
    rc = run(_args(storage, "asha", SAMPLES, EPOCHS), log)
    return storage, log, rc


def test_an_asha_study_ends_complete_with_stopped_trials_counted(asha_study: tuple[Path, Path, int]) -> None:
    storage, log, rc = asha_study
    text = log.read_text()
    assert rc == 0, tail(log)
    found = re.search(r"Study complete: (\d+)/(\d+) trials \((\d+) finished, (\d+) stopped early, 0 failed\)", text)
    assert found, tail(log)
    ended, total, finished, stopped = map(int, found.groups())
    assert ended == total == SAMPLES and finished + stopped == SAMPLES and stopped >= 1
    states = {t.name: trial_state(t) for t in trial_dirs(storage / "asha")}
    assert sum(s["status"] == "stopped" for s in states.values()) == stopped
    assert sum(s["status"] == "completed" for s in states.values()) == finished
    assert set(_stopped_trials_are_consistent(storage / "asha")) == {n for n, s in states.items()
                                                                       if s["status"] == "stopped"}
    progress = json.loads((storage / "asha" / "progress.json").read_text())
    assert progress["stopped"] == stopped and progress["done"] == SAMPLES


def test_an_asha_study_runs_one_trial_at_a_time_in_one_reused_worker(asha_study: tuple[Path, Path, int]) -> None:
    storage, log, _ = asha_study
    pids = set()
    for trial in trial_dirs(storage / "asha"):
        for line in (trial / "result.json").read_text().splitlines():
            pids.add(json.loads(line)["pid"])
        logs = "".join(p.read_text(errors="replace") for p in trial.rglob("*.jsonl") if p.is_file())
        assert OVERLAP_MESSAGE not in logs, trial.name
    assert len(pids) == 1, f"tune.reuse_actors=true: one worker for every trial, got {pids}"
    assert OVERLAP_MESSAGE not in log.read_text()


def test_an_asha_study_tags_stopped_runs_in_mlflow(asha_study: tuple[Path, Path, int]) -> None:
    storage, _, _ = asha_study
    runs = {r["tags"]["tune_app.trial_id"]: r for r in mlflow_runs(storage, "asha")}
    assert len(runs) == SAMPLES
    for trial in trial_dirs(storage / "asha"):
        state = trial_state(trial)
        tid = json.loads((trial / "result.json").read_text().splitlines()[-1])["trial_id"]
        r = runs[tid]
        assert r["status"] == "FINISHED"
        assert r["steps"][METRIC] == [h["epoch"] for h in state["history"]]
        if state["status"] == "stopped":
            assert r["tags"][outcome.OUTCOME_TAG] == "stopped" and r["tags"][outcome.STOPPED_EARLY_TAG] == "true"
            assert r["tags"][outcome.STOPPED_AT_EPOCH_TAG] == str(state["stopped_early"]["epoch"])
            assert r["tags"][outcome.STOPPED_BY_TAG].startswith("asha rung ")
        else:
            assert r["tags"][outcome.OUTCOME_TAG] == "finished" and outcome.STOPPED_EARLY_TAG not in r["tags"]


def test_an_asha_study_keeps_only_the_study_best_and_reports_stopped_trials(
        asha_study: tuple[Path, Path, int]) -> None:
    from tune_app.checkpoints.cleanup_scan import scan_study
    from tune_app.checkpoints.retention import RetentionPolicy

    storage, _, _ = asha_study
    study = storage / "asha"
    live = [c for t in trial_dirs(study) for c in _checkpoints(t) if not is_tombstone(c)]
    assert 1 <= len(live) <= 2 and all(verify_checkpoint(c).ok for c in live)
    best = max(h[METRIC] for t in trial_dirs(study) for h in trial_state(t)["history"])
    assert all(json.loads((c / "state.json").read_text())["trainer_state"]["metrics"][METRIC] == pytest.approx(best)
               for c in live)
    # Cleanup sees every trial as ended: nothing left to reclaim, no resume point kept.
    report = scan_study(study, metric=METRIC, policy=RetentionPolicy())
    assert not [c for c in report.candidates if c.reason.startswith("retention")]
    assert sorted(report.protected) == sorted(live)
    # Reports: each trial's status, and the study's test evaluation over all trials' best epochs.
    statuses = {t.name: trial_state(t)["status"] for t in trial_dirs(study)}
    for t in trial_dirs(study):
        doc = json.loads((t / "evaluation_report.json").read_text())
        assert doc["status"] == statuses[t.name]
        assert doc["best_epoch"] is not None
    study_report = json.loads((study / "evaluation_report.json").read_text())
    assert study_report["trials_stopped"] == sum(s == "stopped" for s in statuses.values())
    assert study_report["trials_count"] == SAMPLES
    assert study_report["best_validation_score"] == pytest.approx(best)
    assert {r["status"] for r in study_report["top_trials"]} <= {"completed", "stopped"}


def test_tune_does_not_save_the_scheduler_state_our_file_does(asha_study: tuple[Path, Path, int]) -> None:
    import ray.cloudpickle as cloudpickle

    storage, _, _ = asha_study
    study = storage / "asha"
    tuner_state = cloudpickle.loads((study / "tuner.pkl").read_bytes())
    assert all(not records for _, records in tuner_state["_tune_config"].scheduler.rung_records()), \
        "tuner.pkl holds the scheduler as it was at the start"
    experiment_state = json.loads(next(study.glob("experiment_state-*.json")).read_text())
    assert "_scheduler_alg" not in experiment_state["runner_data"]
    saved = json.loads((study / STATE_FILE).read_text())
    assert saved["scheduler"] == "asha" and sum(len(r) for _, r in saved["rungs"][0]) >= SAMPLES
    assert len(saved["stopped"]) == sum(trial_state(t)["status"] == "stopped" for t in trial_dirs(study))


def test_an_asha_study_tells_optuna_stopped_trials_pruned(asha_study: tuple[Path, Path, int]) -> None:
    """TPE learns from a stopped trial as PRUNED at the epoch it reached, never as a final score."""
    import pickle

    from optuna.trial import TrialState

    storage, _, _ = asha_study
    study = storage / "asha"
    newest = max(study.glob("searcher-state-*.pkl"), key=lambda p: p.stat().st_mtime)
    searcher = pickle.loads(newest.read_bytes())  # OptunaSearch.save: its __dict__
    frozen = {t.user_attrs["tune_trial_id"]: t for t in searcher["_ot_study"].get_trials(deepcopy=False)}
    for trial in trial_dirs(study):
        state = trial_state(trial)
        tid = json.loads((trial / "result.json").read_text().splitlines()[-1])["trial_id"]
        ot = frozen[tid]
        assert ot.intermediate_values == {h["epoch"]: pytest.approx(h[METRIC]) for h in state["history"]}, trial.name
        expected = TrialState.PRUNED if state["status"] == "stopped" else TrialState.COMPLETE
        assert ot.state == expected and ot.value == pytest.approx(state["history"][-1][METRIC]), trial.name
    check_optuna_db(study)  # and optuna.db says the same


# --- kills at random moments, slow ----------------------------------------------------------------
KILL_SAMPLES, KILL_EPOCHS = 8, 4


def _snapshot(study: Path) -> dict[str, Any]:
    """What the killed study left: stop decisions, rung records, each trial's newest valid checkpoint."""
    saved = json.loads((study / STATE_FILE).read_text()) if (study / STATE_FILE).is_file() else {}
    valid = {}
    for t in trial_dirs(study):
        ok = [c for c in _checkpoints(t) if not is_tombstone(c) and verify_checkpoint(c).ok]
        valid[t.name] = len(ok) > 0
    states = {t.name: trial_state(t) for t in trial_dirs(study)}
    return {"stopped": {n for n, s in states.items() if s.get("status") == "stopped"},
            "rungs": saved.get("rungs", [[]])[0], "valid_checkpoint": valid,
            "starts": {n: len(s.get("starts", [])) for n, s in states.items()},
            "epochs": {n: len(s.get("history", [])) for n, s in states.items()}}


def _first_stop(study: Path) -> bool:
    return study.is_dir() and any(trial_state(t).get("status") == "stopped" for t in trial_dirs(study))


def _kill_at_random(args: list[str], log: Path, study: Path, sig: signal.Signals, rng: random.Random,
                    *, wait_stop: bool) -> dict[str, Any]:
    proc = start_run(args, log)
    try:
        if wait_stop:
            wait_for(lambda: _first_stop(study), 400, "a trial is stopped early", proc, log)
        else:
            wait_for(lambda: study.is_dir() and any(study.glob("experiment_state-*.json")), 300,
                     "the restored study runs", proc, log)
        delay = rng.uniform(0.0, 6.0)
        print(f"{sig.name} after {delay:.2f} s", flush=True)
        time.sleep(delay)
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                kill_group(proc)
            else:
                os.kill(proc.pid, sig)
        rc = proc.wait(timeout=180)
    finally:
        end_group(proc)
    assert rc in (0, 130, -9), tail(log)  # 0: it ended before the signal landed
    return _snapshot(study)


def _check_carried_over(study: Path, before: dict[str, Any]) -> None:
    after = _snapshot(study)
    assert before["stopped"] <= after["stopped"], "a stopped trial was revived"
    stopped = _stopped_trials_are_consistent(study)
    for name in before["stopped"]:
        assert trial_state(study / name)["starts"] == stopped[name]["starts"], f"{name} was started again"
    for (milestone, records), (m2, records2) in zip(before["rungs"], after["rungs"], strict=True):
        assert milestone == m2
        for trial_id, value in records.items():
            assert records2.get(trial_id) == pytest.approx(value), f"rung {milestone}: record of {trial_id} lost"
    for t in trial_dirs(study):
        state = trial_state(t)
        epochs = [h["epoch"] for h in state["history"]]
        assert epochs == list(range(1, len(epochs) + 1)), (t.name, epochs)
        assert state["status"] in ("completed", "stopped"), (t.name, state["status"])
        # A trial with a valid checkpoint and two epochs behind it (so Tune had registered at least
        # one of them: a SIGKILL between a report and Tune's next state sync can lose the newest)
        # must continue from a checkpoint, never from epoch 1.
        n = before["starts"].get(t.name, 0)
        if n and before["valid_checkpoint"].get(t.name) and before["epochs"].get(t.name, 0) >= 2 \
                and t.name not in before["stopped"]:
            for start in state["starts"][n:]:
                assert start["start_epoch"] > 1, f"{t.name} restarted from epoch 1 although it had a checkpoint"


def _check_done(storage: Path, study: Path, log: Path) -> None:
    text = log.read_text()
    assert re.search(rf"Study complete: {KILL_SAMPLES}/{KILL_SAMPLES} trials \(\d+ finished, \d+ stopped early, "
                     r"0 failed\)", text) or "is already complete" in text, tail(log)
    assert len(trial_dirs(study)) == KILL_SAMPLES
    runs = mlflow_runs(storage, study.name)
    assert len(runs) == KILL_SAMPLES, "one MLflow run per trial after the restores"
    for r in runs:
        steps = r["steps"][METRIC]
        assert steps == sorted(set(steps)), f"a step logged twice: {steps}"
        assert r["status"] == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_kill_at_random_moments_then_resume_keeps_the_decisions(tmp_path: Path, sig: signal.Signals) -> None:
    seed = int(os.environ.get("TUNE_APP_KILL_SEED", random.randrange(2**31)))
    print(f"kill seed {seed} (replay: TUNE_APP_KILL_SEED={seed})", flush=True)
    rng = random.Random(seed)
    storage = tmp_path / "experiments"
    study = storage / "killed"
    args = _args(storage, "killed", KILL_SAMPLES, KILL_EPOCHS)
    before = _kill_at_random(args, tmp_path / "run.log", study, sig, rng, wait_stop=True)
    if sig == signal.SIGKILL:  # a second crash, during the resumed study
        before2 = _kill_at_random([f"resume={study}"], tmp_path / "resume1.log", study, sig, rng, wait_stop=False)
        assert before["stopped"] <= before2["stopped"], "a stopped trial was revived by the first resume"
        before = before2
    log = tmp_path / "resume.log"
    assert run([f"resume={study}"], log) == 0, tail(log)
    _check_done(storage, study, log)
    _check_carried_over(study, before)


@pytest.mark.slow
def test_a_kill_between_the_stop_record_and_tunes_state_never_revives_the_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst moment: the stop is on disk, Tune still holds the trial as RUNNING (failpoint)."""
    storage = tmp_path / "experiments"
    study = storage / "window"
    log = tmp_path / "run.log"
    monkeypatch.setenv("TUNE_APP_FAILPOINTS", "stop=60")
    proc = start_run(_args(storage, "window", KILL_SAMPLES, KILL_EPOCHS), log)
    monkeypatch.delenv("TUNE_APP_FAILPOINTS")
    try:
        wait_for(lambda: _first_stop(study), 400, "a trial is stopped early", proc, log)
        kill_group(proc)
        proc.wait(timeout=60)
    finally:
        end_group(proc)
    (victim,) = [t for t in trial_dirs(study) if trial_state(t).get("status") == "stopped"]
    before = trial_state(victim)
    resume_log = tmp_path / "resume.log"
    assert run([f"resume={study}"], resume_log) == 0, tail(resume_log)
    _check_done(storage, study, resume_log)
    after = trial_state(victim)
    assert after["status"] == "stopped" and after["history"] == before["history"]
    assert after["starts"] == before["starts"], "the stopped trial was trained again"
    assert len(_checkpoints(victim)) == before["stopped_early"]["epoch"]
    # Tune revived it (its saved state said RUNNING); the trainable reported its last result instead.
    # (an INFO line of the trial: in its log, and on the console only with -v)
    assert "not training it again" in (victim / "logs" / "trial.jsonl").read_text(), tail(resume_log)
    tid = json.loads((victim / "result.json").read_text().splitlines()[-1])["trial_id"]
    (mlrun,) = [r for r in mlflow_runs(storage, "window") if r["tags"]["tune_app.trial_id"] == tid]
    assert mlrun["status"] == "FINISHED" and mlrun["tags"][outcome.OUTCOME_TAG] == "stopped"
    _stopped_trials_are_consistent(study)
