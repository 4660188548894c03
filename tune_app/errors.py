"""The errors a user can fix, and how entry points print them (one message, no traceback)."""

from __future__ import annotations

from tune_app.checkpoints.preflight import InsufficientStorageError
from tune_app.checkpoints.store import CheckpointWriteError, IncompatibleCheckpointError
from tune_app.config import ConfigError
from tune_app.data.redsm5 import DataError
from tune_app.hub import HubAccessError

#: Exceptions whose message tells the user what to do; entry points catch exactly these.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    HubAccessError,
    InsufficientStorageError,
    IncompatibleCheckpointError,
    CheckpointWriteError,
)


def format_error(exc: BaseException) -> str:
    """``error: <message>`` for the known error kinds."""
    return f"error: {exc}"
