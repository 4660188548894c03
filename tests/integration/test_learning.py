"""The embedded default is learnable: a short real study clearly beats chance.

If training, the data set or the metric breaks, validation macro-F1 falls to the level
of a trivial predictor and this test fails. The in-process trainer of the learning tests
and ``benchmarks/learning_matrix.py`` (``tune_app.training.standalone``) reproduces the
trial's metrics exactly, so what they measure is what a study reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tests.integration.study_tools import run, tail, trial_dirs, trial_state
from tune_app.config import load_study_config
from tune_app.data.redsm5 import label_vector, load_splits
from tune_app.study import SPLITS_FILE, load_posts_for
from tune_app.training.standalone import study_splits, train_config


def _trivial_macro_f1(study: Path) -> float:
    """Best macro-F1 of the constant predictors (all positive) on the validation split."""
    cfg = load_study_config(study)
    ids = set(load_splits(study / SPLITS_FILE)["validation"])
    posts = load_posts_for(cfg, only_post_ids=ids).posts
    labels = np.array([label_vector(p, include_no_symptoms=cfg.data.include_no_symptoms) for p in posts])
    return float(f1_score(labels, np.ones_like(labels), average="macro", zero_division=0))


def test_short_study_beats_chance_clearly(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    rc = run(["searchspace=fixed", "tune.num_samples=1", "tune.max_epochs=5", f"tune.storage_path={tmp_path}",
              "tune.name=learn"], log)
    assert rc == 0, tail(log)
    study = tmp_path / "learn"
    (trial,) = trial_dirs(study)
    history = trial_state(trial)["history"]
    best = max(h["val_macro_f1"] for h in history)
    chance = _trivial_macro_f1(study)
    assert best > chance + 0.15, (best, chance, [round(h["val_macro_f1"], 3) for h in history])
    assert history[-1]["val_loss"] < history[0]["val_loss"]

    # The in-process trainer (learning tests, benchmarks) reports what the trial reported.
    cfg = load_study_config(study)
    splits = study_splits(cfg)
    saved = load_splits(study / SPLITS_FILE)
    assert {k: sorted(p.post_id for p in getattr(splits, k)) for k in saved} == {k: sorted(v) for k, v in saved.items()}
    again = train_config(cfg, splits)
    keys = ("train_loss", "val_loss", "val_macro_f1", "val_evidence_f1", "val_null_accuracy")
    assert [{k: h[k] for k in keys} for h in again] == [
        {k: pytest.approx(h[k], rel=1e-5, abs=1e-6) for k in keys} for h in history]
