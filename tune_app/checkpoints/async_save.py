"""Asynchronous epoch checkpoints: snapshot the state, write it on a background thread.

The trainable's epoch loop uses it when ``checkpoint.async_save`` is on (see
``docs/architecture.md``, "Checkpoints and Tune"):

1. :class:`StateSnapshotter` copies the model, optimiser and scheduler state (tensors into
   buffers it keeps for the whole trial: pinned host memory for CUDA tensors, plain CPU
   memory otherwise), so training can go on changing the live tensors; CPU weights and
   optimiser state may be copied later, by the writer, before the next optimiser step
   (:meth:`StateSnapshotter.take_deferred`, :meth:`AsyncCheckpointer.wait_filled`);
2. :class:`AsyncCheckpointer` runs the write (``guard.write_epoch_checkpoint``: the same
   atomic protocol as a synchronous save) on one background thread, at most one at a time;
3. the trainable polls it between training steps (:meth:`AsyncCheckpointer.poll`, on its own
   thread) and, once the write is durable, the ``on_durable`` callback reports the epoch
   to Tune with its checkpoint; a failed write calls ``on_failure`` (the epoch's metrics
   go to Tune without a checkpoint) and raises the write's error there, as a synchronous
   save would.

Nothing here imports Ray: the callbacks carry the reporting.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from tune_app.checkpoints.guard import run_failure_hook
from tune_app.checkpoints.store import SavedCheckpoint

__all__ = [
    "ASYNC_SAVE_CHOICES",
    "SNAPSHOT_MARGIN_BYTES",
    "AsyncCheckpointer",
    "StateSnapshotter",
    "available_memory_bytes",
    "snapshot_fits_in_memory",
    "use_async_save",
]

logger = logging.getLogger(__name__)

#: ``checkpoint.async_save``: ``auto`` = on for CUDA trials, off on CPU; true; false.
ASYNC_SAVE_CHOICES: tuple[bool | str, ...] = ("auto", True, False)

#: Host memory left free beside a snapshot (the training process keeps allocating).
SNAPSHOT_MARGIN_BYTES = 512 << 20


def use_async_save(setting: bool | str, device: torch.device) -> bool:
    """Whether ``checkpoint.async_save`` asks for background saves on ``device`` (``auto``: CUDA)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def available_memory_bytes() -> int | None:
    """Host memory the kernel can give without swapping (``MemAvailable``); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def snapshot_fits_in_memory(needed_bytes: int, *, margin_bytes: int = SNAPSHOT_MARGIN_BYTES,
                            available: Callable[[], int | None] | None = None) -> bool:
    """Whether ``needed_bytes`` more of host memory (a snapshot not yet allocated) leave ``margin_bytes``
    (``available``: :func:`available_memory_bytes` unless given)."""
    free = (available or available_memory_bytes)()
    return free is None or free >= needed_bytes + margin_bytes


class StateSnapshotter:
    """Copies nested training state into buffers it keeps and reuses, one per tensor.

    Mappings, lists and tuples are rebuilt; tensors are copied into a buffer of the same
    shape and dtype (allocated on the first snapshot, pinned for CUDA tensors so the
    device-to-host copy runs asynchronously and at full speed); anything else is deep-copied.
    A snapshot stays valid until the next :meth:`take`: the caller must not take a new one
    while a write of the previous one is in flight (:class:`AsyncCheckpointer` waits for it).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._cuda = False

    @property
    def nbytes(self) -> int:
        """Host bytes the buffers hold (the memory cost of async saving)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def take(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``state`` (``{"model_state": ..., "optimizer_state": ...}``) that later
        training does not change; CUDA copies have completed when it returns."""
        out, fill = self.take_deferred(state, copy_now=lambda _path, _t: True)
        fill()
        return out

    def take_deferred(self, state: Mapping[str, Any], *, copy_now: Callable[[str, torch.Tensor], bool],
                      ) -> tuple[dict[str, Any], Callable[[], None]]:
        """``state``'s snapshot and ``fill``: CUDA tensors and the CPU tensors ``copy_now(path, tensor)``
        names are copied before this returns, the other CPU tensors only by ``fill()``.

        The writer runs ``fill()`` first, while the next epoch's first batch runs forward and
        backward; the caller must not change the deferred tensors until ``fill()`` has returned
        (the trainable waits before its first optimiser step: ``AsyncCheckpointer.wait_filled``).
        """
        self._cuda = False
        deferred: list[tuple[torch.Tensor, torch.Tensor]] = []
        out = {key: self._copy(value, key, copy_now, deferred) for key, value in state.items()}
        if self._cuda:
            torch.cuda.synchronize()

        def fill() -> None:
            for buf, src in deferred:
                buf.copy_(src)

        return out, fill

    def release(self) -> None:
        """Drop the buffers (the end of a trial: a reused worker must not keep them)."""
        self._buffers.clear()

    def __enter__(self) -> StateSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _copy(self, obj: Any, path: str, copy_now: Callable[[str, torch.Tensor], bool],
              deferred: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, path, copy_now, deferred)
        if isinstance(obj, Mapping):
            return {k: self._copy(v, f"{path}/{k}", copy_now, deferred) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._copy(v, f"{path}/{i}", copy_now, deferred) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return tuple(self._copy(v, f"{path}/{i}", copy_now, deferred) for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _copy_tensor(self, src: torch.Tensor, path: str, copy_now: Callable[[str, torch.Tensor], bool],
                     deferred: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        src = src.detach()
        on_cuda = src.device.type == "cuda"
        buf = self._buffers.get(path)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=on_cuda)
            self._buffers[path] = buf
        if on_cuda or src.device.type != "cpu" or copy_now(path, src):
            buf.copy_(src, non_blocking=on_cuda)
            self._cuda = self._cuda or on_cuda
        else:
            deferred.append((buf, src))
        return buf


@dataclass
class _InFlight:
    future: Future[SavedCheckpoint]
    on_durable: Callable[[SavedCheckpoint], object]
    on_failure: Callable[[], object] | None
    label: str
    filled: threading.Event


class AsyncCheckpointer:
    """One background writer thread; at most one checkpoint write in flight.

    :meth:`start` waits for (and delivers) the previous write first. Delivery, the
    ``on_durable(saved)`` or ``on_failure()`` callback, always runs on the thread that calls
    :meth:`start`, :meth:`poll` or :meth:`wait` (the trainable's: Tune's ``report`` must never
    be called from the writer). Use it as a context manager: leaving it waits for a write in
    flight, so no thread writes once the trial is over; leaving on an ``Exception`` also
    delivers that write (its epoch reaches Tune, as it would have with a synchronous save).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-writer")
        self._in_flight: _InFlight | None = None

    @property
    def in_flight(self) -> bool:
        """Whether a write has been started and not yet delivered."""
        return self._in_flight is not None

    def start(self, write: Callable[[], SavedCheckpoint], *, on_durable: Callable[[SavedCheckpoint], object],
              on_failure: Callable[[], object] | None = None, fill: Callable[[], None] | None = None,
              label: str = "checkpoint") -> None:
        """Deliver the previous write (waiting for it), then run ``fill()`` (the snapshot's deferred
        copies, :meth:`StateSnapshotter.take_deferred`) and ``write()`` in the background."""
        self.wait()
        filled = threading.Event()

        def job() -> SavedCheckpoint:
            try:
                if fill is not None:
                    fill()
            finally:
                filled.set()
            return write()

        self._in_flight = _InFlight(self._executor.submit(job), on_durable, on_failure, label, filled)

    def wait_filled(self) -> None:
        """Block until the write in flight has its snapshot (``fill`` ran): call it before training
        changes any tensor the snapshot deferred (the optimiser step, FGM's perturbation)."""
        if self._in_flight is not None and not self._in_flight.filled.is_set():
            self._in_flight.filled.wait()

    def poll(self) -> bool:
        """Deliver the write in flight if it has finished; True when none is left in flight.

        Raises:
            Exception: the write's error (after ``on_failure()``).
        """
        if self._in_flight is None:
            return True
        if not self._in_flight.future.done():
            return False
        self._deliver()
        return True

    def wait(self) -> None:
        """Wait for the write in flight, if any, and deliver it.

        Raises:
            Exception: the write's error (after ``on_failure()``).
        """
        if self._in_flight is not None:
            self._deliver()

    def _deliver(self) -> None:
        assert self._in_flight is not None
        job, self._in_flight = self._in_flight, None
        try:
            saved = job.future.result()
        except BaseException:
            run_failure_hook(job.on_failure)
            raise
        job.on_durable(saved)

    def close(self) -> None:
        """Wait for a write in flight without delivering it, then stop the thread."""
        job, self._in_flight = self._in_flight, None
        if job is not None:
            exc = job.future.exception()
            if exc is not None:
                logger.warning("background write of %s failed while the trial was ending: %s", job.label, exc)
            else:
                logger.warning("background write of %s finished after the trial ended; it was not reported "
                               "(a resume reports it first)", job.label)
        self._executor.shutdown(wait=True)

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and isinstance(exc, Exception) and self._in_flight is not None:
                try:
                    self.wait()
                except BaseException as late:  # noqa: BLE001 - the trial's own error goes on
                    logger.error("the checkpoint written before the trial failed could not be reported: %s", late)
        finally:
            self.close()
