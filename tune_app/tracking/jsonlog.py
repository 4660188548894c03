"""Structured JSONL logs per trial and per study, written off the hot path.

``setup_trial_logging`` / ``setup_json_logging`` put a ``QueueHandler`` on the root logger
(a log call only copies the record into an in-memory queue) and a ``QueueListener``
thread that writes to:

* ``<dir>/logs/<name>.jsonl``: one JSON object per line with ``timestamp, level, message,
  component, study_id, trial_id, extra``; rotated at local midnight or when the next
  record would pass ``max_bytes``, keeping the last ``backup_count`` rotated files.
  Rotated files get unique names (``trial.jsonl.20250101T120000-123456789``), so no rotation
  ever overwrites an older file, and the record that triggers a rotation is written to
  the new file: no event is dropped;
* stdout (optional): the same records, human-readable.

Both handlers carry ``SanitizingFilter``: secrets never reach a file or the console.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import datetime as dt
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from pathlib import Path

from tune_app.tracking.sanitize import STANDARD_ATTRS, SanitizingFilter

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trial_id)s]: %(message)s"

#: ``1`` when the command was run with ``-v`` (inherited by the Ray workers it starts).
VERBOSE_ENV = "TUNE_APP_VERBOSE"


def verbose() -> bool:
    """``-v``: everything on the console (Tune's tables, worker output, INFO logs)."""
    return os.environ.get(VERBOSE_ENV, "") == "1"


class QuietConsoleFilter(logging.Filter):
    """The quiet console: tune_app's warnings and errors, the libraries' errors, nothing marked ``console=False``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        if verbose():
            return True
        if record.name == "tune_app" or record.name.startswith("tune_app."):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


def quiet_library_console(name: str) -> None:
    """Put the quiet-console rule on the handlers a library attached to its own logger (Ray does)."""
    for handler in logging.getLogger(name).handlers:
        if not any(isinstance(f, QuietConsoleFilter) for f in handler.filters):
            handler.addFilter(QuietConsoleFilter())


def quiet_exit_requests() -> None:
    """Keep a worker's "Exception ignored" report of an exit request off the quiet console.

    Ray stops an idle or finished worker with SIGTERM, and its handler raises ``SystemExit``
    in whatever Python code runs at that moment. When that is a garbage-collector callback
    (a ``WeakSet``'s ``_remove``, as a trial's thread is collected), Python cannot raise it and
    prints a traceback to stderr, which reaches the driver's console. Such a
    ``SystemExit``/``KeyboardInterrupt`` is a request to end, not an error: it goes to the
    process's log (DEBUG). Any other unraisable exception still gets Python's report.
    Idempotent; a no-op under ``-v``.
    """
    if verbose() or getattr(sys.unraisablehook, "_tune_app_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, (SystemExit, KeyboardInterrupt)):
            with contextlib.suppress(Exception):  # logging may already be shut down
                logging.getLogger(__name__).debug("exit request raised in %r; the process ends",
                                                  unraisable.object, extra={"console": False})
            return
        previous(unraisable)

    hook._tune_app_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class ContextFilter(logging.Filter):
    """Stamps ``study_id`` and ``trial_id`` on records that do not carry their own."""

    def __init__(self, study_id: str | None, trial_id: str | None) -> None:
        super().__init__()
        self.study_id = study_id
        self.trial_id = trial_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "study_id", None) is None:
            record.study_id = self.study_id
        if getattr(record, "trial_id", None) is None:
            record.trial_id = self.trial_id if self.trial_id is not None else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: the fixed fields plus ``extra`` (user attributes)."""

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items()
                 if k not in STANDARD_ATTRS and k not in ("study_id", "trial_id") and not k.startswith("_")}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra["exception"] = record.exc_text
        trial_id = getattr(record, "trial_id", None)
        payload = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": record.getMessage(),
            "component": record.name,
            "study_id": getattr(record, "study_id", None),
            "trial_id": None if trial_id == "-" else trial_id,
            "extra": extra,
        }
        return json.dumps(payload, default=str, ensure_ascii=False)


