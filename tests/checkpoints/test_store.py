"""Tests for the atomic, hashed checkpoint store."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.checkpoints.forking import kill_forked_loop
from tune_app.checkpoints import store
from tune_app.checkpoints.resume import find_resumable_checkpoint
from tune_app.checkpoints.store import (
    CheckpointWriteError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    capture_rng_state,
    check_compat,
    dir_nbytes,
    estimate_checkpoint_bytes,
    is_tombstone,
    load_checkpoint,
    prune_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_nbytes,
    verify_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPAT = {
    "package_version": "0.1.0",
    "git_commit": "abc123",
    "architecture": {"encoder": "tiny", "hidden": 8},
    "heads": ["sentence", "evidence"],
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(4, 6)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _save_small(path: Path, *, epoch: int = 1, f1: float = 0.5) -> store.SavedCheckpoint:
    model = _model()
    return save_checkpoint(
        path,
        model_state=model.state_dict(),
        trainer_state={"epoch": epoch, "step": 10 * epoch, "metrics": {"f1": f1}},
        compat=COMPAT,
    )


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# --------------------------------------------------------------------------- round trip


def test_round_trip_model_optimizer_scheduler_rng(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    _train_step(model, opt)
    sched.step()
    rng = capture_rng_state()
    ckpt = tmp_path / "trial" / "checkpoint_000001"
    trainer_state = {
        "epoch": 1,
        "step": 7,
        "metrics": {"f1": 0.25, "loss": float("nan")},
        "cfg": {"lr": 1e-2},
    }
    saved = save_checkpoint(
        ckpt,
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        trainer_state=trainer_state,
        compat=COMPAT,
        rng_state=rng,
    )
    assert saved.path == ckpt
    assert set(saved.files) == {
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    }
    assert saved.total_bytes == dir_nbytes(ckpt)

    expected_draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    # Continue training the original for one more step: the reference.
    ref_model, ref_opt = model, opt
    torch.manual_seed(123)
    _train_step(ref_model, ref_opt)
    sched.step()

    loaded = load_checkpoint(ckpt)
    model2 = _model()
    model2.load_state_dict(loaded.model_state)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    assert loaded.optimizer_state is not None and loaded.scheduler_state is not None
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.1, total_steps=10)
    opt2.load_state_dict(loaded.optimizer_state)  # after building the scheduler, as usual
    sched2.load_state_dict(loaded.scheduler_state)
    torch.manual_seed(123)
    _train_step(model2, opt2)
    sched2.step()
    for a, b in zip(ref_model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sched.state_dict() == sched2.state_dict()

    assert loaded.trainer_state["metrics"]["f1"] == 0.25
    assert np.isnan(loaded.trainer_state["metrics"]["loss"])
    assert loaded.trainer_state["cfg"] == {"lr": 1e-2}
    assert loaded.compat == COMPAT

    assert loaded.rng_state is not None
    restore_rng_state(loaded.rng_state)
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert draws[0] == expected_draws[0]
    assert draws[1] == expected_draws[1]
    assert torch.equal(draws[2], expected_draws[2])


def test_dtypes_and_safetensors_compatibility(tmp_path: Path) -> None:
    state = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7, dtype=torch.bfloat16),
        "f16": torch.randn(2, 2, dtype=torch.float16),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "noncontig": torch.randn(4, 6).t(),
    }
    ckpt = tmp_path / "checkpoint_000000"
    save_checkpoint(ckpt, model_state=state, trainer_state={}, compat={})
    # The streamed file is a standard safetensors file.
    raw = load_file(ckpt / "model.safetensors")
    assert raw.keys() == state.keys()
    for k, v in state.items():
        assert raw[k].dtype == v.dtype and torch.equal(raw[k], v), k
    loaded = load_checkpoint(ckpt)
    assert loaded.optimizer_state is None and loaded.rng_state is None


def test_does_not_build_a_second_copy_via_safetensors_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch as st

    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("save_checkpoint must stream, not call safetensors.torch.save*")

    monkeypatch.setattr(st, "save", boom)
    monkeypatch.setattr(st, "save_file", boom)
    _save_small(tmp_path / "checkpoint_000001")


def test_unsupported_state_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="trainer_state/bad"):
        save_checkpoint(
            tmp_path / "checkpoint_000001",
            model_state={"w": torch.ones(2)},
            trainer_state={"bad": object()},
            compat={},
        )
    assert list(tmp_path.iterdir()) == []


def test_retried_save_replaces_existing_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000002"
    _save_small(ckpt, epoch=1)
    _save_small(ckpt, epoch=2)
    assert load_checkpoint(ckpt).trainer_state["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000002"]


def test_replace_without_rename_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_rename_exchange", lambda a, b: False)
    ckpt = tmp_path / "checkpoint_000002"
    _save_small(ckpt, epoch=1)
    _save_small(ckpt, epoch=3)
    assert load_checkpoint(ckpt).trainer_state["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000002"]


# --------------------------------------------------------------------------- hashes


def test_manifest_and_sha256_match_the_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    saved = _save_small(ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["compat"] == COMPAT
    sums = {}
    for line in (ckpt / ".sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == set(manifest["files"]) == set(saved.files)
    for name, entry in manifest["files"].items():
        data = (ckpt / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert entry == {"sha256": digest, "bytes": len(data)}
        assert sums[name] == digest == saved.files[name].sha256
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", ".sha256"], cwd=ckpt, check=True)


def test_corrupt_byte_fails_verify_and_load(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    _save_small(ckpt)
    target = ckpt / "model.safetensors"
    _flip_byte(target, target.stat().st_size - 3)  # inside tensor data, size unchanged
    result = verify_checkpoint(ckpt)
    assert not result.ok and result.bad_file == "model.safetensors"
    assert result.problem is not None and "sha256" in result.problem
    with pytest.raises(CorruptCheckpointError, match="model.safetensors") as info:
        load_checkpoint(ckpt)
    assert info.value.bad_file == "model.safetensors"
    # The cheap structural check does not read payload bytes.
    assert verify_checkpoint(ckpt, check_hashes=False).ok


def test_truncated_file_fails_verify(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    _save_small(ckpt)
    target = ckpt / "state.json"
    os.truncate(target, target.stat().st_size // 2)
    result = verify_checkpoint(ckpt, check_hashes=False)
    assert not result.ok and result.bad_file == "state.json"
    assert result.problem is not None and "truncated" in result.problem
    with pytest.raises(CorruptCheckpointError, match="state.json"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("mutate", "bad_file"),
    [
        (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json"),
        (lambda d: (d / ".sha256").unlink(), ".sha256"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
        (lambda d: (d / "stray.bin").write_bytes(b"x"), "stray.bin"),
    ],
    ids=["missing-manifest", "bad-manifest", "missing-sha256", "missing-payload", "unlisted"],
)
def test_structural_problems_fail_verify(tmp_path: Path, mutate: Any, bad_file: str) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    _save_small(ckpt)
    mutate(ckpt)
    result = verify_checkpoint(ckpt)
    assert not result.ok and result.bad_file == bad_file, result
    with pytest.raises(CorruptCheckpointError, match=bad_file.replace(".", r"\.")):
        load_checkpoint(ckpt)


def test_foreign_ray_metadata_file_is_tolerated(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    _save_small(ckpt)
    (ckpt / ".metadata.json").write_text("{}")
    assert verify_checkpoint(ckpt).ok


# --------------------------------------------------------------------------- resume discovery


def test_find_resumable_ignores_tmp_and_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in (1, 2, 3):
        _save_small(tmp_path / f"checkpoint_{i:06d}", epoch=i)
    # A leftover temp dir that looks newer and complete is never a candidate.
    shutil.copytree(tmp_path / "checkpoint_000003", tmp_path / "tmp-deadbeef")
    assert find_resumable_checkpoint(tmp_path) == tmp_path / "checkpoint_000003"

    bad = tmp_path / "checkpoint_000003" / "model.safetensors"
    _flip_byte(bad, bad.stat().st_size - 1)
    with caplog.at_level(logging.ERROR, logger="tune_app.checkpoints.resume"):
        found = find_resumable_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint_000002"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "checkpoint_000003" in errors[0].getMessage()
    assert "model.safetensors" in errors[0].getMessage()


def test_find_resumable_starts_at_preferred(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in (1, 2, 3):
        _save_small(tmp_path / f"checkpoint_{i:06d}", epoch=i)
    assert find_resumable_checkpoint(tmp_path, preferred=tmp_path / "checkpoint_000002") == (
        tmp_path / "checkpoint_000002"
    )
    # Tune points at a checkpoint that retention already pruned: fall back (SIGKILL trap).
    prune_checkpoint(tmp_path / "checkpoint_000002", reason="test")
    with caplog.at_level(logging.WARNING):
        found = find_resumable_checkpoint(tmp_path, preferred=tmp_path / "checkpoint_000002")
    assert found == tmp_path / "checkpoint_000001"
    assert any("pruned" in r.getMessage() for r in caplog.records)
    # Preferred directory missing entirely.
    found = find_resumable_checkpoint(tmp_path, preferred=tmp_path / "checkpoint_000009")
    assert found == tmp_path / "checkpoint_000003"


def test_find_resumable_none_when_nothing_valid(tmp_path: Path) -> None:
    assert find_resumable_checkpoint(tmp_path / "missing") is None
    _save_small(tmp_path / "checkpoint_000001")
    (tmp_path / "checkpoint_000001" / "manifest.json").unlink()
    assert find_resumable_checkpoint(tmp_path) is None


# --------------------------------------------------------------------------- tombstones


def test_prune_leaves_tombstone_and_is_idempotent(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    saved = _save_small(ckpt)
    freed = prune_checkpoint(ckpt, reason="retention: not best")
    assert freed == saved.total_bytes
    assert ckpt.is_dir() and is_tombstone(ckpt)
    assert [p.name for p in ckpt.iterdir()] == ["PRUNED"]
    marker = json.loads((ckpt / "PRUNED").read_text())
    assert marker["reason"] == "retention: not best" and marker["bytes_freed"] == freed
    assert "time" in marker
    result = verify_checkpoint(ckpt)
    assert not result.ok and result.bad_file == "PRUNED"
    with pytest.raises(CorruptCheckpointError, match="tombstone"):
        load_checkpoint(ckpt)
    assert prune_checkpoint(ckpt, reason="again") == 0
    assert prune_checkpoint(tmp_path / "checkpoint_000099", reason="missing") == 0
    assert list(tmp_path.iterdir()) == [ckpt]  # no tmp marker left behind


def test_half_pruned_is_not_loadable_and_prune_finishes(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint_000001"
    _save_small(ckpt)
    # Crash between marker and deletes: marker present, some payload left.
    (ckpt / "PRUNED").write_text(json.dumps({"reason": "x", "bytes_freed": 1, "time": "t"}))
    (ckpt / "manifest.json").unlink()
    assert is_tombstone(ckpt) and not verify_checkpoint(ckpt).ok
    left = dir_nbytes(ckpt) - (ckpt / "PRUNED").stat().st_size
    assert prune_checkpoint(ckpt, reason="finish") == left
    assert [p.name for p in ckpt.iterdir()] == ["PRUNED"]


# --------------------------------------------------------------------------- disk full


def test_enospc_mid_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = tmp_path / "trial"
    _save_small(trial / "checkpoint_000001", epoch=1)  # an older checkpoint that must survive
    _save_small(trial / "checkpoint_000002", epoch=2)  # and one a retried save would replace
    real_write = store._raw_write
    written = {"n": 0}

    def failing_write(fd: int, data: memoryview) -> int:
        if written["n"] > 200_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, data[:4096])
        written["n"] += n
        return n

    monkeypatch.setattr(store, "_raw_write", failing_write)
    big = {"w": torch.randn(512, 256)}  # 512 KiB: fails mid-file
    for name in ("checkpoint_000003", "checkpoint_000002"):
        written["n"] = 0
        with pytest.raises(CheckpointWriteError) as info:
            save_checkpoint(trial / name, model_state=big, trainer_state={}, compat={})
        assert info.value.errno == errno.ENOSPC
        assert isinstance(info.value, OSError)
    monkeypatch.undo()
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    assert load_checkpoint(trial / "checkpoint_000002").trainer_state["epoch"] == 2
    assert verify_checkpoint(trial / "checkpoint_000001").ok


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("real disk-full test needs root on Linux to mount a 2 MiB tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_disk_full(tiny_fs: Path) -> None:
    trial = tiny_fs / "trial"
    _save_small(trial / "checkpoint_000001")
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(
            trial / "checkpoint_000002",
            model_state={"w": torch.randn(1024, 1024)},  # 4 MiB > 2 MiB filesystem
            trainer_state={},
            compat={},
        )
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000001"]
    assert verify_checkpoint(trial / "checkpoint_000001").ok


# --------------------------------------------------------------------------- SIGKILL

_CHILD = """
import itertools, sys, torch
from pathlib import Path
from tune_app.checkpoints.store import save_checkpoint
root = Path(sys.argv[1])
g = torch.Generator().manual_seed(0)
model = {f"w{i}": torch.randn(256, 1024, generator=g) for i in range(6)}
print("ready", flush=True)
for i in itertools.count():
    save_checkpoint(root / f"checkpoint_{i % 3:06d}", model_state=model,
                    trainer_state={"i": i}, compat={})
