"""Guarded epoch save for the trainable: preflight, reclaim, save, disk-full -> one error.

``save_epoch_checkpoint`` is what the trainable calls instead of ``preflight`` +
``save_checkpoint``:

1. preflight (free space >= projected checkpoint + margin);
2. if short and a ``reclaim`` callable is given, call it (storage-pressure step 3:
   keep only the study's single best + resume points, see :func:`study_reclaimer`)
   and check again;
3. still short: :class:`InsufficientStorageError` with the actionable preflight
   message (usage, free space, projected size, largest artifacts, fixes), before
   any byte is written;
4. ``save_checkpoint``; a real disk-full (``CheckpointWriteError`` with ``ENOSPC``
   or ``EDQUOT``) becomes the same actionable :class:`InsufficientStorageError`
   (the store already removed its temp folder: nothing partial is visible).

Metrics are never lost: ``before_save`` (the trainable writes ``trial_state.json``
with this epoch in its history) runs first, and on any failure ``on_failure`` (the
trainable passes ``partial(tune.report, metrics)``) still sends the epoch to Tune and
MLflow before the error propagates and the trial ends in ERROR.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune_app.checkpoints.preflight import (
    InsufficientStorageError,
    human_bytes,
    largest_artifacts,
    preflight,
)
from tune_app.checkpoints.store import (
    SavedCheckpoint,
    dir_nbytes,
    save_checkpoint,
)

__all__ = [
    "DISK_FULL_ERRNOS",
    "ensure_room",
    "prepare_epoch_save",
    "run_failure_hook",
    "save_epoch_checkpoint",
    "study_reclaimer",
    "write_epoch_checkpoint",
]

logger = logging.getLogger(__name__)

#: errno values that mean "the filesystem is full" (bytes, inodes or quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full_message(study_dir: Path, target: Path, projected_bytes: int, exc: OSError,
                       metrics_written: bool) -> str:
    """What happened on a failed write, with the same facts and fixes as the preflight message."""
    kept = ("this epoch's metrics were kept (trial_state.json, MLflow)" if metrics_written else
            "this epoch's metrics went to Tune and MLflow, but trial_state.json could not be updated "
            "(a resume re-runs this epoch)")
    lines = [f"Disk full while saving checkpoint {target.name} of {target.parent.name} "
             f"({os.strerror(exc.errno or errno.ENOSPC)}: {getattr(exc, 'filename', None) or target}); "
             f"no partial checkpoint was left and {kept}."]
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(study_dir)
        st = os.statvfs(study_dir)
        lines += [f"  study directory uses:       {human_bytes(dir_nbytes(study_dir))}",
                  f"  free on its filesystem:     {human_bytes(usage.free)} of {human_bytes(usage.total)}, "
                  f"{st.f_favail} of {st.f_files} inodes free"]
    lines.append(f"  projected checkpoint size:  {human_bytes(projected_bytes)}")
    artifacts = largest_artifacts(study_dir) if study_dir.exists() else []
    lines.append("Largest artifacts under the study directory:")
    lines += [f"  {human_bytes(size):>10}  {path}" for path, size in artifacts] or ["  (none)"]
    lines += [
        "Fixes (any one), then resume the study:",
        f"  - free space: python -m tune_app.cleanup --study {study_dir} --execute",
        "  - keep fewer checkpoints: retention=minimal",
        "  - put the study on a bigger disk: tune.storage_path=<bigger disk>",
        "  - use a smaller model: model=<smaller>",
    ]
    return "\n".join(lines)


def ensure_room(study_dir: Path, projected_bytes: int, reclaim: Callable[[], int] | None = None, *,
                safety_margin_bytes: int = 64 << 20, concurrent_saves: int = 1) -> None:
    """Preflight (room for ``concurrent_saves`` such saves at once); when short, ``reclaim()``
    (storage-pressure step 3) and check again.

    Raises:
        InsufficientStorageError: still short; nothing has been written.
    """
    try:
        preflight(study_dir, projected_checkpoint_bytes=projected_bytes, reclaimable_bytes=0,
                  safety_margin_bytes=safety_margin_bytes, concurrent_saves=concurrent_saves)
    except InsufficientStorageError:
        if reclaim is None:
            raise
        freed = reclaim()
        logger.warning("storage pressure before a save in %s: freed %s by keeping only the single best "
                       "checkpoint of the study", study_dir, human_bytes(freed))
        preflight(study_dir, projected_checkpoint_bytes=projected_bytes, reclaimable_bytes=0,
                  safety_margin_bytes=safety_margin_bytes, concurrent_saves=concurrent_saves)


def _disk_full_error(study_dir: Path, target: Path, projected_bytes: int, exc: OSError,
                     metrics_written: bool) -> InsufficientStorageError:
    return InsufficientStorageError(_disk_full_message(study_dir, target, projected_bytes, exc, metrics_written))


def prepare_epoch_save(target: Path, study_dir: Path, *, projected_bytes: int,
                       reclaim: Callable[[], int] | None = None, before_save: Callable[[], object] | None = None,
                       safety_margin_bytes: int = 64 << 20, concurrent_saves: int = 1) -> None:
    """``before_save()`` (the trainable's metrics), then :func:`ensure_room`: all of a save but the write.

    Raises:
        InsufficientStorageError: not enough room even after ``reclaim``, or ``before_save`` hit
            ENOSPC/EDQUOT.
    """
    metrics_written = before_save is None
    try:
        if before_save is not None:
            before_save()
            metrics_written = True
        ensure_room(study_dir, projected_bytes, reclaim, safety_margin_bytes=safety_margin_bytes,
                    concurrent_saves=concurrent_saves)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise _disk_full_error(study_dir, target, projected_bytes, exc, metrics_written) from exc


def write_epoch_checkpoint(target: Path, study_dir: Path, *, projected_bytes: int,
                           **save_kwargs: Any) -> SavedCheckpoint:
    """``save_checkpoint(target, **save_kwargs)`` after :func:`prepare_epoch_save`; safe on any thread.

    Raises:
        InsufficientStorageError: the write hit ENOSPC/EDQUOT (no partial checkpoint is left visible).
    """
    try:
        return save_checkpoint(target, **save_kwargs)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise _disk_full_error(Path(study_dir), Path(target), projected_bytes, exc, True) from exc


def run_failure_hook(on_failure: Callable[[], object] | None) -> None:
    """Call ``on_failure()`` (report the failed epoch's metrics) while a save error propagates; its own
    error is logged, never raised: the save error is what the user must see."""
    if on_failure is None:
        return
    try:
        on_failure()
    except Exception:  # noqa: BLE001 - the original error is what the user must see
        logger.exception("could not report the metrics of the failed epoch")


def save_epoch_checkpoint(
    target: Path,
    study_dir: Path,
    *,
    projected_bytes: int,
    reclaim: Callable[[], int] | None = None,
    before_save: Callable[[], object] | None = None,
    on_failure: Callable[[], object] | None = None,
    safety_margin_bytes: int = 64 << 20,
    concurrent_saves: int = 1,
    **save_kwargs: Any,
) -> SavedCheckpoint:
    """``before_save()`` (the trainable's metrics), :func:`ensure_room`, then ``save_checkpoint``.

    The synchronous save: :func:`prepare_epoch_save` then :func:`write_epoch_checkpoint` (the
    asynchronous one, ``checkpoints.async_save``, runs the write on a background thread).
    ``save_kwargs`` go to :func:`~tune_app.checkpoints.store.save_checkpoint`. A disk-
    full ``OSError`` (ENOSPC/EDQUOT) from ``before_save`` or the save becomes the
    actionable error; ``on_failure()`` runs before any error propagates.

    Raises:
        InsufficientStorageError: not enough room even after ``reclaim``, or a write hit
            ENOSPC/EDQUOT (no partial checkpoint is left visible).
    """
    target, study_dir = Path(target), Path(study_dir)
    try:
        prepare_epoch_save(target, study_dir, projected_bytes=projected_bytes, reclaim=reclaim,
                           before_save=before_save, safety_margin_bytes=safety_margin_bytes,
                           concurrent_saves=concurrent_saves)
        return write_epoch_checkpoint(target, study_dir, projected_bytes=projected_bytes, **save_kwargs)
    except BaseException:
        run_failure_hook(on_failure)
        raise


def study_reclaimer(study_dir: Path, *, metric: str) -> Callable[[], int]:
    """A ``reclaim`` for :func:`save_epoch_checkpoint`: storage-pressure step 3 done in place.

    The study's ``CheckpointKeeper`` (over the checkpoints whose manifest and sizes check out)
    keeps the study's single best checkpoint and every running trial's newest one (resume
    points); the rest become tombstones. Returns bytes freed.
    """
    from tune_app.checkpoints.keeper import CheckpointKeeper

    def reclaim() -> int:
        # Pruning only: the driver's keeper demotes (two processes rewriting one folder at
        # once could bring back a checkpoint the other just pruned).
        keeper = CheckpointKeeper(study_dir, metric=metric, verify="sizes",
                                  finish_interrupted=False, keep_optimizer_state=True)
        return keeper.enforce(None)[1]

    return reclaim
