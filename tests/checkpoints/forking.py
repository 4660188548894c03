"""SIGKILL a forked child in the middle of a write loop (the checkpoint kill tests)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def kill_forked_loop(step: Callable[[int], None], delay_s: float) -> None:
    """Fork a child that runs ``step(0)``, ``step(1)``, ... until it dies; once it has started,
    wait ``delay_s`` and SIGKILL it (and reap it)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: loop until killed
        try:
            os.close(read_fd)
            os.write(write_fd, b"r")
            i = 0
            while True:
                step(i)
                i += 1
        finally:
            os._exit(1)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"r"
    os.close(read_fd)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
