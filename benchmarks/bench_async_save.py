"""Training-loop stall per epoch: synchronous vs background (asynchronous) checkpoint save.

    python benchmarks/bench_async_save.py [--layers 8] [--hidden 768] [--repeat 3] [--epoch-s 10] [--dir DIR]

A randomly initialised BERT encoder (``transformers.BertConfig``, no download; the defaults
give ~85M parameters, ~340 MB of float32 weights) with AdamW state populated by one step.
Each round, interleaved:

- **sync**: ``guard.save_epoch_checkpoint`` of the live state; the loop is blocked for all of it
  (the stall), then the next epoch trains;
- **async**: snapshot (``StateSnapshotter.take_deferred``, as the trainable does on CPU: the
  weights and AdamW state are copied by the writer while the next batch runs forward and
  backward, and the optimiser step waits for that copy) and start the write
  (``AsyncCheckpointer``), then the next epoch trains as long, polling between steps,
  then waits for the write if it is still running. The stall is what blocks the loop: snapshot
  + start + the waits before optimiser steps + the polls that deliver + that final wait.

The next epoch trains for ``--epoch-s`` seconds in both modes. A trial's first snapshot also
allocates (and page-faults) its buffers; that one-off cost is timed before the rounds and
printed apart, the rounds measure the steady state. Also printed: how much slower training
ran beside the background write than after the synchronous save (steps per second; the writer
competes for CPU and memory bandwidth), which the stall does not count. Prints min and median
over ``--repeat`` rounds; target: async stall <= 10 % of the synchronous save.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tune_app.checkpoints.async_save import AsyncCheckpointer, StateSnapshotter
from tune_app.checkpoints.guard import save_epoch_checkpoint, write_epoch_checkpoint
from tune_app.checkpoints.store import (
    capture_rng_state,
    estimate_checkpoint_bytes,
    state_dict_nbytes,
)

COMPAT = {"architecture": {"encoder": "bench-bert"}, "heads": {}}


Step = Callable[[Callable[[], object] | None], None]


def build(layers: int, hidden: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, Step]:
    """The encoder, AdamW with its state populated (one step), and a training step that calls its
    argument (``before_update``) between backward and the optimiser step."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                     intermediate_size=4 * hidden)
    model = BertModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, cfg.vocab_size, (2, 32))

    def step(before_update: Callable[[], object] | None = None) -> None:
        out = model(input_ids=ids).last_hidden_state
        out.float().pow(2).mean().backward()
        if before_update is not None:
            before_update()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(None)
    return model, opt, step


