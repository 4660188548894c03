"""Atomic, hashed checkpoint store: write, verify, read, prune.

One checkpoint is one directory (``checkpoint_000003/``)::

    model.safetensors      model state dict
    optimizer.safetensors  optimizer + scheduler tensors (structure in state.json)
    rng.safetensors        torch CPU/CUDA RNG states (when an RNG state was saved)
    state.json             trainer state, optimizer/scheduler/RNG skeletons, compat
    manifest.json          {"format_version", "files": {name: {"sha256", "bytes"}}, ...}
    .sha256                "<hex>  <name>" lines, ``sha256sum -c`` compatible

Writing is atomic: everything goes into a ``tmp-<uuid>`` sibling directory, each
file is hashed from exactly the bytes written to it, fsynced, and only then is the
directory renamed into place. Readers ignore ``tmp-*``; a checkpoint that is
visible under its final name is complete, or it fails :func:`verify_checkpoint`.

Pruning leaves a *tombstone*: the directory stays (Ray Tune may still reference
it) but holds only a small ``PRUNED`` marker.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import struct
import sys
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file

from tune_app.checkpoints import failpoints
from tune_app.checkpoints.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
)

__all__ = [
    "CHECKPOINT_DIR_RE",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "FileDigest",
    "IncompatibleCheckpointError",
    "LoadedCheckpoint",
    "SavedCheckpoint",
    "Verification",
    "capture_rng_state",
    "check_compat",
    "checkpoint_index",
    "demote_checkpoint",
    "dir_nbytes",
    "estimate_checkpoint_bytes",
    "is_tombstone",
    "is_weights_only",
    "load_checkpoint",
    "prune_checkpoint",
    "read_trainer_state",
    "restore_rng_state",
    "save_checkpoint",
    "state_dict_nbytes",
    "verify_checkpoint",
]

_LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
SHA256_FILE = ".sha256"
PRUNED_FILE = "PRUNED"
TMP_PREFIX = "tmp-"
#: Files other tools may add to a checkpoint directory; not hashed, not payload.
#: Ray's ``Checkpoint.set_metadata`` writes ``.metadata.json``.
FOREIGN_FILES = frozenset({".metadata.json"})
CHECKPOINT_DIR_RE = re.compile(r"^checkpoint_(\d+)$")

_CHUNK_BYTES = 8 << 20
_PARALLEL_HASH_MIN_BYTES = 1 << 20
_MAX_HASH_LAG_BYTES = 512 << 20
_METADATA_MARGIN_BYTES = 1 << 20
_PER_TENSOR_MARGIN_BYTES = 512


# --------------------------------------------------------------------------- errors


# CheckpointError and its subclasses live in tune_app.checkpoints.errors (torch-free, so
# the entry points can catch them without importing torch) and are re-exported here.


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 (hex) and size of one checkpoint file."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class SavedCheckpoint:
    """What :func:`save_checkpoint` wrote: payload digests and all bytes on disk."""

    path: Path
    files: dict[str, FileDigest]
    total_bytes: int


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_checkpoint`."""

    ok: bool
    problem: str | None = None
    bad_file: str | None = None


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint read back into memory."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    trainer_state: dict[str, Any]
    compat: dict[str, Any]
    rng_state: dict[str, Any] | None = field(default=None)


# --------------------------------------------------------------------------- low-level I/O


_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range to disk now (Linux; a hint only).

    Overlaps disk I/O with the rest of the save instead of leaving it all to the
    final fsync, and keeps dirty page-cache bounded for 10 GB checkpoints. Errors
    are ignored here: fsync reports them.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _raw_write(fd: int, data: memoryview) -> int:
    """Write once to ``fd``; a seam so tests can inject ``ENOSPC``."""
    return os.write(fd, data)


