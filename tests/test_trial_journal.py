"""The trial journal (issue 11 item 3): one durable line per added trial, read back in order,
and a searcher that adopts journaled trials goes on exactly as if never interrupted."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter

from tune_app import state_sync, trial_journal
from tune_app.checkpoints import resume
from tune_app.checkpoints.resume import epochs_tune_missed
from tune_app.search import EarlyStopAwareOptunaSearch
from tune_app.trial_journal import JournaledTrial

METRIC = "val_macro_f1"


def _record(trial_id: str, counter: int = 1) -> JournaledTrial:
    state = json.dumps({"trial_id": trial_id, "status": "PENDING"})
    return JournaledTrial(trial_id=trial_id, tune_entry=(state, "{}"), searcher={"counter": counter})


def test_appended_trials_read_back_in_order_and_clear_removes_them(tmp_path: Path) -> None:
    for i in range(3):
        trial_journal.append(tmp_path, _record(f"t{i}", i + 1))
    assert [r.trial_id for r in trial_journal.read(tmp_path)] == ["t0", "t1", "t2"]
    assert trial_journal.read(tmp_path)[1] == _record("t1", 2)
    trial_journal.clear(tmp_path)
    assert trial_journal.read(tmp_path) == [] and not trial_journal.journal_path(tmp_path).exists()
    trial_journal.clear(tmp_path)  # nothing there: no error


def test_a_torn_last_line_is_skipped_and_the_lines_before_it_kept(tmp_path: Path) -> None:
    trial_journal.append(tmp_path, _record("t0"))
    trial_journal.append(tmp_path, _record("t1"))
    path = trial_journal.journal_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # a kill in the middle of the second write
    assert [r.trial_id for r in trial_journal.read(tmp_path)] == ["t0"]


def test_merge_adds_only_the_journaled_trials_tunes_state_lacks_once_each() -> None:
    saved = [_record("a").tune_entry, _record("b").tune_entry]
    journal = [_record("b"), _record("c"), _record("d"), _record("c")]
    assert [r.trial_id for r in state_sync.merge_journal(saved, journal)] == ["c", "d"]


def _space(trial: Any) -> None:
    trial.suggest_float("train.lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("model.criteria_head", ["linear", "mlp"])


def _searcher() -> EarlyStopAwareOptunaSearch:
    sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=2)
    return EarlyStopAwareOptunaSearch(space=_space, metric=METRIC, mode="max", max_epochs=2, sampler=sampler)


def _study(search: EarlyStopAwareOptunaSearch) -> optuna.Study:
    assert search._ot_study is not None
    return search._ot_study


def _finish(search: EarlyStopAwareOptunaSearch, trial_id: str, score: float) -> None:
    search.on_trial_result(trial_id, {"epoch": 1, METRIC: score / 2, "training_iteration": 1})
    search.on_trial_complete(trial_id, result={"epoch": 2, METRIC: score})


def test_a_restored_searcher_that_adopts_the_journaled_trials_samples_what_the_uninterrupted_one_does(
        tmp_path: Path) -> None:
    """Saved after trial 3; trials 4-6 only journaled (5 finished, 6 running at the kill). After
    the restore and adoption, every trial has its number, params and attributes, the finished
    ones are told again, and the next suggestions equal the uninterrupted searcher's."""
    search = _searcher()
    for i in range(3):
        search.suggest(f"t{i}")
        _finish(search, f"t{i}", 0.1 * i)
    search.save_to_dir(str(tmp_path), "s")
    journal = []
    for i in range(3, 6):
        search.suggest(f"t{i}")
        journal.append((f"t{i}", search.journal_entry(f"t{i}")))
        if i < 5:
            _finish(search, f"t{i}", 0.1 * i)
    assert search.journal_entry("never-sampled") is None

    restored = pickle.loads(pickle.dumps(_searcher()))
    restored.restore_from_dir(str(tmp_path))
    for trial_id, entry in journal:
        assert entry is not None and restored.adopt(trial_id, json.loads(json.dumps(entry)))
        assert not restored.adopt(trial_id, entry), "adopting twice changes nothing"
    for i in range(3, 5):  # the resumed trials report their epochs again
        _finish(restored, f"t{i}", 0.1 * i)
    _finish(restored, "t5", 0.5)
    _finish(search, "t5", 0.5)
    for i in range(6, 10):
        assert restored.suggest(f"t{i}") == search.suggest(f"t{i}"), f"trial {i}"
        _finish(search, f"t{i}", 0.05 * i)
        _finish(restored, f"t{i}", 0.05 * i)

    def frozen(s: EarlyStopAwareOptunaSearch) -> list[tuple[Any, ...]]:
        return [(t.number, t.params, t.state, t.value, t.intermediate_values, t.user_attrs)
                for t in _study(s).get_trials(deepcopy=False)]

    assert frozen(restored) == frozen(search)


