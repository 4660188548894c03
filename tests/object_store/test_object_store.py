"""The object-store building blocks against a real S3 server (moto, over HTTP): URIs, opening a
bucket with actionable errors, Tune's mirrored filesystem, the harness's own files, download."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from tests.integration.study_tools import free_port
from tests.object_store.conftest import BUCKET
from tune_app.checkpoints.store import (
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    demote_checkpoint,
    prune_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from tune_app.object_store import (
    ObjectStoreError,
    StudyMirror,
    download_study,
    mirrored_storage_filesystem,
    open_store,
    parse_store_uri,
)


def _objects(fs: pafs.FileSystem, root: str) -> dict[str, bytes]:
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as fh:
                out[info.path[len(root) + 1:]] = fh.read()
    return out


def _store(name: str) -> tuple[pafs.FileSystem, str]:
    location = parse_store_uri(f"s3://{BUCKET}/{name}")
    assert location is not None
    return open_store(location, backoff=()), location.path


@pytest.mark.parametrize(("uri", "path"), [("s3://b/studies", "b/studies"), ("s3://b/a/b/", "b/a/b"),
                                           ("gcs://b/x", "b/x"), ("s3://b", "b")])
def test_store_uris_parse(uri: str, path: str) -> None:
    location = parse_store_uri(uri)
    assert location is not None and location.path == path
    assert location.child("study").path == f"{path}/study"


@pytest.mark.parametrize(("uri", "says"), [("ftp://host/x", "ftp:// is not an object store"),
                                           ("s3:///nobucket", "names no bucket")])
def test_bad_store_uris_say_what_to_write(uri: str, says: str) -> None:
    with pytest.raises(ObjectStoreError, match=says):
        parse_store_uri(uri)


def test_plain_paths_are_not_store_uris() -> None:
    assert parse_store_uri("experiments") is None and parse_store_uri("/mnt/studies") is None
    assert parse_store_uri("file:///mnt/studies") is None


def test_a_missing_bucket_names_the_bucket_and_how_to_create_it(s3: str) -> None:
    location = parse_store_uri("s3://no-such-bucket/studies")
    assert location is not None
    with pytest.raises(ObjectStoreError, match=r"bucket 'no-such-bucket' does not exist.*aws s3 mb"):
        open_store(location, backoff=())


def test_an_endpoint_nobody_answers_is_retried_then_named(s3: str, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekret-value-1234")
    location = parse_store_uri(f"s3://{BUCKET}/studies")
    assert location is not None
    with pytest.raises(ObjectStoreError) as err:
        open_store(location, backoff=(0.01, 0.01))
    assert dead in str(err.value) and "could not be reached" in str(err.value)
    assert "retry 2/2" in caplog.text
    assert "sekret-value-1234" not in str(err.value) + caplog.text


def test_tune_writes_land_locally_and_in_the_bucket(s3: str, tmp_path: Path) -> None:
    remote, root = _store("mirror")
    local = tmp_path / "studies"
    fs = mirrored_storage_filesystem(local, remote, root)
    with fs.open_output_stream(str(local / "study/experiment_state-1.json")) as fh:
        fh.write(b'{"a": 1}')
    with fs.open_output_stream(str(local / "study/experiment_state-1.json")) as fh:  # rewritten in place
        fh.write(b'{"a": 2}')
    assert (local / "study/experiment_state-1.json").read_bytes() == b'{"a": 2}'
    assert _objects(remote, root) == {"study/experiment_state-1.json": b'{"a": 2}'}
    fs.move(str(local / "study/experiment_state-1.json"), str(local / "study/experiment_state-2.json"))
    assert _objects(remote, root) == {"study/experiment_state-2.json": b'{"a": 2}'}
    fs.delete_file(str(local / "study/experiment_state-2.json"))
    assert not (local / "study/experiment_state-2.json").exists() and _objects(remote, root) == {}


def test_tunes_copy_of_a_written_checkpoint_uploads_it_without_rewriting_it(s3: str, tmp_path: Path) -> None:
    """The trainable writes the checkpoint in place; Tune's copy of it onto itself (reporting
    ``Checkpoint.from_directory``) streams it to the bucket and leaves the local files alone."""
    remote, root = _store("ckpt")
    local = tmp_path / "studies"
    ckpt = local / "study/trial_a/checkpoint_000001"
    save_checkpoint(ckpt, model_state={"w": torch.arange(1000.0)}, trainer_state={"epoch": 2}, compat={})
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in ckpt.iterdir()}
    fs = mirrored_storage_filesystem(local, remote, root)
    pafs.copy_files(str(ckpt), str(ckpt), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in ckpt.iterdir()} == before
    uploaded = _objects(remote, root)
    assert {k: v for k, v in uploaded.items()} == {f"study/trial_a/checkpoint_000001/{p.name}": p.read_bytes()
                                                  for p in ckpt.iterdir()}
    # what a resume on another machine gets back verifies against its manifest
    back = tmp_path / "back"
    download_study(remote, f"{root}/study", back)
    assert verify_checkpoint(back / "trial_a/checkpoint_000001").ok
    # and a byte flipped in the bucket is caught when it is loaded
    name = next(k for k in uploaded if k.endswith(".safetensors"))
    data = bytearray(uploaded[name])
    data[-1] ^= 0xFF
    with remote.open_output_stream(f"{root}/{name}") as fh:
        fh.write(bytes(data))
    again = tmp_path / "again"
    download_study(remote, f"{root}/study", again)
    assert not verify_checkpoint(again / "trial_a/checkpoint_000001").ok


def test_tunes_checkpoint_deletes_are_left_to_retention(s3: str, tmp_path: Path) -> None:
    remote, root = _store("tunedel")
    local = tmp_path / "studies"
    ckpt = local / "study/trial_a/checkpoint_000000"
    save_checkpoint(ckpt, model_state={"w": torch.ones(4)}, trainer_state={"epoch": 1}, compat={})
    fs = mirrored_storage_filesystem(local, remote, root)
    pafs.copy_files(str(ckpt), str(ckpt), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    fs.delete_dir(str(ckpt))
    assert verify_checkpoint(ckpt).ok
    assert f"study/trial_a/checkpoint_000000/{MANIFEST_FILE}" in _objects(remote, root)


def test_the_mirror_uploads_what_changed_and_drops_what_retention_deleted(s3: str, tmp_path: Path) -> None:
    remote, root = _store("harness")
    study = tmp_path / "study"
    (study / "trial_a").mkdir(parents=True)
    (study / "trial_a/trial_state.json").write_text('{"status": "running"}')
    (study / ".study.lock").write_text("")
    (study / "trial_a/.trial_state.json.tmp-1").write_text("torn")
    (study / "trial_a/tmp-checkpoint_000001-x").mkdir()
    (study / "trial_a/tmp-checkpoint_000001-x/model.safetensors").write_bytes(b"half")
    kept = study / "trial_a/checkpoint_000000"
    pruned = study / "trial_a/checkpoint_000001"
    for i, path in enumerate((kept, pruned)):
        save_checkpoint(path, model_state={"w": torch.full((4,), float(i))}, trainer_state={"epoch": i + 1},
                        compat={})
        for f in path.iterdir():  # as Tune's copy would have put them
            with remote.open_output_stream(f"{root}/trial_a/{path.name}/{f.name}") as fh:
                fh.write(f.read_bytes())
    mirror = StudyMirror(study, remote, root)
    assert mirror.sync() == ["trial_a/trial_state.json"], "temps, the lock and checkpoints are not the mirror's"
    assert mirror.sync() == [], "nothing changed"
    (study / "trial_a/trial_state.json").write_text('{"status": "completed"}')
    prune_checkpoint(pruned, reason="test")
    assert mirror.sync() == ["trial_a/trial_state.json", "trial_a/checkpoint_000001/PRUNED"]
    objects = _objects(remote, root)
    assert objects["trial_a/trial_state.json"] == b'{"status": "completed"}'
    # the tombstone stays a folder in the bucket (Tune's saved state may name it), its bytes go
    assert sorted(k for k in objects if "/checkpoint_000001" in k) == ["trial_a/checkpoint_000001/PRUNED"]
    assert objects["trial_a/checkpoint_000001/PRUNED"] == (pruned / "PRUNED").read_bytes()
    assert f"trial_a/checkpoint_000000/{MANIFEST_FILE}" in objects
    shutil.rmtree(pruned)  # a folder deleted outright goes from the bucket
    assert mirror.sync() == []
    assert not any("/checkpoint_000001" in k for k in _objects(remote, root))

    # a file deleted locally goes from the bucket; logs wait for their interval (or a forced sync)
    (study / "trial_journal.jsonl").write_text("{}\n")
    assert mirror.sync() == ["trial_journal.jsonl"]
    (study / "trial_journal.jsonl").unlink()
    (study / "logs").mkdir()
    (study / "logs/study.jsonl").write_text("line\n")
    mirror.logs_every_s = 3600
    assert mirror.sync() == ["logs/study.jsonl"], "a new log goes at once"
    (study / "logs/study.jsonl").write_text("line\nline\n")
    assert mirror.sync() == []
    assert mirror.sync(force=True) == ["logs/study.jsonl"]
    assert "trial_journal.jsonl" not in _objects(remote, root)
    # a command that starts on this working copy uploads nothing that the bucket already has
    again = StudyMirror(study, remote, root)
    assert again.sync() == []


def test_a_sync_uploads_the_trials_then_the_records_that_name_them(s3: str, tmp_path: Path) -> None:
    """A kill part-way through a sync leaves the bucket as a local kill could: trial files first,
    then the searcher's state, Tune's experiment state, the trial journal, ``optuna.db``."""
    remote, root = _store("order")
    study = tmp_path / "study"
    (study / "train_trial_a").mkdir(parents=True)
    (study / "train_trial_a/trial_state.json").write_text("{}")
    (study / "trial_journal.jsonl").write_text("{}\n")
    sqlite3.connect(study / "optuna.db").close()
    for name in ("experiment_state-2026-01-01_00-00-02.json", "search_gen_state-2026-01-01_00-00-02.json",
                 "searcher-state-2026-01-01_00-00-02.pkl", "tuner.pkl", "study_config.yaml"):
        (study / name).write_text("x")
    assert StudyMirror(study, remote, root).sync() == [
        "study_config.yaml", "train_trial_a/trial_state.json", "tuner.pkl",
        "search_gen_state-2026-01-01_00-00-02.json", "searcher-state-2026-01-01_00-00-02.pkl",
        "experiment_state-2026-01-01_00-00-02.json", "trial_journal.jsonl", "optuna.db"]


def test_a_sqlite_store_is_uploaded_whole_while_it_is_written(s3: str, tmp_path: Path) -> None:
    remote, root = _store("sqlite")
    study = tmp_path / "study"
    study.mkdir()
    db = study / "optuna.db"
    con = sqlite3.connect(db)
    con.execute("pragma journal_mode=wal")
    con.execute("create table t (i integer)")
    con.commit()
    stop = threading.Event()

    def write() -> None:
        w = sqlite3.connect(db)
        i = 0
        while not stop.is_set():
            w.execute("insert into t values (?)", (i,))
            w.commit()
            i += 1
        w.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        mirror = StudyMirror(study, remote, root)
        for _ in range(3):
            mirror._seen.clear()
            assert "optuna.db" in mirror.sync()
            back = tmp_path / f"back{_}"
            download_study(remote, root, back)
            check = sqlite3.connect(back / "optuna.db")
            assert check.execute("pragma integrity_check").fetchone() == ("ok",)
            check.close()
    finally:
        stop.set()
        writer.join()
        con.close()
    assert not any(k.endswith(("-wal", "-shm")) for k in _objects(remote, root))


def test_a_download_never_leaves_half_a_study(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote, root = _store("download")
    for i in range(5):
        with remote.open_output_stream(f"{root}/study/trial_{i}/trial_state.json") as fh:
            fh.write(b"{}")
    target = tmp_path / "local/study"
    calls = {"n": 0}
    real_open = remote.open_input_stream

    class Flaky:
        def __getattr__(self, name: str) -> object:
            return getattr(remote, name)

        def open_input_stream(self, path: str) -> object:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError("connection reset by peer")
            return real_open(path)

    with pytest.raises(OSError):
        download_study(Flaky(), f"{root}/study", target)
    assert not target.exists() and os.listdir(target.parent) == []
    assert download_study(remote, f"{root}/study", target) == 5
    assert StudyMirror(target, remote, f"{root}/study").sync() == [], "a downloaded copy is up to date"
    with pytest.raises(FileExistsError):
        download_study(remote, f"{root}/study", target)
    with pytest.raises(ObjectStoreError, match="nothing is stored"):
        download_study(remote, f"{root}/nothing", tmp_path / "nothing")


def test_a_checkpoint_rewritten_after_its_upload_is_uploaded_again(s3: str, tmp_path: Path) -> None:
    """Retention demotes a kept best to weights only after Tune uploaded it: the bucket gets the
    demoted folder (old files gone, manifest last), not the stale one."""
    remote, root = _store("demote")
    local = tmp_path / "studies"
    study = local / "study"
    ckpt = study / "trial_a/checkpoint_000000"
    save_checkpoint(ckpt, model_state={"w": torch.ones(64)}, trainer_state={"epoch": 1}, compat={},
                    optimizer_state={"state": {}, "param_groups": []})
    assert (ckpt / OPTIMIZER_FILE).is_file()
    fs = mirrored_storage_filesystem(local, remote, root)
    pafs.copy_files(str(ckpt), str(ckpt), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    mirror = StudyMirror(study, remote, f"{root}/study")
    mirror.sync()
    assert f"trial_a/checkpoint_000000/{OPTIMIZER_FILE}" in _objects(remote, f"{root}/study")
    assert mirror.sync() == []
    demote_checkpoint(ckpt)
    assert not (ckpt / OPTIMIZER_FILE).exists() and verify_checkpoint(ckpt).ok
    assert mirror.sync() == ["trial_a/checkpoint_000000/"]
    objects = _objects(remote, f"{root}/study")
    assert {k for k in objects if "checkpoint_" in k} == {f"trial_a/checkpoint_000000/{p.name}"
                                                          for p in ckpt.iterdir()}
    back = tmp_path / "back"
    download_study(remote, f"{root}/study", back)
    assert verify_checkpoint(back / "trial_a/checkpoint_000000").ok
    assert StudyMirror(back, remote, f"{root}/study").sync() == [], "the download's manifests are known"


def test_a_sync_that_skips_settled_trials_leaves_them_as_they_are_until_a_full_one(s3: str, tmp_path: Path) -> None:
    """An ended trial's folder is not walked at each event (the cost follows the running trials):
    its bucket copy stays as it was (nothing deleted, nothing forgotten), and the next sync that
    walks it takes its changes (a checkpoint retention pruned) to the bucket."""
    remote, root = _store("settled")
    study = tmp_path / "study"
    folders = {}
    for trial, k in (("trial_a", 0), ("trial_a", 1), ("trial_b", 0), ("trial_c", 0)):
        (study / trial).mkdir(parents=True, exist_ok=True)
        for name in ("trial_state.json", "params.json"):
            (study / trial / name).write_text("{}")
        ckpt = folders[f"{trial}/{k}"] = study / trial / f"checkpoint_00000{k}"
        save_checkpoint(ckpt, model_state={"w": torch.ones(4)}, trainer_state={"epoch": k + 1}, compat={},
                        optimizer_state={"state": {}, "param_groups": []})
        for f in ckpt.iterdir():  # as Tune's copy would have put them
            with remote.open_output_stream(f"{root}/{trial}/{ckpt.name}/{f.name}") as fh:
                fh.write(f.read_bytes())
    mirror = StudyMirror(study, remote, root)
    mirror.sync()
    before = _objects(remote, root)
    (study / "trial_a/trial_state.json").write_text('{"ended": true}')
    prune_checkpoint(folders["trial_a/0"], reason="test")
    shutil.rmtree(folders["trial_a/1"])
    (study / "trial_a/trial_report.json").write_text("{}")
    (study / "trial_b/trial_state.json").write_text('{"epoch": 2}')
    assert mirror.sync(settled={"trial_a"}) == ["trial_b/trial_state.json"]
    after = _objects(remote, root)
    assert {k: v for k, v in after.items() if k.startswith("trial_a/")} == \
        {k: v for k, v in before.items() if k.startswith("trial_a/")}
    assert mirror.sync(settled={"trial_a"}) == [], "nothing of trial_a was forgotten or deleted"
    assert mirror.sync(settled={"trial_a"}, force=True) == [
        "trial_a/trial_report.json", "trial_a/trial_state.json", "trial_a/checkpoint_000000/PRUNED"]
    assert sorted(k for k in _objects(remote, root) if k.startswith("trial_a/checkpoint_")) == \
        ["trial_a/checkpoint_000000/PRUNED"], "the tombstone and the deletion reached the bucket"
    shutil.rmtree(folders["trial_b/0"])  # a walked folder's deletion still goes at once
    assert mirror.sync(settled={"trial_a"}) == []
    assert not any(k.startswith("trial_b/checkpoint_") for k in _objects(remote, root))
    assert any(k.startswith("trial_a/checkpoint_") for k in _objects(remote, root))
    # while settled, trial_a's tombstone is deleted and trial_c's kept best is demoted: the next
    # full sync still knows what the bucket holds of them
    mirror.sync(settled={"trial_a", "trial_c"})
    shutil.rmtree(folders["trial_a/0"])
    demote_checkpoint(folders["trial_c/0"])
    assert mirror.sync(settled={"trial_a", "trial_c"}) == []
    assert mirror.sync() == ["trial_c/checkpoint_000000/"]
    objects = _objects(remote, root)
    assert not any(k.startswith("trial_a/checkpoint_") for k in objects)
    assert f"trial_c/checkpoint_000000/{OPTIMIZER_FILE}" not in objects
