"""The study lock: one command per study, a dead holder's lock taken over, re-entrant in a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_app.study_lock import LOCK_FILE, StudyLockedError, study_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom tune_app.study_lock import study_lock\n"
        "with study_lock(Path(sys.argv[1]), command='holder'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _holder(study: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(study)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(StudyLockedError) as err, study_lock(tmp_path):
            pass
        message = str(err.value)
        assert f"PID {proc.pid}" in message and "holder" in message and str(tmp_path) in message
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == proc.pid  # its record is still there
    with study_lock(tmp_path, command="next"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_re_entrant_in_one_process_and_released_after(tmp_path: Path) -> None:
    with study_lock(tmp_path), study_lock(tmp_path):
        pass
    # Released: another process can take it now.
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        assert proc.stdout.readline().strip() == "held" and time.monotonic() < deadline
    finally:
        proc.kill()
        proc.wait()


def test_secrets_in_the_command_are_not_recorded(tmp_path: Path) -> None:
    with study_lock(tmp_path, command="python -m tune_app.run tracking.tracking_uri=http://u:hunter2pass@h"):
        assert "hunter2pass" not in (tmp_path / LOCK_FILE).read_text()
