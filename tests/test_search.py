"""The searcher (tune_app.search) without Ray running: what Optuna is told about each trial."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tune_app.search import EarlyStopAwareOptunaSearch

METRIC = "val_macro_f1"
MAX_EPOCHS = 6


def _space(trial: Any) -> None:
    trial.suggest_float("train.lr", 1e-3, 1e-2, log=True)


def _space_with_epochs(trial: Any) -> None:
    trial.suggest_float("train.lr", 1e-3, 1e-2, log=True)
    trial.suggest_int("train.epochs", 3, 3)  # every trial plans 3 epochs of the study's 6


def _searcher(space: Any = _space) -> EarlyStopAwareOptunaSearch:
    return EarlyStopAwareOptunaSearch(space=space, metric=METRIC, mode="max", max_epochs=MAX_EPOCHS,
                                      sampler=optuna.samplers.RandomSampler(seed=0))


def _run(search: EarlyStopAwareOptunaSearch, trial_id: str, scores: list[float], *,
         stopped: bool = False) -> dict[str, Any]:
    """Suggest ``trial_id`` and feed its epochs' results as Tune does; returns the last result.

    Tune passes every result to ``on_trial_result`` except the one the scheduler stops the
    trial on (``stopped``), then calls ``on_trial_complete`` with the last result.
    """
    assert search.suggest(trial_id) is not None
    result: dict[str, Any] = {}
    for epoch, score in enumerate(scores, start=1):
        # training_iteration counts reports: a resumed trial's catch-up makes it differ from the epoch
        result = {"epoch": epoch, METRIC: score, "training_iteration": epoch + 10}
        if not (stopped and epoch == len(scores)):
            search.on_trial_result(trial_id, result)
    return result


def _frozen(search: EarlyStopAwareOptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial:
    number = search._ot_trials[trial_id].number
    return next(t for t in search._ot_study.get_trials(deepcopy=False) if t.number == number)


def test_a_stopped_trial_is_pruned_with_the_value_of_the_epoch_it_stopped_at() -> None:
    search = _searcher()
    last = _run(search, "stopped", [0.2, 0.3], stopped=True)
    search.on_trial_complete("stopped", result=last)
    trial = _frozen(search, "stopped")
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.2, 2: 0.3}  # steps are epochs, the stopping result included
    assert trial.value == pytest.approx(0.3)
    # Stopped at epoch 1 (grace_period 1): its only value still reaches Optuna.
    last = _run(search, "first", [0.1], stopped=True)
    search.on_trial_complete("first", result=last)
    assert (_frozen(search, "first").state, _frozen(search, "first").intermediate_values) == \
        (TrialState.PRUNED, {1: 0.1})


def test_a_finished_trial_is_complete_and_an_errored_one_failed() -> None:
    search = _searcher()
    for trial_id, at_max_t in (("done", False), ("asha_done", True)):  # ASHA stops a trial at max_t too
        last = _run(search, trial_id, [0.2, 0.3, 0.4, 0.5, 0.6, 0.55], stopped=at_max_t)
        search.on_trial_complete(trial_id, result=last)
        done = _frozen(search, trial_id)
        assert (done.state, done.value, sorted(done.intermediate_values)) == \
            (TrialState.COMPLETE, 0.55, [1, 2, 3, 4, 5, 6])

    _run(search, "broken", [0.2, 0.3])
    search.on_trial_complete("broken", error=True)
    assert _frozen(search, "broken").state == TrialState.FAIL
    _run(search, "broken_with_result", [0.2])
    search.on_trial_complete("broken_with_result", result={"epoch": 1, METRIC: 0.2}, error=True)
    assert _frozen(search, "broken_with_result").state == TrialState.FAIL
    # A second completion (e.g. after a restore) changes nothing.
    search.on_trial_complete("done", result={"epoch": 1, METRIC: 0.1})
    assert _frozen(search, "done").state == TrialState.COMPLETE


def test_planned_epochs_are_the_trials_own_train_epochs() -> None:
    search = _searcher(_space_with_epochs)
    last = _run(search, "short", [0.2, 0.3, 0.4])  # 3 of its 3 planned epochs (max_epochs is 6)
    search.on_trial_complete("short", result=last)
    assert _frozen(search, "short").state == TrialState.COMPLETE
    last = _run(search, "cut", [0.2, 0.3], stopped=True)
    search.on_trial_complete("cut", result=last)
    assert _frozen(search, "cut").state == TrialState.PRUNED


def test_the_searcher_survives_tunes_save_and_restore(tmp_path: Path) -> None:
    search = _searcher()
    _run(search, "running", [0.2])
    search.save_to_dir(str(tmp_path), "s")
    restored = pickle.loads(pickle.dumps(_searcher()))  # Tuner.restore unpickles the searcher, then its state
    restored.restore_from_dir(str(tmp_path))
    assert isinstance(restored, EarlyStopAwareOptunaSearch) and restored._max_epochs == MAX_EPOCHS
    last = {"epoch": 2, METRIC: 0.35}
    restored.on_trial_complete("running", result=last)
    assert _frozen(restored, "running").state == TrialState.PRUNED
    assert _frozen(restored, "running").intermediate_values == {1: 0.2, 2: 0.35}


def test_the_saved_searcher_leaves_out_told_trials_handles(tmp_path: Path) -> None:
    """Tune pickles the searcher at every sync: a finished trial's handle is not carried along,
    and a late result or completion for it (after a restore) is ignored, not a KeyError."""
    search = _searcher()
    for i in range(20):
        search.on_trial_complete(f"t{i}", result=_run(search, f"t{i}", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    _run(search, "running", [0.2])
    search.save_to_dir(str(tmp_path), "s")
    restored = pickle.loads(pickle.dumps(_searcher()))
    restored.restore_from_dir(str(tmp_path))
    assert set(restored._ot_trials) == {"running"}
    assert {t.user_attrs["tune_trial_id"] for t in restored._ot_study.trials} == {f"t{i}" for i in range(20)} | \
        {"running"}, "each Optuna trial names its Tune trial"
    assert len(restored._ot_study.trials) == 21, "every trial stays in the Optuna study"
    restored.on_trial_result("t3", {"epoch": 7, METRIC: 0.9, "training_iteration": 7})
    restored.on_trial_complete("t3", result={"epoch": 7, METRIC: 0.9})
    assert _frozen_number(restored, 3).value == pytest.approx(0.7)
    restored.on_trial_complete("running", result={"epoch": 6, METRIC: 0.5})
    assert _frozen(restored, "running").state == TrialState.COMPLETE
    full = len(pickle.dumps({**search.__dict__}))
    assert len(next(tmp_path.glob("searcher-state-*.pkl")).read_bytes()) < 0.75 * full


def _frozen_number(search: EarlyStopAwareOptunaSearch, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in search._ot_study.get_trials(deepcopy=False) if t.number == number)
