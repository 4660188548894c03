"""Pre-flight storage check and its actionable message."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest

from tune_app.checkpoints.preflight import (
    InsufficientStorageError,
    human_bytes,
    largest_artifacts,
    preflight,
)

Usage = namedtuple("Usage", "total used free")
MIB = 1 << 20
GIB = 1 << 30


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # apparent size without using disk


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    _sparse(root / "trial_a" / "checkpoint_000001" / "model.safetensors", 3 * GIB)
    _sparse(root / "trial_a" / "checkpoint_000001" / "optimizer.safetensors", 1 * GIB)
    _sparse(root / "trial_a" / "checkpoint_000002" / "model.safetensors", 2 * GIB)
    _sparse(root / "trial_b" / "tmp-0123" / "model.safetensors", 1536 * MIB)
    _sparse(root / "trial_b" / "events.log", 700 * MIB)
    _sparse(root / "trial_b" / "result.json", 10 * MIB)
    _sparse(root / "small.txt", 1)
    return root


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * GIB) == "5.0 GiB"
    assert human_bytes(3 * (1 << 40)) == "3.0 TiB"


def test_largest_artifacts_counts_checkpoints_as_one(study: Path) -> None:
    top = largest_artifacts(study, n=5)
    assert [p.relative_to(study).as_posix() for p, _ in top] == [
        "trial_a/checkpoint_000001",
        "trial_a/checkpoint_000002",
        "trial_b/tmp-0123",
        "trial_b/events.log",
        "trial_b/result.json",
    ]
    assert top[0][1] == 4 * GIB


def test_passes_when_space_suffices(study: Path) -> None:
    preflight(
        study,
        projected_checkpoint_bytes=GIB,
        reclaimable_bytes=0,
        disk_usage=lambda p: Usage(100 * GIB, 90 * GIB, 10 * GIB),
    )
    # Reclaimable space counts too.
    preflight(
        study,
        projected_checkpoint_bytes=GIB,
        reclaimable_bytes=2 * GIB,
        disk_usage=lambda p: Usage(100 * GIB, 100 * GIB - 10 * MIB, 10 * MIB),
    )


def test_message_is_actionable(study: Path) -> None:
    with pytest.raises(InsufficientStorageError) as info:
        preflight(
            study,
            projected_checkpoint_bytes=4 * GIB,
            reclaimable_bytes=512 * MIB,
            disk_usage=lambda p: Usage(200 * GIB, 198 * GIB, 2 * GIB),
        )
    msg = str(info.value)
    assert str(study) in msg
    assert "study directory uses:" in msg and "8.2 GiB" in msg  # 3+1+2+1.5 GiB + 710 MiB
    assert "free on its filesystem:     2.0 GiB of 200.0 GiB" in msg
    assert "projected checkpoint size:  4.0 GiB" in msg and "64.0 MiB safety margin" in msg
    assert "reclaimable by cleanup:     512.0 MiB" in msg
    for rel in ("checkpoint_000001", "checkpoint_000002", "tmp-0123", "events.log", "result.json"):
        assert rel in msg
    assert "small.txt" not in msg  # only the five largest
    assert f"python -m tune_app.cleanup --study {study} --execute" in msg
    assert "retention=minimal" in msg
    assert "tune.storage_path=<bigger disk>" in msg
    assert "model=<smaller>" in msg


def test_missing_study_dir_uses_nearest_existing_parent(tmp_path: Path) -> None:
    seen: list[Path] = []

    def usage(p: Path) -> Usage:
        seen.append(Path(p))
        return Usage(GIB, GIB - MIB, MIB)

    with pytest.raises(InsufficientStorageError, match="study directory uses:       0 B"):
        preflight(
            tmp_path / "new" / "study",
            projected_checkpoint_bytes=GIB,
            reclaimable_bytes=0,
            disk_usage=usage,
        )
    assert seen == [tmp_path]
