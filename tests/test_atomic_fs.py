"""The storage filesystem Tune writes through: a write is all-or-nothing, even under SIGKILL."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.integration.study_tools import tmpfs
from tune_app.atomic_fs import TMP_MARK, atomic_storage_filesystem


def test_unclosed_write_leaves_the_old_file_and_close_replaces_it(tmp_path: Path) -> None:
    fs = atomic_storage_filesystem()
    target = tmp_path / "sub" / "searcher-state-x.pkl"
    with fs.open_output_stream(str(target)) as out:
        out.write(b"old complete state")
    stream = fs.open_output_stream(str(target))
    stream.write(b"new, half")
    assert target.read_bytes() == b"old complete state"
    stream.write(b" and the rest")
    stream.close()
    assert target.read_bytes() == b"new, half and the rest"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_copy_files_and_pickling_work_as_ray_uses_them(tmp_path: Path) -> None:
    src = tmp_path / "staging"
    src.mkdir()
    (src / "experiment_state-1.json").write_text("{}")
    fs = pickle.loads(pickle.dumps(atomic_storage_filesystem()))  # shipped to workers by Ray
    pafs.copy_files(str(src), str(tmp_path / "study"), destination_filesystem=fs)
    assert (tmp_path / "study" / "experiment_state-1.json").read_text() == "{}"


WRITER = """
import sys, time
from tune_app.atomic_fs import atomic_storage_filesystem
out = atomic_storage_filesystem().open_output_stream(sys.argv[1])
out.write(b"x" * 1_000_000)
print("writing", flush=True)
time.sleep(60)
"""


def test_sigkill_during_a_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "experiment_state-1.json"
    target.write_bytes(b'{"complete": true}')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.1)
    assert target.read_bytes() == b'{"complete": true}'
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and TMP_MARK in leftovers[0] and not leftovers[0].endswith((".json", ".pkl"))


def test_a_write_that_fills_the_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        target = disk / "experiment_state-1.json"
        target.write_bytes(b'{"complete": true}')
        stream = atomic_storage_filesystem().open_output_stream(str(target))
        with pytest.raises(OSError) as info:
            for _ in range(4):
                stream.write(b"x" * (512 << 10))  # 2 MiB into a 1 MiB disk
        assert info.value.errno == errno.ENOSPC
        stream.close()
        assert target.read_bytes() == b'{"complete": true}'
        assert [p.name for p in disk.iterdir()] == [target.name]


def test_tunes_deletes_of_checkpoint_folders_are_ignored(tmp_path: Path) -> None:
    """Retention alone deletes checkpoints: Tune's own deletes (num_to_keep) do nothing to
    ``checkpoint_*`` folders; any other delete goes through."""
    from ray.train._internal.storage import _delete_fs_path

    fs = atomic_storage_filesystem()
    ckpt = tmp_path / "trial" / "checkpoint_000003"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    other = tmp_path / "trial" / "scratch"
    other.mkdir()
    (other / "f").write_bytes(b"y")
    _delete_fs_path(fs=fs, fs_path=str(ckpt))
    _delete_fs_path(fs=fs, fs_path=str(other))
    assert (ckpt / "model.safetensors").read_bytes() == b"x"
    assert not other.exists()
