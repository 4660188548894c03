"""Train one configuration in this process, without Ray Tune: the trainable's own steps.

:func:`study_splits` reads and splits the posts as a study with the same config does;
:func:`train_config` then runs what a trial runs (encoder, model, optimiser, scheduler,
``train_one_epoch`` and ``evaluate`` per epoch) and returns the per-epoch validation
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
    from tune_app.trainable import (
        build_split,
        class_weights,
        evaluate,
        loss_settings,
        make_model,
        make_optimizer,
        seed_everything,
        select_device,
    )
    from tune_app.training import (
        build_scheduler,
        make_grad_scaler,
        optimizer_steps,
        train_one_epoch,
    )

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        seed, t = cfg.seed, cfg.train
        device = select_device(t.device)
        encoder = load_encoder(cfg.model.name, revision=cfg.model.revision, seed=seed,
                               gradient_checkpointing=cfg.model.gradient_checkpointing)
        seed_everything(seed, deterministic=t.deterministic)
        model = make_model(cfg, encoder, seed=seed).to(device)
        posts = list(splits.train[:train_posts] if train_posts else splits.train)
        train = build_split(posts, encoder.tokenizer, cfg, shuffle=True, seed=seed)
        val = build_split(list(splits.validation), encoder.tokenizer, cfg, shuffle=False, seed=seed)
        optimizer = make_optimizer(cfg, model)
        epochs = cfg.trial_epochs
        steps = optimizer_steps(len(train.loader), t.grad_accumulation_steps)
        scheduler = build_scheduler(optimizer, name=t.scheduler, warmup_ratio=t.warmup_ratio,
                                    total_steps=steps * epochs)
        scaler = make_grad_scaler(device, t.precision)
        loss_kwargs = loss_settings(cfg, class_weights(train, cfg, device))
        history: list[dict[str, Any]] = []
        for epoch in range(1, epochs + 1):
            assert train.loader.generator is not None
            train.loader.generator.manual_seed(seed * 100_003 + epoch)  # as the trainable does
            train_loss = train_one_epoch(
                model, train.loader, optimizer, scheduler, loss_kwargs=loss_kwargs, device=device,
                grad_accumulation_steps=t.grad_accumulation_steps, fgm_epsilon=t.fgm_epsilon,
                precision=t.precision, max_grad_norm=t.max_grad_norm, scaler=scaler)
            history.append({"epoch": epoch, "train_loss": train_loss,
                            **evaluate(model, val, cfg, device, loss_kwargs=loss_kwargs)})
        return history
    finally:
        torch.set_num_threads(before)
