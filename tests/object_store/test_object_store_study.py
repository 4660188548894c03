"""Real studies with ``tune.storage_path=s3://…`` against a real S3 server (moto, over HTTP):
the bucket holds the whole study (checkpoints uploaded by Tune, verified when loaded), a machine
without the working copy resumes it with ``resume=s3://…``, and bad input fails before anything
is written."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.integration.study_tools import (
    REPO,
    end_group,
    kill_group,
    mlflow_runs,
    run,
    start_run,
    study_env,
    tail,
    trial_dirs,
    trial_state,
    wait_for,
)
from tests.object_store.conftest import BUCKET
from tune_app.checkpoints.store import CHECKPOINT_DIR_RE, PRUNED_FILE, verify_checkpoint
from tune_app.object_store import download_study, open_store, parse_store_uri

EPOCHS = 2


def _args(tmp_path: Path, prefix: str, name: str, samples: int, epochs: int = EPOCHS) -> list[str]:
    return ["model=tiny", "data.num_posts=40", "data.max_length=48", f"tune.num_samples={samples}",
            f"tune.max_epochs={epochs}", "evaluation.on_finish=false", f"tune.storage_path=s3://{BUCKET}/{prefix}",
            f"tune.local_copy_dir={tmp_path / 'machine'}", f"tune.name={name}"]


def _working_copy(tmp_path: Path, prefix: str, name: str) -> Path:
    return tmp_path / "machine" / "s3" / BUCKET / prefix / name


def _bucket(prefix: str) -> tuple[pafs.FileSystem, str]:
    location = parse_store_uri(f"s3://{BUCKET}/{prefix}")
    assert location is not None
    return open_store(location, backoff=()), location.path


def _checkpoint_folders(fs: pafs.FileSystem, root: str) -> dict[str, bool]:
    """``trial/checkpoint_k`` of every checkpoint folder the bucket holds under ``root``: a tombstone?"""
    names: dict[str, set[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        parts = info.path[len(root) + 1:].split("/")
        if info.type == pafs.FileType.File and len(parts) == 3 and CHECKPOINT_DIR_RE.match(parts[1]):
            names.setdefault(f"{parts[0]}/{parts[1]}", set()).add(parts[2])
    return {folder: files == {PRUNED_FILE} for folder, files in names.items()}


def _local_checkpoints(study: Path) -> dict[str, bool]:
    """Every checkpoint folder of the working copy (also in a folder of a trial that a kill at
    start-up left behind, which Tune never registered): a tombstone?"""
    return {f"{c.parent.name}/{c.name}": (c / PRUNED_FILE).exists() for c in study.glob("*/checkpoint_*")
            if c.is_dir() and CHECKPOINT_DIR_RE.match(c.name)}


def _live_checkpoints(study: Path) -> set[str]:
    return {folder for folder, tombstone in _local_checkpoints(study).items() if not tombstone}


def _check_bucket_copy(tmp_path: Path, fs: pafs.FileSystem, root: str, study: Path) -> Path:
    """The bucket holds the study's checkpoints as the working copy does (live ones verify once
    downloaded, tombstones stay tombstones) and its files."""
    in_bucket, local = _checkpoint_folders(fs, root), _local_checkpoints(study)
    assert in_bucket == local, ("the bucket follows retention", {k: (in_bucket.get(k), local.get(k))
                                                                  for k in set(in_bucket) ^ set(local)
                                                                  | {k for k in local if in_bucket.get(k) != local[k]}})
    copy = tmp_path / f"download-{time.monotonic_ns()}"
    download_study(fs, root, copy)
    for folder in _live_checkpoints(study):
        assert verify_checkpoint(copy / folder).ok, folder
    for name in ("study_config.yaml", "optuna.db", "mlflow.db", "meta/splits.json"):
        assert (copy / name).is_file(), name
    for trial in trial_dirs(study):
        assert trial_state(copy / trial.name) == trial_state(trial), trial.name
    return copy


def test_a_study_in_a_bucket_completes_and_resumes_on_a_machine_without_its_copy(s3: str, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    assert run(_args(tmp_path, "studies", "bucketed", samples=2), log) == 0, tail(log)
    study = _working_copy(tmp_path, "studies", "bucketed")
    text = log.read_text()
    assert "Study copy in the bucket: s3://studies-bucket/studies/bucketed" in text
    trials = trial_dirs(study)
    assert len(trials) == 2 and all(trial_state(t)["status"] == "completed" for t in trials)
    fs, root = _bucket("studies/bucketed")
    _check_bucket_copy(tmp_path, fs, root, study)
    # another command on the working copy (the test evaluation) also leaves its files in the bucket
    evaluated = subprocess.run([sys.executable, "-m", "tune_app.evaluate", "--study", str(study)], cwd=REPO,
                               env=study_env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert fs.get_file_info(f"{root}/evaluation_report.json").type == pafs.FileType.File
    # cleanup --execute deletes from the bucket too: a checkpoint corrupted on this disk is
    # tombstoned here, and the bucket's copy of it becomes the same tombstone
    damaged = sorted(_live_checkpoints(study))[0]
    payload = study / damaged / "model.safetensors"
    payload.write_bytes(bytes(b ^ 0xFF for b in payload.read_bytes()))
    assert _checkpoint_folders(fs, root)[damaged] is False
    cleaned = subprocess.run([sys.executable, "-m", "tune_app.cleanup", "--study", str(study), "--execute"],
                             cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=300)
    assert cleaned.returncode == 0 and "corrupt" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert damaged not in _live_checkpoints(study)
    assert _checkpoint_folders(fs, root)[damaged] is True
    _check_bucket_copy(tmp_path, fs, root, study)

    # The machine is gone: another one (no working copy) resumes the study from the bucket.
    shutil.move(study, tmp_path / "lost-machine")
    log2 = tmp_path / "resume.log"
    assert run(["resume=s3://studies-bucket/studies/bucketed"], log2) == 0, tail(log2)
    text = log2.read_text()
    assert "Downloaded the study from s3://studies-bucket/studies/bucketed" in text
    assert "already complete: 2/2 trials" in text
    assert {t.name: trial_state(t) for t in trial_dirs(study)} == \
        {t.name: trial_state(t) for t in trial_dirs(tmp_path / "lost-machine")}


def test_a_machine_lost_as_a_trial_starts_resumes_that_trial_from_the_bucket(
        s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed as the second trial starts (its folder exists, nothing reported yet), the machine
    lost: the bucket already names that trial (Tune's state or the trial journal reached it before
    the trial's actor started), so the resume continues it in its own folder. A trial folder the
    bucket's state does not name would be sampled again beside it: four folders for three trials."""
    marks = tmp_path / "marks"
    monkeypatch.setenv("TUNE_APP_FAILPOINT_MARKS", str(marks))
    log = tmp_path / "run.log"
    proc = start_run(_args(tmp_path, "starts", "lost", samples=3, epochs=1), log, failpoints="trial_start=6")
    try:
        for nth in (1, 2):  # the first trial's start (Tune's full save), then the second's (the journal)
            wait_for(lambda: (marks / "trial_start").exists(), 240, f"trial {nth} starts", proc, log)
            if nth == 1:
                (marks / "trial_start").unlink()
        kill_group(proc)
    finally:
        end_group(proc, grace=5)
    study = _working_copy(tmp_path, "starts", "lost")
    shutil.move(study, tmp_path / "lost-machine")
    monkeypatch.delenv("TUNE_APP_FAILPOINT_MARKS")
    assert run(["resume=s3://studies-bucket/starts/lost"], log) == 0, tail(log)
    trials = trial_dirs(study)
    assert len(trials) == 3, [t.name for t in trials]
    assert all(trial_state(t)["status"] == "completed" for t in trials)
    started_before = {t.name for t in trial_dirs(tmp_path / "lost-machine")}
    assert len(started_before) == 2 and started_before <= {t.name for t in trials}


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tune_app.run", *args], cwd=REPO, env=study_env(),
                          capture_output=True, text=True, timeout=300)


