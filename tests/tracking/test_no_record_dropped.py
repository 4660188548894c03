"""Issue 14: no tracking record is dropped, runs a lost store forgot are recreated, outages are quiet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.tracking.test_buffer import Down, FakeClient, make_writer, wait_until
from tune_app.tracking.buffer import REJECTED_FILE, BufferedMlflowWriter, MetricBuffer, RejectedLog
from tune_app.tracking.replay import pending_note, replay_pending


class CodedError(Exception):
    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class PickyClient(FakeClient):
    """Refuses a param named ``bad`` and a NaN-marked metric value (-1.0) for good."""

    store_error: str | None = None  # an error code the whole store answers with (an outage)

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        if self.store_error:
            raise CodedError("(sqlite3.DatabaseError) file is not a database", self.store_error)
        if any(p.key == "bad" for p in params) or any(m.value == -1.0 for m in metrics):
            raise CodedError("Invalid value for parameter", "INVALID_PARAMETER_VALUE")
        super().log_batch(run_id, metrics=metrics, params=params, tags=tags)


def new_run(client: FakeClient) -> str:
    client.runs["r0"] = {"tags": {"tune_app.trial_id": "t1"}, "params": {}, "status": "RUNNING"}
    return "r0"


def test_a_refused_record_is_kept_with_its_reason_and_the_rest_is_accepted(tmp_path: Path) -> None:
    client = PickyClient()
    run = new_run(client)
    writer = make_writer(tmp_path, client, backoff_s=3600)
    writer.log_params(run, {"lr": "0.1", "bad": "x"})
    writer.log_metrics(run, [("loss", 0.5, 1, 10), ("loss", -1.0, 2, 20), ("loss", 0.3, 3, 30)])
    assert writer.flush(5)
    assert client.runs[run]["params"] == {"lr": "0.1"} and client.steps(run, "loss") == [1, 3]
    rejected = RejectedLog(tmp_path / REJECTED_FILE).read()
    assert [(r["record"].get("params"), r["record"].get("step")) for r in rejected] == [({"bad": "x"}, None),
                                                                                       (None, 2)]
    assert all("Invalid value" in r["reason"] for r in rejected)
    note = pending_note(tmp_path)
    assert note is not None and "2 record(s) refused for good" in note and REJECTED_FILE in note
    writer.close(1)


def test_a_store_error_is_an_outage_not_a_rejection(tmp_path: Path) -> None:
    """BAD_REQUEST is what MLflow's SQL store answers for a broken database file: keep and retry."""
    client = PickyClient()
    run = new_run(client)
    writer = make_writer(tmp_path, client, backoff_s=3600)
    client.store_error = "BAD_REQUEST"
    writer.log_metrics(run, [("loss", 0.5, 1, 10)])
    assert not writer.flush(5) and not writer.flush(5)  # retried, still kept
    assert [r["step"] for r in writer.buffer.read() if "op" not in r] == [1]
    assert not (tmp_path / REJECTED_FILE).exists()
    client.store_error = None
    assert writer.flush(5) and client.steps(run, "loss") == [1]
    writer.close(1)


def test_only_records_not_accepted_stay_in_the_buffer(tmp_path: Path) -> None:
    client = FakeClient()
    run = new_run(client)
    writer = make_writer(tmp_path, client, backoff_s=3600)
    client.down = True
    for step in range(1, 2501):
        writer.log_metrics(run, [("loss", float(step), step, step)])
    assert not writer.flush(5)
    client.down, client.fail_after = False, 1  # the first batch of 1000 lands, then the store fails again
    assert not writer.flush(5)
    assert sorted(r["step"] for r in writer.buffer.read() if "op" not in r) == list(range(1001, 2501))
    assert writer.buffer.count() == 1500
    writer.close(0)


def test_outage_logs_one_line_when_it_starts_and_one_when_it_ends(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient()
    run = new_run(client)
    writer = make_writer(tmp_path, client, backoff_s=0.01)
    with caplog.at_level(logging.DEBUG):
        client.down = True
        for step in range(1, 26):
            writer.log_metrics(run, [("loss", 1.0, step, step)])
            writer.flush(5)
        client.down = False
        assert writer.flush(5)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    assert lines[0].startswith("MLflow store unreachable: Down: connection refused; buffering records in ")
    assert lines[1].startswith("MLflow store back: replayed 25 records")
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
    writer.close(1)


# --- a real SQL store that is lost ----------------------------------------------------------------

def sqlite_writer(tmp_path: Path, db: Path) -> BufferedMlflowWriter:
    from mlflow.tracking import MlflowClient

    return BufferedMlflowWriter(MetricBuffer(tmp_path / "mlflow_buffer.jsonl"), lambda: MlflowClient(f"sqlite:///{db}"),
                                experiment_name="exp", backoff_initial_s=0.05, backoff_max_s=0.2)


def start_trial(writer: BufferedMlflowWriter, db: Path) -> str:
    """What the callback does at trial start with a reachable store."""
    from mlflow.tracking import MlflowClient

    from tune_app.tracking.buffer import find_or_create_run

    match = {"tune_app.study": "s", "tune_app.trial_id": "t1"}
    run_id, _ = find_or_create_run(MlflowClient(f"sqlite:///{db}"), "exp", match, {"tune_app.seed": "3"}, "trial_1")
    writer.describe_run(run_id, match, {"tune_app.seed": "3", **match}, "trial_1", "exp")
    writer.set_tags(run_id, {"trial_name": "trial_1"})
    writer.log_params(run_id, {"train.lr": "0.01"})
    writer.log_metrics(run_id, [("val_f1", 0.1, 1, 1000)])
    return run_id


def the_run(db: Path) -> tuple[Any, list[int]]:
    from mlflow.tracking import MlflowClient

    from tune_app.tracking.buffer import reset_store_cache

    reset_store_cache()
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0], sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_f1"))


