"""Logging for the entry points: human-readable stderr + the study's JSONL log.

* ``setup_logging``: INFO for tune_app, WARNING for the libraries (``TUNE_APP_LOG_LEVEL``
  overrides); secrets are redacted on every handler; uncaught tracebacks are sanitised.
* ``setup_study_logging``: also ``<study>/logs/study.jsonl`` (structured, rotated, off
  the hot path; see ``tune_app.tracking.jsonlog``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tune_app.tracking.jsonlog import (  # noqa: F401 - VERBOSE_ENV, quiet_library_console: this module's API too
    VERBOSE_ENV,
    LogSession,
    QuietConsoleFilter,
    quiet_library_console,
    setup_json_logging,
    verbose,
)
from tune_app.tracking.sanitize import SanitizingFilter, install_excepthook


def _level(level: int | None) -> int:
    name = os.environ.get("TUNE_APP_LOG_LEVEL", "")
    return level if level is not None else getattr(logging, name.upper(), logging.INFO)


def setup_logging(level: int | None = None, *, verbose_console: bool | None = None) -> None:
    """INFO for tune_app, WARNING for the libraries; ``TUNE_APP_LOG_LEVEL`` overrides.

    The console is quiet unless ``verbose_console`` (``-v``, kept in ``TUNE_APP_VERBOSE`` for
    the processes this one starts): tune_app's warnings and the libraries' errors only; the
    study's JSON log (``setup_study_logging``) keeps everything at its level either way.
    """
    if verbose_console is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_console else "0"
    if not verbose():
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a file or a pipe
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    logging.getLogger("tune_app").setLevel(_level(level))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SanitizingFilter) for f in handler.filters):
            handler.addFilter(SanitizingFilter())
        if not any(isinstance(f, QuietConsoleFilter) for f in handler.filters):
            handler.addFilter(QuietConsoleFilter())
    install_excepthook()


def setup_study_logging(study_dir: Path | str, *, study_id: str, max_bytes: int = 1_000_000_000,
                        backup_count: int = 14, level: int | None = None) -> LogSession:
    """The driver's structured log: ``<study>/logs/study.jsonl`` (stderr stays as is)."""
    return setup_json_logging(Path(study_dir) / "logs" / "study.jsonl", study_id=study_id, trial_id=None,
                              max_bytes=max_bytes, backup_count=backup_count, stdout=False,
                              level=_level(level), kind="study")