def test_bad_object_store_input_fails_before_anything_is_written(s3: str, tmp_path: Path) -> None:
    local = tmp_path / "machine"
    missing = _cli([a for a in _args(tmp_path, "x", "a", 1) if not a.startswith("tune.storage_path=")]
                   + ["tune.storage_path=s3://no-such-bucket/studies"])
    assert missing.returncode == 2, missing.stderr
    assert "bucket 'no-such-bucket' does not exist" in missing.stderr and "aws s3 mb" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not local.exists() or not any(local.rglob("study_config.yaml"))

    cluster = _cli([*_args(tmp_path, "x", "b", 1), "tune.address=auto"])
    assert cluster.returncode == 2 and "mount the bucket" in cluster.stderr, cluster.stderr

    fs, root = _bucket("taken")
    with fs.open_output_stream(f"{root}/mine/study_config.yaml") as fh:
        fh.write(b"tune: {}\n")
    taken = _cli(_args(tmp_path, "taken", "mine", 1))
    assert taken.returncode == 2, taken.stderr
    assert "already holds a study" in taken.stderr and "resume=s3://studies-bucket/taken/mine" in taken.stderr

    nothing = _cli(["resume=s3://studies-bucket/taken/nothing-here"])
    assert nothing.returncode == 2 and "no study there" in nothing.stderr, nothing.stderr
    bare = _cli(["resume=s3://studies-bucket"])
    assert bare.returncode == 2 and "names no study" in bare.stderr, bare.stderr


