"""p50/p95/p99 latency of the hot-path log calls (target: p95 <= 1 ms).

* ``noop``: an empty function call (baseline of the timing loop itself);
* ``trial logger``: ``logging.getLogger("tune_app.trainable").info(...)`` with
  ``setup_trial_logging`` active (queue handler; file + stdout written by a thread);
* ``mlflow enqueue``: ``BufferedMlflowWriter.log_metrics`` of one epoch's 12 metrics
  (the writer thread sends to a SQLite MLflow store meanwhile).

``python benchmarks/bench_log_latency.py [--n 5000]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune_app.tracking.buffer import BufferedMlflowWriter, MetricBuffer  # noqa: E402
from tune_app.tracking.jsonlog import setup_trial_logging  # noqa: E402


def measure(name: str, call: Callable[[int], None], n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    q = statistics.quantiles(samples, n=100)
    row = {"p50": q[49], "p95": q[94], "p99": q[98], "max": max(samples)}
    print(f"{name:<16} p50 {row['p50']:8.1f} us  p95 {row['p95']:8.1f} us  p99 {row['p99']:8.1f} us  "
          f"max {row['max']:9.1f} us")
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-log-"))
    devnull = open(os.devnull, "w")  # noqa: SIM115 - stdout handler writes here, not the terminal
    real_stdout, sys.stdout = sys.stdout, devnull
    session = setup_trial_logging(tmp / "trial", study_id="bench", trial_id="t0")
    sys.stdout = real_stdout
    log = logging.getLogger("tune_app.trainable")

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    writer = BufferedMlflowWriter(MetricBuffer(tmp / "mlflow_buffer.jsonl"), lambda: MlflowClient(uri),
                                  experiment_name="bench")
    keys = [f"metric_{k}" for k in range(12)]

    def noop(i: int) -> None:
        return None

    def log_call(i: int) -> None:
        log.info("epoch %d step %d loss %.4f", i // 100, i, 0.5, extra={"lr": 1e-4})

    def enqueue(i: int) -> None:
        writer.log_metrics(run_id, [(k, 0.5, i + 1, 1_700_000_000_000 + i) for k in keys])

    print(f"n = {args.n} calls each; python {sys.version.split()[0]}; {os.cpu_count()} cpus")
    rows = {"noop": measure("noop (baseline)", noop, args.n),
            "log": measure("trial logger", log_call, args.n),
            "enqueue": measure("mlflow enqueue", enqueue, args.n)}
    t0 = time.perf_counter()
    session.close()
    writer.close(120)
    print(f"drain after the loop (off the hot path): {time.perf_counter() - t0:.2f} s")
    ok = all(r["p95"] <= 1000 for r in rows.values())
    print("p95 <= 1 ms:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
