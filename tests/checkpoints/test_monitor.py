"""StorageMonitor: levels, logs, flag, and a thread that starts and stops promptly."""

from __future__ import annotations

import logging
import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from tune_app.checkpoints.monitor import StorageMonitor

Usage = namedtuple("Usage", "total used free")
TOTAL = 1000


class FakeDisk:
    """disk_usage stand-in whose free fraction the test sets."""

    def __init__(self, free_fraction: float) -> None:
        self.free = int(TOTAL * free_fraction)
        self.calls = 0
        self.fail = False

    def __call__(self, path: Any) -> Usage:
        self.calls += 1
        if self.fail:
            raise OSError("statvfs failed")
        return Usage(TOTAL, TOTAL - self.free, self.free)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _monitor(disk: FakeDisk, clock: FakeClock, **kw: Any) -> StorageMonitor:
    return StorageMonitor(Path("/study"), disk_usage=disk, clock=clock, **kw)


def test_levels_flag_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    disk, clock = FakeDisk(0.5), FakeClock()
    mon = _monitor(disk, clock)
    assert mon.level == "ok" and not mon.needs_pruning and mon.status is None
    caplog.set_level(logging.INFO, logger="tune_app.checkpoints.monitor")

    st = mon.check_now()
    assert (st.level, st.free, st.total, st.used) == ("ok", 500, TOTAL, 500)
    assert st.free_fraction == pytest.approx(0.5)
    assert caplog.records[-1].levelno == logging.INFO

    disk.free = 80  # 8% free
    assert mon.check_now().level == "warning"
    assert mon.needs_pruning and mon.level == "warning"
    assert caplog.records[-1].levelno == logging.WARNING
    assert "8.0% free" in caplog.records[-1].getMessage()

    disk.free = 30  # 3% free
    assert mon.check_now().level == "critical"
    assert mon.needs_pruning
    assert caplog.records[-1].levelno == logging.ERROR

    disk.free = 100  # exactly 10%: not below the threshold
    assert mon.check_now().level == "ok"
    assert not mon.needs_pruning
    assert caplog.records[-1].levelno == logging.INFO


def test_info_every_ten_minutes_not_every_check(caplog: pytest.LogCaptureFixture) -> None:
    disk, clock = FakeDisk(0.5), FakeClock()
    mon = _monitor(disk, clock)
    caplog.set_level(logging.INFO, logger="tune_app.checkpoints.monitor")
    for _ in range(10):  # 10 checks within 9 minutes: one INFO line
        mon.check_now()
        clock.t += 60
    assert len(caplog.records) == 1
    clock.t = 600
    mon.check_now()
    assert len(caplog.records) == 2
    # A level change logs at once, whatever the clock.
    disk.free = 40
    mon.check_now()
    assert len(caplog.records) == 3 and caplog.records[-1].levelno == logging.ERROR


def test_thread_samples_and_stops_promptly() -> None:
    disk, clock = FakeDisk(0.5), FakeClock()
    with _monitor(disk, clock, interval_s=0.01) as mon:
        deadline = time.monotonic() + 5
        while disk.calls < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disk.calls >= 5
        assert mon.running
        disk.free = 20
        deadline = time.monotonic() + 5
        while not mon.needs_pruning and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mon.level == "critical"
    assert not mon.running


def test_stop_does_not_wait_for_the_interval() -> None:
    disk = FakeDisk(0.5)
    mon = StorageMonitor(Path("/study"), interval_s=3600, disk_usage=disk).start()
    thread = mon._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 1.0
    assert not thread.is_alive()
    assert disk.calls == 1  # the synchronous first check in start()


def test_thread_survives_a_failing_check(caplog: pytest.LogCaptureFixture) -> None:
    disk = FakeDisk(0.5)
    mon = StorageMonitor(Path("/study"), interval_s=0.01, disk_usage=disk).start()
    disk.fail = True
    seen = threading.Event()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not seen.is_set():
        if any("failed" in r.getMessage() for r in caplog.records):
            seen.set()
        time.sleep(0.01)
    disk.fail = False
    calls = disk.calls
    deadline = time.monotonic() + 5
    while disk.calls <= calls + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    mon.stop()
    assert seen.is_set() and disk.calls > calls + 2


def test_real_disk_usage(tmp_path: Path) -> None:
    st = StorageMonitor(tmp_path).check_now()
    assert st.total > 0 and 0.0 <= st.free_fraction <= 1.0


def test_bad_thresholds_rejected() -> None:
    with pytest.raises(ValueError, match="error_free_fraction"):
        StorageMonitor(Path("/"), warn_free_fraction=0.05, error_free_fraction=0.10)
    with pytest.raises(ValueError, match="interval_s"):
        StorageMonitor(Path("/"), interval_s=0)