class _HashingFile:
    """A write-only file that hashes exactly the bytes it writes, in one pass.

    With a ``hasher`` (a one-worker executor), large chunks are hashed on that
    worker, in write order, while the calling thread writes them and then fsyncs
    (``os.write``, ``fsync`` and ``sha256.update`` all release the GIL), so
    hashing overlaps I/O instead of adding to it. Chunks are zero-copy views of
    the caller's buffers; at most ``_MAX_HASH_LAG_BYTES`` may wait to be hashed.
    If a write fails part-way the digest is meaningless, but the file is then
    discarded anyway.
    """

    def __init__(self, path: Path, hasher: Executor | None = None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o644)
        self._sha = hashlib.sha256()
        self._hasher = hasher
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._lag = 0
        self.nbytes = 0

    def _write_fully(self, chunk: memoryview) -> None:
        while len(chunk):
            written = _raw_write(self._fd, chunk)
            self.nbytes += written
            chunk = chunk[written:]

    def _drain(self, max_lag: int) -> None:
        while self._pending and self._lag > max_lag:
            future, size = self._pending.popleft()
            future.result()
            self._lag -= size

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _CHUNK_BYTES):
            chunk = view[start : start + _CHUNK_BYTES]
            if self._hasher is None or len(chunk) < _PARALLEL_HASH_MIN_BYTES:
                self._drain(0)  # keep hash order
                self._write_fully(chunk)
                self._sha.update(chunk)
                continue
            self._pending.append((self._hasher.submit(self._sha.update, chunk), len(chunk)))
            self._lag += len(chunk)
            offset = self.nbytes
            self._write_fully(chunk)
            _start_writeback(self._fd, offset, len(chunk))
            self._drain(_MAX_HASH_LAG_BYTES)

    def finish(self) -> FileDigest:
        """fsync (while the hash catches up), close, and return the digest."""
        try:
            os.fsync(self._fd)
            self._drain(0)
        finally:
            self.close()
        return FileDigest(self._sha.hexdigest(), self.nbytes)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        for future, _ in self._pending:
            future.cancel()
        for future, _ in self._pending:
            if not future.cancelled():
                future.exception()  # wait: no hash task may outlive the file
        self._pending.clear()
        self._lag = 0

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_bytes(path: Path, data: bytes) -> FileDigest:
    with _HashingFile(path) as f:
        f.write(data)
        return f.finish()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_CHUNK_BYTES)
        view = memoryview(buf)
        while n := f.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], fn)