def _next_command(tmp_path: Path, fs: pafs.FileSystem, root: str, name: str, samples: int,
                  epochs: int) -> list[str]:
    """What a user runs next: resume from the bucket once it has the study, else from this
    machine's working copy (killed before its first upload), else the study's start."""
    if fs.get_file_info(f"{root}/study_config.yaml").type == pafs.FileType.File:
        return [f"resume=s3://{BUCKET}/kills/{name}"]
    study = _working_copy(tmp_path, "kills", name)
    if (study / "study_config.yaml").is_file():
        return [f"resume={study}"]
    return _args(tmp_path, "kills", name, samples=samples, epochs=epochs)


def _check_study(tmp_path: Path, fs: pafs.FileSystem, root: str, name: str, samples: int, epochs: int,
                 seed: int) -> None:
    """Every trial trained epochs 1..N once, MLflow holds each epoch once, the bucket matches."""
    study = _working_copy(tmp_path, "kills", name)
    trials = trial_dirs(study)
    assert len(trials) == samples, f"seed {seed}, {name}"
    for trial in trials:
        state = trial_state(trial)
        assert state["status"] == "completed", (seed, name, trial.name)
        assert [h["epoch"] for h in state["history"]] == list(range(1, epochs + 1)), (seed, name, trial.name)
    runs = mlflow_runs(study, name)
    assert len(runs) == samples, f"seed {seed}, {name}: {len(runs)} MLflow runs"
    for r in runs:
        assert r["steps"]["val_macro_f1"] == list(range(1, epochs + 1)), (seed, name, r["steps"])
    _check_bucket_copy(tmp_path, fs, root, study)


@pytest.mark.slow
def test_random_kills_and_lost_machines_then_resume_from_the_bucket(s3: str, tmp_path: Path) -> None:
    """SIGKILL the whole command at random moments (start-up and shutdown included); after about
    half of the kills the machine is "lost" too (its working copy moved away) and the next
    command resumes from the bucket alone. A study that completes is checked (every trial
    trained epochs 1..N once, MLflow holds each epoch once, the bucket matches the working copy
    and its checkpoints verify) and the next one starts, until the kills are used up."""
    seed = int(os.environ.get("TUNE_APP_KILL_SEED", random.randrange(2**32)))
    kills = int(os.environ.get("TUNE_APP_S3_KILLS", "5"))
    print(f"\nobject-store kills: seed={seed} kills={kills} (replay: TUNE_APP_KILL_SEED={seed})")
    rng = random.Random(seed)
    samples, epochs = 3, 3
    log = tmp_path / "runs.log"
    done = lost = studies = 0
    while done < kills:
        name = f"chaos{studies}"
        studies += 1
        fs, root = _bucket(f"kills/{name}")
        while True:
            args = _next_command(tmp_path, fs, root, name, samples, epochs)
            if done >= kills:  # the kills are used up: finish this study
                assert run(args, log) == 0, f"seed {seed}, {name}\n{tail(log)}"
                break
            delay = rng.uniform(0.0, 35.0)
            with log.open("a") as fh:
                fh.write(f"\n===== {name}: kill {done + 1}/{kills} of {args[0]} after {delay:.2f} s\n")
            proc = start_run(args, log)
            began = time.monotonic()
            rc = None
            try:
                while (rc := proc.poll()) is None and time.monotonic() - began < delay:
                    time.sleep(0.2)
                if rc is None:
                    kill_group(proc)
            finally:
                end_group(proc, grace=5)
            if rc is not None:  # ended on its own before its kill: complete
                assert rc == 0, f"seed {seed}, {name}: a command ended with {rc}\n{tail(log)}"
                break
            done += 1
            study = _working_copy(tmp_path, "kills", name)
            in_bucket = fs.get_file_info(f"{root}/study_config.yaml").type == pafs.FileType.File
            if in_bucket and study.exists() and rng.random() < 0.5:
                lost += 1
                shutil.move(study, tmp_path / f"lost-{lost}")
        _check_study(tmp_path, fs, root, name, samples, epochs, seed)
    print(f"{done} kills over {studies} studies, {lost} lost machines")
