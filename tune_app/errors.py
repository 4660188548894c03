"""The errors a user can fix, and how entry points print them (one message, no traceback)."""

from __future__ import annotations

from tune_app.checkpoints.errors import (
    CheckpointWriteError,
    IncompatibleCheckpointError,
    InsufficientStorageError,
)
from tune_app.config import ConfigError
from tune_app.data.redsm5 import DataError
from tune_app.hub import HubAccessError
from tune_app.study_lock import StudyLockedError


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of GPU memory; the message lists what to lower (the study goes on)."""


#: Exceptions whose message tells the user what to do; entry points catch exactly these.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    TrialOutOfMemoryError,
    ConfigError,
    DataError,
    HubAccessError,
    InsufficientStorageError,
    IncompatibleCheckpointError,
    CheckpointWriteError,
    StudyLockedError,
)


def format_error(exc: BaseException) -> str:
    """``error: <message>`` for the known error kinds."""
    return f"error: {exc}"