_renameat2 = _load_renameat2()


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False if unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(tmp: Path, final: Path) -> None:
    """Move the complete ``tmp`` directory to ``final``, replacing an old one safely."""
    parent = final.parent
    if not final.exists():
        os.rename(tmp, final)
        _fsync_dir(parent)
        return
    if _rename_exchange(tmp, final):  # one atomic step: final is old or new, never absent
        _fsync_dir(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old checkpoint
        return
    old = parent / f"{TMP_PREFIX}old-{uuid.uuid4().hex}"
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- safetensors


_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
):
    if hasattr(torch, _name):
        _DTYPE_CODES[getattr(torch, _name)] = _code


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name!r}: expected a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name!r}: only dense tensors can be saved, got layout {t.layout}")
    if t.dtype not in _DTYPE_CODES:
        raise TypeError(f"{name!r}: dtype {t.dtype} is not supported by safetensors")
    return t


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """Zero-copy byte view of a CPU tensor (one device->host copy for GPU tensors)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return t.reshape(-1).view(torch.uint8).numpy().data


def _write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], hasher: Executor | None = None
) -> FileDigest:
    """Stream a safetensors file tensor by tensor, hashing as it writes.

    Layout: u64 LE header length, JSON header (space-padded to 8 bytes), raw
    little-endian tensor bytes, ordered like safetensors does (by alignment, then
    name) so each tensor is aligned. No second copy of the state is built.
    """
    if sys.byteorder != "little":  # pragma: no cover - all supported hosts are LE
        raise RuntimeError("safetensors streaming writer needs a little-endian host")
    checked = {name: _check_tensor(name, t) for name, t in tensors.items()}
    order = sorted(checked, key=lambda n: (-checked[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        t = checked[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    with _HashingFile(path, hasher) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name in order:
            f.write(_tensor_bytes(checked[name]))
        return f.finish()


# --------------------------------------------------------------------------- state codec

_MARKERS = frozenset(
    {"__tensor__", "__tuple__", "__dict__", "__ndarray__", "__npscalar__", "__bytes__"}
)


class _Encoder:
    """Turn nested state (dicts with any keys, tuples, tensors, numpy) into JSON.

    Tensors are replaced by ``{"__tensor__": name}`` and collected in ``tensors``.
    """

    def __init__(self, *, allow_tensors: bool = True) -> None:
        self.allow_tensors = allow_tensors
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if isinstance(obj, torch.Tensor):
            if not self.allow_tensors:
                raise TypeError(f"{path}: tensors are not allowed here (JSON-only state)")
            name = path
            n = 1
            while name in self.tensors:
                n += 1
                name = f"{path}#{n}"
            self.tensors[name] = _check_tensor(name, obj)
            return {"__tensor__": name}
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{path}/{k}") for k, v in obj.items()}
            return {
                "__dict__": [
                    [self.encode(k, f"{path}/<key>"), self.encode(v, f"{path}/{k}")]
                    for k, v in obj.items()
                ]
            }
        if isinstance(obj, list):
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, np.ndarray):
            return {
                "__ndarray__": {
                    "dtype": obj.dtype.str,
                    "shape": list(obj.shape),
                    "data": obj.reshape(-1).tolist(),
                }
            }
        if isinstance(obj, np.generic):
            return {"__npscalar__": {"dtype": obj.dtype.str, "value": obj.item()}}
        if isinstance(obj, bytes | bytearray):
            return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
        raise TypeError(f"{path}: cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key in _MARKERS:
            if key == "__tensor__":
                return tensors[value]
            if key == "__tuple__":
                return tuple(_decode(v, tensors) for v in value)
            if key == "__dict__":
                return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
            if key == "__ndarray__":
                arr = np.asarray(value["data"], dtype=np.dtype(value["dtype"]))
                return arr.reshape(value["shape"])
            if key == "__npscalar__":
                return np.dtype(value["dtype"]).type(value["value"])
            return base64.b64decode(value)
    return {k: _decode(v, tensors) for k, v in obj.items()}


# --------------------------------------------------------------------------- save


def save_checkpoint(
    final_dir: Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any],
    compat: Mapping[str, Any],
    rng_state: Mapping[str, Any] | None = None,
) -> SavedCheckpoint:
    """Write a checkpoint atomically to ``final_dir`` (replacing an existing one).

    Tensors are streamed to safetensors files one by one (no second in-memory
    copy; GPU tensors are copied to the host one tensor at a time). ``trainer_state``
    and ``compat`` must be JSON-able (tuples, numpy scalars and non-string dict
    keys are encoded losslessly). ``rng_state`` comes from :func:`capture_rng_state`.

    Raises:
        CheckpointWriteError: on any OSError (errno kept, e.g. ENOSPC); the
            temporary directory is removed and no partial checkpoint is visible.
        TypeError: for state that cannot be stored (before anything is written).
    """
    final_dir = Path(final_dir)
    if final_dir.name.startswith(TMP_PREFIX):
        raise ValueError(f"{final_dir}: checkpoint names must not start with {TMP_PREFIX!r}")
    # Encode everything first: a TypeError must not leave anything on disk.
    opt_enc = _Encoder()
    optimizer_skel = (
        None if optimizer_state is None else opt_enc.encode(optimizer_state, "optimizer")
    )
    scheduler_skel = (
        None if scheduler_state is None else opt_enc.encode(scheduler_state, "scheduler")
    )
    rng_enc = _Encoder()
    rng_skel = None if rng_state is None else rng_enc.encode(rng_state, "rng")
    json_enc = _Encoder(allow_tensors=False)
    compat_json = json_enc.encode(dict(compat), "compat")
    state_doc = {
        "format_version": FORMAT_VERSION,
        "trainer_state": json_enc.encode(dict(trainer_state), "trainer_state"),
        "optimizer": optimizer_skel,
        "scheduler": scheduler_skel,
        "rng": rng_skel,
        "compat": compat_json,
    }
    state_bytes = json.dumps(state_doc, indent=1).encode()
    model_tensors = {name: _check_tensor(name, t) for name, t in model_state.items()}

    parent = final_dir.parent
    tmp = parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(parent.parent)
        tmp.mkdir()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-sha256") as hasher:
            files: dict[str, FileDigest] = {
                MODEL_FILE: _write_safetensors(tmp / MODEL_FILE, model_tensors, hasher)
            }
            failpoints.pause("save")
            if optimizer_state is not None or scheduler_state is not None:
                files[OPTIMIZER_FILE] = _write_safetensors(
                    tmp / OPTIMIZER_FILE, opt_enc.tensors, hasher
                )
            if rng_state is not None:
                files[RNG_FILE] = _write_safetensors(tmp / RNG_FILE, rng_enc.tensors, hasher)
        files[STATE_FILE] = _write_bytes(tmp / STATE_FILE, state_bytes)
        manifest = {
            "format_version": FORMAT_VERSION,
            "files": {n: {"sha256": d.sha256, "bytes": d.bytes} for n, d in files.items()},
            "created": datetime.now(UTC).isoformat(),
            "compat": compat_json,
        }
        if optimizer_state is None and scheduler_state is None:
            manifest["weights_only"] = True
        meta_bytes = _write_bytes(
            tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode()
        ).bytes
        sums = "".join(f"{d.sha256}  {n}\n" for n, d in sorted(files.items()))
        meta_bytes += _write_bytes(tmp / SHA256_FILE, sums.encode()).bytes
        _fsync_dir(tmp)
        _publish(tmp, final_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            code = exc.errno if exc.errno is not None else errno.EIO
            raise CheckpointWriteError(
                code, f"saving checkpoint failed: {exc.strerror or exc}", str(final_dir)
            ) from exc
        raise
    total = sum(d.bytes for d in files.values()) + meta_bytes
    return SavedCheckpoint(final_dir, files, total)


def is_weights_only(path: Path) -> bool:
    """True when the checkpoint holds no optimiser or scheduler state (saved so, or demoted)."""
    return not (Path(path) / OPTIMIZER_FILE).exists()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same bytes, no copy: the old folder's name goes, the inode stays
    except OSError:
        shutil.copy2(src, dst)
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())


def demote_checkpoint(path: Path) -> int:
    """Drop a checkpoint's optimiser and scheduler state, atomically; returns bytes freed.

    For a checkpoint that is kept (a study best) but no longer a resume point: its model,
    RNG and trainer state stay byte for byte (hard links), ``state.json`` loses the
    optimiser/scheduler skeletons, the manifest and ``.sha256`` are rewritten, and the new
    folder replaces the old one in one rename exchange (the same protocol as a save), so a
    reader sees the full checkpoint or the weights-only one, never a mix. A kill leaves a
    ``tmp-*`` folder (removed on resume or by cleanup). A no-op on a weights-only checkpoint.
    """
    path = Path(path)
    if is_weights_only(path) or is_tombstone(path):
        return 0
    files, problem = _read_manifest(path)
    if files is None:
        raise CorruptCheckpointError(path, problem.bad_file if problem else None,
                                     (problem.problem if problem else None) or "invalid")
    state = json.loads((path / STATE_FILE).read_bytes())
    state["optimizer"] = None
    state["scheduler"] = None
    state_bytes = json.dumps(state, indent=1).encode()
    manifest = json.loads((path / MANIFEST_FILE).read_bytes())
    before = dir_nbytes(path)
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        kept = {n: e for n, e in files.items() if n not in (OPTIMIZER_FILE, STATE_FILE)}
        for name in kept:
            _link_or_copy(path / name, tmp / name)
        state_digest = _write_bytes(tmp / STATE_FILE, state_bytes)
        kept[STATE_FILE] = {"sha256": state_digest.sha256, "bytes": state_digest.bytes}
        manifest["files"] = kept
        manifest["weights_only"] = True
        _write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        sums = "".join(f"{e['sha256']}  {n}\n" for n, e in sorted(kept.items()))
        _write_bytes(tmp / SHA256_FILE, sums.encode())
        _fsync_dir(tmp)
        failpoints.pause("demote")
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return max(before - dir_nbytes(path), 0)


# --------------------------------------------------------------------------- verify / load


def is_tombstone(path: Path) -> bool:
    """True when ``path`` is a pruned checkpoint (holds a ``PRUNED`` marker)."""
    return (Path(path) / PRUNED_FILE).is_file()


def _read_manifest(path: Path) -> tuple[dict[str, dict[str, Any]] | None, Verification | None]:
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        return None, Verification(
            False, "manifest.json is missing (interrupted save or copy)", MANIFEST_FILE
        )
    try:
        manifest = json.loads(mpath.read_bytes())
    except (OSError, ValueError) as exc:
        return None, Verification(False, f"manifest.json is unreadable: {exc}", MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        return None, Verification(
            False,
            f"unsupported manifest format_version {version!r} (expected {FORMAT_VERSION})",
            MANIFEST_FILE,
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(n, str)
        and "/" not in n
        and n not in ("", ".", "..")
        and isinstance(e, dict)
        and isinstance(e.get("sha256"), str)
        and isinstance(e.get("bytes"), int)
        for n, e in files.items()
    ):
        return None, Verification(
            False, "manifest.json has a malformed 'files' table", MANIFEST_FILE
        )
    for required in (MODEL_FILE, STATE_FILE):
        if required not in files:
            return None, Verification(
                False, f"manifest.json does not list {required}", MANIFEST_FILE
            )
    return files, None


def verify_checkpoint(path: Path, *, check_hashes: bool = True) -> Verification:
    """Check that ``path`` is a complete, loadable checkpoint.

    Manifest present and parseable; not a tombstone; ``.sha256`` agrees with the
    manifest; every listed file present with the listed size and (when
    ``check_hashes``, the default) SHA-256, which reads every file; no unlisted
    files (``FOREIGN_FILES`` excepted). ``check_hashes=False`` is a cheap
    structural check for scans over many large checkpoints.
    """
    path = Path(path)
    if not path.is_dir():
        return Verification(False, "checkpoint directory is missing", None)
    if is_tombstone(path):
        reason = _pruned_reason(path)
        return Verification(False, f"pruned tombstone, not loadable ({reason})", PRUNED_FILE)
    files, problem = _read_manifest(path)
    if problem is not None or files is None:
        return problem or Verification(False, "manifest.json is unreadable", MANIFEST_FILE)
    try:
        sums = _parse_sha256_file(path / SHA256_FILE)
    except (OSError, ValueError) as exc:
        return Verification(False, f".sha256 is missing or unreadable: {exc}", SHA256_FILE)
    if sums != {n: e["sha256"] for n, e in files.items()}:
        return Verification(False, ".sha256 does not match manifest.json", SHA256_FILE)
    allowed = set(files) | {MANIFEST_FILE, SHA256_FILE} | FOREIGN_FILES
    for entry in sorted(os.listdir(path)):
        if entry not in allowed:
            return Verification(False, f"unlisted file {entry!r} in checkpoint", entry)
    for name, entry_meta in sorted(files.items()):
        fpath = path / name
        if not fpath.is_file():
            return Verification(False, f"{name} is missing", name)
        size = fpath.stat().st_size
        if size != entry_meta["bytes"]:
            return Verification(
                False,
                f"{name} has {size} bytes, manifest says {entry_meta['bytes']} (truncated?)",
                name,
            )
    if check_hashes:
        for name, entry_meta in sorted(files.items()):
            try:
                digest = _sha256_file(path / name)
            except OSError as exc:
                return Verification(False, f"{name} could not be read: {exc}", name)
            if digest != entry_meta["sha256"]:
                return Verification(
                    False,
                    f"{name} sha256 {digest} does not match manifest {entry_meta['sha256']}",
                    name,
                )
    return Verification(True)


def _parse_sha256_file(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"malformed line {line!r}")
        sums[name] = digest
    return sums


def _pruned_reason(path: Path) -> str:
    try:
        return str(json.loads((path / PRUNED_FILE).read_text()).get("reason", "?"))
    except (OSError, ValueError, AttributeError):
        return "unreadable PRUNED marker"


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify, then read a checkpoint; tensors go to ``map_location``.

    RNG tensors always load on CPU (that is what ``torch.set_rng_state`` takes).

    Raises:
        CorruptCheckpointError: naming the file and the problem.
    """
    path = Path(path)
    check = verify_checkpoint(path)
    if not check.ok:
        raise CorruptCheckpointError(path, check.bad_file, check.problem or "invalid")
    device = str(torch.device(map_location))
    current = STATE_FILE
    try:
        state = json.loads((path / STATE_FILE).read_bytes())
        current = MODEL_FILE
        model_state = load_file(path / MODEL_FILE, device=device)
        opt_tensors: dict[str, torch.Tensor] = {}
        if (path / OPTIMIZER_FILE).is_file():
            current = OPTIMIZER_FILE
            opt_tensors = load_file(path / OPTIMIZER_FILE, device=device)
        rng_tensors: dict[str, torch.Tensor] = {}
        if (path / RNG_FILE).is_file():
            current = RNG_FILE
            rng_tensors = load_file(path / RNG_FILE, device="cpu")
        current = STATE_FILE
        return LoadedCheckpoint(
            model_state=model_state,
            optimizer_state=_decode(state["optimizer"], opt_tensors),
            scheduler_state=_decode(state["scheduler"], opt_tensors),
            trainer_state=_decode(state["trainer_state"], {}),
            compat=_decode(state["compat"], {}),
            rng_state=_decode(state["rng"], rng_tensors),
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CorruptCheckpointError(
            path, current, f"unreadable despite valid hashes: {exc}"
        ) from exc


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state`` of a checkpoint (epoch, metrics, history) without loading tensors.

    Call it on a checkpoint that verified; raises :class:`CorruptCheckpointError` when the
    file cannot be read.
    """
    try:
        state = json.loads((Path(path) / STATE_FILE).read_bytes())
        return dict(_decode(state["trainer_state"], {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpointError(Path(path), STATE_FILE, f"unreadable: {exc}") from exc


def checkpoint_index(path: Path) -> int | None:
    """The number in ``checkpoint_000003`` (3), or None for other names."""
    match = CHECKPOINT_DIR_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Python ``random``, NumPy global, torch CPU and (if available) all CUDA RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (missing parts are skipped)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        cuda_states = list(state["cuda"])
        if not torch.cuda.is_available():
            _LOG.warning("checkpoint has CUDA RNG state but CUDA is unavailable; not restored")
        else:
            n = torch.cuda.device_count()
            if n != len(cuda_states):
                _LOG.warning(
                    "checkpoint has CUDA RNG state for %d devices, %d visible; restoring %d",
                    len(cuda_states),
                    n,
                    min(n, len(cuda_states)),
                )
            for device, s in enumerate(cuda_states[:n]):
                torch.cuda.set_rng_state(s.cpu(), device)


# --------------------------------------------------------------------------- compat

_SOFT_COMPAT_KEYS = ("package_version", "git_commit")
_HARD_COMPAT_KEYS = ("architecture", "heads")
_MISSING = "<missing>"


def _compat_diffs(
    saved: Mapping[str, Any], current: Mapping[str, Any], keys: tuple[str, ...]
) -> dict[str, tuple[Any, Any]]:
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in keys:
        a, b = saved.get(key, _MISSING), current.get(key, _MISSING)
        if a != b:
            diffs[key] = (a, b)
    return diffs


def _describe_diff(key: str, saved: Any, current: Any) -> list[str]:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        lines = []
        for sub in sorted(set(saved) | set(current), key=str):
            a, b = saved.get(sub, _MISSING), current.get(sub, _MISSING)
            if a != b:
                lines.append(f"  - {key}.{sub}: saved {a!r}, current {b!r}")
        return lines
    return [f"  - {key}: saved {saved!r}, current {current!r}"]


def check_compat(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Accept or reject resuming a checkpoint saved with compat ``saved``.

    ``package_version`` / ``git_commit`` mismatches only log a WARNING;
    ``architecture`` (signature dict) and ``heads`` must match. Returns ``saved``.

    Raises:
        IncompatibleCheckpointError: listing each differing key, saved vs current,
            and how to proceed.
    """
    accepted = dict(saved)
    diffs = _compat_diffs(accepted, current, _HARD_COMPAT_KEYS)
    if diffs:
        lines = ["checkpoint is incompatible with the current run:"]
        for key, (a, b) in diffs.items():
            lines.extend(_describe_diff(key, a, b))
        lines.append(
            "How to proceed: start a new study with tune.name=<new name>, or resume with the "
            "same model and head config as the saved study (its study_config.yaml)."
        )
        raise IncompatibleCheckpointError("\n".join(lines), diffs)
    for key, (a, b) in _compat_diffs(accepted, current, _SOFT_COMPAT_KEYS).items():
        _LOG.warning("resuming a checkpoint saved with %s=%r; current is %r", key, a, b)
    return accepted


# --------------------------------------------------------------------------- sizes


def state_dict_nbytes(state: Any) -> int:
    """Tensor bytes in a (nested) state dict: mappings, lists, tuples are recursed."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(state_dict_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_dict_nbytes(v) for v in state)
    return 0


def _count_tensors(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return 1
    if isinstance(state, Mapping):
        return sum(_count_tensors(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_count_tensors(v) for v in state)
    return 0


def estimate_checkpoint_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> int:
    """Projected size of one checkpoint of ``model`` (+ ``optimizer``).

    Params + persistent buffers (as ``state_dict`` will write them) plus optimizer
    state; before the first optimizer step the state is empty, so AdamW is assumed
    (two moments: 2x the optimizer's param bytes, plus a step scalar per param).
    A metadata margin (headers, JSON, RNG) is added.
    """
    model_sd = model.state_dict()
    total = state_dict_nbytes(model_sd)
    n_tensors = _count_tensors(model_sd)
    if optimizer is not None:
        if any(len(s) for s in optimizer.state.values()):
            opt_state = optimizer.state_dict()["state"]
            total += state_dict_nbytes(opt_state)
            n_tensors += _count_tensors(opt_state)
        else:
            params = {id(p): p for g in optimizer.param_groups for p in g["params"]}
            total += sum(2 * p.numel() * p.element_size() + 8 for p in params.values())
            n_tensors += 3 * len(params)
    return total + _METADATA_MARGIN_BYTES + _PER_TENSOR_MARGIN_BYTES * n_tensors


def dir_nbytes(path: Path) -> int:
    """Apparent size of all files under ``path`` (0 if missing; symlinks not followed)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# --------------------------------------------------------------------------- prune


def prune_checkpoint(path: Path, *, reason: str) -> int:
    """Turn a checkpoint into a tombstone; return the bytes freed by this call.

    Writes a ``PRUNED`` marker (reason, bytes freed, time) atomically and fsyncs
    it, then deletes every other file, so the directory Tune may still reference
    stays resolvable. Idempotent: a half-pruned directory is finished, a finished
    tombstone or a missing directory frees 0.
    """
    path = Path(path)
    if not path.is_dir():
        return 0
    leftovers = [e for e in path.iterdir() if e.name != PRUNED_FILE]
    sizes = {e: dir_nbytes(e) for e in leftovers}
    if not is_tombstone(path):
        marker = {
            "reason": reason,
            "bytes_freed": sum(sizes.values()),
            "time": datetime.now(UTC).isoformat(),
            "files": sorted(e.name for e in leftovers),
        }
        # Temp marker beside (not inside) the checkpoint, so a crash here leaves
        # the checkpoint itself untouched; cleanup removes stray tmp-* files.
        tmp_marker = path.parent / f"{TMP_PREFIX}PRUNED-{uuid.uuid4().hex}"
        try:
            _write_bytes(tmp_marker, json.dumps(marker, indent=1).encode())
            os.rename(tmp_marker, path / PRUNED_FILE)
        except BaseException:
            tmp_marker.unlink(missing_ok=True)
            raise
        _fsync_dir(path)
        _fsync_dir(path.parent)
    freed = 0
    for i, entry in enumerate(leftovers):
        if i == 1:
            failpoints.pause("prune")
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        freed += sizes[entry]
    _fsync_dir(path)
    return freed