def test_a_deleted_sqlite_store_is_recreated_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "mlflow.db"
    writer = sqlite_writer(tmp_path, db)
    old_id = start_trial(writer, db)
    assert writer.flush(30)
    db.unlink()  # the store is lost mid-study
    writer.log_metrics(old_id, [("val_f1", 0.2, 2, 2000), ("val_f1", 0.3, 3, 3000)])
    writer.set_status(old_id, "FINISHED")
    wait_until(lambda: writer.flush(5), 60)
    run, steps = the_run(db)
    assert run.info.run_id != old_id and run.info.status == "FINISHED"
    assert run.data.tags["tune_app.trial_id"] == "t1" and run.data.tags["trial_name"] == "trial_1"
    assert run.data.params == {"train.lr": "0.01"}
    assert steps == [2, 3]  # step 1 went down with the deleted file; the buffered ones arrive once
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2 and "readonly database" in lines[0] and "recreated 1 run(s)" in lines[1], lines
    writer.log_metrics(old_id, [("val_f1", 0.4, 4, 4000)])  # later records follow the recreated run
    assert writer.flush(10) and the_run(db)[1] == [2, 3, 4]
    writer.close(1)


def test_replay_pending_recreates_runs_a_replaced_store_lost(tmp_path: Path) -> None:
    """A finished study's buffer, replayed by ``resume=`` into a store that no longer has its runs."""
    db = tmp_path / "mlflow.db"
    writer = sqlite_writer(tmp_path, db)
    run_id = start_trial(writer, db)
    assert writer.flush(30)
    db.write_bytes(b"not a database" * 100)  # the store breaks: everything after this is buffered
    from tune_app.tracking.buffer import reset_store_cache

    reset_store_cache()
    writer.log_metrics(run_id, [("val_f1", 0.2, 2, 2000)])
    writer.set_status(run_id, "FINISHED")
    assert not writer.flush(5)
    writer.close(0)
    assert "replay them with: python -m tune_app.run resume=" in (pending_note(tmp_path) or "")
    db.unlink()  # replaced by an empty store
    result = replay_pending(tmp_path, f"sqlite:///{db}", experiment_name="exp", timeout_s=30)
    assert (result.replayed, result.pending, result.rejected) == (2, 0, 0)  # the metric and the status
    run, steps = the_run(db)
    assert run.data.tags["tune_app.trial_id"] == "t1" and run.data.params == {"train.lr": "0.01"}
    assert steps == [2] and run.info.status == "FINISHED"
    assert not (tmp_path / "mlflow_buffer.jsonl").exists() and pending_note(tmp_path) is None


def test_the_study_summary_counts_buffered_records_and_gives_the_replay_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tune_app.run import _report
    from tune_app.tuner import StudyOutcome

    MetricBuffer(tmp_path / "mlflow_buffer.jsonl").append([
        {"op": "run", "run_id": "r0", "match": {}, "tags": {}, "params": {}},  # a description: not counted
        {"run_id": "r0", "key": "loss", "step": 1, "value": 1.0, "timestamp": 1},
        {"op": "status", "run_id": "r0", "status": "FINISHED", "timestamp": 2}])
    from tune_app.config import compose

    outcome = StudyOutcome(study_dir=tmp_path, num_samples=2, terminated=1, best_trial_id="t", best_score=0.5)
    assert _report(outcome, compose([f"tune.storage_path={tmp_path}"])) == 130
    err = capsys.readouterr().err
    assert f"MLflow: 2 record(s) still buffered in {tmp_path / 'mlflow_buffer.jsonl'}" in err
    assert f"replay them with: python -m tune_app.run resume={tmp_path}" in err


def test_the_outage_traceback_goes_to_the_study_log_at_debug_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import json

    from tune_app.logs import setup_study_logging

    session = setup_study_logging(tmp_path, study_id="s")
    try:
        client = FakeClient()
        run = new_run(client)
        writer = make_writer(tmp_path, client, backoff_s=3600)
        client.down = True
        writer.log_metrics(run, [("loss", 1.0, 1, 1)])
        assert not writer.flush(5)
        logging.getLogger("mlflow.store.db.utils").exception("SQLAlchemy database error", exc_info=Down("db gone"))
        writer.close(0)
        session.flush()
    finally:
        session.close()
    records = [json.loads(line) for line in (tmp_path / "logs" / "study.jsonl").read_text().splitlines()]
    debug = [r for r in records if r["level"] == "DEBUG"]
    assert any("Down: connection refused" in r["extra"].get("exception", "") for r in debug)
    assert any(r["component"] == "mlflow.store.db.utils" and "db gone" in r["extra"]["exception"] for r in debug)
    assert [r["level"] for r in records if "MLflow store unreachable" in r["message"]] == ["WARNING"]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "db gone" not in captured.err
    assert not [r for r in caplog.records if r.name.startswith("mlflow")]  # no console handler saw it
