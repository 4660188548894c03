"""Object-store study storage (``s3://``, ``gs://``): the parts that talk to the bucket.

The study keeps running in a local working copy, exactly as on a local disk (its lock,
SQLite stores, trial journal and checkpoints are plain files there), and the bucket holds
the durable copy that any machine can resume from:

* :func:`mirrored_storage_filesystem` is the filesystem Tune writes the study through
  (``RunConfig(storage_filesystem=...)``): every file Tune writes or copies lands in the
  working copy atomically *and* as one object in the bucket. A checkpoint folder the
  trainable has already written there (atomic, hashed, its manifest last) is streamed to
  the bucket by Tune's own checkpoint copy without being rewritten locally.
* :class:`StudyMirror` (driven by ``callbacks.MirrorCallback`` after every result, and by
  :func:`mirrored_study` when a command ends) uploads the files the harness writes itself
  (trial state, journal, reports, SQLite stores through SQLite's backup API, so never a torn
  database) and makes the bucket follow retention (tombstones, deletions, a demoted best).
* :func:`fetch_study` serves ``resume=s3://…``: this machine's working copy, or a download of
  the study (:func:`download_study`); a checkpoint downloaded that way is verified against
  its manifest when a trial loads it, like any other.

An S3 object is written whole or not at all, so the bucket never holds a torn file; a
checkpoint folder interrupted part-way lacks files its manifest names and fails
verification on load, which falls back to the trial's previous valid checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune_app.atomic_fs import (
    _CHECKPOINT_DIR,
    TMP_MARK,
    AtomicLocalFileSystem,
    _AtomicWriter,
    _ResolvingHandler,
)
from tune_app.optuna_store import DB_FILE
from tune_app.study import STUDY_CONFIG
from tune_app.trial_journal import JOURNAL_FILE

if TYPE_CHECKING:
    from tune_app.config import AppConfig

logger = logging.getLogger(__name__)

#: URI schemes pyarrow reaches, and what each needs from the environment.
SUPPORTED_SCHEMES = {"s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an instance role), AWS_ENDPOINT_URL "
                           "for an S3-compatible server (MinIO, Ceph)",
                     "gs": "GOOGLE_APPLICATION_CREDENTIALS (or the VM's service account)"}
_ALIASES = {"gcs": "gs"}
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
#: Never uploaded: temp files, the node-local study lock, SQLite's side files (the backup has them).
_NEVER_UPLOADED = re.compile(r"(^|/)(\.study\.lock|\.mirror_state\.json|[^/]*\.(db|sqlite)-(wal|shm|journal))$|"
                             + re.escape(TMP_MARK)
                             + r"|(^|/)tmp-[^/]*(/|$)")
_SQLITE_SUFFIXES = (".db", ".sqlite")
BACKOFF_SECONDS = (1.0, 2.0, 4.0)
#: In the working copy (never uploaded): what the mirror uploaded, as (size, mtime) per file.
MIRROR_STATE = ".mirror_state.json"


class ObjectStoreError(RuntimeError):
    """The bucket cannot be used as given; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class StoreLocation:
    """Where a study lives in an object store: ``uri`` as given and ``path`` as pyarrow names it."""

    uri: str
    scheme: str
    bucket: str
    prefix: str

    @property
    def path(self) -> str:
        """``bucket/prefix``: the path inside the store's filesystem."""
        return f"{self.bucket}/{self.prefix}".rstrip("/")

    def child(self, name: str) -> StoreLocation:
        """The location of ``name`` under this one (a study under its storage path)."""
        prefix = f"{self.prefix}/{name}".strip("/")
        return StoreLocation(f"{self.scheme}://{self.bucket}/{prefix}", self.scheme, self.bucket, prefix)


