"""The study run is the parent of its trial runs in one experiment, across restores and outages.

The callback runs against a real sqlite store, driven the way Tune drives it (setup, trial
start, results, trial end, experiment end), with stand-in trials.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tune_app.seeds import trial_seed_for
from tune_app.tracking.buffer import PARENT_RUN_TAG, reset_store_cache
from tune_app.tracking.experiment import ARTIFACTS_DIR, artifact_location, folder_name
from tune_app.tracking.mlflow_callback import (
    KIND_TAG,
    SEED_PARAM,
    SEED_TAG,
    TRIAL_ID_TAG,
    ResumableMLflowLoggerCallback,
)
from tune_app.tracking.study_run import (
    BEST_EPOCH_TAG,
    BEST_SCORE_TAG,
    BEST_TRIAL_TAG,
    FAILED_TAG,
    FINISHED_TAG,
    PLANNED_TAG,
    STOPPED_TAG,
)

STUDY = "nest"


@dataclass(eq=False)
class FakeTrial:
    trial_id: str
    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Any:
        return SimpleNamespace(trial_fs_path=str(self.folder))

    def __str__(self) -> str:
        return f"train_trial_{self.trial_id}"

    def write_state(self, status: str, scores: list[float], **extra: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        history = [{"epoch": i, "val_macro_f1": s} for i, s in enumerate(scores, start=1)]
        (self.folder / "trial_state.json").write_text(json.dumps({"status": status, "history": history, **extra}))


def callback(tmp_path: Path, uri: str, **kw: Any) -> ResumableMLflowLoggerCallback:
    return ResumableMLflowLoggerCallback(
        tracking_uri=uri, experiment_name=STUDY, study_name=STUDY, study_dir=tmp_path / STUDY,
        extra_tags={"tune_app.seed": "0"}, close_timeout_s=20, backoff_initial_s=0.05, backoff_max_s=0.2,
        metric="val_macro_f1", num_samples=3, study_seed=0, seed_policy="per_trial",
        study_params={"num_samples": 3, "searchspace": "small"}, **kw)


def train(cb: ResumableMLflowLoggerCallback, trial: FakeTrial, trials: list[FakeTrial], scores: list[float],
          *, first_epoch: int = 1, status: str = "completed", failed: bool = False, **state: Any) -> None:
    """What Tune calls for a trial that reports ``scores`` (epochs ``first_epoch``...) and ends."""
    cb.log_trial_start(trial)
    for epoch, score in enumerate(scores[first_epoch - 1:], start=first_epoch):
        trial.last_result = {"epoch": epoch, "val_macro_f1": score}
        cb.log_trial_result(epoch, trial, trial.last_result)
    trial.write_state(status, scores, **state)
    if failed:
        cb.on_trial_error(0, trials, trial)
        trial.status = "ERROR"
    else:
        cb.on_trial_complete(0, trials, trial)
        trial.status = "TERMINATED"


def runs_of(uri: str) -> tuple[Any, list[Any], Any]:
    """(study run, trial runs, client) of the study's experiment; exactly one study run."""
    from mlflow.tracking import MlflowClient

    reset_store_cache()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    studies = [r for r in runs if r.data.tags.get(KIND_TAG) == "study"]
    assert len(studies) == 1, [r.data.tags for r in runs]
    return studies[0], [r for r in runs if r.data.tags.get(KIND_TAG) == "trial"], client


