"""Cleanup scan over a built study tree, then execute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tune_app.checkpoints.cleanup_scan import (
    REASON_HALF_PRUNED,
    REASON_TMP,
    execute,
    scan_study,
)
from tune_app.checkpoints.retention import RetentionPolicy
from tune_app.checkpoints.store import (
    dir_nbytes,
    is_tombstone,
    prune_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def _ckpt(trial: Path, index: int, f1: float | None) -> Path:
    path = trial / f"checkpoint_{index:06d}"
    metrics = {} if f1 is None else {"f1": f1}
    save_checkpoint(
        path,
        model_state={"w": torch.full((64,), float(index))},
        trainer_state={"epoch": index, "metrics": metrics},
        compat={},
    )
    return path


def _completed(trial: Path) -> None:
    (trial / "trial_state.json").write_text(json.dumps({"status": "completed"}))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    a, b, c, d = (root / n for n in ("trial_a", "trial_b", "trial_c", "trial_d"))
    for f1, i in ((0.1, 1), (0.9, 2), (0.5, 3)):
        _ckpt(a, i, f1)
    _completed(a)
    for f1, i in ((0.2, 1), (0.9, 2)):  # 0.9 ties trial_a's best: co-best
        _ckpt(b, i, f1)
    _completed(b)
    for f1, i in ((0.4, 1), (0.3, 2), (0.35, 3), (0.8, 4)):  # running trial
        _ckpt(c, i, f1)
    model = c / "checkpoint_000004" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))  # newest of the running trial is corrupt
    (c / "tmp-abandoned").mkdir()
    (c / "tmp-abandoned" / "model.safetensors").write_bytes(b"x" * 1000)
    (a / "tmp-PRUNED-123").write_text("{}")
    _ckpt(d, 1, 0.1)
    prune_checkpoint(d / "checkpoint_000001", reason="old")
    half = _ckpt(d, 2, None)
    (half / "PRUNED").write_text(json.dumps({"reason": "crash"}))
    _completed(d)
    return root


def test_scan_lists_candidates_never_protected(study: Path) -> None:
    report = scan_study(study, metric="f1", policy=RetentionPolicy(keep_last_n=1, keep_best_k=1))
    rel = {c.path.relative_to(study).as_posix(): c for c in report.candidates}
    assert set(rel) == {
        "trial_a/tmp-PRUNED-123",
        "trial_c/tmp-abandoned",
        "trial_d/checkpoint_000002",
        "trial_c/checkpoint_000004",
        "trial_a/checkpoint_000001",
        "trial_a/checkpoint_000003",
        "trial_b/checkpoint_000001",
        "trial_c/checkpoint_000002",
    }
    assert rel["trial_c/tmp-abandoned"].reason == REASON_TMP
    assert rel["trial_c/tmp-abandoned"].bytes == 1000
    assert rel["trial_d/checkpoint_000002"].reason == REASON_HALF_PRUNED
    assert rel["trial_c/checkpoint_000004"].reason.startswith("corrupt: model.safetensors")
    assert rel["trial_a/checkpoint_000001"].reason.startswith("retention: finished trial")
    protected = {p.relative_to(study).as_posix() for p in report.protected}
    assert protected == {
        "trial_a/checkpoint_000002",  # study best
        "trial_b/checkpoint_000002",  # co-best
        "trial_c/checkpoint_000003",  # newest valid of the running trial
        "trial_c/checkpoint_000001",  # best of the running trial
    }
    assert not protected & set(rel)
    assert report.reclaimable_bytes == sum(c.bytes for c in report.candidates)
    assert not report.over_budget


def test_execute_frees_space_and_keeps_directories(study: Path) -> None:
    policy = RetentionPolicy(keep_last_n=1, keep_best_k=1)
    report = scan_study(study, metric="f1", policy=policy)
    before = dir_nbytes(study)
    freed = execute(report)
    assert freed == report.reclaimable_bytes
    assert dir_nbytes(study) <= before - freed + 4096 * len(report.candidates)  # + PRUNED markers
    for cand in report.candidates:
        if cand.path.name.startswith("tmp-"):
            assert not cand.path.exists()
        else:
            assert cand.path.is_dir() and is_tombstone(cand.path)  # Tune can still resolve it
    for path in report.protected:
        assert verify_checkpoint(path).ok
    again = scan_study(study, metric="f1", policy=policy)
    assert again.candidates == [] and again.reclaimable_bytes == 0
    assert execute(again) == 0


def test_check_hashes_false_is_structural_only(study: Path) -> None:
    report = scan_study(study, metric="f1", policy=RetentionPolicy(), check_hashes=False)
    # The byte-flipped checkpoint keeps its size: only a full scan calls it corrupt.
    assert not any(c.reason.startswith("corrupt") for c in report.candidates)


def test_recent_temps_can_be_spared(study: Path) -> None:
    report = scan_study(study, metric="f1", policy=RetentionPolicy(), tmp_min_age_s=3600)
    assert not any(c.reason == REASON_TMP for c in report.candidates)


def test_execute_refuses_protected(study: Path) -> None:
    report = scan_study(study, metric="f1", policy=RetentionPolicy())
    from tune_app.checkpoints.cleanup_scan import Candidate

    report.candidates = [Candidate(report.protected[0], 1, "bogus")]
    assert execute(report) == 0
    assert verify_checkpoint(report.protected[0]).ok


def test_torn_state_write_temps_are_listed_and_removed(study: Path) -> None:
    torn = study / ".searcher-state-2026-01-01_00-00-00.pkl.tmp-0123abcd"  # a killed atomic write
    torn.write_bytes(b"half a pickle")
    real = study / "searcher-state-2026-01-01_00-00-00.pkl"
    real.write_bytes(b"complete")
    report = scan_study(study, metric="f1", policy=RetentionPolicy())
    assert torn in [c.path for c in report.candidates if c.reason == REASON_TMP]
    assert real not in [c.path for c in report.candidates]
    execute(report)
    assert not torn.exists() and real.read_bytes() == b"complete"


def test_remove_torn_temps_deletes_only_what_killed_writers_left(tmp_path: Path) -> None:
    from tune_app.checkpoints.cleanup_scan import remove_torn_temps

    trial = tmp_path / "trial_a"
    (trial / "tmp-0123abcd").mkdir(parents=True)  # a checkpoint save cut short
    (trial / "tmp-0123abcd" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".experiment_state-1.json.tmp-9f").write_text("{")  # a torn atomic write of Tune's
    (tmp_path / ".optuna.db.tmp-5e").write_text("")  # an Optuna DB rebuild cut short (optuna_store)
    # The Optuna DB and its rollback journal stay: SQLite needs a killed writer's journal to roll back.
    keep = [tmp_path / "study_config.yaml", tmp_path / ".study.lock", trial / "trial_state.json",
            trial / "checkpoint_000000" / "state.json", tmp_path / "optuna.db", tmp_path / "optuna.db-journal"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    removed = {p.relative_to(tmp_path).as_posix() for p in remove_torn_temps(tmp_path)}
    assert removed == {"trial_a/tmp-0123abcd", ".experiment_state-1.json.tmp-9f", ".optuna.db.tmp-5e"}
    assert all(p.exists() for p in keep)
    assert not (trial / "tmp-0123abcd").exists()
