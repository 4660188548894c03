"""Checkpoint and storage errors, torch-free so entry points can catch them cheaply."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class CheckpointError(Exception):
    """Base class of checkpoint store errors."""


class CheckpointWriteError(CheckpointError, OSError):
    """A save failed (disk full, I/O error...); nothing partial is left visible.

    ``errno`` is the errno of the underlying :class:`OSError` (e.g. ``ENOSPC``).
    """


class CorruptCheckpointError(CheckpointError):
    """A checkpoint failed verification; ``bad_file`` and ``problem`` say why."""

    def __init__(self, path: Path, bad_file: str | None, problem: str) -> None:
        self.path = Path(path)
        self.bad_file = bad_file
        self.problem = problem
        where = f"{self.path / bad_file}" if bad_file else f"{self.path}"
        super().__init__(f"corrupt checkpoint {self.path}: {where}: {problem}")


class IncompatibleCheckpointError(CheckpointError):
    """The saved compat metadata does not match the current run."""

    def __init__(self, message: str, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.differences = dict(differences)
        super().__init__(message)


class InsufficientStorageError(RuntimeError):
    """Not enough free space for the projected checkpoint; the message says what to do."""