def parse_store_uri(value: str) -> StoreLocation | None:
    """The object-store location ``value`` names; ``None`` for a plain path.

    Raises ``ObjectStoreError`` for a scheme pyarrow cannot reach or a URI without a bucket.
    """
    match = _URI.match(value.strip())
    if match is None:
        return None
    scheme = _ALIASES.get(match.group(1).lower(), match.group(1).lower())
    if scheme == "file":
        return None
    if scheme not in SUPPORTED_SCHEMES:
        raise ObjectStoreError(f"{value!r}: {match.group(1)}:// is not an object store the study can use; use "
                               f"{' or '.join(s + '://<bucket>/<prefix>' for s in SUPPORTED_SCHEMES)}, or a "
                               "folder every node mounts (NFS, mountpoint-s3, gcsfuse)")
    bucket, _, prefix = match.group(2).rstrip("/").partition("/")
    if not bucket or "?" in bucket:
        raise ObjectStoreError(f"{value!r} names no bucket: write {scheme}://<bucket>/<prefix>, e.g. "
                               f"{scheme}://my-bucket/studies")
    return StoreLocation(f"{scheme}://{bucket}/{prefix}".rstrip("/"), scheme, bucket, prefix.strip("/"))


def _retry(action: Callable[[], Any], what: str, backoff: Iterable[float]) -> Any:
    """``action()``, retried after each wait of ``backoff`` on a transient (network) error."""
    waits = list(backoff)
    for attempt in range(len(waits) + 1):
        try:
            return action()
        except OSError as exc:
            if attempt == len(waits) or not _transient(exc):
                raise
            logger.warning("%s: %s; retry %d/%d in %.0f s", what, first_line(exc), attempt + 1, len(waits),
                           waits[attempt])
            time.sleep(waits[attempt])
    raise AssertionError("unreachable")


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("connect", "timed out", "timeout", "temporarily", "throttl", "slow down",
                                   "503", "500 ", "network", "reset by peer", "curl"))


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (at most 300 characters), for one-line messages."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def open_store(location: StoreLocation, *, backoff: Iterable[float] = BACKOFF_SECONDS) -> Any:
    """A ``pyarrow.fs`` filesystem for ``location``, checked: its bucket exists and answers.

    Transient network errors are retried with backoff; what stays wrong is an
    ``ObjectStoreError`` naming the bucket, the endpoint and the fix (never a credential).
    """
    from pyarrow import fs as pafs

    waits = tuple(backoff)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    where = f" at {endpoint} (AWS_ENDPOINT_URL)" if endpoint and location.scheme == "s3" else ""
    try:
        filesystem = _retry(lambda: _filesystem(location, endpoint), f"opening {location.uri}", waits)
        info = _retry(lambda: filesystem.get_file_info(location.bucket), f"reaching {location.uri}", waits)
    except (OSError, ValueError) as exc:
        raise ObjectStoreError(
            f"{location.uri}: the object store{where} could not be reached: {first_line(exc)}. Check the "
            f"address and the network, and the credentials it needs: {SUPPORTED_SCHEMES[location.scheme]}"
        ) from None
    if info.type == pafs.FileType.NotFound:
        raise ObjectStoreError(f"{location.uri}: bucket {location.bucket!r} does not exist{where}. Create it "
                               f"first (e.g. `aws s3 mb {location.scheme}://{location.bucket}`), or fix the name")
    return filesystem


def remote_study_exists(remote: Any, study: StoreLocation) -> bool:
    """Whether the bucket holds a study at ``study`` (its ``study_config.yaml``)."""
    from pyarrow import fs as pafs

    return remote.get_file_info(f"{study.path}/{STUDY_CONFIG}").type == pafs.FileType.File


def _filesystem(location: StoreLocation, endpoint: str | None) -> Any:
    """pyarrow's filesystem for the store. S3 writes each file in the calling thread
    (``background_writes=False``: Tune copies checkpoints with a thread pool, and S3's own
    background uploads on the same pool can deadlock, apache/arrow#32372)."""
    from pyarrow import fs as pafs

    if location.scheme != "s3":
        return pafs.FileSystem.from_uri(location.uri)[0]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:
        region = pafs.resolve_s3_region(location.bucket)
    return pafs.S3FileSystem(region=region or "us-east-1", endpoint_override=endpoint, background_writes=False,
                             connect_timeout=10,
                             request_timeout=300, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))


