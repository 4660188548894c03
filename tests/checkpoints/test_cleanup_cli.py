"""``python -m tune_app.cleanup`` on a study tree built with the real checkpoint store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_app import cleanup
from tune_app.checkpoints.store import (
    TMP_PREFIX,
    dir_nbytes,
    is_tombstone,
    save_checkpoint,
    verify_checkpoint,
)
from tune_app.config import compose

REPO = Path(__file__).resolve().parents[2]


def _ckpt(trial: Path, index: int, f1: float) -> Path:
    path = trial / f"checkpoint_{index:06d}"
    save_checkpoint(path, model_state={"w": torch.full((4096,), float(index))},
                    trainer_state={"epoch": index, "metrics": {"val_macro_f1": f1}}, compat={})
    return path


def _study(root: Path, name: str = "s") -> dict[str, Path]:
    """Default retention: trial a finished (best 0.9 at ckpt 2), trial b running (3 ckpts)."""
    cfg = compose([f"tune.storage_path={root}", f"tune.name={name}"])
    study = root / name
    study.mkdir(parents=True)
    (study / "study_config.yaml").write_text(cfg.to_yaml())
    a, b = study / "trial_a", study / "trial_b"
    paths = {"a1": _ckpt(a, 1, 0.5), "a2": _ckpt(a, 2, 0.9), "a3": _ckpt(a, 3, 0.6),
             "b1": _ckpt(b, 1, 0.1), "b2": _ckpt(b, 2, 0.2), "b3": _ckpt(b, 3, 0.3)}
    (a / "trial_state.json").write_text(json.dumps({"status": "completed"}))
    (b / "trial_state.json").write_text(json.dumps({"status": "running"}))
    tmp = b / f"{TMP_PREFIX}crashed"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"x" * 5000)
    paths["tmp"] = tmp
    corrupt = _ckpt(b, 0, 0.0)
    blob = bytearray((corrupt / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (corrupt / "model.safetensors").write_bytes(bytes(blob))
    paths["corrupt"] = corrupt
    paths["study"] = study
    return paths


# Default policy: study best a2 (finished) and b's resume point b3 are protected; b keeps
# best-of-trial b3 and last 1 (b3): a1, a3, b1, b2 go, plus the temp folder and the corrupt one.
DELETED = ("a1", "a3", "b1", "b2", "tmp", "corrupt")
KEPT = ("a2", "b3")


def test_dry_run_lists_candidates_with_sizes_and_deletes_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = _study(tmp_path)
    before = dir_nbytes(p["study"])
    assert cleanup.main(["--study", str(p["study"]), "--tmp-min-age", "0"]) == 0
    out = capsys.readouterr().out
    for key in DELETED:
        assert str(p[key].relative_to(p["study"])) in out, key
    for key in KEPT:
        assert str(p[key].relative_to(p["study"])) not in out, key
    expected = sum(dir_nbytes(p[k]) for k in DELETED)
    assert f"({expected} bytes)" in out
    assert "corrupt: model.safetensors" in out and "stale temp" in out
    assert "Dry run: nothing was deleted" in out and "--execute" in out
    assert dir_nbytes(p["study"]) == before
    assert all(verify_checkpoint(p[k]).ok for k in ("a1", "a2", "a3", "b1", "b2", "b3"))


def test_execute_deletes_only_candidates_and_keeps_protected(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    p = _study(tmp_path)
    assert cleanup.main(["--study", str(p["study"]), "--execute", "--tmp-min-age", "0"]) == 0
    assert "Deleted:" in capsys.readouterr().out
    for key in KEPT:
        assert verify_checkpoint(p[key]).ok, key
    for key in ("a1", "a3", "b1", "b2", "corrupt"):
        assert is_tombstone(p[key]), key
    assert not p["tmp"].exists()
    assert cleanup.main(["--study", str(p["study"]), "--tmp-min-age", "0"]) == 0
    assert "reclaimable: 0 B" in capsys.readouterr().out


def test_young_temp_folders_are_left_alone_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _study(tmp_path)
    assert cleanup.main(["--study", str(p["study"]), "--execute"]) == 0
    assert p["tmp"].exists(), "a temp folder younger than --tmp-min-age may be a save in progress"


def test_without_study_scans_every_study_under_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    one = _study(tmp_path / "experiments", "one")
    two = _study(tmp_path / "experiments", "two")
    (tmp_path / "experiments" / "datasets").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cleanup.main(["--tmp-min-age", "0"]) == 0
    out = capsys.readouterr().out
    assert f"Study {one['study'].resolve()}" in out and f"Study {two['study'].resolve()}" in out
    assert "Total reclaimable over 2 studies" in out
    assert verify_checkpoint(one["a1"]).ok and verify_checkpoint(two["a1"]).ok


@pytest.mark.parametrize("make", ["missing", "not_a_study"])
def test_bad_study_is_one_clear_message_and_exit_2(tmp_path: Path, make: str) -> None:
    target = tmp_path / "nope"
    if make == "not_a_study":
        target.mkdir()
    proc = subprocess.run([sys.executable, "-m", "tune_app.cleanup", "--study", str(target)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --study"), proc.stderr
    assert ("no such folder" if make == "missing" else "study_config.yaml is missing") in lines[0]