class SizeAndTimeRotatingFileHandler(logging.handlers.BaseRotatingHandler):
    """Rotates at local midnight or before a record would pass ``max_bytes``."""

    def __init__(self, filename: str | Path, *, max_bytes: int, backup_count: int,
                 encoding: str = "utf-8") -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(filename), "a", encoding=encoding, delay=False)
        self.max_bytes = int(max_bytes)
        self.backup_count = int(backup_count)
        self.rollover_at = self._next_midnight(time.time())

    @staticmethod
    def _next_midnight(now: float) -> float:
        today = dt.datetime.fromtimestamp(now).date()
        return dt.datetime.combine(today + dt.timedelta(days=1), dt.time()).timestamp()

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - logging API
        if self.stream is None:
            self.stream = self._open()
        size = self.stream.tell()
        if size == 0:
            return False  # never rotate an empty file (a record bigger than max_bytes still lands)
        if time.time() >= self.rollover_at:
            return True
        if self.max_bytes > 0:
            line = self.format(record) + self.terminator
            return size + len(line.encode(self.encoding or "utf-8")) > self.max_bytes
        return False

    def rotated_files(self) -> list[Path]:
        base = Path(self.baseFilename)
        return sorted(p for p in base.parent.glob(base.name + ".*") if p.is_file())

    def doRollover(self) -> None:  # noqa: N802 - logging API
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        now_ns = time.time_ns()
        while True:  # names sort chronologically: local time, then the nanoseconds
            stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now_ns / 1e9))
            target = f"{self.baseFilename}.{stamp}-{now_ns % 10**9:09d}"
            if not os.path.exists(target):
                break
            now_ns += 1
        os.replace(self.baseFilename, target)
        for old in self.rotated_files()[: max(0, len(self.rotated_files()) - self.backup_count)]:
            old.unlink(missing_ok=True)
        self.rollover_at = self._next_midnight(time.time())
        self.stream = self._open()


class _QueueHandler(logging.handlers.QueueHandler):
    """Copies the record with its message rendered; formatting happens in the listener."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        rec = copy.copy(record)
        rec.msg = record.getMessage()
        rec.args = None
        if rec.exc_info:
            rec.exc_text = logging.Formatter().formatException(rec.exc_info)
            rec.exc_info = None
        return rec


class LogSession:
    """A running queue listener and its handlers; ``close()`` flushes and detaches."""

    def __init__(self, path: Path, q: queue.Queue[logging.LogRecord], queue_handler: logging.Handler,
                 listener: logging.handlers.QueueListener, file_handler: SizeAndTimeRotatingFileHandler) -> None:
        self.path = path
        self.queue = q
        self.queue_handler = queue_handler
        self.listener = listener
        self.file_handler = file_handler
        self.closed = False

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        q = self.queue
        deadline = time.monotonic() + 5
        while q.unfinished_tasks and time.monotonic() < deadline:  # task_done() after each record
            time.sleep(0.001)
        for h in self.listener.handlers:
            h.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        logging.getLogger().removeHandler(self.queue_handler)
        self.listener.stop()  # processes everything still queued, then joins
        for h in self.listener.handlers:
            h.close()

    def __enter__(self) -> LogSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SESSIONS: dict[str, LogSession] = {}


def setup_json_logging(path: Path | str, *, study_id: str | None, trial_id: str | None = None,
                       max_bytes: int = 1_000_000_000, backup_count: int = 14, stdout: bool = False,
                       level: int = logging.INFO, kind: str = "default") -> LogSession:
    """Route log records (``tune_app`` at ``level``, others at WARNING) to a JSONL file.

    Idempotent per ``kind``: a second call (e.g. the next trial in a reused actor)
    closes the previous session first.
    """
    previous = _SESSIONS.pop(kind, None)
    if previous is not None:
        previous.close()
    path = Path(path)
    filters: list[logging.Filter] = [ContextFilter(study_id, trial_id), SanitizingFilter()]
    file_handler = SizeAndTimeRotatingFileHandler(path, max_bytes=max_bytes, backup_count=backup_count)
    file_handler.setFormatter(JsonFormatter())
    handlers: list[logging.Handler] = [file_handler]
    if stdout:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(HUMAN_FORMAT, datefmt="%H:%M:%S"))
        console.addFilter(QuietConsoleFilter())  # a trial's stdout reaches the driver's console
        handlers.append(console)
        quiet_library_console("ray")  # e.g. "Checkpoint successfully created at: ..." at every report
    for h in handlers:
        for f in filters:
            h.addFilter(f)
    q: queue.Queue[logging.LogRecord] = queue.Queue()  # unbounded: a burst never drops records
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=True)
    queue_handler = _QueueHandler(q)
    root = logging.getLogger()
    root.addHandler(queue_handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    logging.getLogger("tune_app").setLevel(level)
    listener.start()
    session = LogSession(path, q, queue_handler, listener, file_handler)
    _SESSIONS[kind] = session
    atexit.register(session.close)
    return session


def setup_trial_logging(trial_dir: Path | str, *, study_id: str, trial_id: str,
                        max_bytes: int = 1_000_000_000, backup_count: int = 14,
                        stdout: bool = True) -> LogSession:
    """Call first thing in the trainable: ``<trial_dir>/logs/trial.jsonl`` + stdout."""
    return setup_json_logging(Path(trial_dir) / "logs" / "trial.jsonl", study_id=study_id, trial_id=trial_id,
                              max_bytes=max_bytes, backup_count=backup_count, stdout=stdout, kind="trial")


def active_session(kind: str) -> LogSession | None:
    return _SESSIONS.get(kind)


def close_all() -> None:
    for kind in list(_SESSIONS):
        _SESSIONS.pop(kind).close()


