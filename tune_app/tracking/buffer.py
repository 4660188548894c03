"""Outage-tolerant MLflow writes: an in-memory queue, a background writer, a disk buffer.

Callers (Tune callbacks in the driver) only enqueue (microseconds). One writer thread
sends each operation to MLflow. When the store fails (server down, DB locked or lost,
network error) the operation goes to a JSONL buffer on disk (one record per line; metrics
as ``{run_id, key, step, value, timestamp}``) and every later operation follows it there,
so order is kept. The writer replays the buffer with exponential backoff: run
descriptions first, then params/tags, then metrics chronologically by ``(timestamp, step)``
deduplicated by ``(run_id, key, step, timestamp)``, then run status changes.

Nothing is dropped:

* Only records MLflow accepted leave the buffer: after a failed replay the file is
  rewritten with the records not sent yet (and every run description).
* Each buffered run has a description (``op: run``: experiment, match tags, tags, params,
  name). A replay that finds the run missing (the store was deleted or replaced) creates
  it again, found by its match tags (study + trial id), with its params and tags; its
  parent (``mlflow.parentRunId``, the study run) is resolved, or recreated, first.
* A record MLflow refuses for good (``INVALID_PARAMETER_VALUE``, isolated record by
  record) moves to ``mlflow_rejected.jsonl`` beside the buffer, with the reason.

An outage logs one WARNING when it starts and one when it ends; details (tracebacks)
go to the study log at DEBUG (``tune_app.tracking.outage_log``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.tracking.outage_log import log_debug_detail, quiet_store_loggers, short_reason
from tune_app.tracking.sanitize import sanitize, sanitize_mapping

logger = logging.getLogger("tune_app.tracking.buffer")

PENDING_PREFIX = "pending:"
#: The tag that nests a run under its parent (MLflow's own); its value may be a run reference
#: (a ``pending:`` placeholder, or a run the store lost): the writer sends the parent's run id now.
PARENT_RUN_TAG = "mlflow.parentRunId"
BUFFER_FILE = "mlflow_buffer.jsonl"
REJECTED_FILE = "mlflow_rejected.jsonl"
#: MLflow accepts at most 1000 metrics per ``log_batch``.
BATCH_LIMIT = 1000
#: Error codes that say a record's content is invalid: retrying cannot fix it. Store errors
#: (``BAD_REQUEST`` from a broken SQL store, ``TEMPORARILY_UNAVAILABLE``...) are outages.
_REJECTION_CODES = frozenset({"INVALID_PARAMETER_VALUE"})
_MISSING = "RESOURCE_DOES_NOT_EXIST"
#: Record ops that describe a run (kept in the buffer while any of its records is).
_RUN_OPS = ("run", "create_run")

Record = dict[str, Any]


def is_rejection(exc: BaseException) -> bool:
    """True when MLflow refused the record's content (retrying cannot fix it)."""
    return getattr(exc, "error_code", None) in _REJECTION_CODES


def is_missing(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) == _MISSING


def is_metric(record: Record) -> bool:
    return "op" not in record


def replay_order(records: Iterable[Record]) -> list[Record]:
    """Run descriptions, then params/tags, then metrics by (timestamp, step) without
    duplicates of (run_id, key, step, timestamp), then status changes."""
    creates: list[Record] = []
    meta: list[Record] = []
    status: list[Record] = []
    metrics: dict[tuple[str, str, int, int], Record] = {}
    for rec in records:
        op = rec.get("op")
        if op is None:
            metrics.setdefault((rec["run_id"], rec["key"], int(rec["step"]), int(rec["timestamp"])), rec)
        elif op in _RUN_OPS:
            creates.append(rec)
        elif op == "status":
            status.append(rec)
        else:
            meta.append(rec)
    ordered = sorted(metrics.values(), key=lambda r: (int(r["timestamp"]), int(r["step"])))
    return creates + meta + ordered + status


