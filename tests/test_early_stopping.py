"""Early stopping (issue 12) without Ray running: config, outcomes, the durable schedulers.

The real Tuner is exercised in ``tests/integration/test_early_stopping_study.py``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_app import outcome
from tune_app.config import ConfigError, compose
from tune_app.early_stopping import (
    STATE_FILE,
    DurableASHAScheduler,
    DurableMedianStoppingRule,
    make_scheduler,
    training_slot,
)

METRIC = "val_macro_f1"


# --- config -----------------------------------------------------------------------------
def test_default_is_asha_with_validated_knobs() -> None:
    cfg = compose([])
    assert (cfg.tune.scheduler, cfg.tune.grace_period, cfg.tune.reduction_factor, cfg.tune.min_samples) == \
        ("asha", 1, 3, 3)
    assert isinstance(make_scheduler(cfg), DurableASHAScheduler)
    assert isinstance(make_scheduler(compose(["tune.scheduler=median"])), DurableMedianStoppingRule)
    assert isinstance(make_scheduler(compose(["tune.scheduler=fifo"])), FIFOScheduler)
    # grace_period above a short study's max_epochs is that max_epochs (Tune's ASHA would refuse it).
    short = make_scheduler(compose(["tune.max_epochs=1"]))
    assert short.rung_records() == [(1, {})] and short._max_t == 1


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("tune.scheduler=hyperband", "tune.scheduler='hyperband'", "allowed values: fifo, asha, median"),
    ("tune.grace_period=0", "tune.grace_period=0", "an integer >= 1"),
    ("tune.reduction_factor=1", "tune.reduction_factor=1", "a number in (1, 100]"),
    ("tune.min_samples=0", "tune.min_samples=0", "an integer >= 1"),
])
def test_bad_scheduler_values_name_the_key_and_the_allowed_values(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose([override])
    message = str(err.value)
    assert key in message and allowed in message and "\n" not in message


def test_a_bad_scheduler_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tune_app.run import main

    assert main(["tune.scheduler=hyperband", f"tune.storage_path={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tune.scheduler" in err[0] and "fifo, asha, median" in err[0]


# --- outcome ----------------------------------------------------------------------------
def test_classify_tells_every_outcome_apart() -> None:
    running = {"status": "running"}
    assert outcome.classify(errored=True, state={"status": "completed"}, last_epoch=3, planned=3) == "failed"
    assert outcome.classify(errored=False, state={"status": "stopped"}, last_epoch=1, planned=3,
                            done=True) == "stopped"
    assert outcome.classify(errored=False, state={"status": "completed"}, last_epoch=3, planned=3) == "finished"
    assert outcome.classify(errored=False, state=running, last_epoch=2, planned=2) == "finished"
    assert outcome.classify(errored=False, state=running, last_epoch=1, planned=3) == "interrupted"
    assert outcome.classify(errored=False, state=running, last_epoch=1, planned=3, study_running=True) == "running"
    assert outcome.planned_epochs({"train.epochs": 2}, 6) == 2 and outcome.planned_epochs({}, 6) == 6
    counts = outcome.count(["finished", "stopped", "stopped", "failed"])
    assert outcome.summary_line(counts) == "1 finished, 2 stopped early, 1 failed"


def test_record_stopped_keeps_history_and_a_revived_trial_gets_its_last_result(tmp_path: Path) -> None:
    history = [{"epoch": 1, METRIC: 0.1}, {"epoch": 2, METRIC: 0.2}]
    (tmp_path / "trial_state.json").write_text(json.dumps({"status": "running", "epoch": 2, "history": history,
                                                           "starts": [{"start_epoch": 1}]}))
    assert outcome.stopped_final_result(tmp_path) is None and not outcome.trial_ended(tmp_path)
    outcome.record_stopped(tmp_path, {"scheduler": "asha", "epoch": 2, "rung": 2, "cutoff": 0.3, "value": 0.2})
    state = json.loads((tmp_path / "trial_state.json").read_text())
    assert state["status"] == "stopped" and state["history"] == history and state["starts"] == [{"start_epoch": 1}]
    assert state["stopped_early"]["rung"] == 2 and outcome.trial_ended(tmp_path)
    assert outcome.stopped_final_result(tmp_path) == history[-1]
    assert outcome.describe_stop(state["stopped_early"]) == "asha rung 2 (cutoff 0.3, value 0.2)"
    assert not list(tmp_path.glob(".tmp-*")), "atomic write left its temp file"


def test_a_completed_trial_reports_its_last_result_only_when_every_planned_epoch_trained(tmp_path: Path) -> None:
    history = [{"epoch": 1, METRIC: 0.4}, {"epoch": 2, METRIC: 0.3}]
    state = tmp_path / "trial_state.json"
    assert outcome.completed_final_result(tmp_path, 2) is None  # no state yet: a fresh trial
    state.write_text(json.dumps({"status": "running", "history": history}))
    assert outcome.completed_final_result(tmp_path, 2) is None  # interrupted: a resume trains on
    state.write_text(json.dumps({"status": "completed", "history": history}))
    assert outcome.completed_final_result(tmp_path, 2) == history[-1]
    assert outcome.completed_final_result(tmp_path, 3) is None  # planned more epochs than it trained
    state.write_text(json.dumps({"status": "completed", "history": []}))
    assert outcome.completed_final_result(tmp_path, 2) is None


# --- the schedulers, driven like Tune drives them ----------------------------------------
def _trial(root: Path, trial_id: str, epochs: int | None = None) -> Any:
    trial_dir = root / f"train_trial_{trial_id}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "trial_state.json").write_text(json.dumps({"status": "running", "history": []}))
    config = {"train.epochs": epochs} if epochs else {}
    return SimpleNamespace(trial_id=trial_id, config=config,
                           storage=SimpleNamespace(trial_fs_path=str(trial_dir), experiment_fs_path=str(root)))


def _asha(max_epochs: int = 6, rf: float = 3) -> Any:
    sched = DurableASHAScheduler(max_epochs=max_epochs, time_attr="epoch", max_t=max_epochs, grace_period=1,
                                 reduction_factor=rf)
    assert sched.set_search_properties(METRIC, "max")
    return sched


def _report(sched: Any, trial: Any, epoch: int, score: float) -> str:
    decision: str = sched.on_trial_result(None, trial, {"epoch": epoch, METRIC: score})
    if decision == TrialScheduler.STOP:
        sched.on_trial_complete(None, trial, {"epoch": epoch, METRIC: score})
    return decision


def test_asha_stops_a_trial_below_the_rung_cutoff_and_records_why(tmp_path: Path) -> None:
    sched = _asha()
    a, b = _trial(tmp_path, "a"), _trial(tmp_path, "b")
    for t in (a, b):
        sched.on_trial_add(None, t)
    assert _report(sched, a, 1, 0.5) == TrialScheduler.CONTINUE  # alone at the rung: nothing to lose to
    assert _report(sched, b, 1, 0.1) == TrialScheduler.STOP
    state = outcome.read_trial_state(b.storage.trial_fs_path)
    assert state["status"] == "stopped" and state["epoch"] == 1
    rec = state["stopped_early"]
    assert (rec["scheduler"], rec["epoch"], rec["rung"], rec["value"]) == ("asha", 1, 1, 0.1)
    assert rec["cutoff"] == pytest.approx(0.5) and rec["planned_epochs"] == 6
    assert outcome.trial_outcome(a.storage.trial_fs_path) == "running"
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(saved["stopped"]) == {"b"} and saved["rungs"][0][-1] == [1, {"a": 0.5, "b": 0.1}]


def test_a_trial_that_reaches_its_planned_epochs_is_finished_not_stopped(tmp_path: Path) -> None:
    sched = _asha(max_epochs=6)
    best, short = _trial(tmp_path, "best"), _trial(tmp_path, "short", epochs=3)
    for t in (best, short):
        sched.on_trial_add(None, t)
    for epoch, score in ((1, 0.9), (2, 0.9), (3, 0.9)):
        _report(sched, best, epoch, score)
    _report(sched, short, 1, 0.95)
    _report(sched, short, 2, 0.95)
    # ASHA stops it at rung 3 (below the cutoff there), but 3 is all it was to train.
    assert _report(sched, short, 3, 0.1) == TrialScheduler.STOP
    assert outcome.trial_outcome(short.storage.trial_fs_path) == "running"  # the trainable writes completed
    assert "short" not in sched.stopped
    # Reaching max_t is Tune's STOP too: finished.
    for epoch in (4, 5, 6):
        _report(sched, best, epoch, 0.9)
    assert "best" not in sched.stopped


def test_asha_rungs_and_stops_survive_a_restore(tmp_path: Path) -> None:
    sched = _asha()
    trials = [_trial(tmp_path, t) for t in "abcd"]
    for t in trials:
        sched.on_trial_add(None, t)
    scores = {"a": 0.5, "b": 0.1, "c": 0.6}
    decisions = {t.trial_id: _report(sched, t, 1, scores[t.trial_id]) for t in trials[:3]}
    assert decisions == {"a": "CONTINUE", "b": "STOP", "c": "CONTINUE"}
    before = sched.rung_records()

    # What Tuner.restore does: the scheduler pickled in tuner.pkl at the start (empty rungs),
    # then on_trial_add for every restored trial.
    pristine = pickle.loads(pickle.dumps(_asha()))
    restored = pickle.loads(pickle.dumps(pristine))
    for t in trials:
        restored.on_trial_add(None, t)
    assert restored.rung_records() == before
    assert set(restored.stopped) == {"b"}
    # The stopped trial is never revived, whatever Tune's saved state says...
    assert _report(restored, trials[1], 1, 0.9) == TrialScheduler.STOP
    # ...and the next trial is judged against the restored rung (cutoff of 0.5, 0.1, 0.6).
    assert _report(restored, trials[3], 1, 0.3) == TrialScheduler.STOP
    assert restored.stopped["d"]["rung_size"] == 3


def test_a_stop_on_disk_wins_over_a_scheduler_that_never_saw_it(tmp_path: Path) -> None:
    # Killed after trial_state.json said stopped but before early_stopping.json was written.
    sched = _asha()
    t = _trial(tmp_path, "x")
    sched.on_trial_add(None, t)
    outcome.record_stopped(t.storage.trial_fs_path, {"scheduler": "asha", "epoch": 1})
    assert _report(sched, t, 1, 0.99) == TrialScheduler.STOP


def test_a_stopped_trial_replaying_its_epochs_is_stopped_at_the_epoch_it_was_stopped_at(tmp_path: Path) -> None:
    """A trial stopped at epoch 2 that Tune's saved state missed (only the trial journal named
    it) reports epochs 1 and 2 again after a restore: it goes on through epoch 1, whatever the
    rung now says, and is stopped at epoch 2, so Tune and Optuna end with the value it stopped at."""
    sched = _asha()
    t = _trial(tmp_path, "x")
    sched.on_trial_add(None, t)
    outcome.record_stopped(t.storage.trial_fs_path, {"scheduler": "asha", "epoch": 2})
    assert sched.on_trial_result(None, t, {"epoch": 1, METRIC: 0.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, t, {"epoch": 2, METRIC: 0.0}) == TrialScheduler.STOP
    assert all("x" not in records for _, records in sched.rung_records()), "a replayed epoch is not judged again"


def test_median_rule_stops_below_the_median_never_pauses_and_survives_a_restore(tmp_path: Path) -> None:
    def make() -> Any:
        s = DurableMedianStoppingRule(max_epochs=4, time_attr="epoch", grace_period=1, min_samples_required=2)
        assert s.set_search_properties(METRIC, "max")
        return s

    sched = make()
    trials = [_trial(tmp_path, t) for t in "abcde"]
    for t in trials:
        sched.on_trial_add(None, t)
    for t, score in zip(trials[:2], (0.5, 0.7), strict=True):
        for epoch in (1, 2, 3, 4):
            assert _report(sched, t, epoch, score) == TrialScheduler.CONTINUE  # too few samples: never PAUSE
    assert _report(sched, trials[2], 1, 0.2) == TrialScheduler.STOP
    rec = outcome.read_trial_state(trials[2].storage.trial_fs_path)["stopped_early"]
    assert (rec["scheduler"], rec["epoch"], rec["samples"]) == ("median", 1, 2)
    assert rec["median"] == pytest.approx(0.6) and rec["value"] == pytest.approx(0.2)

    restored = pickle.loads(pickle.dumps(make()))
    for t in trials:
        restored.on_trial_add(None, t)
    assert set(restored.stopped) == {"c"}
    assert _report(restored, trials[2], 1, 0.9) == TrialScheduler.STOP
    assert _report(restored, trials[3], 1, 0.65) == TrialScheduler.CONTINUE
    # A result re-reported after a restore is not counted twice.
    assert _report(restored, trials[3], 1, 0.65) == TrialScheduler.CONTINUE
    assert len(restored._results[next(k for k in restored._results if k.trial_id == "d")]) == 1
    assert _report(restored, trials[4], 1, 0.1) == TrialScheduler.STOP


def test_training_slot_reports_a_second_trial_in_the_same_process() -> None:
    with training_slot("one") as others:
        assert others == []
        with training_slot("two") as others_two:
            assert others_two == ["one"]
    with training_slot("three") as others:
        assert others == []


# --- readers: summary + exit code, progress, retention / cleanup ---------------------------
def test_summary_counts_stopped_trials_and_a_study_of_finished_and_stopped_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.experiment import Trial

    import tune_app.run as run_mod
    from tune_app.tuner import summarise

    cfg = compose([f"tune.storage_path={tmp_path}", "tune.num_samples=3", "tune.max_epochs=3"])
    dirs = [cfg.study_dir / n for n in ("t1", "t2", "t3")]
    for d, status in zip(dirs, ("completed", "stopped", "running"), strict=True):
        d.mkdir(parents=True)
        (d / "trial_state.json").write_text(json.dumps({"status": status}))
    results = [SimpleNamespace(path=str(dirs[0]), metrics={"epoch": 3, METRIC: 0.5, "trial_id": "t1"}, error=None,
                               config={}),
               # Tune marks a stopped trial's last result done, like a finished one: the state tells.
               SimpleNamespace(path=str(dirs[1]), metrics={"epoch": 1, METRIC: 0.2, "done": True, "trial_id": "t2"},
                               error=None, config={}),
               SimpleNamespace(path=str(dirs[2]), metrics={"epoch": 2, METRIC: 0.7, "done": True, "trial_id": "t3"},
                               error=None, config={"train.epochs": 2})]

    class Grid(list):  # type: ignore[type-arg]
        _experiment_analysis = SimpleNamespace(trials=[SimpleNamespace(status=Trial.TERMINATED, path=str(d))
                                                       for d in dirs])

    grid = Grid(results)
    out = summarise(grid, cfg)
    assert (out.terminated, out.stopped, out.errored, out.complete, out.interrupted) == (2, 1, 0, True, False)
    assert out.counts_line == "2 finished, 1 stopped early, 0 failed"
    monkeypatch.setattr(run_mod, "_evaluate_on_finish", lambda study_dir: 0)
    assert run_mod._report(out, cfg) == 0
    printed = capsys.readouterr().out
    assert "Study complete: 3/3 trials (2 finished, 1 stopped early, 0 failed)" in printed
    assert "best trial t3: val_macro_f1 0.7 (epoch 2)" in printed and "mlflow ui --backend-store-uri" in printed


def test_progress_counts_stopped_trials_and_their_shorter_durations_feed_the_eta(tmp_path: Path) -> None:
    from tune_app.tracking.progress import study_progress

    def trial(tid: str, status: str, seconds: float, stopped: bool) -> Any:
        t = _trial(tmp_path, tid)
        if stopped:
            outcome.record_stopped(t.storage.trial_fs_path, {"scheduler": "asha", "epoch": 1})
        t.status, t.last_result = status, {"time_total_s": seconds}
        t.metric_analysis = {METRIC: {"max": 0.5}}
        return t

    trials = [trial("a", "TERMINATED", 30.0, False), trial("b", "TERMINATED", 10.0, True),
              trial("c", "TERMINATED", 10.0, True), trial("d", "RUNNING", 5.0, False)]
    p = study_progress(trials, 10, METRIC)
    assert (p.done, p.stopped) == (3, 2)
    assert p.mean_trial_s == pytest.approx(50 / 3) and p.eta_s == pytest.approx(50 / 3 * 7)
    assert p.line.startswith("Trial 3/10 (30.0%) | 2 stopped early | best val_macro_f1 0.5 (trial 1)")
    assert p.as_tags()["tune_app.progress.stopped"] == "2"


def test_retention_and_cleanup_treat_a_stopped_trial_as_ended(tmp_path: Path) -> None:
    import torch

    from tune_app.checkpoints.cleanup_scan import scan_study
    from tune_app.checkpoints.retention import RetentionPolicy
    from tune_app.checkpoints.store import save_checkpoint

    def ckpt(trial: Path, index: int, score: float) -> Path:
        path = trial / f"checkpoint_{index:06d}"
        save_checkpoint(path, model_state={"w": torch.zeros(8)},
                        trainer_state={"epoch": index + 1, "metrics": {METRIC: score}}, compat={})
        return path

    study = tmp_path / "study"
    best, stopped = study / "best", study / "stopped"
    keep = ckpt(best, 0, 0.9)
    (best / "trial_state.json").write_text(json.dumps({"status": "completed"}))
    s0, s1 = ckpt(stopped, 0, 0.3), ckpt(stopped, 1, 0.2)
    (stopped / "trial_state.json").write_text(json.dumps({"status": "running"}))
    policy = RetentionPolicy(keep_last_n=1, keep_best_k=1)
    running = scan_study(study, metric=METRIC, policy=policy)
    assert s1 in running.protected, "a running trial keeps its newest checkpoint (its resume point)"
    outcome.record_stopped(stopped, {"scheduler": "asha", "epoch": 2})
    assert outcome.trial_ended(stopped)
    ended = scan_study(study, metric=METRIC, policy=policy)
    assert {c.path for c in ended.candidates} == {s0, s1} and ended.protected == [keep]
