"""The study's Optuna DB (tune_app.optuna_store) without Ray: the searcher as Tune drives it, saves included."""

from __future__ import annotations

import logging
import pickle
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tune_app import optuna_store
from tune_app.optuna_store import DB_FILE, OptunaMirror, load_optuna_study, sync_from_saved_state
from tune_app.search import EarlyStopAwareOptunaSearch

METRIC = "val_macro_f1"
NAME = "unit_study"


def _space(trial: Any) -> None:
    trial.suggest_float("train.lr", 1e-3, 1e-2, log=True)
    trial.suggest_categorical("train.batch_size", [8, 16])


def _searcher() -> EarlyStopAwareOptunaSearch:
    return EarlyStopAwareOptunaSearch(space=_space, metric=METRIC, mode="max", max_epochs=3, study_name=NAME,
                                      sampler=optuna.samplers.RandomSampler(seed=0))


def _epochs(search: EarlyStopAwareOptunaSearch, trial_id: str, scores: list[float], first: int = 1) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for epoch, score in enumerate(scores, start=first):
        result = {"epoch": epoch, METRIC: score, "training_iteration": epoch}
        search.on_trial_result(trial_id, result)
    return result


def _save(search: EarlyStopAwareOptunaSearch, study: Path) -> None:
    """What Tune's state save does now: the searcher's pickle into the study, then the DB."""
    search.save_to_dir(str(study), "s")
    assert search.sync_optuna_db(study)


def _restore(study: Path) -> EarlyStopAwareOptunaSearch:
    """What ``Tuner.restore`` does: the searcher of tuner.pkl, then its saved state."""
    restored = pickle.loads(pickle.dumps(_searcher()))
    restored.restore_from_dir(str(study))
    return restored


def _fresh_mirrors() -> None:
    """A new process: no mirror open (each test's DB is new, but say it anyway)."""
    for mirror in optuna_store._MIRRORS.values():
        mirror.close()
    optuna_store._MIRRORS.clear()


@pytest.fixture(autouse=True)
def _isolated() -> Any:
    _fresh_mirrors()
    yield
    _fresh_mirrors()


def _db(study: Path) -> list[optuna.trial.FrozenTrial]:
    loaded = load_optuna_study(study)
    assert loaded is not None, f"no readable Optuna study in {study}"
    assert loaded.study_name == NAME
    return loaded.get_trials(deepcopy=False)


def _assert_mirrors(search: EarlyStopAwareOptunaSearch, study: Path) -> None:
    """The DB holds exactly the searcher's Optuna trials: once each, same fields."""
    held = _db(study)
    memory = search._ot_study.get_trials(deepcopy=False)
    assert [t.number for t in held] == [t.number for t in memory]
    for d, m in zip(held, memory, strict=True):
        assert (d.state, d.values, d.params, d.distributions, d.user_attrs, d.intermediate_values) == \
            (m.state, m.values, m.params, m.distributions, m.user_attrs, m.intermediate_values), d.number


def test_suggest_report_tell_reach_the_db_at_each_save(tmp_path: Path) -> None:
    search = _searcher()
    assert search.suggest("t0") is not None
    _save(search, tmp_path)  # Tune saves when a trial is added
    (running,) = _db(tmp_path)
    assert running.state == TrialState.RUNNING and running.user_attrs["tune_trial_id"] == "t0"
    assert set(running.params) == {"train.lr", "train.batch_size"} and set(running.distributions) == set(running.params)
    _epochs(search, "t0", [0.2, 0.4])
    _save(search, tmp_path)  # a periodic save while it trains
    assert _db(tmp_path)[0].intermediate_values == {1: 0.2, 2: 0.4}
    search.on_trial_complete("t0", result=_epochs(search, "t0", [0.3], first=3))  # planned 3 epochs: COMPLETE
    assert search.suggest("t1") is not None
    search.on_trial_complete("t1", result=_epochs(search, "t1", [0.1]))  # stopped at epoch 1 of 3: PRUNED
    assert search.suggest("t2") is not None
    search.on_trial_complete("t2", error=True)
    _save(search, tmp_path)
    t0, t1, t2 = _db(tmp_path)
    # COMPLETE carries the last result's metric (as Ray's OptunaSearch tells it), not the best epoch.
    assert (t0.state, t0.value, t0.intermediate_values) == (TrialState.COMPLETE, 0.3, {1: 0.2, 2: 0.4, 3: 0.3})
    assert (t1.state, t1.value, t1.intermediate_values) == (TrialState.PRUNED, 0.1, {1: 0.1})
    assert (t2.state, t2.value) == (TrialState.FAIL, None)
    _assert_mirrors(search, tmp_path)


