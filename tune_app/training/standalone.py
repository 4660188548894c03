"""Train one configuration in this process, without Ray Tune: the trainable's own steps.

:func:`study_splits` reads and splits the posts as a study with the same config does;
:func:`train_config` then runs what a trial runs (``trainable.build_training_run`` and
its ``run_epoch``) and returns the per-epoch validation
metrics a trial would report. No checkpoints, tracking or augmentation. For the learning
tests, ``benchmarks/learning_matrix.py`` and trying a config by hand::

    cfg = compose(["model.evidence_head=biaffine", "tune.storage_path=/tmp/x"])
    history = train_config(cfg, study_splits(cfg))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tune_app.config import AppConfig
from tune_app.data.schema import Post

__all__ = ["PostSplits", "study_splits", "train_config"]


@dataclass(frozen=True)
class PostSplits:
    """The posts of a data set's train, validation and test splits."""

    train: tuple[Post, ...]
    validation: tuple[Post, ...]
    test: tuple[Post, ...]


def study_splits(cfg: AppConfig) -> PostSplits:
    """``cfg``'s posts split as a study splits them (``data.split_ratios``, ``data.split_seed``;
    the synthetic set is generated under ``tune.storage_path`` as a study would)."""
    from tune_app.data.redsm5 import make_splits
    from tune_app.study import materialise_data

    loaded = materialise_data(cfg)
    posts = {p.post_id: p for p in loaded.posts}
    if loaded.provided_splits:
        ids = {k: list(v) for k, v in loaded.provided_splits.items()}
    else:
        ratios = tuple(float(r) for r in cfg.data.split_ratios)
        ids = make_splits(list(posts.values()), ratios=ratios, seed=cfg.data.split_seed)  # type: ignore[arg-type]
    return PostSplits(*(tuple(posts[i] for i in sorted(ids[k])) for k in ("train", "validation", "test")))


def train_config(cfg: AppConfig, splits: PostSplits, *, train_posts: int | None = None,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Train ``cfg``'s model for ``cfg.trial_epochs`` epochs on ``splits.train`` (its first
    ``train_posts`` if given) with ``threads`` torch threads (default: unchanged), seeded as
    a trial with ``cfg.seed``; the validation metrics of every epoch (``val_macro_f1``,
    ``val_evidence_f1``, ...), plus ``epoch`` and ``train_loss``."""
    from tune_app.models.encoders import load_encoder
    from tune_app.trainable import build_training_run
    from tune_app.training.loop import select_device

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        m = cfg.model
        encoder = load_encoder(m.name, revision=m.revision, seed=cfg.seed,
                               gradient_checkpointing=m.gradient_checkpointing)
        run = build_training_run(cfg, encoder, list(splits.train[:train_posts] if train_posts else splits.train),
                                 list(splits.validation), seed=cfg.seed, device=select_device(cfg.train.device))
        return [run.run_epoch(epoch) for epoch in range(1, run.epochs + 1)]
    finally:
        torch.set_num_threads(before)
