"""MLflow outages stay quiet on the console; their details go to the study log at DEBUG.

MLflow's SQL store logs a full SQLAlchemy traceback (ERROR) for every failed call, and
its HTTP client logs retries: an outage printed dozens of tracebacks. ``quiet_store_loggers``
diverts those libraries' records from the console to ``<study>/logs/study.jsonl`` at
DEBUG; the writer itself logs one line when an outage starts and one when it ends.
"""

from __future__ import annotations

import logging
import threading

#: Loggers whose records are store noise during an outage (every failure reaches us as an exception).
NOISY_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "mlflow.utils.rest_utils",
                 "mlflow.tracking._tracking_service.client", "sqlalchemy", "sqlalchemy.engine",
                 "sqlalchemy.pool", "alembic", "alembic.runtime.migration", "urllib3.connectionpool")
_LOCK = threading.Lock()


def debug_to_study_log(record: logging.LogRecord) -> None:
    """Write ``record`` at DEBUG to the study's JSONL log only (never the console); dropped without one."""
    from tune_app.tracking.jsonlog import active_session

    session = active_session("study")
    if session is None or session.closed:
        return
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    session.queue_handler.handle(record)


def log_debug_detail(name: str, message: str, exc: BaseException | None = None) -> None:
    """``message`` (+ the traceback of ``exc``) at DEBUG in the study log only."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.getLogger(name).makeRecord(name, logging.DEBUG, __file__, 0, message, (), exc_info)
    debug_to_study_log(record)


class _ToStudyLog(logging.Filter):
    """On a library logger: the record goes to the study log at DEBUG instead of any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        debug_to_study_log(record)
        return False


def quiet_store_loggers() -> None:
    """Divert the store libraries' records (tracebacks included) to the study log; idempotent."""
    with _LOCK:
        for name in NOISY_LOGGERS:
            lg = logging.getLogger(name)
            if not any(isinstance(f, _ToStudyLog) for f in lg.filters):
                lg.addFilter(_ToStudyLog())


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (SQLAlchemy's ``(driver.Error) ...`` line when there is one),
    at most ``limit`` characters."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    db_error = [line for line in text if line.startswith("(") and "Error) " in line]
    text = db_error or text
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."

