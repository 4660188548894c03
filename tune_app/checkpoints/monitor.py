"""Free-space watcher: a daemon thread that samples disk usage and raises a flag.

It only observes; a Tune callback reads :attr:`StorageMonitor.needs_pruning` /
:attr:`StorageMonitor.level` and escalates retention.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Level", "StorageMonitor", "StorageStatus"]

_LOG = logging.getLogger(__name__)

Level = Literal["ok", "warning", "critical"]


class _Usage(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def free(self) -> int: ...


@dataclass(frozen=True)
class StorageStatus:
    """One disk-usage sample and its level."""

    total: int
    used: int
    free: int
    free_fraction: float
    level: Level


_LOG_LEVELS: dict[Level, int] = {
    "ok": logging.INFO,
    "warning": logging.WARNING,
    "critical": logging.ERROR,
}


class StorageMonitor:
    """Sample free space on ``path``'s filesystem every ``interval_s`` in a daemon thread.

    Levels: ``"warning"`` below ``warn_free_fraction`` (10%), ``"critical"`` below
    ``error_free_fraction`` (5%), else ``"ok"``. Logging: WARNING / ERROR / INFO
    for those levels, immediately when the level changes and then at most every
    ``info_every_s`` while it stays. The thread sleeps in ``Event.wait`` (no
    polling), so its CPU cost is one ``statvfs`` per interval. Use as a context
    manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        interval_s: float = 60.0,
        warn_free_fraction: float = 0.10,
        error_free_fraction: float = 0.05,
        info_every_s: float = 600.0,
        disk_usage: Callable[[Any], _Usage] = shutil.disk_usage,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = _LOG,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not 0 <= error_free_fraction <= warn_free_fraction <= 1:
            raise ValueError(
                "need 0 <= error_free_fraction <= warn_free_fraction <= 1, got "
                f"{error_free_fraction} and {warn_free_fraction}"
            )
        self.path = Path(path)
        self.interval_s = interval_s
        self.warn_free_fraction = warn_free_fraction
        self.error_free_fraction = error_free_fraction
        self.info_every_s = info_every_s
        self._disk_usage = disk_usage
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: StorageStatus | None = None
        self._last_logged: tuple[Level, float] | None = None

    # ------------------------------------------------------------------ state

    @property
    def status(self) -> StorageStatus | None:
        """The latest sample (None before the first check)."""
        with self._lock:
            return self._status

    @property
    def level(self) -> Level:
        """Level of the latest sample; ``"ok"`` before the first check."""
        with self._lock:
            return self._status.level if self._status else "ok"

    @property
    def needs_pruning(self) -> bool:
        """True from the ``"warning"`` level down (free space below ``warn_free_fraction``):
        retention should act now."""
        return self.level != "ok"

    # ------------------------------------------------------------------ checks

    def _classify(self, free_fraction: float) -> Level:
        if free_fraction < self.error_free_fraction:
            return "critical"
        if free_fraction < self.warn_free_fraction:
            return "warning"
        return "ok"

    def check_now(self) -> StorageStatus:
        """Sample disk usage now, update the level and log as configured."""
        usage = self._disk_usage(self.path)
        fraction = usage.free / usage.total if usage.total else 0.0
        status = StorageStatus(
            usage.total, usage.used, usage.free, fraction, self._classify(fraction)
        )
        now = self._clock()
        with self._lock:
            self._status = status
            last = self._last_logged
            due = last is None or last[0] != status.level or now - last[1] >= self.info_every_s
            if due:
                self._last_logged = (status.level, now)
        if due:
            self._log.log(
                _LOG_LEVELS[status.level],
                "storage %s: %.1f%% free (%.2f GB of %.2f GB) on %s",
                status.level,
                100 * fraction,
                usage.free / 1e9,
                usage.total / 1e9,
                self.path,
            )
        return status

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_now()
            except Exception:  # keep watching: one failed statvfs must not end the thread
                self._log.exception("storage check of %s failed", self.path)

    def start(self) -> StorageMonitor:
        """Check once synchronously (errors surface here), then watch in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self.check_now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="StorageMonitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread; returns as soon as it has exited (it wakes immediately)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> StorageMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
