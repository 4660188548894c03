"""One command at a time per study: an advisory file lock in the study folder.

``run`` (start and resume), ``evaluate`` and ``cleanup --execute`` hold
``<study>/.study.lock`` (``fcntl.flock``) for as long as they run. A second command on
the same study refuses at once with a :class:`StudyLockedError` naming the holder's PID,
host, command and start time (exit 2), instead of running a second copy of the study
next to the first (duplicated trials, MLflow runs and metric steps).

The kernel releases a ``flock`` when its holder dies, however it dies (SIGKILL
included), so a lock left by a dead process is simply taken over: the file's old
contents only say who held it last. Locks are per process and re-entrant: ``run``
evaluating a finished study takes the lock it already holds. Ray workers never inherit
the descriptor (Python opens files non-inheritable), so a worker outliving its driver
does not keep a study locked.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = ".study.lock"

#: Locks this process holds: study folder -> (open lock file, depth).
_HELD: dict[Path, tuple[Any, int]] = {}


class StudyLockedError(RuntimeError):
    """Another live process holds the study's lock."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``PID 123 on host h since 2026-12-02T04:00:00 (python -m tune_app.run ...)``."""
    if not holder:
        return "another process (no details recorded)"
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
            f" ({holder.get('command', '?')})")


@contextmanager
def study_lock(study_dir: Path, *, command: str | None = None) -> Iterator[None]:
    """Hold ``study_dir``'s lock for the block; :class:`StudyLockedError` if another process holds it."""
    from tune_app.tracking.sanitize import sanitize

    key = Path(study_dir).resolve()
    if key in _HELD:
        fh, depth = _HELD[key]
        _HELD[key] = (fh, depth + 1)
        try:
            yield
        finally:
            fh, depth = _HELD[key]
            _HELD[key] = (fh, depth - 1)
        return
    key.mkdir(parents=True, exist_ok=True)
    path = key / LOCK_FILE
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StudyLockedError(
            f"study {key} is in use by {describe_holder(_holder(path))}. Wait for it to end, or stop "
            f"it (Ctrl-C, or kill that PID) and run your command again; two commands on one study at "
            f"once would duplicate trials and metrics") from None
    previous = _holder(path)
    if previous.get("pid") not in (None, os.getpid()):
        logger.info("took over the lock of %s: that process is gone", describe_holder(previous))
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": sanitize(command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))}
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(holder) + "\n")
    fh.flush()
    _HELD[key] = (fh, 1)
    try:
        yield
    finally:
        del _HELD[key]
        fh.close()  # closing the descriptor releases the flock