def _lines(records: Sequence[Record]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def _append_lines(path: Path, records: Sequence[Record]) -> None:
    """Append ``records`` as JSON lines and fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _lines(records)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_lines(path: Path) -> list[Record]:
    """Every complete record; a torn last line (crash mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out: list[Record] = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            logger.warning("MLflow buffer %s: skipping an unreadable line", path)
    return out


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
        _append_lines(self.path, records)
        size = self.size_bytes()
        if size > self.warn_bytes and not self._warned:
            self._warned = True
            logger.warning("MLflow buffer %s holds %.1f MB (> %.0f MB): the tracking backend has been "
                           "unreachable for a while; metrics are safe on disk and will be replayed",
                           self.path, size / 1e6, self.warn_bytes / 1e6)

    def rewrite(self, records: Sequence[Record]) -> None:
        """Replace the file's content atomically (temp file, fsync, rename)."""
        from tune_app.study import write_text_atomic

        write_text_atomic(self.path, _lines(records))

    def read(self) -> list[Record]:
        return _read_lines(self.path)

    def count(self) -> int:
        """Records waiting for MLflow (run descriptions not counted)."""
        return sum(1 for r in self.read() if r.get("op") != "run")

    def max_step(self, run_id: str, key: str) -> int:
        steps = [int(r["step"]) for r in self.read() if is_metric(r) and r["run_id"] == run_id and r["key"] == key]
        return max(steps, default=0)

    def pending_run(self, match: dict[str, str]) -> str | None:
        """The placeholder id of a buffered run creation whose match tags equal ``match``."""
        for r in self.read():
            if r.get("op") in _RUN_OPS and r.get("match") == match and str(r["run_id"]).startswith(PENDING_PREFIX):
                return str(r["run_id"])
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._warned = False


class RejectedLog:
    """``mlflow_rejected.jsonl``: records MLflow refused for good, each with the reason."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def add(self, records: Sequence[Record], reason: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _append_lines(self.path, [{"record": r, "reason": sanitize(reason), "time": stamp} for r in records])

    def read(self) -> list[Record]:
        return _read_lines(self.path)

    def count(self) -> int:
        return len(self.read())


def find_or_create_run(client: Any, experiment_name: str, match: dict[str, str], tags: dict[str, str],
                       run_name: str | None) -> tuple[str, bool]:
    """The run of ``experiment_name`` whose tags include ``match``, else a new one.

    Returns ``(run_id, created)``. Experiment name, tags and run name are sanitised.
    """
    experiment_name = sanitize(experiment_name)
    tags = sanitize_mapping(tags)
    run_name = sanitize(run_name) if run_name is not None else None
    from tune_app.tracking.experiment import experiment_id

    exp_id = experiment_id(client, experiment_name)  # a new one keeps its artifacts beside a sqlite store
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(match.items()))
    runs = client.search_runs([exp_id], filter_string=query, max_results=1)
    if runs:
        return runs[0].info.run_id, False
    run = client.create_run(exp_id, tags={**tags, **match}, run_name=run_name)
    return run.info.run_id, True


def last_logged_step(client: Any, run_id: str, key: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, key)), default=0)


def reset_store_cache() -> None:
    """Forget MLflow's cached stores (and the engine of a sqlite file that is gone): the next
    call opens the store afresh.

    A SQL store whose file was deleted keeps writing to the deleted file through its
    pooled connection ("readonly database") until its engine is rebuilt.
    """
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        getattr(type(_tracking_store_registry)._get_store_with_resolved_uri, "cache_clear", lambda: None)()
        sql = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
        engines = getattr(getattr(sql, "SqlAlchemyStore", None), "_engine_map", {})
        for uri in [u for u in engines if u.startswith("sqlite:///")]:
            path = uri.removeprefix("sqlite:///").split("?", 1)[0]
            if path and path != ":memory:" and not Path(path).exists():
                engines.pop(uri).dispose()
    except Exception as exc:  # noqa: BLE001 - private APIs: best effort
        log_debug_detail(logger.name, f"could not reset MLflow's store cache: {exc}")


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class _SendFailed(Exception):
    """The store failed (an outage) at ``records[index]``; earlier records were accepted."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


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
    placeholder are resolved to the real run once its creation succeeds. ``describe_run``
    tells the writer how to recreate a real run that the store loses.
    """

    def __init__(self, buffer: MetricBuffer, client_factory: Callable[[], Any], *, experiment_name: str,
                 step_key: str = "epoch", backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.buffer = buffer
        self.rejected = RejectedLog(buffer.path.with_name(REJECTED_FILE))
        self.experiment_name = sanitize(experiment_name)
        self.step_key = step_key
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._client_factory = client_factory
        self._client: Any = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._resolved: dict[str, str] = {}  # run ref -> run id in the store now
        self._runs: dict[str, Record] = {}  # run ref -> its description (params/tags so far)
        self._described: set[str] = set()  # refs whose description is in the buffer file
        self._announced = False  # the outage's start was logged
        self._recreated = 0  # runs recreated since the outage started
        self._backoff = backoff_initial_s
        self._next_retry = 0.0 if buffer.exists() else float("inf")
        self._thread = threading.Thread(target=self._loop, name="tune_app-mlflow-writer", daemon=True)
        self._closed = False
        self._stash: Any = None
        quiet_store_loggers()
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

    def describe_run(self, run_id: str, match: dict[str, str], tags: dict[str, str], run_name: str | None,
                     experiment_name: str | None = None) -> None:
        """How to recreate existing run ``run_id`` (found again by ``match``) if the store loses it."""
        self._queue.put([{"op": "run", "run_id": run_id, "match": match, "tags": sanitize_mapping(tags), "params": {},
                          "run_name": sanitize(run_name) if run_name is not None else None,
                          "experiment": sanitize(experiment_name) if experiment_name else self.experiment_name}])

    def resolve(self, run_ref: str) -> str | None:
        return self._resolved.get(run_ref, None if run_ref.startswith(PENDING_PREFIX) else run_ref)

    def resolve_tags(self, tags: dict[str, str]) -> dict[str, str]:
        """``tags`` with a parent run reference replaced by the run id the store has now
        (left out while the parent is only a placeholder)."""
        parent = tags.get(PARENT_RUN_TAG)
        if parent is None:
            return tags
        out = dict(tags)
        run_id = self.resolve(str(parent))
        if run_id is None:
            del out[PARENT_RUN_TAG]
        else:
            out[PARENT_RUN_TAG] = run_id
        return out

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
            log_debug_detail(logger.name, f"MLflow still unreachable at close: {self.buffer.count()} record(s) "
                                          f"kept in {self.buffer.path}")
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

    def _note(self, records: Sequence[Record]) -> None:
        """Keep each run's description up to date (params and tags it has been given)."""
        for rec in records:
            op, ref = rec.get("op"), str(rec.get("run_id"))
            if op in _RUN_OPS:
                self._runs[ref] = {**rec, "tags": dict(rec.get("tags") or {}), "params": dict(rec.get("params") or {})}
            elif op in ("params", "tags") and ref in self._runs:
                self._runs[ref][op].update(rec[op])

    def _append(self, records: Sequence[Record]) -> None:
        """Buffer ``records``, preceded by the description of each run not yet described in the file."""
        described = {r["run_id"] for r in records if r.get("op") in _RUN_OPS}
        heads = []
        for ref in dict.fromkeys(r["run_id"] for r in records):
            if ref in self._described or ref in described or ref not in self._runs:
                continue
            desc = self._runs[ref]
            resolved = self._resolved.get(ref)
            heads.append({**desc, "op": "run", "run_id": ref, **({"resolved": resolved} if resolved else {})})
            described.add(ref)
        self.buffer.append([*heads, *records])
        self._described |= described

    def _handle(self, records: list[Record]) -> None:
        self._note(records)
        if self.buffer.exists():
            self._append(records)  # outage: one write for the backlog
            return
        try:
            self._send(records)
        except _SendFailed as failed:
            self._described = set()
            self._append(records[failed.index:])
            self._start_outage(failed.cause)

    def _start_outage(self, exc: BaseException) -> None:
        self._backoff = self.backoff_initial_s
        self._next_retry = time.monotonic() + self._backoff
        self._reset_client()
        if not self._announced:
            self._announced = True
            logger.warning("MLflow store unreachable: %s; buffering records in %s", short_reason(exc), self.buffer.path)
        log_debug_detail(logger.name, "MLflow store failure (records buffered)", exc)

    def _reset_client(self) -> None:
        self._client = None
        reset_store_cache()

    def _finish(self, deadline: float) -> None:
        for req in self._drain():
            req.done.set()
        while self.buffer.exists() and time.monotonic() < deadline:
            if self._replay():
                return
            time.sleep(max(0.0, min(self._next_retry, deadline) - time.monotonic()))

    def _replay(self) -> bool:
        """Send the buffer; keep in it only what MLflow has not accepted. True if it is empty."""
        records = replay_order(self.buffer.read())
        self._note(records)  # a buffer left by an earlier session: its runs' descriptions
        if not any(r.get("op") != "run" for r in records):
            self.buffer.remove()
            self._described = set()
            return True
        try:
            sent = self._send(records, replay=True)
        except _SendFailed as failed:
            keep = [r for r in records[:failed.index] if r.get("op") in _RUN_OPS] + records[failed.index:]
            keep = [{**r, "resolved": self._resolved[r["run_id"]]} if r.get("op") in _RUN_OPS
                    and r["run_id"] in self._resolved else r for r in keep]  # runs recreated by this replay
            self.buffer.rewrite(keep)
            self._described = {r["run_id"] for r in keep if r.get("op") in _RUN_OPS}
            self._next_retry = time.monotonic() + self._backoff
            log_debug_detail(logger.name, f"MLflow replay failed; {len(keep)} record(s) kept in {self.buffer.path}, "
                                          f"next try in {self._backoff:.0f} s", failed.cause)
            self._backoff = min(self._backoff * 2, self.backoff_max_s)
            self._reset_client()
            return False
        self.buffer.remove()
        self._described = set()
        self._backoff = self.backoff_initial_s
        self._next_retry = float("inf")
        self._announced = False
        recreated = f" (recreated {self._recreated} run(s) the store had lost)" if self._recreated else ""
        self._recreated = 0
        logger.warning("MLflow store back: replayed %d records from %s%s", sent, self.buffer.path, recreated)
        return True

    # --- sending -----------------------------------------------------------------------
    def _send(self, records: Sequence[Record], *, replay: bool = False) -> int:
        """Send ``records`` in order; returns how many MLflow accepted (descriptions not counted).

        A record MLflow refuses for good goes to the rejected file; a store failure raises
        ``_SendFailed`` with the index of the first record not accepted.
        """
        try:
            client = self.client()
        except Exception as exc:  # noqa: BLE001 - cannot even open the store: an outage
            raise _SendFailed(0, exc) from exc
        skip_upto: dict[str, int] = {}
        sent = 0
        i = 0
        while i < len(records):
            rec = records[i]
            op = rec.get("op")
            unit = [rec]
            while (op is None and i + len(unit) < len(records) and len(unit) < BATCH_LIMIT
                   and is_metric(records[i + len(unit)]) and records[i + len(unit)]["run_id"] == rec["run_id"]):
                unit.append(records[i + len(unit)])
            try:
                if op is None:
                    limit = skip_upto.get(rec["run_id"], 0)
                    sent += self._send_metrics(client, [r for r in unit if int(r["step"]) > limit])
                elif op in _RUN_OPS:
                    self._ensure_run(client, rec, replay, skip_upto)
                else:
                    sent += self._send_op(client, rec)
            except Exception as exc:  # noqa: BLE001 - any store failure is an outage: keep from here on
                if not (is_missing(exc) and rec["run_id"] not in self._runs and op not in _RUN_OPS):
                    raise _SendFailed(i, exc) from exc
                self._reject(unit, f"run {rec['run_id']} is not in the store and nothing describes it to "
                                   f"recreate it ({short_reason(exc)})")
            i += len(unit)
        return sent

    def _run_for(self, rec: Record) -> str | None:
        """The store's run id for ``rec``; ``None`` (record rejected) when no run is known."""
        run_id = self.resolve(rec["run_id"])
        if run_id is None:
            self._reject([rec], f"no run creation recorded for {rec['run_id']}")
        return run_id

    def _ensure_run(self, client: Any, rec: Record, replay: bool, skip_upto: dict[str, int]) -> None:
        """Resolve a run description: the known run if the store still has it, else found or created by its tags."""
        ref = rec["run_id"]
        known = self._resolved.get(ref) or rec.get("resolved") or (None if ref.startswith(PENDING_PREFIX) else ref)
        if known is not None and (not replay or self._run_exists(client, known)):
            self._resolved[ref] = known
            return
        parent = (rec.get("tags") or {}).get(PARENT_RUN_TAG)
        if parent is not None and parent != ref and parent in self._runs:
            self._ensure_run(client, self._runs[parent], replay, skip_upto)  # the parent first (recreated?)
        run_id, created = find_or_create_run(client, rec.get("experiment") or self.experiment_name,
                                             rec["match"], self.resolve_tags(rec.get("tags") or {}),
                                             rec.get("run_name"))
        self._resolved[ref] = run_id
        if known is not None:
            self._recreated += 1
            log_debug_detail(logger.name, f"MLflow: run {known} ({rec.get('run_name')}) is missing from the store; "
                                          f"{'recreated it as' if created else 'continues in'} run {run_id}")
        if created and rec.get("params"):
            self._send_op(client, {"op": "params", "run_id": ref, "params": rec["params"]})
        elif not created and known is None:
            # A restored trial re-attached while MLflow was down: never log a step twice.
            client.update_run(run_id, status="RUNNING")
            skip_upto[ref] = last_logged_step(client, run_id, self.step_key)

    @staticmethod
    def _run_exists(client: Any, run_id: str) -> bool:
        try:
            client.get_run(run_id)
        except Exception as exc:
            if is_missing(exc):
                return False
            raise
        return True

    def _send_metrics(self, client: Any, batch: list[Record]) -> int:
        from mlflow.entities import Metric

        if not batch:
            return 0
        run_id = self._run_for(batch[0])
        if run_id is None:
            self._reject(batch[1:], f"no run creation recorded for {batch[0]['run_id']}")
            return 0
        metrics = [Metric(key=r["key"], value=float(r["value"]), timestamp=int(r["timestamp"]), step=int(r["step"]))
                   for r in batch]
        return self._call_isolating(batch, lambda idx: client.log_batch(run_id, metrics=[metrics[j] for j in idx]))

    def _send_op(self, client: Any, rec: Record) -> int:
        from mlflow.entities import Param, RunTag

        run_id = self._run_for(rec)
        if run_id is None:
            return 0
        op = rec["op"]
        if op == "params":
            logged = client.get_run(run_id).data.params
            todo = {k: str(v) for k, v in rec["params"].items() if k not in logged}
            parts = [{"op": "params", "run_id": rec["run_id"], "params": {k: v}} for k, v in todo.items()]
            items = [Param(k, v) for k, v in todo.items()]
            self._call_isolating(parts, lambda idx: client.log_batch(run_id, params=[items[j] for j in idx]))
        elif op == "tags":
            resolved = self.resolve_tags(rec["tags"])
            parts = [{"op": "tags", "run_id": rec["run_id"], "tags": {k: rec["tags"][k]}} for k in resolved]
            tags = [RunTag(k, str(v)) for k, v in resolved.items()]
            self._call_isolating(parts, lambda idx: client.log_batch(run_id, tags=[tags[j] for j in idx]))
        elif op == "status" and rec["status"] == "RUNNING":
            self._call_isolating([rec], lambda idx: client.update_run(run_id, status="RUNNING"))
        elif op == "status":
            self._call_isolating([rec], lambda idx: client.set_terminated(run_id, status=rec["status"],
                                                                          end_time=rec.get("timestamp")))
        return 1

    def _call_isolating(self, parts: list[Record], call: Callable[[list[int]], Any]) -> int:
        """``call`` on every part; if MLflow refuses the content, part by part, rejecting the refused ones.

        Returns how many parts were accepted; a store failure propagates.
        """
        if not parts:
            return 0
        try:
            call(list(range(len(parts))))
            return len(parts)
        except Exception as exc:
            if not is_rejection(exc):
                raise
            if len(parts) == 1:
                self._reject(parts, short_reason(exc, 300))
                return 0
        accepted = 0
        for j, part in enumerate(parts):
            try:
                call([j])
                accepted += 1
            except Exception as exc:
                if not is_rejection(exc):
                    raise
                self._reject([part], short_reason(exc, 300))
        return accepted

    def _reject(self, records: list[Record], reason: str) -> None:
        if not records:
            return
        self.rejected.add(records, reason)
        logger.warning("MLflow refused %d record(s) for good (%s); kept in %s", len(records), reason,
                       self.rejected.path)
