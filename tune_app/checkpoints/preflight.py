"""Pre-flight disk check: refuse to start (or save) when the next checkpoint cannot fit."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune_app.checkpoints.errors import InsufficientStorageError
from tune_app.checkpoints.store import TMP_PREFIX, dir_nbytes

__all__ = ["InsufficientStorageError", "human_bytes", "largest_artifacts", "preflight"]

_MIB = 1 << 20
_ARTIFACT_DIR_PREFIXES = ("checkpoint_", TMP_PREFIX)


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def largest_artifacts(root: Path, n: int = 5) -> list[tuple[Path, int]]:
    """The ``n`` largest artifacts under ``root``, largest first.

    A checkpoint (``checkpoint_*``) or temp (``tmp-*``) directory counts as one
    artifact; any other file counts on its own.
    """
    found: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        keep_walking = []
        for d in dirnames:
            full = Path(dirpath, d)
            if d.startswith(_ARTIFACT_DIR_PREFIXES):
                found.append((full, dir_nbytes(full)))
            elif not full.is_symlink():
                keep_walking.append(d)
        dirnames[:] = keep_walking
        for f in filenames:
            full = Path(dirpath, f)
            with contextlib.suppress(FileNotFoundError):
                found.append((full, full.lstat().st_size))
    found.sort(key=lambda item: (-item[1], str(item[0])))
    return found[:n]


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def preflight(
    study_dir: Path,
    *,
    projected_checkpoint_bytes: int,
    reclaimable_bytes: int,
    safety_margin_bytes: int = 64 * _MIB,
    disk_usage: Callable[[Any], Any] = shutil.disk_usage,
    concurrent_saves: int = 1,
) -> None:
    """Raise :class:`InsufficientStorageError` if free + reclaimable < projected x saves + margin.

    ``concurrent_saves``: trials that may each be writing a checkpoint of this size at once
    (``tune.max_concurrent_trials``): free space now does not show the others' saves to come.

    ``reclaimable_bytes`` is what cleanup could free (e.g. a
    :func:`tune_app.checkpoints.cleanup_scan.scan_study` report). The message gives
    the study's usage, free space, projected size, the five largest artifacts and
    the fixes.
    """
    study_dir = Path(study_dir)
    usage = disk_usage(_existing_ancestor(study_dir))
    saves = max(1, int(concurrent_saves))
    needed = projected_checkpoint_bytes * saves + safety_margin_bytes
    if usage.free + reclaimable_bytes >= needed:
        return
    used_by_study = dir_nbytes(study_dir) if study_dir.exists() else 0
    lines = [
        f"Not enough disk space for the next checkpoint of the study in {study_dir}.",
        f"  study directory uses:       {human_bytes(used_by_study)}",
        f"  free on its filesystem:     {human_bytes(usage.free)} of {human_bytes(usage.total)}",
        f"  reclaimable by cleanup:     {human_bytes(reclaimable_bytes)}",
        f"  projected checkpoint size:  {human_bytes(projected_checkpoint_bytes)}"
        + (f" x {saves} trials saving at once (tune.max_concurrent_trials)" if saves > 1 else "")
        + f" (+ {human_bytes(safety_margin_bytes)} safety margin)",
        f"  short by:                   {human_bytes(needed - usage.free - reclaimable_bytes)}",
    ]
    artifacts = largest_artifacts(study_dir) if study_dir.exists() else []
    if artifacts:
        lines.append("Largest artifacts under the study directory:")
        lines.extend(f"  {human_bytes(size):>10}  {path}" for path, size in artifacts)
    lines += [
        "Fixes (any one):",
        f"  - free space: python -m tune_app.cleanup --study {study_dir} --execute",
        "  - keep fewer checkpoints: retention=minimal",
        "  - put the study on a bigger disk: tune.storage_path=<bigger disk>",
        "  - use a smaller model: model=<smaller>",
    ]
    raise InsufficientStorageError("\n".join(lines))
