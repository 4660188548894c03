"""Throughput of save_checkpoint vs a raw write+fsync of the same bytes.

    python benchmarks/bench_checkpoint_save.py --sizes 100MB,1GB [--dir DIR] [--repeat 2]

For each size, builds a float32 state dict of that many bytes (16 MiB tensors),
then alternates: raw write of all tensor bytes to one file + fsync, and a full
``save_checkpoint`` (streamed safetensors, hashing, manifest, fsyncs, rename).
A third column writes raw with the same early-writeback hint
(``sync_file_range``) that save_checkpoint uses, for a like-for-like I/O pattern.
Prints MB/s (median of ``--repeat`` interleaved rounds) and the ratios
ckpt/raw throughput (median of per-round ratios; target >= 0.7).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tune_app.checkpoints.store import _start_writeback, save_checkpoint

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
_TENSOR_BYTES = 16 << 20


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100_000_000 (decimal units; a bare number is bytes)."""
    text = text.strip().upper()
    for unit, mult in _UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def make_state(nbytes: int) -> dict[str, torch.Tensor]:
    """A float32 state dict totalling ``nbytes`` (rounded down to 4 bytes)."""
    state: dict[str, torch.Tensor] = {}
    remaining = nbytes // 4
    i = 0
    while remaining > 0:
        n = min(remaining, _TENSOR_BYTES // 4)
        state[f"layer{i}.weight"] = torch.rand(n)
        remaining -= n
        i += 1
    return state


def raw_write(path: Path, state: dict[str, torch.Tensor], *, kick: bool = False) -> float:
    """Seconds to write every tensor's bytes to one file and fsync it.

    ``kick`` also starts writeback after each tensor, as save_checkpoint does.
    """
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        for t in state.values():
            view = t.view(torch.uint8).numpy().data
            n = len(view)
            while len(view):
                view = view[os.write(fd, view) :]
            if kick:
                _start_writeback(fd, offset, n)
            offset += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def checkpoint_write(path: Path, state: dict[str, torch.Tensor]) -> float:
    """Seconds for a full save_checkpoint of ``state``."""
    t0 = time.perf_counter()
    save_checkpoint(path, model_state=state, trainer_state={"epoch": 1}, compat={})
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="100MB,1GB", help="comma-separated, e.g. 100MB,1GB")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    try:
        print(f"writing under {base}")
        print(
            f"{'size':>8} {'raw MB/s':>10} {'raw+wb MB/s':>12} {'ckpt MB/s':>10}"
            f" {'ckpt/raw':>9} {'ckpt/raw+wb':>12}"
        )
        for text in args.sizes.split(","):
            nbytes = parse_size(text)
            state = make_state(nbytes)
            raw_s: list[float] = []
            kick_s: list[float] = []
            ckpt_s: list[float] = []
            for r in range(args.repeat):
                raw_path, ckpt_path = base / f"raw-{r}.bin", base / f"checkpoint_{r:06d}"
                raw_s.append(raw_write(raw_path, state))
                raw_path.unlink()
                kick_s.append(raw_write(raw_path, state, kick=True))
                raw_path.unlink()
                ckpt_s.append(checkpoint_write(ckpt_path, state))
                shutil.rmtree(ckpt_path)
            raw_mbs = nbytes / 1e6 / statistics.median(raw_s)
            kick_mbs = nbytes / 1e6 / statistics.median(kick_s)
            ckpt_mbs = nbytes / 1e6 / statistics.median(ckpt_s)
            # Ratios per interleaved round (same disk conditions), then the median.
            ratio = statistics.median(r / c for r, c in zip(raw_s, ckpt_s, strict=True))
            ratio_wb = statistics.median(k / c for k, c in zip(kick_s, ckpt_s, strict=True))
            print(
                f"{text:>8} {raw_mbs:10.1f} {kick_mbs:12.1f} {ckpt_mbs:10.1f}"
                f" {ratio:9.2f} {ratio_wb:12.2f}",
                flush=True,
            )
            del state
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
