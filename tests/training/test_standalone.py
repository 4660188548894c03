"""In-process training of one config (``tune_app.training.standalone``) and the learning
matrix built on it (``benchmarks/learning_matrix.py``). That it reproduces a trial's metrics
is checked against a real study in ``tests/integration/test_learning.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.learning_matrix import Job, criteria_jobs, evidence_jobs
from tune_app.config import compose
from tune_app.data.redsm5 import make_splits
from tune_app.models.catalog import CRITERIA_HEADS, EVIDENCE_HEADS, POOLINGS
from tune_app.training.standalone import study_splits, train_config


def test_study_splits_are_the_study_split(tmp_path: Path) -> None:
    cfg = compose(["data.num_posts=30", f"tune.storage_path={tmp_path}"])
    splits = study_splits(cfg)
    posts = [*splits.train, *splits.validation, *splits.test]
    want = make_splits(posts, ratios=(0.7, 0.15, 0.15), seed=cfg.data.split_seed)
    assert {k: sorted(p.post_id for p in getattr(splits, k)) for k in want} == {k: sorted(v) for k, v in want.items()}
    assert len({p.post_id for p in posts}) == 30


def test_train_config_reports_every_epoch_and_restores_threads(tmp_path: Path) -> None:
    cfg = compose(["data.num_posts=30", "tune.max_epochs=2", "model.evidence_head=start_end_linear",
                   f"tune.storage_path={tmp_path}"])
    before = torch.get_num_threads()
    history = train_config(cfg, study_splits(cfg), train_posts=8, threads=before + 1)
    assert torch.get_num_threads() == before
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"train_loss", "val_loss", "val_macro_f1", "val_evidence_f1", "val_null_accuracy"} <= set(h)
    # Seeded like a trial: the same config gives the same numbers (up to the float rounding
    # of another thread count).
    again = train_config(cfg, study_splits(cfg), train_posts=8)
    assert again == [pytest.approx(h, rel=1e-5, abs=1e-6) for h in history]


def test_learning_matrix_jobs_cover_every_head_and_pooling() -> None:
    full = criteria_jobs(3)
    assert len({j.name for j in full}) == len(CRITERIA_HEADS) * len(POOLINGS)
    marginal = criteria_jobs({"default": 6, "cls": 9}, full=False)
    heads = {o.split("=")[1] for j in marginal for o in j.overrides if o.startswith("model.criteria_head=")}
    poolings = {o.split("=")[1] for j in marginal for o in j.overrides if o.startswith("model.pooling=")}
    assert heads == set(CRITERIA_HEADS) and poolings == set(POOLINGS)
    assert len(marginal) == len(CRITERIA_HEADS) + len(POOLINGS) - 1  # the default pair once
    assert {j.epochs for j in marginal if "model.pooling=cls" in j.overrides} == {9}
    assert {j.name for j in evidence_jobs(8)} == set(EVIDENCE_HEADS)
    # The scheduler starts the costly evidence heads first.
    assert Job("e", "b", ("model.evidence_head=biaffine",), 8).cost > Job("c", "x", (), 9).cost
