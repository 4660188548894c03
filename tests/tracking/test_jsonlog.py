"""Trial JSONL logs: fields, sanitisation, stdout, rotation by size and by day without loss."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tune_app.tracking.jsonlog import (
    SizeAndTimeRotatingFileHandler,
    close_all,
    setup_json_logging,
    setup_trial_logging,
)

log = logging.getLogger("tune_app.trainable")


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    close_all()


def read_events(paths: list[Path]) -> list[dict[str, object]]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def test_trial_log_has_the_fields_and_stdout_is_human(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_APP_VERBOSE", "1")  # -v: the trial's INFO lines reach stdout (the driver's console)
    session = setup_trial_logging(tmp_path, study_id="s1", trial_id="t7", max_bytes=10**6, backup_count=3)
    log.info("epoch %d done", 3, extra={"val_loss": 0.25})
    try:
        raise KeyError("boom")
    except KeyError:
        log.exception("failed with password=hunter2hunter2")
    session.close()
    path = tmp_path / "logs" / "trial.jsonl"
    events = read_events([path])
    assert set(events[0]) == {"timestamp", "level", "message", "component", "study_id", "trial_id", "extra"}
    assert events[0]["message"] == "epoch 3 done" and events[0]["level"] == "INFO"
    assert events[0]["component"] == "tune_app.trainable"
    assert (events[0]["study_id"], events[0]["trial_id"]) == ("s1", "t7")
    assert events[0]["extra"] == {"val_loss": 0.25}
    assert "KeyError" in str(events[1]["extra"]["exception"])  # type: ignore[index]
    assert "hunter2hunter2" not in path.read_text()
    out = capsys.readouterr().out
    assert "INFO tune_app.trainable [t7]: epoch 3 done" in out and "hunter2hunter2" not in out


def test_a_quiet_trial_prints_only_warnings_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_APP_VERBOSE", "0")
    session = setup_trial_logging(tmp_path, study_id="s1", trial_id="t7", max_bytes=10**6, backup_count=3)
    log.info("epoch %d done", 3)
    log.warning("checkpoint fell back")
    logging.getLogger("ray.train").info("Checkpoint successfully created at: somewhere")
    session.close()
    out = capsys.readouterr().out
    assert "checkpoint fell back" in out and "epoch 3 done" not in out and "Checkpoint successfully" not in out
    assert "epoch 3 done" in (tmp_path / "logs" / "trial.jsonl").read_text(), "the trial's log keeps everything"


def test_size_rotation_keeps_every_event_in_order(tmp_path: Path) -> None:
    session = setup_json_logging(tmp_path / "t.jsonl", study_id="s", trial_id="t", max_bytes=2_000,
                                 backup_count=1000, stdout=False)
    for i in range(500):
        log.info("event %d", i)
    session.close()
    files = sorted(tmp_path.glob("t.jsonl.*")) + [tmp_path / "t.jsonl"]
    assert len(files) > 10
    assert all(f.stat().st_size <= 2_000 for f in files)
    assert [e["message"] for e in read_events(files)] == [f"event {i}" for i in range(500)]


def test_rotation_keeps_only_the_last_backup_count_files(tmp_path: Path) -> None:
    session = setup_json_logging(tmp_path / "t.jsonl", study_id="s", max_bytes=500, backup_count=3, stdout=False)
    for i in range(200):
        log.info("event %d", i)
    session.close()
    rotated = sorted(tmp_path.glob("t.jsonl.*"))
    assert len(rotated) == 3
    messages = [e["message"] for e in read_events([*rotated, tmp_path / "t.jsonl"])]
    assert messages[-1] == "event 199"
    assert messages == [f"event {i}" for i in range(200 - len(messages), 200)]  # the newest, contiguous


def test_daily_rotation(tmp_path: Path) -> None:
    handler = SizeAndTimeRotatingFileHandler(tmp_path / "d.jsonl", max_bytes=10**9, backup_count=14)
    assert handler.rollover_at - time.time() <= 86400
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "day 1"}))
    handler.rollover_at = time.time() - 1  # midnight passed
    handler.handle(logging.makeLogRecord({"msg": "day 2"}))
    handler.close()
    rotated = list(tmp_path.glob("d.jsonl.*"))
    assert len(rotated) == 1 and rotated[0].read_text() == "day 1\n"
    assert (tmp_path / "d.jsonl").read_text() == "day 2\n"


def test_setup_again_replaces_the_previous_trial(tmp_path: Path) -> None:
    setup_trial_logging(tmp_path / "a", study_id="s", trial_id="a", stdout=False)
    log.info("first")
    setup_trial_logging(tmp_path / "b", study_id="s", trial_id="b", stdout=False).close()
    log.info("not logged anywhere")
    assert [e["message"] for e in read_events([tmp_path / "a/logs/trial.jsonl"])] == ["first"]
    assert read_events([tmp_path / "b/logs/trial.jsonl"]) == []
    root_queue_handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_QueueHandler"]
    assert root_queue_handlers == []


_EXIT_IN_GC = """
import gc, os, signal, sys
from tune_app.tracking.jsonlog import quiet_exit_requests

def sigterm_handler(signum, frame):  # what Ray's worker installs
    sys.exit(1)

signal.signal(signal.SIGTERM, sigterm_handler)
if sys.argv[1] == "quiet":
    quiet_exit_requests()

class Collected:
    def __del__(self):
        if sys.argv[2] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # lands while the collector's callback runs
            for _ in range(1000):
                pass
        else:
            raise ValueError("a real bug in a finaliser")

Collected()
gc.collect()
print("still running")
"""


@pytest.mark.parametrize(("mode", "cause", "reported"), [
    ("quiet", "sigterm", False),   # Ray's exit request during garbage collection: not on the console
    ("default", "sigterm", True),  # what the worker printed before (the check can fail)
    ("quiet", "bug", True),        # any other unraisable exception keeps Python's report
])
def test_an_exit_request_raised_in_a_finaliser_is_not_printed(mode: str, cause: str, reported: bool) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TUNE_APP_VERBOSE"}
    proc = subprocess.run([sys.executable, "-c", _EXIT_IN_GC, mode, cause], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "still running", proc.stderr
    assert ("Exception ignored" in proc.stderr) is reported, proc.stderr
    if cause == "bug":
        assert "a real bug in a finaliser" in proc.stderr