def live_state(model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
    return {"model_state": model.state_dict(), "optimizer_state": opt.state_dict(),
            "trainer_state": {"epoch": epoch, "metrics": {"val_macro_f1": 0.5}}, "compat": COMPAT}


def train_for(step: Step, seconds: float, between: Callable[[], object] | None = None,
              before_update: Callable[[], object] | None = None) -> tuple[float, float, int]:
    """Train steps for ``seconds`` (at least one): (elapsed, seconds spent in ``before_update()``
    before each optimiser step and ``between()`` after each step, steps)."""
    start, inside, steps = time.perf_counter(), [0.0], 0

    def timed(hook: Callable[[], object] | None) -> Callable[[], object] | None:
        if hook is None:
            return None

        def run() -> None:
            t = time.perf_counter()
            hook()
            inside[0] += time.perf_counter() - t

        return run

    after, before = timed(between), timed(before_update)
    while steps == 0 or time.perf_counter() - start < seconds:
        step(before)
        steps += 1
        if after is not None:
            after()
    return time.perf_counter() - start, inside[0], steps


def sync_round(model: torch.nn.Module, opt: torch.optim.Optimizer, step: Step, epoch_s: float,
               target: Path, projected: int) -> tuple[float, float]:
    """(stall: the synchronous save, the next epoch's steps per second)."""
    t = time.perf_counter()
    save_epoch_checkpoint(target, target.parent, projected_bytes=projected, **live_state(model, opt, 1),
                          rng_state=capture_rng_state())
    stall = time.perf_counter() - t
    elapsed, _, steps = train_for(step, epoch_s)
    return stall, steps / elapsed


def async_round(model: torch.nn.Module, opt: torch.optim.Optimizer, step: Step, epoch_s: float,
                target: Path, projected: int, snapshotter: StateSnapshotter) -> tuple[float, float, float, float]:
    """(stall: snapshot + start + waits before optimiser steps + delivering polls + final wait,
    the snapshot call alone, the final wait alone, the next epoch's steps per second without the hooks)."""
    with AsyncCheckpointer() as saver:
        t = time.perf_counter()
        state = live_state(model, opt, 1)
        params = {p.data_ptr() for p in model.parameters()}
        snapshot, fill = snapshotter.take_deferred(
            {"model_state": state.pop("model_state"), "optimizer_state": state.pop("optimizer_state")},
            copy_now=lambda path, t: path.startswith("model_state") and t.data_ptr() not in params)
        snap_s = time.perf_counter() - t
        saver.start(functools.partial(write_epoch_checkpoint, target, target.parent, projected_bytes=projected,
                                      **snapshot, **state, rng_state=capture_rng_state()),
                    fill=fill, on_durable=lambda _saved: None)
        started = time.perf_counter() - t
        elapsed, hooks, steps = train_for(step, epoch_s, saver.poll, saver.wait_filled)
        t = time.perf_counter()
        saver.wait()
        waited = time.perf_counter() - t
    return started + hooks + waited, snap_s, waited, steps / (elapsed - hooks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epoch-s", type=float, default=10.0, help="about how long the next epoch trains")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()

    model, opt, step = build(args.layers, args.hidden)
    weights = state_dict_nbytes(model.state_dict())
    projected = estimate_checkpoint_bytes(model, opt)
    base = Path(tempfile.mkdtemp(prefix="bench-async-save-", dir=args.dir))
    print(f"encoder: BERT {args.layers} layers x {args.hidden}, {weights / 1e6:.0f} MB of weights; checkpoint with "
          f"AdamW state {projected / 1e6:.0f} MB; {torch.get_num_threads()} torch threads; the next epoch trains "
          f"{args.epoch_s:g} s; writing under {base}", flush=True)
    snapshotter = StateSnapshotter()
    t = time.perf_counter()
    snapshotter.take({"model_state": model.state_dict(), "optimizer_state": opt.state_dict()})
    print(f"first snapshot of a trial (allocates {snapshotter.nbytes / 1e6:.0f} MB of buffers): "
          f"{time.perf_counter() - t:.3f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
          flush=True)
    sync_stall, async_stall, snaps, ratios, slowdown = [], [], [], [], []
    try:
        for r in range(args.repeat):
            s_stall, s_rate = sync_round(model, opt, step, args.epoch_s, base / f"checkpoint_{2 * r:06d}", projected)
            a_stall, a_snap, a_wait, a_rate = async_round(model, opt, step, args.epoch_s,
                                                          base / f"checkpoint_{2 * r + 1:06d}", projected, snapshotter)
            for path in base.glob("checkpoint_*"):
                shutil.rmtree(path)
            sync_stall.append(s_stall)
            async_stall.append(a_stall)
            snaps.append(a_snap)
            ratios.append(a_stall / s_stall)
            slowdown.append(s_rate / a_rate - 1)
            print(f"round {r + 1}: sync save {s_stall:6.2f} s | async stall {a_stall:6.3f} s (snapshot call "
                  f"{a_snap:.3f} s, end-of-epoch wait {a_wait:.3f} s) | ratio {a_stall / s_stall:6.1%} | steps/s "
                  f"{s_rate:.2f} after the sync save, {a_rate:.2f} beside the write", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def row(name: str, values: list[float], fmt: str) -> str:
        return f"{name:<34} min {format(min(values), fmt):>9}   median {format(statistics.median(values), fmt):>9}"

    print(row("sync save time (stall, s)", sync_stall, ".3f"))
    print(row("async stall (s)", async_stall, ".3f"))
    print(row("  of which snapshot call (s)", snaps, ".3f"))
    print(row("async stall / sync save", ratios, ".1%"))
    print(row("training slowed beside the write", slowdown, ".1%"))
    print(f"snapshot memory (one copy, reused): {snapshotter.nbytes / 1e6:.0f} MB; "
          f"target async/sync <= 10 %: {'met' if statistics.median(ratios) <= 0.10 else 'NOT met'} (median)")


if __name__ == "__main__":
    main()
