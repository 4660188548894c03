"""Shared helpers for the training tests: real synthetic batches on the tiny encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tune_app.data.encode import collate, encode_posts
from tune_app.data.redsm5 import load_posts
from tune_app.data.schema import Post
from tune_app.data.synthetic import write_synthetic_redsm5


def synthetic_posts(folder: Path, num_posts: int = 24) -> list[Post]:
    """``num_posts`` synthetic RedSM5 posts written to and read back from ``folder``."""
    write_synthetic_redsm5(folder, num_posts=num_posts, seed=13)
    return list(load_posts(source="local", path=folder).posts)


def batches(posts: list[Post], tokenizer: Any, *, batch_size: int, num_batches: int,
            input_format: str = "multi_label", max_length: int = 64) -> list[dict[str, torch.Tensor]]:
    """``num_batches`` collated batches of ``batch_size`` encoded inputs (in order)."""
    encoded = encode_posts(posts, tokenizer, input_format=input_format,  # type: ignore[arg-type]
                           max_length=max_length)
    need = batch_size * num_batches
    assert len(encoded) >= need, f"only {len(encoded)} inputs, need {need}"
    pad = int(tokenizer.pad_token_id or 0)
    return [collate(encoded[i:i + batch_size], pad) for i in range(0, need, batch_size)]


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (deterministic comparisons in train mode)."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        if isinstance(getattr(mod, "dropout_prob", None), float):
            setattr(mod, "dropout_prob", 0.0)  # noqa: B010 - BERT's SDPA attention reads this
    return model
