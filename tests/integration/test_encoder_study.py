"""A real study (Ray Tune + Optuna) that samples the encoder: ``tune.encoders=[tiny,minilm]``.

Two trials of one epoch on a small synthetic set (short inputs: minilm trains in seconds);
the seeded sampler gives one trial each encoder. Each trial's saved config names the encoder
it trained, its checkpoint's compatibility metadata names it too, and the study's test
evaluation rebuilds the best trial with that trial's own model config, not the study's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.study_tools import run, tail, trial_dirs

NAME = "encoders"


pytestmark = pytest.mark.slow  # a real 2-trial study, one of them minilm: about 1 min


def test_each_trial_trains_and_reports_its_own_encoder(tmp_path: Path) -> None:
    storage = tmp_path / "experiments"
    log = tmp_path / "run.log"
    rc = run(["tune.encoders=[tiny,minilm]", "tune.num_samples=2", "tune.max_epochs=1", "data.num_posts=40",
              "data.max_length=48", "tune.n_startup_trials=2", f"tune.storage_path={storage}",
              f"tune.name={NAME}"], log, timeout=300)
    assert rc == 0, tail(log)
    study = storage / NAME
    used = {}
    for trial in trial_dirs(study):
        params = json.loads((trial / "params.json").read_text())
        saved = yaml.safe_load((trial / "trial_config.yaml").read_text())
        assert saved["model"]["name"] == params["model"], trial.name
        assert saved["train"]["lr"] == params["train.lr"]  # sampled on top of the encoder's defaults
        for state in trial.glob("checkpoint_*/state.json"):  # retention may have pruned the worse trial's
            assert json.loads(state.read_text())["compat"]["architecture"]["encoder_name"] == params["model"]
        used[trial.name] = params["model"]
    assert sorted(used.values()) == ["minilm", "tiny"], used

    report = json.loads((study / "evaluation_report.json").read_text())
    best = used[report["best_trial_dir"]]
    assert report["config"]["model"]["name"] == best  # the best trial's own model config
    assert report["evaluated_checkpoints"] and not report["skipped_checkpoints"]
    for ckpt in report["evaluated_checkpoints"]:
        state = json.loads((study / ckpt["path"] / "state.json").read_text())
        assert state["compat"]["architecture"]["encoder_name"] == best
    assert yaml.safe_load((study / "study_config.yaml").read_text())["model"]["name"] == "tiny"
