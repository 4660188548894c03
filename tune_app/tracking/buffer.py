"""Outage-tolerant MLflow writes: an in-memory queue, a background writer, a disk buffer.

Callers (Tune callbacks in the driver) only enqueue (microseconds). One writer thread
sends each operation to MLflow. When the backend fails (server down, DB locked, network
error) the operation goes to a JSONL buffer on disk (one record per line; metrics as
``{run_id, key, step, value, timestamp}``) and every later operation follows it there,
so order is kept. The writer replays the buffer with exponential backoff: run creations
first (find-or-create by tags, so a creation that reached the server is not repeated),
then params/tags, then metrics chronologically by ``(timestamp, step)`` deduplicated by
``(run_id, key, step, timestamp)``, then run status changes. The file is removed only
after every call of the replay succeeded. Replaying a metric twice is harmless: MLflow's
SQL store ignores an exact duplicate ``(key, step, timestamp, value)``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.tracking.sanitize import sanitize, sanitize_mapping

logger = logging.getLogger("tune_app.tracking.buffer")

PENDING_PREFIX = "pending:"
#: MLflow accepts at most 1000 metrics per ``log_batch``.
BATCH_LIMIT = 1000
_PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
})

Record = dict[str, Any]


def is_permanent(exc: BaseException) -> bool:
    """True for errors that retrying cannot fix (bad request); outages are transient."""
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


def is_metric(record: Record) -> bool:
    return "op" not in record


def replay_order(records: Iterable[Record]) -> list[Record]:
    """Run creations, then params/tags, then metrics by (timestamp, step) without
    duplicates of (run_id, key, step, timestamp), then status changes."""
    creates: list[Record] = []
    meta: list[Record] = []
    status: list[Record] = []
    metrics: dict[tuple[str, str, int, int], Record] = {}
    for rec in records:
        op = rec.get("op")
        if op is None:
            metrics.setdefault((rec["run_id"], rec["key"], int(rec["step"]), int(rec["timestamp"])), rec)
        elif op == "create_run":
            creates.append(rec)
        elif op == "status":
            status.append(rec)
        else:
            meta.append(rec)
    ordered = sorted(metrics.values(), key=lambda r: (int(r["timestamp"]), int(r["step"])))
    return creates + meta + ordered + status


class MetricBuffer:
    """The JSONL file of operations MLflow has not confirmed yet (writer thread only)."""

    def __init__(self, path: Path, *, warn_bytes: int = 100 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.warn_bytes = warn_bytes
        self._warned = False

    def exists(self) -> bool:
        return self.path.exists()

    def size_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, records: Sequence[Record]) -> None:
        """Append and fsync; WARNING once when the file grows past ``warn_bytes``."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        size = self.size_bytes()
        if size > self.warn_bytes and not self._warned:
            self._warned = True
            logger.warning("MLflow buffer %s holds %.1f MB (> %.0f MB): the tracking backend has been "
                           "unreachable for a while; metrics are safe on disk and will be replayed",
                           self.path, size / 1e6, self.warn_bytes / 1e6)

    def read(self) -> list[Record]:
        """Every complete record; a torn last line (crash mid-write) is skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[Record] = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                logger.warning("MLflow buffer %s: skipping an unreadable line", self.path)
        return out

    def max_step(self, run_id: str, key: str) -> int:
        steps = [int(r["step"]) for r in self.read() if is_metric(r) and r["run_id"] == run_id and r["key"] == key]
        return max(steps, default=0)

    def pending_run(self, match: dict[str, str]) -> str | None:
        """The placeholder id of a buffered run creation whose match tags equal ``match``."""
        for r in self.read():
            if r.get("op") == "create_run" and r.get("match") == match:
                return str(r["run_id"])
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._warned = False


def find_or_create_run(client: Any, experiment_name: str, match: dict[str, str], tags: dict[str, str],
                       run_name: str | None) -> tuple[str, bool]:
    """The run of ``experiment_name`` whose tags include ``match``, else a new one.

    Returns ``(run_id, created)``. Experiment name, tags and run name are sanitised.
    """
    experiment_name = sanitize(experiment_name)
    tags = sanitize_mapping(tags)
    run_name = sanitize(run_name) if run_name is not None else None
    exp = client.get_experiment_by_name(experiment_name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment_name)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(match.items()))
    runs = client.search_runs([exp_id], filter_string=query, max_results=1)
    if runs:
        return runs[0].info.run_id, False
    run = client.create_run(exp_id, tags={**tags, **match}, run_name=run_name)
    return run.info.run_id, True


def last_logged_step(client: Any, run_id: str, key: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, key)), default=0)


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


_STOP = object()
#: Writers alive in this process, for ``flush_all`` (storage-pressure hook).
_WRITERS: set[BufferedMlflowWriter] = set()
_WRITERS_LOCK = threading.Lock()


def flush_all(timeout_s: float = 10.0) -> bool:
    """Try an immediate replay of every live writer's buffer; True if all are empty."""
    with _WRITERS_LOCK:
        writers = list(_WRITERS)
    return all([w.flush(timeout_s) for w in writers])