def test_a_trial_told_again_after_a_restore_updates_its_row(tmp_path: Path) -> None:
    search = _searcher()
    search.suggest("t0")
    _epochs(search, "t0", [0.2])
    _save(search, tmp_path)  # the last save before the kill: t0 running at epoch 1
    search.on_trial_complete("t0", result=_epochs(search, "t0", [0.5, 0.9], first=2))
    search.suggest("t1")  # told and sampled after the last save: lost with the kill
    _fresh_mirrors()  # a new process resumes
    restored = _restore(tmp_path)
    assert sync_from_saved_state(tmp_path)  # restore_tuner
    _assert_mirrors(restored, tmp_path)
    # Tune resumes t0; it reports its epochs again and ends with another last value.
    restored.on_trial_complete("t0", result=_epochs(restored, "t0", [0.6, 0.7], first=2))
    restored.suggest("t1b")
    _save(restored, tmp_path)
    held = _db(tmp_path)
    assert [t.user_attrs["tune_trial_id"] for t in held] == ["t0", "t1b"], "t0 once, t1 never"
    assert (held[0].state, held[0].value) == (TrialState.COMPLETE, 0.7)
    _assert_mirrors(restored, tmp_path)


def test_a_db_with_a_trial_the_restored_study_lacks_is_rebuilt(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    search = _searcher()
    for i in range(3):
        search.suggest(f"t{i}")
        if i < 2:
            search.on_trial_complete(f"t{i}", result=_epochs(search, f"t{i}", [0.1 * i, 0.2, 0.3]))
    _epochs(search, "t2", [0.1])
    _save(search, tmp_path)  # t2 running
    # Written to the DB ahead of Tune's saved state (the harness never does; another writer could):
    # t2's tell and a trial sampled after the save.
    search.on_trial_complete("t2", result=_epochs(search, "t2", [0.2, 0.3], first=2))
    search.suggest("orphan")
    assert optuna_store.mirror_study(tmp_path, search._ot_study)
    assert [t.state for t in _db(tmp_path)][2:] == [TrialState.COMPLETE, TrialState.RUNNING]
    _fresh_mirrors()
    restored = _restore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tune_app.optuna_store"):
        assert sync_from_saved_state(tmp_path)
    assert "rebuilding it" in caplog.text
    _assert_mirrors(restored, tmp_path)
    assert not list(tmp_path.glob(".optuna.db.tmp-*")), "the scratch DB is gone"
    restored.on_trial_complete("t2", result=_epochs(restored, "t2", [0.2, 0.25], first=2))
    _save(restored, tmp_path)
    assert [t.user_attrs["tune_trial_id"] for t in _db(tmp_path)] == ["t0", "t1", "t2"]
    assert _db(tmp_path)[2].value == 0.25
    _assert_mirrors(restored, tmp_path)


def test_a_db_missing_trials_and_tells_catches_up(tmp_path: Path) -> None:
    search = _searcher()
    search.suggest("t0")
    _save(search, tmp_path)
    for i in range(1, 4):  # tells and trials the DB never got (its writes failed, say)
        search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i - 1}", result=_epochs(search, f"t{i - 1}", [0.1, 0.2, 0.3]))
    search.save_to_dir(str(tmp_path), "s")
    _fresh_mirrors()
    assert sync_from_saved_state(tmp_path)
    _assert_mirrors(_restore(tmp_path), tmp_path)


def test_a_write_failure_is_a_warning_and_the_db_catches_up_later(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna_store, "BUSY_TIMEOUT_S", 0.1)
    monkeypatch.setattr(optuna_store, "RETRY_AFTER_S", 0.0)
    search = _searcher()
    search.suggest("t0")
    _save(search, tmp_path)
    search.on_trial_complete("t0", result=_epochs(search, "t0", [0.1, 0.2, 0.3]))
    search.suggest("t1")
    blocker = sqlite3.connect(tmp_path / DB_FILE)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the DB (or the disk is full)
    with caplog.at_level(logging.WARNING, logger="tune_app.optuna_store"):
        search.save_to_dir(str(tmp_path), "s")
        assert search.sync_optuna_db(tmp_path) is False  # no exception: the study goes on
        assert search.sync_optuna_db(tmp_path) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not write the Optuna study DB" in warnings[0].getMessage()
    blocker.rollback()
    blocker.close()
    assert search.sync_optuna_db(tmp_path)
    _assert_mirrors(search, tmp_path)