def test_the_searcher_chain_adopts_counter_and_live_trial(tmp_path: Path) -> None:
    search = _searcher()
    limiter = ConcurrencyLimiter(search, max_concurrent=1)
    limiter.set_search_properties(METRIC, "max", {})
    assert limiter.suggest("t0") is not None
    entry = search.journal_entry("t0")
    assert entry is not None

    class Generator:  # Tune's SearchGenerator: what adoption touches
        def __init__(self) -> None:
            self.searcher, self._counter = limiter_restored, 0

    restored = _searcher()
    limiter_restored = ConcurrencyLimiter(restored, max_concurrent=1)
    limiter_restored.set_search_properties(METRIC, "max", {})
    generator = Generator()
    record = JournaledTrial("t0", _record("t0").tune_entry, {**entry, "counter": 1})
    state_sync.adopt_journaled_trials(generator, [record])
    assert generator._counter == 1, "num_samples still counts the trial"
    assert limiter_restored.live_trials == {"t0"}, "no second trial is suggested while it runs"
    assert limiter_restored.suggest("t1") is None
    limiter_restored.on_trial_complete("t0", result={"epoch": 2, METRIC: 0.3})
    assert _study(restored).trials[0].value == 0.3, "its completion reaches Optuna through the limiter"


def test_a_finished_trial_tune_missed_reports_the_epochs_after_tunes_checkpoint(tmp_path: Path,
                                                                              monkeypatch: Any) -> None:
    history = [{"epoch": e, METRIC: 0.1 * e} for e in (1, 2, 3)]
    (tmp_path / "trial_state.json").write_text(json.dumps({"status": "completed", "history": history}))
    assert epochs_tune_missed(tmp_path, None) == history, "a trial only the journal named: every epoch"
    assert epochs_tune_missed(tmp_path, tmp_path / "checkpoint_000000") == history, "unreadable: every epoch"
    monkeypatch.setattr(resume, "read_trainer_state", lambda path: {"epoch": 2})
    assert epochs_tune_missed(tmp_path, tmp_path / "checkpoint_000001") == history[2:]
    monkeypatch.setattr(resume, "read_trainer_state", lambda path: {"epoch": 3})
    assert epochs_tune_missed(tmp_path, tmp_path / "checkpoint_000002") == history[2:], \
        "Tune holds every epoch: the final result is reported again (the trial must end)"


class _Controller:
    """What ``journal_new_trial`` reads of Tune's controller."""

    def __init__(self, study: Path) -> None:
        from types import SimpleNamespace

        from tune_app.atomic_fs import atomic_storage_filesystem

        self._storage = SimpleNamespace(experiment_fs_path=str(study), storage_filesystem=atomic_storage_filesystem())
        searcher = SimpleNamespace(journal_entry=lambda trial_id: {"optuna_trial": "x", "sampler": "y"})
        self._search_alg = SimpleNamespace(searcher=searcher, _counter=7)


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def get_json_state(self) -> tuple[str, str]:
        return json.dumps({"trial_id": self.trial_id}), "{}"


def test_a_new_trial_is_journaled_only_after_a_full_save_and_at_most_the_cap_between_two(tmp_path: Path) -> None:
    controller = _Controller(tmp_path)
    assert not state_sync.journal_new_trial(controller, _Trial("first")), \
        "the first trial of a start gets a full save (no state of this start yet)"
    state_sync._journaled_since_save[controller] = 0  # what a full save into the study records
    for i in range(state_sync.JOURNAL_MAX_TRIALS):
        assert state_sync.journal_new_trial(controller, _Trial(f"t{i}"))
    assert not state_sync.journal_new_trial(controller, _Trial("over")), "past the cap: a full save"
    records = trial_journal.read(tmp_path)
    assert [r.trial_id for r in records] == [f"t{i}" for i in range(state_sync.JOURNAL_MAX_TRIALS)]
    assert records[0].searcher == {"optuna_trial": "x", "sampler": "y", "counter": 7}
    assert json.loads(records[0].tune_entry[0]) == {"trial_id": "t0"}