# --- Tune's storage filesystem ---------------------------------------------------------
class _UploadOnly:
    """A write-only stream straight to the bucket (a local file that is already complete)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.closed = False

    def write(self, data: Any) -> int:
        self._stream.write(data)
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stream.close()

    def __enter__(self) -> _UploadOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MirroredWriter(_AtomicWriter):
    """An atomic local write that, once the file is complete locally, is uploaded as one object."""

    def __init__(self, final: str, upload: Callable[[str], None]) -> None:
        super().__init__(final)
        self._upload = upload

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if not self._failed:
            self._upload(self.final)


class MirroredLocalFileSystem(AtomicLocalFileSystem):
    """The atomic local filesystem, with every change Tune makes under ``local_root`` mirrored
    to ``remote_root`` on ``remote`` (a ``pyarrow.fs`` filesystem).

    Writing a file inside a checkpoint folder whose manifest is already there (written by the
    trainable) streams the bytes to the bucket only: the local file is complete and stays as it
    is. Checkpoint folders are deleted by retention alone, locally and (through
    :class:`StudyMirror`) in the bucket, as in :class:`AtomicLocalFileSystem`.
    """

    def __init__(self, local_root: str, remote: Any, remote_root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.local_root = os.path.abspath(local_root)
        self.remote = remote
        self.remote_root = remote_root.rstrip("/")

    def remote_path(self, local: str) -> str | None:
        """The object ``local`` is mirrored to; ``None`` outside ``local_root``."""
        rel = os.path.relpath(os.path.abspath(local), self.local_root)
        if rel == "." or rel.startswith(".."):
            return None
        return f"{self.remote_root}/{rel.replace(os.sep, '/')}"

    def upload(self, local: str) -> None:
        """Put ``local`` (a complete file) into the bucket as one object."""
        target = self.remote_path(local)
        if target is None or _NEVER_UPLOADED.search(target):
            return
        put_file(self.remote, Path(local), target)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
        if mode not in ("wb", "w"):
            return super()._open(path, mode, block_size=block_size, **kwargs)
        path = self._strip_protocol(path)
        target = self.remote_path(path)
        folder = os.path.dirname(path)
        from tune_app.checkpoints.store import MANIFEST_FILE

        if (target is not None and os.path.isfile(path) and _is_checkpoint_dir(folder)
                and os.path.isfile(os.path.join(folder, MANIFEST_FILE))):
            return _UploadOnly(self.remote.open_output_stream(target))
        self.makedirs(self._parent(path), exist_ok=True)
        return _MirroredWriter(path, self.upload)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        super().rm(paths, recursive=recursive, maxdepth=maxdepth)
        for p in paths:
            local = self._strip_protocol(p)
            target = self.remote_path(local)
            if target is None or _is_checkpoint_dir(local) or os.path.exists(local):
                continue  # retention owns checkpoint folders; a kept path stays mirrored
            _delete_remote(self.remote, target)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None, **kwargs: Any) -> None:
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        old, new = self.remote_path(self._strip_protocol(path1)), self._strip_protocol(path2)
        for root, _dirs, files in os.walk(new) if os.path.isdir(new) else [(os.path.dirname(new), [],
                                                                            [os.path.basename(new)])]:
            for name in files:
                self.upload(os.path.join(root, name))
        if old is not None:
            _delete_remote(self.remote, old)


def mirrored_storage_filesystem(local_root: Path, remote: Any, remote_root: str) -> Any:
    """A ``pyarrow.fs`` filesystem for ``RunConfig(storage_filesystem=...)``: the study's local
    working copy under ``local_root``, mirrored to ``remote_root`` on ``remote``."""
    from pyarrow.fs import PyFileSystem

    return PyFileSystem(_ResolvingHandler(MirroredLocalFileSystem(str(local_root), remote, remote_root),
                                          os.getcwd()))


# --- files the harness writes itself -------------------------------------------------------
def put_file(remote: Any, local: Path, target: str) -> None:
    """Upload ``local`` as the object ``target`` (SQLite files through the backup API)."""
    if local.suffix in _SQLITE_SUFFIXES:
        with tempfile.TemporaryDirectory(prefix="tune_app-sqlite-") as tmp:
            snapshot = Path(tmp) / local.name
            _sqlite_snapshot(local, snapshot)
            _put(remote, snapshot, target)
        return
    _put(remote, local, target)


def _put(remote: Any, local: Path, target: str) -> None:
    with local.open("rb") as src, remote.open_output_stream(target) as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)


def _sqlite_snapshot(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (what a reader could see at one moment)."""
    from urllib.request import pathname2url

    src = sqlite3.connect(f"file:{pathname2url(str(source))}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _delete_remote(remote: Any, target: str) -> None:
    from pyarrow import fs as pafs

    info = remote.get_file_info(target)
    with contextlib.suppress(FileNotFoundError):
        if info.type == pafs.FileType.Directory:
            remote.delete_dir(target)
        elif info.type == pafs.FileType.File:
            remote.delete_file(target)


@dataclass
class StudyMirror:
    """Keeps the bucket's copy of a study in step with its local working copy.

    :meth:`sync` uploads each file whose size or modification time changed since it was last
    uploaded, deletes from the bucket the files deleted locally (a finished trial journal, a
    rotated log), and follows retention: a checkpoint folder it tombstoned becomes a tombstone
    in the bucket too (its ``PRUNED`` marker first, then its files go: Tune's saved state may
    name the folder, and a restore needs it to exist), one it deleted goes. Checkpoint folders
    themselves are uploaded by Tune, through :func:`mirrored_storage_filesystem`. Logs are
    uploaded at most every ``logs_every_s`` (they grow with every line; a new one goes at once)
    unless the sync is forced. The first sync lists the bucket once,
    and ``.mirror_state.json`` in the working copy says which local versions it holds, so a
    new command on the same copy uploads only what changed; later syncs list nothing.
    """

    local_dir: Path
    remote: Any
    remote_dir: str
    logs_every_s: float = 60.0
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    _remote_files: set[str] = field(default_factory=set)
    _remote_checkpoints: set[str] = field(default_factory=set)
    _remote_tombstones: set[str] = field(default_factory=set)
    #: each live checkpoint folder's manifest (size, mtime) when first seen: a change means the
    #: folder was rewritten locally after Tune uploaded it (a kept best demoted to weights only)
    _manifests: dict[str, tuple[int, int]] = field(default_factory=dict)
    _primed: bool = False
    _logs_at: float = float("-inf")
    _state_dirty: bool = False

    def _prime(self) -> None:
        """What the bucket holds already: files that match the local ones count as uploaded."""
        from pyarrow import fs as pafs

        from tune_app.checkpoints.store import PRUNED_FILE

        root = self.remote_dir.rstrip("/") + "/"
        folders: dict[str, set[str]] = {}
        for info in self.remote.get_file_info(pafs.FileSelector(self.remote_dir, recursive=True,
                                                                allow_not_found=True)):
            if info.type != pafs.FileType.File or not info.path.startswith(root):
                continue
            rel = info.path[len(root):]
            folder = _checkpoint_folder(rel)
            if folder is not None:
                folders.setdefault(folder, set()).add(info.base_name)
                continue
            self._remote_files.add(rel)
        for folder, names in folders.items():
            (self._remote_tombstones if names == {PRUNED_FILE} else self._remote_checkpoints).add(folder)
        state = read_mirror_state(self.local_dir)
        self._seen = {rel: stamp for rel, stamp in state.get("uploaded", {}).items() if rel in self._remote_files}
        self._manifests = {rel: stamp for rel, stamp in state.get("checkpoints", {}).items()
                           if rel in self._remote_checkpoints}
        self._primed = True

    def _scan(self, settled: Collection[str]) -> tuple[dict[str, str], dict[str, tuple[int, int] | None], set[str]]:
        """Local files to mirror; live checkpoint folders (``trial/checkpoint_k``) with their
        manifest's (size, mtime) (``None`` while it has none); tombstoned ones. The top-level
        folders named in ``settled`` are not walked."""
        from tune_app.checkpoints.store import MANIFEST_FILE, PRUNED_FILE

        files: dict[str, str] = {}
        live: dict[str, tuple[int, int] | None] = {}
        dead: set[str] = set()
        for root, dirs, names in os.walk(self.local_dir):
            rel_root = os.path.relpath(root, self.local_dir)
            rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
            for d in [d for d in dirs if _is_checkpoint_dir(d)]:
                if os.path.exists(os.path.join(root, d, PRUNED_FILE)):
                    dead.add(rel_root + d)
                else:
                    live[rel_root + d] = _stamp(os.path.join(root, d, MANIFEST_FILE))
            dirs[:] = [d for d in dirs if not _is_checkpoint_dir(d) and not (rel_root == "" and d in settled)]
            for name in names:
                rel = rel_root + name
                if not _NEVER_UPLOADED.search(rel):
                    files[rel] = os.path.join(root, name)
        return files, live, dead

    def sync(self, *, force: bool = False, settled: Collection[str] = ()) -> list[str]:
        """Upload what changed, delete what is gone; returns the files uploaded.

        ``settled``: top-level folders (ended trials, synced since they ended) that this sync
        neither walks nor changes in the bucket: a walk then costs the running trials' files,
        not the study's. What changes in them later (retention pruning an ended trial's
        checkpoint) goes up with the next sync that walks them. ``force`` walks everything.
        """
        if not self._primed:
            self._prime()
        settled = () if force else frozenset(settled)
        files, live, dead = self._scan(settled)

        live_kept, dead_kept = _inside(self._remote_checkpoints, settled), _inside(self._remote_tombstones, settled)
        logs_due = force or time.monotonic() - self._logs_at >= self.logs_every_s
        state_before = dict(self._manifests)
        uploaded: list[str] = []
        for rel, path in sorted(files.items(), key=lambda item: _upload_order(item[0])):
            if rel.startswith("logs/") and not logs_due and rel in self._seen:
                continue  # sent before: again at the next interval
            stamp = _stamp(path)
            if stamp is None or self._seen.get(rel) == stamp:
                continue  # unchanged, or deleted since the walk (the next sync has it)
            put_file(self.remote, Path(path), f"{self.remote_dir}/{rel}")
            self._seen[rel] = stamp
            self._remote_files.add(rel)
            uploaded.append(rel)
        if logs_due:
            self._logs_at = time.monotonic()
        gone = sorted(self._remote_files.difference(files) - _inside(self._remote_files, settled))
        for rel in gone:
            if not (self.local_dir / rel).exists():
                _delete_remote(self.remote, f"{self.remote_dir}/{rel}")
            self._remote_files.discard(rel)
            self._seen.pop(rel, None)
        for folder, manifest in sorted(live.items()):
            known = self._manifests.get(folder)
            if manifest is not None and known is not None and manifest != known:
                self._upload_folder(folder)
                uploaded.append(f"{folder}/")
            if manifest is not None:
                self._manifests[folder] = manifest
        for folder in set(self._manifests) - set(live) - live_kept:
            del self._manifests[folder]
        # Tune uploads each live checkpoint folder when it is reported; retention's tombstones
        # and deletions follow it into the bucket.
        for folder in sorted(dead - self._remote_tombstones):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: the next sync deletes it
                self._tombstone(folder)
                uploaded.append(f"{folder}/PRUNED")
        for folder in sorted((self._remote_checkpoints | self._remote_tombstones) - set(live) - dead
                             - live_kept - dead_kept):
            _delete_remote(self.remote, f"{self.remote_dir}/{folder}")
        self._remote_checkpoints = set(live) | live_kept
        self._remote_tombstones = dead | dead_kept
        # The record is rewritten by the syncs that walk everything (it grows with the study):
        # lost with a kill in between, it costs the next command the re-upload of what changed since.
        self._state_dirty |= bool(uploaded or gone or self._manifests != state_before)
        if self._state_dirty and not settled:
            write_mirror_state(self.local_dir, {"uploaded": self._seen, "checkpoints": self._manifests})
            self._state_dirty = False
        return uploaded

    def _tombstone(self, folder: str) -> None:
        """The bucket's copy of ``folder`` becomes a tombstone (its ``PRUNED`` marker alone)."""
        from tune_app.checkpoints.store import PRUNED_FILE

        self._replace_folder(folder, [PRUNED_FILE])

    def _upload_folder(self, folder: str) -> None:
        """Replace the bucket's copy of a checkpoint folder rewritten locally."""
        local = self.local_dir / folder
        self._replace_folder(folder, [p.name for p in local.iterdir() if p.is_file() and TMP_MARK not in p.name])

    def _replace_folder(self, folder: str, names: list[str]) -> None:
        """The bucket's ``folder`` holds exactly the local ``names``: they are uploaded first (the
        manifest last), then the others go. At any moment in between the folder exists (Tune's
        saved state may name it), and it either verifies or fails verification on load."""
        from pyarrow import fs as pafs

        from tune_app.checkpoints.store import MANIFEST_FILE

        remote = f"{self.remote_dir}/{folder}"
        for name in sorted(names, key=lambda n: n == MANIFEST_FILE):
            put_file(self.remote, self.local_dir / folder / name, f"{remote}/{name}")
        for info in self.remote.get_file_info(pafs.FileSelector(remote, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name not in names:
                self.remote.delete_file(info.path)


#: Tune's experiment state files: ``experiment_state-<timestamp>.json``.
_STATE_PREFIX = "experiment_state-"
#: The study's root files that a sync uploads last, in this order (name prefixes; see :func:`_upload_order`).
_RECORDS_LAST = (("searcher-state-", "search_gen_state-"), (_STATE_PREFIX,), (JOURNAL_FILE,), (DB_FILE,))


def _upload_order(rel: str) -> tuple[int, str]:
    """Where ``rel`` comes in a sync, so a kill part-way leaves the bucket as one a local kill
    could: the trial files first (each trial is named already: its journal line went up
    before it started), then the searcher's state, Tune's experiment state (written last
    locally too), the trial journal (a new one holds only trials added after that state, and
    replaces the one the state superseded), ``optuna.db`` (never ahead of the state). Files
    deleted locally go from the bucket after every upload."""
    if "/" not in rel:  # temps and SQLite side files are never uploaded
        for rank, prefixes in enumerate(_RECORDS_LAST, start=1):
            if rel.startswith(prefixes):
                return rank, rel
    return 0, rel


def _inside(paths: set[str], folders: Collection[str]) -> set[str]:
    """The ``paths`` (relative to the study) under one of the top-level ``folders``."""
    return {p for p in paths if p.partition("/")[0] in folders} if folders else set()


def _stamp(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def read_mirror_state(local_dir: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """``.mirror_state.json``: per file as last uploaded (``uploaded``) and per checkpoint folder
    (``checkpoints``, its manifest), the (size, mtime); empty sections when there is none."""
    import json

    out: dict[str, dict[str, tuple[int, int]]] = {"uploaded": {}, "checkpoints": {}}
    try:
        data = json.loads((local_dir / MIRROR_STATE).read_text(encoding="utf-8"))
        for section in out:
            out[section] = {str(k): (int(v[0]), int(v[1])) for k, v in data.get(section, {}).items()}
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return {"uploaded": {}, "checkpoints": {}}
    return out


def write_mirror_state(local_dir: Path, state: dict[str, dict[str, tuple[int, int]]]) -> None:
    import json

    from tune_app.study import write_text_atomic

    # file names and stamps only (nothing to redact): one compact line, ~1 MB at 1000 trials
    write_text_atomic(local_dir / MIRROR_STATE, json.dumps(
        {section: {k: list(v) for k, v in stamps.items()} for section, stamps in state.items()},
        separators=(",", ":")))


def _is_checkpoint_dir(path: str) -> bool:
    """Whether ``path`` (a name, or a path ending in one) names a ``checkpoint_<n>`` folder."""
    return bool(_CHECKPOINT_DIR.match(os.path.basename(path.rstrip("/"))))


def _checkpoint_folder(rel: str) -> str | None:
    """``trial/checkpoint_k`` for a file inside a checkpoint folder, else ``None``."""
    parts = rel.split("/")
    for i, part in enumerate(parts[:-1]):
        if _is_checkpoint_dir(part):
            return "/".join(parts[: i + 1])
    return None


def download_study(remote: Any, remote_dir: str, local_dir: Path) -> int:
    """Fetch the study at ``remote_dir`` into ``local_dir`` (which must not exist); returns
    the number of files. The files land in a temp sibling first, renamed into place at the
    end: an interrupted download leaves no half study behind."""
    from pyarrow import fs as pafs

    from tune_app.checkpoints.store import MANIFEST_FILE

    if local_dir.exists():
        raise FileExistsError(f"{local_dir} exists: a download would mix two copies of the study")
    infos = [i for i in remote.get_file_info(pafs.FileSelector(remote_dir, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File]
    if not infos:
        raise ObjectStoreError(f"nothing is stored under {remote_dir}: check the study's URI "
                               "(<tune.storage_path>/<tune.name>, as `python -m tune_app.run` printed it)")
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in local_dir.parent.glob(f".{local_dir.name}{TMP_MARK}*"):  # an interrupted download
        shutil.rmtree(leftover, ignore_errors=True)
    staging = local_dir.parent / f".{local_dir.name}{TMP_MARK}{uuid.uuid4().hex}"
    # what was downloaded is what the bucket holds: nothing to upload again
    stamps: dict[str, tuple[int, int]] = {}
    manifests: dict[str, tuple[int, int]] = {}
    try:
        for info in infos:
            rel = info.path[len(remote_dir.rstrip("/")) + 1:]
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with remote.open_input_stream(info.path) as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)
            stamp, folder = _stamp(dest), _checkpoint_folder(rel)
            if stamp is None:
                continue
            if folder is None and not _NEVER_UPLOADED.search(rel):
                stamps[rel] = stamp
            elif folder is not None and rel == f"{folder}/{MANIFEST_FILE}":
                manifests[folder] = stamp
        write_mirror_state(staging, {"uploaded": stamps, "checkpoints": manifests})
        os.rename(staging, local_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(infos)


# --- during a study ----------------------------------------------------------------------
def study_mirror(cfg: AppConfig) -> StudyMirror | None:
    """The mirror of ``cfg``'s study to its bucket (``None`` for a study in a folder)."""
    store = cfg.object_store
    if store is None:
        return None
    try:
        remote = open_store(store)
    except ObjectStoreError as exc:
        from tune_app.config import ConfigError

        raise ConfigError(f"tune.storage_path: {exc}") from None
    return StudyMirror(cfg.study_dir, remote, store.child(cfg.tune.name).path)


@contextlib.contextmanager
def mirrored_study(cfg: AppConfig, say: Callable[[str], None] = print) -> Iterator[None]:
    """For an object-store study: the bucket gets the study's last files when the command ends
    (also on an error or Ctrl-C). A failed upload is reported; the working copy keeps everything."""
    mirror = study_mirror(cfg)
    try:
        yield
    finally:
        if mirror is not None and cfg.study_dir.is_dir():
            from tune_app.tracking.sanitize import sanitize

            store = cfg.object_store
            assert store is not None
            try:
                mirror.sync(force=True)
                say(f"Study copy in the bucket: {store.child(cfg.tune.name).uri} (up to date with {cfg.study_dir})")
            except (OSError, ObjectStoreError) as exc:
                print(f"warning: could not update the study's copy in {store.child(cfg.tune.name).uri} "
                      f"({sanitize(first_line(exc))}); {cfg.study_dir} has everything, and the next command on it "
                      "uploads it", file=sys.stderr)


def storage_filesystem_for(cfg: AppConfig) -> Any:
    """The filesystem Tune writes ``cfg``'s study through: atomic local, mirrored to the bucket
    for an object-store study."""
    from tune_app.atomic_fs import atomic_storage_filesystem

    mirror = study_mirror(cfg)
    if mirror is None:
        return atomic_storage_filesystem()
    store = cfg.object_store
    assert store is not None
    return mirrored_storage_filesystem(cfg.storage_dir, mirror.remote, store.path)


def mirrors_to_a_store(storage: Any) -> bool:
    """Whether a trial's Tune storage context writes through :func:`mirrored_storage_filesystem`
    (the trainable then reports each checkpoint folder for Tune to upload)."""
    handler = getattr(getattr(storage, "storage_filesystem", None), "handler", None)
    return isinstance(getattr(handler, "fs", None), MirroredLocalFileSystem)


# --- resume=<uri> ---------------------------------------------------------------------------
def fetch_study(uri: str) -> AppConfig:
    """``resume=s3://…``: the study's configuration from the bucket, with its working copy on
    this machine (downloaded when there is none; an existing one is used when the bucket holds
    nothing newer). Errors are ``ConfigError``s that name the fix."""
    from tune_app.config import ConfigError, parse_study_config

    try:
        location = parse_store_uri(uri)
        if location is None or "/" not in location.path:
            raise ObjectStoreError(f"{uri} names no study: pass <tune.storage_path>/<tune.name>, e.g. "
                                   "s3://my-bucket/studies/redsm5_study")
        remote = open_store(location)
    except ObjectStoreError as exc:
        raise ConfigError(f"resume={uri}: {exc}") from None
    # The study is where it was found in the bucket (it may have been moved there).
    parent, _, name = location.uri.rpartition("/")
    if not remote_study_exists(remote, location):
        # Killed at start-up before its first upload: this machine's working copy has the study.
        from tune_app.config import AppConfig, load_study_config

        default = AppConfig()
        default.tune.storage_path, default.tune.name = parent, name
        if (default.study_dir / STUDY_CONFIG).is_file():
            logger.info("resume=%s: the bucket has no copy yet; resuming this machine's working copy %s", uri,
                        default.study_dir)
            return load_study_config(default.study_dir)
        raise ConfigError(f"resume={uri}: no study there ({STUDY_CONFIG} is missing). Pass the "
                          "<tune.storage_path>/<tune.name> that `python -m tune_app.run` printed; a study killed "
                          "before its first upload is only in the working copy of the machine that started it: "
                          f"resume=<tune.local_copy_dir>/{location.scheme}/{location.path} there")
    with tempfile.TemporaryDirectory(prefix="tune_app-config-") as tmp:
        path = Path(tmp) / STUDY_CONFIG
        with remote.open_input_stream(f"{location.path}/{STUDY_CONFIG}") as src:
            path.write_bytes(src.read())
        cfg = parse_study_config(path)
    cfg.tune.storage_path, cfg.tune.name = parent, name
    local = cfg.study_dir
    if (local / STUDY_CONFIG).is_file():
        newer = _newest_state(_remote_names(remote, location.path)) > _newest_state(os.listdir(local))
        if newer:
            raise ConfigError(f"resume={uri}: the bucket holds a newer state of the study than this machine's "
                              f"working copy {local} (it was resumed elsewhere since). Move {local} aside "
                              "and run the same command: the study is then downloaded from the bucket")
        logger.info("resume=%s: using this machine's working copy %s", uri, local)
        return cfg
    if local.exists() and any(local.iterdir()):
        raise ConfigError(f"resume={uri}: {local} (where this machine keeps the study's working copy) holds "
                          "other files; move them aside and run the same command")
    with contextlib.suppress(FileNotFoundError):
        local.rmdir()
    files = download_study(remote, location.path, local)
    print(f"Downloaded the study from {uri} into {local} ({files} files)", flush=True)
    return cfg


def _remote_names(remote: Any, path: str) -> list[str]:
    from pyarrow import fs as pafs

    return [i.base_name for i in remote.get_file_info(pafs.FileSelector(path, allow_not_found=True))]


def _newest_state(names: Iterable[str]) -> str:
    """The newest of Tune's ``experiment_state-<timestamp>.json`` among ``names`` ('' for none)."""
    return max((n for n in names if n.startswith(_STATE_PREFIX) and n.endswith(".json")), default="")
