"""Same trial config + same seed on CPU -> identical metrics, and the determinism flags.

Two real 1-trial studies (``searchspace=fixed``) into different storage folders; their
per-epoch histories in ``trial_state.json`` must match exactly, timing keys aside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import REPO, run, study_env, tail, trial_dirs, trial_state
from tune_app.checkpoints.store import is_tombstone

NAME = "repro"
ARGS = ["model=tiny", "searchspace=fixed", "tune.num_samples=1", "tune.max_epochs=2", "seed=3",
        "train.device=cpu", "tune.gpus_per_trial=0", "evaluation.on_finish=false", f"tune.name={NAME}"]
#: Keys that measure time, not what was learned.
TIMING_KEYS = frozenset({"epoch_time_s", "time_this_iter_s", "time_total_s", "timestamp"})


def _without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in epoch.items() if k not in TIMING_KEYS} for epoch in history]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    trials = []
    for label in ("a", "b"):
        storage = tmp_path_factory.mktemp(f"repro_{label}")
        log = storage / "run.log"
        rc = run([*ARGS, f"tune.storage_path={storage}"], log)
        assert rc == 0, tail(log)
        found = trial_dirs(storage / NAME)
        assert len(found) == 1, tail(log)
        trials.append(found[0])
    return trials


@pytest.mark.slow
def test_same_seed_same_config_gives_identical_epoch_metrics(two_runs: list[Path]) -> None:
    a, b = (trial_state(t) for t in two_runs)
    assert a["status"] == b["status"] == "completed"
    assert a["seed"] == b["seed"] == 3
    assert [h["epoch"] for h in a["history"]] == [1, 2]
    ha, hb = _without_timing(a["history"]), _without_timing(b["history"])
    assert "val_macro_f1" in ha[0] and "train_loss" in ha[0]
    # Training moved the model: identical histories are not identical constants.
    assert ha[0]["train_loss"] != ha[1]["train_loss"]
    assert ha == hb  # exact: same floats, not approx


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights(two_runs: list[Path]) -> None:
    live = [{c.name: c for c in t.glob("checkpoint_*") if not is_tombstone(c)} for t in two_runs]
    common = sorted(set(live[0]) & set(live[1]))
    assert common, f"no checkpoint kept by both runs: {live}"
    for name in common:
        files = [json.loads((d[name] / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]
                 for d in live]
        assert files[0] == files[1], f"{name}: model weights differ between identical runs"


@pytest.mark.slow
def test_trials_ran_with_deterministic_flags(two_runs: list[Path]) -> None:
    import yaml

    for trial in two_runs:
        cfg = yaml.safe_load((trial / "trial_config.yaml").read_text())
        assert cfg["train"]["deterministic"] is True and cfg["seed"] == 3


def test_seed_everything_sets_deterministic_algorithm_flags() -> None:
    code = (
        "import os, json, torch\n"
        "os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)\n"
        "from tune_app.trainable import seed_everything\n"
        "torch.backends.cudnn.benchmark = True\n"
        "before = torch.are_deterministic_algorithms_enabled()\n"
        "seed_everything(3, deterministic=True)\n"
        "a = torch.rand(3).tolist(); seed_everything(3, deterministic=True); b = torch.rand(3).tolist()\n"
        "print(json.dumps({'before': before, 'det': torch.are_deterministic_algorithms_enabled(),\n"
        "  'warn_only': torch.is_deterministic_algorithms_warn_only_enabled(),\n"
        "  'cublas': os.environ.get('CUBLAS_WORKSPACE_CONFIG'), 'benchmark': torch.backends.cudnn.benchmark,\n"
        "  'same_draws': a == b}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=study_env(), capture_output=True,
                         text=True, timeout=120, check=True)
    flags = json.loads(out.stdout.strip().splitlines()[-1])
    assert flags == {"before": False, "det": True, "warn_only": True, "cublas": ":4096:8",
                     "benchmark": False, "same_draws": True}
