"""In-process training on the embedded data set (no Ray) for the learning tests.

Composes the config a study would (``configs/`` + overrides), splits the synthetic set the
way a study does, and runs the trainable's own pieces (model, optimiser, scheduler,
``train_one_epoch``, ``evaluate``), so a test measures what a trial would report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from tune_app.config import AppConfig, compose
from tune_app.data.redsm5 import load_posts, make_splits
from tune_app.data.schema import Post
from tune_app.data.synthetic import write_synthetic_redsm5


@dataclass
class Split:
    train: list[Post]
    validation: list[Post]
    test: list[Post]


@cache
def embedded_split(folder: str, num_posts: int = 400, seed: int = 13, split_seed: int = 42) -> Split:
    """The embedded data set split as the default study splits it (0.7/0.15/0.15)."""
    write_synthetic_redsm5(Path(folder), num_posts=num_posts, seed=seed)
    posts = list(load_posts(source="local", path=Path(folder)).posts)
    ids = make_splits(posts, ratios=(0.7, 0.15, 0.15), seed=split_seed)
    by_id = {p.post_id: p for p in posts}
    return Split(*[[by_id[i] for i in sorted(ids[k])] for k in ("train", "validation", "test")])


def train_in_process(overrides: Sequence[str], split: Split, *, epochs: int,
                     train_posts: int | None = None, threads: int = 2) -> list[dict[str, Any]]:
    """Train the model ``overrides`` describe for ``epochs`` epochs on ``split.train`` (the
    first ``train_posts`` of it if given); return the per-epoch validation metrics."""
    from tune_app.models.encoders import load_encoder
    from tune_app.trainable import (
        build_split,
        class_weights,
        evaluate,
        loss_settings,
        make_model,
        make_optimizer,
        seed_everything,
    )
    from tune_app.training import build_scheduler, optimizer_steps, train_one_epoch

    cfg: AppConfig = compose([*overrides, f"tune.max_epochs={epochs}"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = torch.device("cpu")
        seed_everything(cfg.seed, deterministic=True)
        encoder = load_encoder(cfg.model.name, seed=cfg.seed)
        model = make_model(cfg, encoder, seed=cfg.seed)
        posts = split.train[:train_posts] if train_posts else split.train
        train = build_split(posts, encoder.tokenizer, cfg, shuffle=True, seed=cfg.seed)
        val = build_split(split.validation, encoder.tokenizer, cfg, shuffle=False, seed=cfg.seed)
        optimizer = make_optimizer(cfg, model)
        t = cfg.train
        steps = optimizer_steps(len(train.loader), t.grad_accumulation_steps)
        scheduler = build_scheduler(optimizer, name=t.scheduler, warmup_ratio=t.warmup_ratio,
                                    total_steps=steps * epochs)
        loss_kwargs = loss_settings(cfg, class_weights(train, cfg, device))
        history = []
        for epoch in range(1, epochs + 1):
            assert train.loader.generator is not None
            train.loader.generator.manual_seed(cfg.seed * 100_003 + epoch)
            train_one_epoch(model, train.loader, optimizer, scheduler, loss_kwargs=loss_kwargs, device=device,
                            grad_accumulation_steps=t.grad_accumulation_steps, max_grad_norm=t.max_grad_norm)
            history.append({"epoch": epoch, **evaluate(model, val, cfg, device, loss_kwargs=loss_kwargs)})
        return history
    finally:
        torch.set_num_threads(before)


def curve(history: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` per epoch, rounded (for assertion messages)."""
    return [round(float(h[key]), 3) for h in history]
