"""The outage buffer and writer: nothing lost, nothing twice, file removed only after success."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tune_app.tracking import buffer as buffer_mod
from tune_app.tracking.buffer import (
    BufferedMlflowWriter,
    MetricBuffer,
    flush_all,
    replay_order,
)


class Down(Exception):
    """What a connection error looks like: no permanent error code."""


class FakeClient:
    """An MLflow client in memory that dedupes exact metric duplicates like the SQL store."""

    def __init__(self) -> None:
        self.down = False
        self.fail_after: int | None = None  # calls allowed before going down
        self.runs: dict[str, dict[str, Any]] = {}
        self.metric_rows: list[tuple[str, str, int, int, float]] = []
        self.calls = 0

    def _call(self) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise Down("connection refused")
        self.calls += 1

    def get_experiment_by_name(self, name: str) -> Any:
        self._call()
        return SimpleNamespace(experiment_id="1")

    def search_runs(self, exp_ids: list[str], filter_string: str, max_results: int) -> list[Any]:
        self._call()
        return [SimpleNamespace(info=SimpleNamespace(run_id=rid)) for rid, r in self.runs.items()
                if all(f"tags.`{k}` = '{v}'" in filter_string for k, v in r["tags"].items()
                       if k == "tune_app.trial_id")]

    def create_run(self, exp_id: str, tags: dict[str, str], run_name: str | None) -> Any:
        self._call()
        rid = f"run{len(self.runs)}"
        self.runs[rid] = {"tags": dict(tags), "params": {}, "status": "RUNNING"}
        return SimpleNamespace(info=SimpleNamespace(run_id=rid))

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self._call()
        for m in metrics:
            row = (run_id, m.key, m.step, m.timestamp, m.value)
            if row not in self.metric_rows:
                self.metric_rows.append(row)
        self.runs[run_id]["params"].update({p.key: p.value for p in params})
        self.runs[run_id]["tags"].update({t.key: t.value for t in tags})

    def get_run(self, run_id: str) -> Any:
        self._call()
        return SimpleNamespace(data=SimpleNamespace(params=dict(self.runs[run_id]["params"])))

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        self._call()
        return [SimpleNamespace(step=r[2]) for r in self.metric_rows if r[0] == run_id and r[1] == key]

    def update_run(self, run_id: str, status: str) -> None:
        self._call()
        self.runs[run_id]["status"] = status

    def set_terminated(self, run_id: str, status: str, end_time: int | None = None) -> None:
        self._call()
        self.runs[run_id]["status"] = status

    def steps(self, run_id: str, key: str) -> list[int]:
        return [r[2] for r in self.metric_rows if r[0] == run_id and r[1] == key]


def make_writer(tmp_path: Path, client: FakeClient, backoff_s: float = 0.05) -> BufferedMlflowWriter:
    """A writer on ``client``; ``backoff_s=3600`` turns timer replays off (flush() only)."""
    return BufferedMlflowWriter(MetricBuffer(tmp_path / "mlflow_buffer.jsonl"), lambda: client,
                                experiment_name="exp", backoff_initial_s=backoff_s, backoff_max_s=4 * backoff_s)


@pytest.fixture(autouse=True)
def _close_writers() -> Iterator[None]:
    yield
    for writer in list(buffer_mod._WRITERS):
        writer.close(0.5)


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_replay_order_is_chronological_and_deduplicated() -> None:
    recs: list[dict[str, Any]] = [
        {"op": "status", "run_id": "r", "status": "FINISHED"},
        {"run_id": "r", "key": "loss", "step": 2, "value": 0.5, "timestamp": 20},
        {"run_id": "r", "key": "loss", "step": 1, "value": 0.9, "timestamp": 10},
        {"run_id": "r", "key": "loss", "step": 2, "value": 0.5, "timestamp": 20},  # duplicate
        {"run_id": "r", "key": "acc", "step": 3, "value": 0.1, "timestamp": 20},
        {"op": "params", "run_id": "r", "params": {"a": "1"}},
        {"op": "create_run", "run_id": "pending:x", "match": {}, "tags": {}},
    ]
    out = replay_order(recs)
    assert [r.get("op") for r in out] == ["create_run", "params", None, None, None, "status"]
    assert [(r["timestamp"], r["step"]) for r in out if "op" not in r] == [(10, 1), (20, 2), (20, 3)]


def test_outage_buffers_on_disk_and_replays_everything_once(tmp_path: Path) -> None:
    client = FakeClient()
    client.runs["r0"] = {"tags": {}, "params": {}, "status": "RUNNING"}
    writer = make_writer(tmp_path, client)
    writer.log_metrics("r0", [("loss", 1.0, 1, 100)])
    assert writer.flush()
    client.down = True
    for step in (2, 3, 4):
        writer.log_metrics("r0", [("loss", 1.0 / step, step, 100 * step), ("acc", 0.1 * step, step, 100 * step)])
    writer.set_status("r0", "FINISHED")
    assert not writer.flush(timeout_s=5)
    buffered = MetricBuffer(tmp_path / "mlflow_buffer.jsonl").read()
    assert {(r["key"], r["step"]) for r in buffered if "op" not in r} == {
        (k, s) for k in ("loss", "acc") for s in (2, 3, 4)}
    assert set(buffered[0]) >= {"run_id", "key", "step", "value", "timestamp"}
    client.down = False
    wait_until(lambda: not writer.in_outage)  # replayed by the backoff timer, no flush needed
    assert client.steps("r0", "loss") == [1, 2, 3, 4]
    assert client.steps("r0", "acc") == [2, 3, 4]
    assert client.runs["r0"]["status"] == "FINISHED"
    assert writer.close(1)


def test_buffer_is_kept_when_a_replay_fails_halfway(tmp_path: Path) -> None:
    client = FakeClient()
    client.runs["r0"] = {"tags": {}, "params": {}, "status": "RUNNING"}
    writer = make_writer(tmp_path, client, backoff_s=3600)
    client.down = True
    for step in range(1, 2501):  # three log_batch calls of <= 1000 metrics at replay
        writer.log_metrics("r0", [("loss", float(step), step, step)])
    assert not writer.flush(5)
    client.down, client.fail_after = False, 1  # the first batch lands, then the server dies again
    assert not writer.flush(5)
    assert (tmp_path / "mlflow_buffer.jsonl").exists()
    assert len(client.steps("r0", "loss")) == 1000
    client.down, client.fail_after = False, None
    assert writer.flush(5)
    assert client.steps("r0", "loss") == list(range(1, 2501))
    assert not (tmp_path / "mlflow_buffer.jsonl").exists()
    writer.close(1)


def test_run_created_during_an_outage_gets_its_metrics(tmp_path: Path) -> None:
    client = FakeClient()
    client.down = True
    writer = make_writer(tmp_path, client)
    ref = "pending:t1"
    writer.create_run(ref, {"tune_app.trial_id": "t1"}, {"tune_app.study": "s"}, "trial-1")
    writer.log_params(ref, {"train.lr": "0.1"})
    writer.log_metrics(ref, [("loss", 0.5, 1, 10)])
    assert not writer.flush(5)
    assert writer.buffer.pending_run({"tune_app.trial_id": "t1"}) == ref
    client.down = False
    assert writer.flush(5)
    run_id = writer.resolve(ref)
    assert run_id is not None and client.runs[run_id]["params"] == {"train.lr": "0.1"}
    assert client.steps(run_id, "loss") == [1]
    writer.log_metrics(ref, [("loss", 0.4, 2, 20)])  # later records follow the resolved run
    assert writer.flush(5) and client.steps(run_id, "loss") == [1, 2]
    writer.close(1)


def test_a_new_writer_replays_a_buffer_left_by_a_crashed_session(tmp_path: Path) -> None:
    client = FakeClient()
    client.runs["r0"] = {"tags": {"tune_app.trial_id": "t1"}, "params": {}, "status": "RUNNING"}
    client.metric_rows.append(("r0", "epoch", 1, 1, 1.0))
    buffer = MetricBuffer(tmp_path / "mlflow_buffer.jsonl")
    buffer.append([
        {"op": "create_run", "run_id": "pending:t1", "match": {"tune_app.trial_id": "t1"}, "tags": {}},
        {"run_id": "pending:t1", "key": "epoch", "step": 1, "value": 1.0, "timestamp": 5},  # held already
        {"run_id": "pending:t1", "key": "epoch", "step": 2, "value": 2.0, "timestamp": 6},
    ])
    writer = make_writer(tmp_path, client)
    wait_until(lambda: not buffer.exists())
    assert len(client.runs) == 1  # found by its tags, not created again
    assert client.steps("r0", "epoch") == [1, 2]
    writer.close(1)


def test_warning_once_when_the_buffer_passes_the_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    buffer = MetricBuffer(tmp_path / "b.jsonl", warn_bytes=1000)
    with caplog.at_level(logging.WARNING, logger="tune_app.tracking.buffer"):
        for step in range(100):
            buffer.append([{"run_id": "r", "key": "loss", "step": step, "value": 1.0, "timestamp": step}])
    warnings = [r for r in caplog.records if "MB" in r.getMessage()]
    assert len(warnings) == 1 and buffer.size_bytes() > 1000


def test_flush_all_is_the_storage_pressure_hook(tmp_path: Path) -> None:
    client = FakeClient()
    client.runs["r0"] = {"tags": {}, "params": {}, "status": "RUNNING"}
    client.down = True
    writer = make_writer(tmp_path, client, backoff_s=3600)
    writer.log_metrics("r0", [("loss", 1.0, 1, 1)])
    assert not flush_all(5)
    client.down = False
    assert flush_all(5)
    assert client.steps("r0", "loss") == [1] and not writer.in_outage
    writer.close(1)


def test_sql_store_ignores_an_exact_duplicate_metric(tmp_path: Path) -> None:
    """Replay after a half-confirmed batch relies on this."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("e"))
    metric = Metric(key="loss", value=0.5, timestamp=123, step=1)
    client.log_batch(run.info.run_id, metrics=[metric])
    client.log_batch(run.info.run_id, metrics=[metric, Metric(key="loss", value=0.4, timestamp=124, step=2)])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
