"""The filesystem Tune writes the study through: local, with every file write atomic.

Ray Tune copies its experiment state (``experiment_state-*.json``,
``searcher-state-*.pkl``, ``search_gen_state-*.json``) from its staging folder into
the study folder at every state sync, by overwriting each file in place. A SIGKILL
during that copy leaves a truncated file, and ``Tuner.restore`` then fails ("pickle
data was truncated") and carries on with an empty study. Through
:func:`atomic_storage_filesystem` every file Tune writes goes to a temp file in the
same folder, is fsynced and renamed over the old one on close: a kill leaves the old
complete file (and a stray ``.<name>.tmp-*``), never a torn one.

Tune never deletes checkpoint bytes through it either: Tune's own bookkeeping keeps only
each trial's best and latest checkpoint entry (``CheckpointConfig(num_to_keep=1)``, so
its state stays small) and asks the filesystem to delete the folders it drops. Those
deletes are ignored here: which checkpoint folders stay is the retention layer's
decision alone (``tune_app.callbacks.RetentionCallback``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import uuid
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FileInfo, FileSelector, FSSpecHandler, PyFileSystem

TMP_MARK = ".tmp-"
_CHECKPOINT_DIR = re.compile(r"^checkpoint_\d+$")

logger = logging.getLogger(__name__)


class _AtomicWriter(io.FileIO):
    """A binary file written under a temp name and renamed to ``final`` on close.

    If a write or the fsync fails (a full disk: ENOSPC mid-file), close removes the
    temp file and leaves ``final`` as it was: a failed write never replaces a complete
    file with a truncated one.
    """

    def __init__(self, final: str) -> None:
        self.final = final
        self._failed = False
        folder, name = os.path.split(final)
        self.tmp = os.path.join(folder, f".{name}{TMP_MARK}{uuid.uuid4().hex}")
        super().__init__(self.tmp, "wb")

    def write(self, data: Any) -> int:
        """Write all of ``data`` (FileIO may write less; callers like pyarrow ignore that)."""
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += super().write(view[done:]) or 0
        except BaseException:
            self._failed = True
            raise
        return done

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._failed:
                self.flush()
                os.fsync(self.fileno())
        except BaseException:
            self._failed = True
            raise
        finally:
            super().close()
            if self._failed:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp)
        if not self._failed:
            os.replace(self.tmp, self.final)


class AtomicLocalFileSystem(LocalFileSystem):
    """fsspec's local filesystem, with atomic (temp + fsync + rename) writes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(auto_mkdir=True, **kwargs)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
        if mode in ("wb", "w"):
            path = self._strip_protocol(path)
            self.makedirs(self._parent(path), exist_ok=True)
            return _AtomicWriter(path)
        return super()._open(path, mode, block_size=block_size, **kwargs)

    def rm(self, path: Any, recursive: bool = False, maxdepth: Any = None) -> None:
        """Delete, except checkpoint folders: retention owns those (see the module doc)."""
        paths = [path] if isinstance(path, str) else list(path)
        keep = [p for p in paths if _CHECKPOINT_DIR.match(os.path.basename(self._strip_protocol(p).rstrip("/")))]
        for p in keep:
            logger.debug("ignoring Tune's delete of %s (retention decides)", p)
        rest = [p for p in paths if p not in keep]
        if rest:
            super().rm(rest, recursive=recursive, maxdepth=maxdepth)


class _ResolvingHandler(FSSpecHandler):
    """pyarrow's fsspec handler, resolving relative paths against the creating process's cwd.

    Tune takes a path as given when a filesystem is passed (``Tuner.restore("experiments/x",
    storage_filesystem=...)``) and hands it to every Ray worker, whose cwd is not the
    driver's: a relative path would name another folder there. Listings answer in the
    form asked (Tune strips the asked-for prefix off the names it gets back).
    """

    def __init__(self, fs: Any, base: str) -> None:
        super().__init__(fs)
        self.base = base

    def _abs(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.base, path))

    def get_file_info(self, paths: list[str]) -> list[Any]:
        infos = super().get_file_info([self._abs(p) for p in paths])
        return [FileInfo(p, i.type, size=i.size, mtime=i.mtime) for p, i in zip(paths, infos, strict=True)]

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        asked = selector.base_dir
        absolute = self._abs(asked)
        if absolute == asked:
            return list(super().get_file_info_selector(selector))
        infos = super().get_file_info_selector(FileSelector(absolute, allow_not_found=selector.allow_not_found,
                                                            recursive=selector.recursive))
        prefix = absolute.rstrip("/")
        return [FileInfo(asked.rstrip("/") + i.path[len(prefix):] if i.path.startswith(prefix) else i.path,
                         i.type, size=i.size, mtime=i.mtime) for i in infos]

    def create_dir(self, path: str, recursive: bool) -> None:
        super().create_dir(self._abs(path), recursive)

    def delete_dir(self, path: str) -> None:
        super().delete_dir(self._abs(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        super().delete_dir_contents(self._abs(path), missing_dir_ok)

    def delete_file(self, path: str) -> None:
        super().delete_file(self._abs(path))

    def move(self, src: str, dest: str) -> None:
        super().move(self._abs(src), self._abs(dest))

    def copy_file(self, src: str, dest: str) -> None:
        super().copy_file(self._abs(src), self._abs(dest))

    def open_input_stream(self, path: str) -> Any:
        return super().open_input_stream(self._abs(path))

    def open_input_file(self, path: str) -> Any:
        return super().open_input_file(self._abs(path))

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return super().open_output_stream(self._abs(path), metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return super().open_append_stream(self._abs(path), metadata)


def atomic_storage_filesystem() -> Any:
    """A ``pyarrow.fs`` filesystem for ``RunConfig(storage_filesystem=...)`` and ``Tuner.restore``.

    A relative path means the same folder in every process: it is resolved against this
    process's current folder (so ``Tuner.restore("experiments/<study>", ...)`` works from
    the repo root, as the README shows).
    """
    return PyFileSystem(_ResolvingHandler(AtomicLocalFileSystem(), os.getcwd()))