class BufferedMlflowWriter:
    """Sends MLflow operations from one background thread; buffers them on disk on failure.

    Run references are real run ids or ``pending:<name>`` placeholders created with
    ``create_run`` when the backend could not be reached at trial start; operations on a
    placeholder are resolved to the real run once its creation succeeds.
    """

    def __init__(self, buffer: MetricBuffer, client_factory: Callable[[], Any], *, experiment_name: str,
                 step_key: str = "epoch", backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.buffer = buffer
        self.experiment_name = sanitize(experiment_name)
        self.step_key = step_key
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._client_factory = client_factory
        self._client: Any = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._resolved: dict[str, str] = {}
        self._backoff = backoff_initial_s
        self._next_retry = 0.0 if buffer.exists() else float("inf")
        self._thread = threading.Thread(target=self._loop, name="tune_app-mlflow-writer", daemon=True)
        self._closed = False
        self._stash: Any = None
        self._thread.start()
        with _WRITERS_LOCK:
            _WRITERS.add(self)

    # --- enqueue (any thread; in-memory only) ------------------------------------------
    def log_metrics(self, run_ref: str, metrics: Iterable[tuple[str, float, int, int]]) -> None:
        """``(key, value, step, timestamp_ms)`` tuples for one run."""
        self._queue.put([{"run_id": run_ref, "key": key, "step": step, "value": value, "timestamp": ts}
                         for key, value, step, ts in metrics])

    def log_params(self, run_ref: str, params: dict[str, str]) -> None:
        self._queue.put([{"op": "params", "run_id": run_ref, "params": sanitize_mapping(params)}])

    def set_tags(self, run_ref: str, tags: dict[str, str]) -> None:
        self._queue.put([{"op": "tags", "run_id": run_ref, "tags": sanitize_mapping(tags)}])

    def set_status(self, run_ref: str, status: str) -> None:
        self._queue.put([{"op": "status", "run_id": run_ref, "status": status,
                          "timestamp": int(time.time() * 1000)}])

    def create_run(self, run_ref: str, match: dict[str, str], tags: dict[str, str], run_name: str | None,
                   experiment_name: str | None = None) -> None:
        """Create (or find by ``match`` tags) the run that ``run_ref`` stands for."""
        self._queue.put([{"op": "create_run", "run_id": run_ref, "match": match, "tags": sanitize_mapping(tags),
                          "run_name": sanitize(run_name) if run_name is not None else None,
                          "experiment": sanitize(experiment_name) if experiment_name else self.experiment_name}])

    def resolve(self, run_ref: str) -> str | None:
        return self._resolved.get(run_ref) if run_ref.startswith(PENDING_PREFIX) else run_ref

    @property
    def in_outage(self) -> bool:
        return self.buffer.exists()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued and replay the buffer now; True if nothing is left on disk."""
        if self._closed:
            return not self.buffer.exists()
        req = _Flush()
        self._queue.put(req)
        req.done.wait(timeout_s)
        return req.ok

    def close(self, timeout_s: float = 60.0) -> bool:
        """Drain the queue and retry the buffer (with backoff) for up to ``timeout_s``.

        True if everything reached MLflow; otherwise the buffer stays on disk and is
        replayed by the next writer on the same file (e.g. after ``resume``).
        """
        if self._closed:
            return not self.buffer.exists()
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._queue.put((_STOP, deadline))
        self._thread.join(timeout_s + 5)
        with _WRITERS_LOCK:
            _WRITERS.discard(self)
        left = self.buffer.exists()
        if left:
            logger.warning("MLflow still unreachable: %d bytes of tracking data kept in %s; they are "
                           "replayed when the study resumes", self.buffer.size_bytes(), self.buffer.path)
        return not left

    # --- writer thread -----------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _loop(self) -> None:
        while True:
            wait = max(0.0, self._next_retry - time.monotonic()) if self.buffer.exists() else None
            if self._stash is not None:
                item, self._stash = self._stash, None
            else:
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    self._replay()
                    continue
            if isinstance(item, _Flush):
                waiting = [item, *self._drain()]
                ok = self._replay() if self.buffer.exists() else True
                for req in waiting:
                    req.ok = ok
                    req.done.set()
            elif isinstance(item, tuple) and item[0] is _STOP:
                self._finish(item[1])
                return
            elif self.buffer.exists():
                self.buffer.append(self._more_records(item))  # outage: one write for the backlog
            else:
                self._handle(self._more_records(item))  # a backlog goes out in few requests
            if self.buffer.exists() and time.monotonic() >= self._next_retry:
                self._replay()

    def _more_records(self, first: list[Record]) -> list[Record]:
        """``first`` and the record lists queued right behind it (order kept)."""
        records = list(first)
        while len(records) < 10_000:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(nxt, list):
                self._stash = nxt
                break
            records.extend(nxt)
        return records

    def _drain(self) -> list[_Flush]:
        """Handle everything queued now (one send or one disk write); returns flush requests."""
        flushes: list[_Flush] = []
        records: list[Record] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                records.extend(item)
            elif isinstance(item, _Flush):
                flushes.append(item)
            else:
                self._stash = item  # the stop request: handled by the loop afterwards
                break
        if records:
            self._handle(records)
        return flushes

    def _handle(self, records: list[Record]) -> None:
        if self.buffer.exists():
            self.buffer.append(records)
            return
        try:
            self._send(records)
        except Exception as exc:  # noqa: BLE001 - any backend failure must not stop training
            if is_permanent(exc):
                logger.warning("MLflow rejected %d record(s), dropped: %s", len(records), exc)
                return
            self.buffer.append(records)
            self._backoff = self.backoff_initial_s
            self._next_retry = time.monotonic() + self._backoff
            logger.warning("MLflow unreachable (%s): buffering to %s and retrying with backoff",
                           type(exc).__name__, self.buffer.path)

    def _finish(self, deadline: float) -> None:
        for req in self._drain():
            req.done.set()
        while self.buffer.exists() and time.monotonic() < deadline:
            if self._replay():
                return
            time.sleep(max(0.0, min(self._next_retry, deadline) - time.monotonic()))

    def _replay(self) -> bool:
        records = replay_order(self.buffer.read())
        if not records:
            self.buffer.remove()
            return True
        try:
            sent = self._send(records, replay=True)
        except Exception as exc:  # noqa: BLE001
            self._next_retry = time.monotonic() + self._backoff
            logger.info("MLflow replay failed (%s: %s); next try in %.0f s", type(exc).__name__, exc, self._backoff)
            self._backoff = min(self._backoff * 2, self.backoff_max_s)
            self._client = None
            return False
        self.buffer.remove()
        self._backoff = self.backoff_initial_s
        self._next_retry = float("inf")
        logger.warning("MLflow reachable again: replayed %d buffered metric(s) from %s", sent, self.buffer.path)
        return True

    def _send(self, records: Sequence[Record], *, replay: bool = False) -> int:
        """Send ``records`` in order; raises on the first transient failure."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client()
        skip_upto: dict[str, int] = {}
        sent = 0
        i = 0
        while i < len(records):
            rec = records[i]
            op = rec.get("op")
            if op is None:
                run_ref = rec["run_id"]
                batch = [rec]
                while (i + len(batch) < len(records) and len(batch) < BATCH_LIMIT
                       and is_metric(records[i + len(batch)]) and records[i + len(batch)]["run_id"] == run_ref):
                    batch.append(records[i + len(batch)])
                i += len(batch)
                run_id = self._run_id(run_ref)
                if run_id is None:
                    continue
                limit = skip_upto.get(run_ref, 0)
                metrics = [Metric(key=r["key"], value=float(r["value"]), timestamp=int(r["timestamp"]),
                                  step=int(r["step"])) for r in batch if int(r["step"]) > limit]
                if metrics:
                    self._guard(replay, client.log_batch, run_id, metrics=metrics)
                    sent += len(metrics)
                continue
            i += 1
            if op == "create_run":
                run_id, created = find_or_create_run(client, rec.get("experiment") or self.experiment_name,
                                                     rec["match"], rec["tags"], rec.get("run_name"))
                self._resolved[rec["run_id"]] = run_id
                if not created:
                    # A restored trial re-attached while MLflow was down: never log a step twice.
                    client.update_run(run_id, status="RUNNING")
                    skip_upto[rec["run_id"]] = last_logged_step(client, run_id, self.step_key)
                continue
            run_id = self._run_id(rec["run_id"])
            if run_id is None:
                continue
            if op == "params":
                logged = client.get_run(run_id).data.params
                todo = [Param(k, str(v)) for k, v in rec["params"].items() if k not in logged]
                if todo:
                    self._guard(replay, client.log_batch, run_id, params=todo)
            elif op == "tags":
                tags = [RunTag(k, str(v)) for k, v in rec["tags"].items()]
                self._guard(replay, client.log_batch, run_id, tags=tags)
            elif op == "status":
                if rec["status"] == "RUNNING":
                    self._guard(replay, client.update_run, run_id, status="RUNNING")
                else:
                    self._guard(replay, client.set_terminated, run_id, status=rec["status"],
                                end_time=rec.get("timestamp"))
        return sent

    @staticmethod
    def _guard(replay: bool, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """``call(*args, **kwargs)``; in a replay a rejected record is dropped, not retried forever."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            if replay and is_permanent(exc):
                logger.warning("MLflow rejected a buffered record, dropped: %s", exc)
                return
            raise

    def _run_id(self, run_ref: str) -> str | None:
        run_id = self.resolve(run_ref)
        if run_id is None:
            logger.warning("MLflow: no run creation recorded for %s; its records are dropped", run_ref)
        return run_id