def test_a_corrupt_db_is_rebuilt(tmp_path: Path) -> None:
    search = _searcher()
    search.suggest("t0")
    search.on_trial_complete("t0", result=_epochs(search, "t0", [0.1, 0.2, 0.3]))
    search.save_to_dir(str(tmp_path), "s")
    (tmp_path / DB_FILE).write_bytes(b"not a database" * 100)
    assert load_optuna_study(tmp_path) is None
    assert sync_from_saved_state(tmp_path)
    _assert_mirrors(search, tmp_path)


def test_the_db_follows_a_moved_study_and_nothing_is_pickled_with_the_searcher(tmp_path: Path) -> None:
    first = tmp_path / "first" / "study"
    first.mkdir(parents=True)
    search = _searcher()
    search.suggest("t0")
    _save(search, first)
    tuner_pkl = pickle.dumps(search)  # Tune pickles the searcher into tuner.pkl as well
    assert b"sqlite" not in tuner_pkl and b"sqlite" not in next(first.glob("searcher-state-*.pkl")).read_bytes()
    moved = tmp_path / "second" / "study"
    moved.parent.mkdir()
    shutil.move(str(first), moved)
    _fresh_mirrors()
    restored = pickle.loads(tuner_pkl)
    restored.restore_from_dir(str(moved))
    restored.on_trial_complete("t0", result=_epochs(restored, "t0", [0.1, 0.2, 0.3]))
    _save(restored, moved)
    assert not first.exists(), "nothing written at the old place"
    _assert_mirrors(restored, moved)


def test_load_optuna_study_of_a_study_without_a_db_is_none_and_creates_nothing(tmp_path: Path) -> None:
    assert load_optuna_study(tmp_path) is None
    assert not (tmp_path / DB_FILE).exists()
    assert sync_from_saved_state(tmp_path) is False  # no searcher state saved: nothing to mirror
    assert not (tmp_path / DB_FILE).exists()


def test_a_study_started_before_the_db_existed_is_named_after_its_folder(tmp_path: Path) -> None:
    legacy = EarlyStopAwareOptunaSearch(space=_space, metric=METRIC, mode="max", max_epochs=3,
                                        sampler=optuna.samplers.RandomSampler(seed=0))  # Ray's name: "optuna"
    legacy.suggest("t0")
    study = tmp_path / "old_study"
    study.mkdir()
    assert legacy.sync_optuna_db(study)
    loaded = load_optuna_study(study)
    assert loaded is not None and loaded.study_name == "old_study" and len(loaded.trials) == 1


def test_each_save_writes_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    search = _searcher()
    for i in range(5):
        search.suggest(f"t{i}")
        search.on_trial_complete(f"t{i}", result=_epochs(search, f"t{i}", [0.1, 0.2, 0.3]))
    _save(search, tmp_path)
    search.suggest("t5")
    calls: list[str] = []
    mirror = next(iter(optuna_store._MIRRORS.values()))
    assert isinstance(mirror, OptunaMirror)
    real = mirror._storage

    def counted(name: str) -> Any:
        original = getattr(real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)
        return call

    for name in ("create_new_trial", "set_trial_intermediate_value", "set_trial_state_values", "set_trial_user_attr"):
        monkeypatch.setattr(real, name, counted(name))
    _save(search, tmp_path)
    assert calls == ["create_new_trial"]
    calls.clear()
    _epochs(search, "t5", [0.4])
    _save(search, tmp_path)
    _save(search, tmp_path)  # nothing changed: nothing written
    assert calls == ["set_trial_intermediate_value"]
    _assert_mirrors(search, tmp_path)


def test_tunes_state_save_reaches_the_searcher_through_tunes_wrappers(tmp_path: Path) -> None:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from tune_app.state_sync import sync_optuna_db

    search = _searcher()
    search.suggest("t0")
    wrapped = SearchGenerator(ConcurrencyLimiter(search, max_concurrent=1))  # what tune.run makes of it
    sync_optuna_db(wrapped, tmp_path)
    _assert_mirrors(search, tmp_path)
