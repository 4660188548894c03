"""A real CPU study over the ``full`` search space: 10 trials of 1 or 2 epochs (sampled), all complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.integration.study_tools import run, tail, trial_dirs, trial_state
from tune_app.config import from_dict
from tune_app.trainable import trial_seed

NAME = "full_space"
TRIALS = 10


@pytest.mark.slow
def test_full_space_study_completes(tmp_path: Path) -> None:
    storage = tmp_path / "experiments"
    log = tmp_path / "run.log"
    rc = run(["searchspace=full", f"tune.num_samples={TRIALS}", "tune.max_epochs=2",
              "data.num_posts=120", "data.max_length=64", "model=tiny", "tune.n_startup_trials=5",
              "evaluation.on_finish=false", f"tune.storage_path={storage}", f"tune.name={NAME}"],
             log, timeout=1500)
    assert rc == 0, tail(log)
    assert f"Study complete: {TRIALS}/{TRIALS} trials" in log.read_text(), tail(log)
    trials = trial_dirs(storage / NAME)
    assert len(trials) == TRIALS
    losses, epochs, policies = set(), set(), set()
    for trial in trials:
        state = trial_state(trial)
        params = json.loads((trial / "params.json").read_text())
        assert state["status"] == "completed", (trial.name, state)
        assert [h["epoch"] for h in state["history"]] == list(range(1, params["train.epochs"] + 1)), trial.name
        assert all(math.isfinite(h["train_loss"]) for h in state["history"]), trial.name
        cfg = yaml.safe_load((trial / "trial_config.yaml").read_text())
        assert state["seed"] == trial_seed(from_dict(cfg), params), trial.name  # the seed policy was applied
        epochs.add(params["train.epochs"])
        policies.add(params["train.seed_policy"])
        assert ("model.coupling_method" in params) == (params["model.coupling"] == "coupled")
        for key, value in params.items():  # every sampled value reached the trial's config
            section, name = key.split(".", 1)
            assert cfg[section][name] == pytest.approx(value), key
        losses.add(params["train.criteria_loss"])
    assert len(losses) > 1 and len(policies) > 1 and epochs == {1, 2}  # the trials really explore the space