"""


def _assert_visible_checkpoints_valid(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith("checkpoint_"):
            result = verify_checkpoint(entry)
            assert result.ok, f"{entry}: {result}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_save_forked(tmp_path: Path) -> None:
    """20 SIGKILLs at random moments of a save loop (forked children, fast)."""
    g = torch.Generator().manual_seed(0)
    model = {f"w{i}": torch.randn(128, 1024, generator=g) for i in range(6)}  # 3 MiB
    rng = random.Random(1234)
    leftovers_seen = 0
    for _ in range(20):
        kill_forked_loop(lambda i: save_checkpoint(tmp_path / f"checkpoint_{i % 3:06d}", model_state=model,
                                                   trainer_state={"i": i}, compat={}),
                         rng.uniform(0.0, 0.4))
        leftovers_seen += any(p.name.startswith("tmp-") for p in tmp_path.iterdir())
        _assert_visible_checkpoints_valid(tmp_path)
    assert leftovers_seen > 0, "no kill landed mid-save; the test did not exercise anything"
    assert find_resumable_checkpoint(tmp_path) is not None


@pytest.mark.slow
def test_sigkill_during_save_subprocess(tmp_path: Path) -> None:
    """10 SIGKILLs of a fresh interpreter at random moments of a save loop."""
    rng = random.Random(4321)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    leftovers_seen = 0
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        leftovers_seen += any(p.name.startswith("tmp-") for p in tmp_path.iterdir())
        _assert_visible_checkpoints_valid(tmp_path)
    assert leftovers_seen > 0, "no kill landed mid-save; the test did not exercise anything"


# --------------------------------------------------------------------------- compat


def test_compat_identical_and_soft_mismatch(caplog: pytest.LogCaptureFixture) -> None:
    assert check_compat(COMPAT, dict(COMPAT)) == COMPAT
    with caplog.at_level(logging.WARNING):
        check_compat(COMPAT, {**COMPAT, "git_commit": "def456", "package_version": "0.2.0"})
    text = caplog.text
    assert "git_commit" in text and "def456" in text and "package_version" in text


def test_compat_hard_mismatch_lists_keys_and_fixes() -> None:
    current = {**COMPAT, "architecture": {"encoder": "tiny", "hidden": 16}, "heads": ["sentence"]}
    with pytest.raises(IncompatibleCheckpointError) as info:
        check_compat(COMPAT, current)
    msg = str(info.value)
    assert "architecture.hidden: saved 8, current 16" in msg
    assert "heads: saved ['sentence', 'evidence'], current ['sentence']" in msg
    assert "tune.name=" in msg and "study_config.yaml" in msg
    assert set(info.value.differences) == {"architecture", "heads"}


# --------------------------------------------------------------------------- sizes


def test_size_estimates(tmp_path: Path) -> None:
    model = _model()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert state_dict_nbytes(model.state_dict()) == params + buffers
    opt = torch.optim.AdamW(model.parameters())
    before = estimate_checkpoint_bytes(model, opt)
    assert before >= params + buffers + 2 * params
    _train_step(model, opt)
    after = estimate_checkpoint_bytes(model, opt)
    nested = state_dict_nbytes(opt.state_dict())
    assert nested >= 2 * params  # recursion into {"state": {0: {...}}}
    saved = save_checkpoint(
        tmp_path / "checkpoint_000001",
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        trainer_state={},
        compat=COMPAT,
        rng_state=capture_rng_state(),
    )
    assert after >= saved.total_bytes
    assert abs(before - after) <= 64 * len(list(model.parameters()))
    assert estimate_checkpoint_bytes(model, None) < after


def test_parallel_hashing_matches_file_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks hashed on the worker thread, with a tiny lag bound, give exact digests."""
    monkeypatch.setattr(store, "_CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(store, "_MAX_HASH_LAG_BYTES", 2 << 20)
    state = {f"w{i}": torch.randn(3 << 18) for i in range(4)}  # 3 MiB each, 3 chunks each
    ckpt = tmp_path / "checkpoint_000001"
    saved = save_checkpoint(ckpt, model_state=state, trainer_state={}, compat={})
    data = (ckpt / "model.safetensors").read_bytes()
    assert saved.files["model.safetensors"].sha256 == hashlib.sha256(data).hexdigest()
    assert verify_checkpoint(ckpt).ok


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip(tmp_path: Path) -> None:
    model = _model().cuda()
    rng = capture_rng_state()
    assert "cuda" in rng
    ckpt = tmp_path / "checkpoint_000001"
    save_checkpoint(
        ckpt, model_state=model.state_dict(), trainer_state={}, compat={}, rng_state=rng
    )
    expected = torch.rand(3, device="cuda")
    loaded = load_checkpoint(ckpt, map_location="cuda")
    assert all(t.is_cuda for t in loaded.model_state.values())
    assert loaded.rng_state is not None
    restore_rng_state(loaded.rng_state)
    assert torch.equal(torch.rand(3, device="cuda"), expected)
