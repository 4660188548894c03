"""``tune_app.validate_env``: each check passes and fails where it should, the CLI
composes overrides like ``tune_app.run``, and the Hugging Face token never leaks."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import namedtuple
from dataclasses import asdict
from pathlib import Path

import pytest

from tune_app import validate_env as ve
from tune_app.config import AppConfig, ConfigError, compose
from tune_app.models.encoders import ENCODER_CATALOG

REPO = Path(__file__).resolve().parents[1]
Usage = namedtuple("Usage", "total used free")
SECRET = "hf_NOTAREALTOKEN_validate_env_test"


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home, no token."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def _cfg(tmp_path: Path, *overrides: str) -> AppConfig:
    return compose([f"tune.storage_path={tmp_path / 'exp'}", *overrides])


# --- versions -----------------------------------------------------------------------
def test_python_version_against_requires_python() -> None:
    assert ve.check_python((3, 11, 9)).ok
    bad = ve.check_python((3, 12, 1))
    assert not bad.ok and bad.fix and "3.11" in bad.fix


def test_packages_fail_outside_pyproject_constraints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = ve.metadata.version
    assert ve.check_packages(tmp_path / "no.lock").ok
    monkeypatch.setattr(ve.metadata, "version", lambda name: "2.59.0" if name == "ray" else real(name))
    bad = ve.check_packages(tmp_path / "no.lock")
    assert not bad.ok and bad.problem and "ray 2.59.0" in bad.problem and "make install" in (bad.fix or "")


def test_packages_report_drift_from_lock_without_failing(tmp_path: Path) -> None:
    lock = tmp_path / "poetry.lock"
    lock.write_text('[[package]]\nname = "torch"\nversion = "0.0.1"\n\n[[package]]\nname = "ray"\n'
                    f'version = "{ve.metadata.version("ray")}"\n')
    check = ve.check_packages(lock)
    assert check.ok and any(d.startswith("torch ") for d in check.detail["differs_from_lock"])
    assert not any(d.startswith("ray ") for d in check.detail["differs_from_lock"])


# --- device, dirs, disk -------------------------------------------------------------
def test_gpu_requested_without_cuda_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ve.check_torch(_cfg(tmp_path)).ok
    assert ve.check_torch(_cfg(tmp_path)).detail["device"] == "cpu"
    bad = ve.check_torch(_cfg(tmp_path, "train.device=cuda"))
    assert not bad.ok and "train.device=auto" in (bad.fix or "")


def test_experiments_dir_must_be_writable(tmp_path: Path) -> None:
    assert ve.check_experiments_dir(_cfg(tmp_path)).ok and (tmp_path / "exp").is_dir()
    (tmp_path / "file").write_text("x")
    bad = ve.check_experiments_dir(compose([f"tune.storage_path={tmp_path / 'file' / 'sub'}"]))
    assert not bad.ok and "tune.storage_path=" in (bad.fix or "")


def test_tiny_projection_equals_the_real_models_estimate(tmp_path: Path) -> None:
    import torch

    from tune_app.checkpoints.store import estimate_checkpoint_bytes
    from tune_app.models.dual_head import build_model
    from tune_app.models.encoders import load_encoder
    from tune_app.trainable import num_outputs

    cfg = _cfg(tmp_path)
    model = build_model(load_encoder("tiny"), num_outputs=num_outputs(cfg), criteria_head=cfg.model.criteria_head,
                        evidence_head=cfg.model.evidence_head, pooling=cfg.model.pooling,
                        head_hidden=cfg.model.head_hidden, dropout=cfg.model.dropout)
    real = estimate_checkpoint_bytes(model, torch.optim.AdamW(model.parameters()))
    assert ve.projected_checkpoint_bytes(cfg) == (real, "tiny config")


def test_hub_model_sized_from_the_config_table(tmp_path: Path, hf_env: Path) -> None:
    size, source = ve.projected_checkpoint_bytes(_cfg(tmp_path, "model=bert-base"))
    # ~109M fp32 params x (weights + two AdamW moments).
    assert source == "size table" and 1.25e9 < size < 1.40e9
    assert set(ve.HUB_SIZE_TABLE) == {n for n, s in ENCODER_CATALOG.items() if s.source == "hub"}


def test_disk_need_is_checkpoint_times_retained_plus_one(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "retention=permissive")  # keep_best_k=2, keep_last_n=2 -> 5 held
    per = 100 << 20
    need = 5 * per + ve.SAFETY_MARGIN_BYTES
    ok = ve.check_disk(cfg, per, disk_usage=lambda _: Usage(10 * need, 0, need))
    assert ok.ok and ok.detail["checkpoints_held"] == 5 and ok.detail["needed_bytes"] == need
    bad = ve.check_disk(cfg, per, disk_usage=lambda _: Usage(10 * need, 0, need - 1))
    assert not bad.ok and "5 x 100.0 MiB" in (bad.problem or "") and "retention=minimal" in (bad.fix or "")
    capped = ve.check_disk(_cfg(tmp_path, "retention.max_total_size_gb=0.1"), per,
                           disk_usage=lambda _: Usage(10 * need, 0, need))
    assert capped.ok and "prune harder" in capped.detail["warning"]
    # Two trials at once: the study's best 2, and per running trial its last 2 and the one being written.
    two = ve.check_disk(_cfg(tmp_path, "retention=permissive", "tune.max_concurrent_trials=2"), per,
                        disk_usage=lambda _: Usage(10 * need, 0, need))
    assert not two.ok and two.detail["checkpoints_held"] == 2 + 2 * 3
    assert "8 x 100.0 MiB checkpoints of tiny, 2 trials at once" in (two.problem or "")
    assert "tune.max_concurrent_trials" in (two.fix or "")


# --- MLflow -------------------------------------------------------------------------
def test_mlflow_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    assert ve.check_mlflow(f"sqlite:///{db}").detail["exists"] is False
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    assert ve.check_mlflow(f"sqlite:///{db}").ok
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    assert not ve.check_mlflow(f"sqlite:///{other}").ok
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    bad = ve.check_mlflow(f"sqlite:///{junk}")
    assert not bad.ok and "tracking.tracking_uri" in (bad.fix or "")


def test_mlflow_server_unreachable_fails() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = ve.check_mlflow(f"http://127.0.0.1:{port}", timeout=2)
    assert not bad.ok and "not reachable" in (bad.problem or "")


# --- Hugging Face, NLTK -------------------------------------------------------------
def test_token_presence_reported_never_printed(tmp_path: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ve.check_huggingface(_cfg(tmp_path)).detail["token_present"] is False
    monkeypatch.setenv("HF_TOKEN", SECRET)
    check = ve.check_huggingface(_cfg(tmp_path))
    assert check.detail["token_present"] is True and check.detail["token_source"] == "env HF_TOKEN"
    assert SECRET not in json.dumps(asdict(check))
    monkeypatch.delenv("HF_TOKEN")
    hf_env.mkdir(parents=True, exist_ok=True)
    (hf_env / "token").write_text(SECRET)
    check = ve.check_huggingface(_cfg(tmp_path))
    assert check.detail["token_source"] == f"file {hf_env / 'token'}" and SECRET not in json.dumps(asdict(check))


def test_hub_model_needs_cache_when_offline_or_token_when_gated(
        tmp_path: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ve.check_huggingface(_cfg(tmp_path)).ok  # tiny: no hub needed
    offline = ve.check_huggingface(_cfg(tmp_path, "model=bert-base"))
    assert not offline.ok and offline.required and "model=tiny" in (offline.fix or "")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    assert ve.check_huggingface(_cfg(tmp_path, "model=bert-base")).ok  # online: downloads
    gated = ve.check_huggingface(_cfg(tmp_path, "model=mental-bert"))
    assert not gated.ok and "HF_TOKEN" in (gated.fix or "")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert ve.check_huggingface(_cfg(tmp_path, "model=mental-bert")).ok


def test_nltk_data_required_only_when_augmenting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_APP_NLTK_DATA", str(tmp_path / "empty_nltk"))
    monkeypatch.setenv("TA_CACHE_DIR", str(tmp_path / "empty_ta"))
    off = ve.check_nltk(_cfg(tmp_path))
    assert off.ok and not off.required and off.detail["missing"]
    # (config validation itself refuses augment.enabled=true without the data, so
    # flip the flag on a composed config to see what validate_env reports)
    cfg = _cfg(tmp_path)
    cfg.augment.enabled, cfg.augment.probability = True, 0.2
    bad = ve.check_nltk(cfg)
    assert not bad.ok and "install_nltk_data.sh" in (bad.fix or "")
    with pytest.raises(ConfigError, match="install_nltk_data.sh"):
        _cfg(tmp_path, "augment.enabled=true", "augment.probability=0.2")


def test_parse_args_skip_and_overrides() -> None:
    assert ve.parse_args(["--skip", "ray,mlflow", "model=minilm", "--skip=disk"]) == (
        {"ray", "mlflow", "disk"}, ["model=minilm"], False)
    assert ve.parse_args(["--json", "seed=1"]) == (set(), ["seed=1"], True)
    with pytest.raises(ConfigError, match="allowed"):
        ve.parse_args(["--skip", "rays"])


# --- CLI ----------------------------------------------------------------------------
def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tune_app.validate_env", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_passes_with_overrides_and_starts_ray(tmp_path: Path) -> None:
    out = _cli("--json", "model=minilm", f"tune.storage_path={tmp_path / 'x'}", env_extra={"HF_TOKEN": SECRET})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["config"]["model"] == "minilm"
    assert report["config"]["storage_path"] == str(tmp_path / "x")
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == set(ve.CHECKS)
    assert checks["disk"]["detail"]["size_source"] == "package config.json"
    assert checks["ray"]["ok"] and checks["ray"]["detail"]["cluster_cpus"] == 1.0
    assert checks["huggingface"]["detail"]["token_present"] is True
    assert SECRET not in out.stdout + out.stderr


def test_cli_json_failure_exit_1_with_fix_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = _cli("--json", "--skip", "ray", f"tune.storage_path={tmp_path / 'file' / 'sub'}")
    assert out.returncode == 1
    assert json.loads(out.stdout)["ok"] is False
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("FAIL experiments_dir:"))
    assert "-> fix: tune.storage_path=" in line


def test_cli_bad_override_exit_2() -> None:
    out = _cli("model=nope")
    assert out.returncode == 2 and "allowed values" in out.stderr and out.stdout == ""


def test_cli_human_verdict_one_line_per_check(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = _cli("--skip", "ray,packages", f"tune.storage_path={tmp_path / 'file' / 'sub'}",
               env_extra={"HF_TOKEN": SECRET})
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("validate_env: model=tiny")
    rows = {ln.split()[1]: ln for ln in lines[1:-1]}
    assert list(rows) == list(ve.CHECKS), out.stdout  # one line per check, in order, skipped ones too
    assert rows["ray"].startswith("SKIP") and rows["packages"].startswith("SKIP")
    assert rows["experiments_dir"].startswith("FAIL") and "-> fix: tune.storage_path=" in rows["experiments_dir"]
    assert rows["python"].startswith("OK") and "Python 3.11" in rows["python"]
    assert rows["huggingface"].startswith("OK") and "token: env HF_TOKEN" in rows["huggingface"]
    assert lines[-1].startswith("1 check failed: experiments_dir")
    assert SECRET not in out.stdout + out.stderr
    assert not out.stdout.lstrip().startswith("{")  # JSON only with --json


def test_verdict_lines_ready_warn_and_failures() -> None:
    ok = ve.Check("python", True, detail={"version": "3.11.9", "requires": ">=3.11"})
    warned = ve.Check("disk", True, detail={"free": "1 GiB", "warning": "retention will prune harder"})
    optional = ve.Check("huggingface", False, required=False, problem="cache odd", fix="set HF_HOME")
    lines = ve.verdict_lines([ok, warned, optional], skip={"ray"})
    assert lines[0].startswith("OK    python") and "3.11.9" in lines[0]
    assert lines[1].startswith("WARN  disk") and "prune harder" in lines[1]
    assert lines[2].startswith("WARN  huggingface") and "-> fix: set HF_HOME" in lines[2]
    assert lines[3].startswith("SKIP  ray")
    assert lines[-1] == "ready: 3 checks run, none failed; 2 warnings (disk, huggingface); 1 skipped (ray)"
    bad = [ve.Check("mlflow", False, problem="p", fix="f"), ve.Check("torch", False, problem="q", fix="g")]
    assert ve.verdict_lines(bad)[-1] == "2 checks failed: torch, mlflow (fixes above)"  # in CHECKS order
    crashed = ve.Check("nltk", False, problem="check crashed: KeyError: 'x'", fix="see the error")
    assert ve.verdict_lines([crashed])[0].startswith("FAIL  nltk")
