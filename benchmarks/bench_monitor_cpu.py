"""CPU cost of the StorageMonitor thread.

    python benchmarks/bench_monitor_cpu.py [SECONDS] [--path DIR]

Runs two monitors side by side for SECONDS (default 60) of wall time: one at
the default 60 s interval and one at 1 s. Each thread measures its own CPU time
with ``time.thread_time``; prints CPU/wall (target < 0.1%).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tune_app.checkpoints.monitor import StorageMonitor, StorageStatus


class MeasuredMonitor(StorageMonitor):
    """A StorageMonitor whose watcher thread records its own CPU time."""

    cpu_s: float = 0.0
    checks: int = 0

    def check_now(self) -> StorageStatus:
        self.checks += 1
        return super().check_now()

    def _run(self) -> None:
        t0 = time.thread_time()
        try:
            super()._run()
        finally:
            self.cpu_s = time.thread_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("seconds", nargs="?", type=float, default=60.0)
    parser.add_argument("--path", type=Path, default=Path.cwd())
    args = parser.parse_args()
    monitors = {
        "60 s (default)": MeasuredMonitor(args.path),
        "1 s": MeasuredMonitor(args.path, interval_s=1.0),
    }
    t0 = time.monotonic()
    for mon in monitors.values():
        mon.start()
    time.sleep(args.seconds)
    for mon in monitors.values():
        mon.stop()
    wall = time.monotonic() - t0
    print(f"wall {wall:.1f} s on {args.path}")
    for name, mon in monitors.items():
        pct = 100 * mon.cpu_s / wall
        print(
            f"interval {name:>15}: checks {mon.checks:4d}  thread CPU {mon.cpu_s * 1e3:8.3f} ms  = {pct:.5f}% of wall"
        )


if __name__ == "__main__":
    main()