def steps(client: Any, run: Any, key: str = "val_macro_f1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_study_run_is_the_parent_and_is_found_again_after_a_restore(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    a = FakeTrial("aaa", tmp_path / STUDY / "trial_a", {"train.lr": 0.01})
    b = FakeTrial("bbb", tmp_path / STUDY / "trial_b", {"train.lr": 0.02})
    c = FakeTrial("ccc", tmp_path / STUDY / "trial_c", {"train.lr": 0.03})
    cb = callback(tmp_path, uri)
    cb.setup()
    train(cb, a, [a], [0.4, 0.6])
    cb.log_trial_start(b)  # interrupted (a kill) after its first epoch
    b.last_result = {"epoch": 1, "val_macro_f1": 0.5}
    cb.log_trial_result(1, b, b.last_result)
    assert cb.writer.flush(20)
    cb.writer.close(5)  # the driver dies: no experiment end

    # A resumed process: the callback comes back from tuner.pkl.
    again = pickle.loads(pickle.dumps(cb))
    again.setup()
    b.status = "RUNNING"
    train(again, b, [a, b, c], [0.5, 0.9], first_epoch=1)  # Tune reports epoch 1 again: skipped
    train(again, c, [a, b, c], [0.1], status="stopped", failed=True)
    again.on_experiment_end([a, b, c])

    study, trials, client = runs_of(uri)
    assert len(trials) == 3 and {r.data.tags[TRIAL_ID_TAG] for r in trials} == {"aaa", "bbb", "ccc"}
    for run in trials:
        assert run.data.tags[PARENT_RUN_TAG] == study.info.run_id
        assert run.info.experiment_id == study.info.experiment_id
    by_id = {r.data.tags[TRIAL_ID_TAG]: r for r in trials}
    assert steps(client, by_id["bbb"]) == [1, 2], "no step twice after the restore"
    for trial in (a, b, c):  # the seed the trainable derives (per_trial), not the study's 0
        seed = str(trial_seed_for(0, "per_trial", trial.config))
        assert seed != "0"
        assert by_id[trial.trial_id].data.tags[SEED_TAG] == seed
        assert by_id[trial.trial_id].data.params[SEED_PARAM] == seed
    tags = study.data.tags
    assert tags[SEED_TAG] == "0" and study.data.params == {"num_samples": "3", "searchspace": "small"}
    assert (tags[BEST_TRIAL_TAG], float(tags[BEST_SCORE_TAG]), tags[BEST_EPOCH_TAG]) == ("bbb", 0.9, "2")
    assert (tags[FINISHED_TAG], tags[STOPPED_TAG], tags[FAILED_TAG], tags[PLANNED_TAG]) == ("2", "0", "1", "3")
    assert study.info.status == "FINISHED"


def test_counts_tell_stopped_early_from_finished(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a = FakeTrial("aaa", tmp_path / STUDY / "trial_a", {"train.lr": 0.01})
    b = FakeTrial("bbb", tmp_path / STUDY / "trial_b", {"train.lr": 0.02})
    cb = callback(tmp_path, uri)
    cb.setup()
    train(cb, a, [a, b], [0.3, 0.2])
    train(cb, b, [a, b], [0.1], status="stopped", stopped_early={"scheduler": "asha", "epoch": 1})
    cb.on_experiment_end([a, b])
    study, _, _ = runs_of(uri)
    tags = study.data.tags
    assert (tags[FINISHED_TAG], tags[STOPPED_TAG], tags[FAILED_TAG]) == ("1", "1", "0")
    assert (tags[BEST_TRIAL_TAG], float(tags[BEST_SCORE_TAG]), tags[BEST_EPOCH_TAG]) == ("aaa", 0.3, "1")


def test_runs_made_during_an_outage_are_nested_when_the_store_answers(tmp_path: Path) -> None:
    """Study and trial runs start as ``pending:`` placeholders; the replay gives the trial the real parent."""
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database" * 100)  # the store is broken from the start
    uri = f"sqlite:///{db}"
    a = FakeTrial("aaa", tmp_path / STUDY / "trial_a", {"train.lr": 0.01})
    cb = callback(tmp_path, uri)
    cb.setup()
    assert cb.study_run is not None and cb.study_run.startswith("pending:")
    train(cb, a, [a], [0.2, 0.4])
    assert not cb.writer.flush(5)
    buffered = (tmp_path / STUDY / "mlflow_buffer.jsonl").read_text()
    assert PARENT_RUN_TAG in buffered and cb.study_run in buffered
    db.unlink()  # the store comes back (empty)
    reset_store_cache()
    cb.on_experiment_end([a])
    assert not (tmp_path / STUDY / "mlflow_buffer.jsonl").exists()
    study, trials, client = runs_of(uri)
    assert len(trials) == 1 and trials[0].data.tags[PARENT_RUN_TAG] == study.info.run_id
    assert steps(client, trials[0]) == [1, 2] and study.data.tags[BEST_TRIAL_TAG] == "aaa"


def test_a_trial_recreated_after_the_store_is_lost_points_at_the_recreated_study_run(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    a = FakeTrial("aaa", tmp_path / STUDY / "trial_a", {"train.lr": 0.01})
    cb = callback(tmp_path, uri)
    cb.setup()
    cb.log_trial_start(a)
    assert cb.writer.flush(20)
    old_study = cb.study_run
    db.unlink()  # lost mid-study: the trial's next records recreate both runs
    reset_store_cache()
    a.last_result = {"epoch": 1, "val_macro_f1": 0.3}
    cb.log_trial_result(1, a, a.last_result)
    cb.set_study_tags({"tune_app.progress": "Trial 0/3"})
    a.write_state("completed", [0.3])
    cb.on_trial_complete(0, [a], a)
    cb.on_experiment_end([a])
    study, trials, _ = runs_of(uri)
    assert study.info.run_id != old_study
    assert len(trials) == 1 and trials[0].data.tags[PARENT_RUN_TAG] == study.info.run_id


def test_artifacts_of_a_new_sqlite_experiment_go_beside_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    from mlflow.tracking import MlflowClient

    from tune_app.tracking.experiment import experiment_id

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "experiments"
    uri = "sqlite:///experiments/mlflow.db"  # relative, as a default storage path gives it
    client = MlflowClient(uri)
    exp = client.get_experiment(experiment_id(client, "my study/1"))
    assert exp.artifact_location == (store / ARTIFACTS_DIR / folder_name("my study/1")).resolve().as_uri()
    assert "/" not in folder_name("my study/1") and folder_name("redsm5_study") == "redsm5_study"
    assert experiment_id(client, "my study/1") == exp.experiment_id  # found, not created twice
    assert artifact_location("http://127.0.0.1:5000", "x") is None  # a server decides
    assert not (tmp_path / "mlruns").exists()


def test_storage_pressure_with_no_trial_running_tags_the_study_run(tmp_path: Path) -> None:
    """The study run shares the trials' experiment: a study-wide escalation must not land on a trial run."""
    from tune_app.callbacks import PRESSURE_TAG, RetentionCallback, StoragePressureCallback
    from tune_app.checkpoints.retention import RetentionPolicy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a = FakeTrial("aaa", tmp_path / STUDY / "trial_a", {"train.lr": 0.01})
    cb = callback(tmp_path, uri)
    cb.setup()
    cb.log_trial_start(a)  # the newest run of the experiment: a plain search would find it first
    cb.on_experiment_end([a])
    retention = RetentionCallback(tmp_path / STUDY, metric="val_macro_f1", policy=RetentionPolicy())
    pressure = StoragePressureCallback(tmp_path / STUDY, retention, interval_s=3600, warn_free_fraction=0.1,
                                       error_free_fraction=0.05, tracking_uri=uri, experiment_name=STUDY)
    pressure._tag(None, 2)
    pressure._tag(a, 3)
    study, (trial,), _ = runs_of(uri)
    assert study.data.tags[PRESSURE_TAG] == "2" and trial.data.tags[PRESSURE_TAG] == "3"
