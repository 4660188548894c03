"""A split's posts encoded for the model and batched: what training, validation and the
test evaluation all iterate (one encoding path, one collate)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tune_app.config import AppConfig

__all__ = ["SplitData", "build_split"]


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@dataclass
class SplitData:
    """The encoded model inputs of a split (windows or pairs), its post count and a loader."""

    encoded: list[Any]
    num_posts: int
    loader: DataLoader[Any]


def build_split(posts: list[Any], tokenizer: Any, cfg: AppConfig, *, shuffle: bool, seed: int,
                cache_key: tuple[Any, ...] | None = None, pin_memory: bool = False) -> SplitData:
    """Encode ``posts`` (or take the encodings cached under ``cache_key``) and wrap a loader.

    ``cache_key`` must name the posts' content and the tokenizer (e.g. the encoder's
    signature); the encoding settings are added to it here. ``pin_memory``: page-locked
    batches for non-blocking GPU copies.
    """
    from tune_app.data.encode import collate, encode_posts
    from tune_app.worker_cache import cached

    d = cfg.data
    settings = (d.input_format, d.max_length, d.long_text, d.stride, d.include_no_symptoms)

    def encode() -> list[Any]:
        return encode_posts(
            posts, tokenizer, input_format=d.input_format,  # type: ignore[arg-type]
            max_length=d.max_length, long_text=d.long_text,  # type: ignore[arg-type]
            stride=d.stride, include_no_symptoms=d.include_no_symptoms,
        )

    encoded = encode() if cache_key is None else cached("split", (*cache_key, settings), encode)
    pad_id = int(tokenizer.pad_token_id or 0)
    loader: DataLoader[Any] = DataLoader(
        encoded,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_size=cfg.train.batch_size, shuffle=shuffle,
        collate_fn=lambda batch: collate(batch, pad_id),
        num_workers=cfg.train.num_workers, worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
    )
    return SplitData(encoded=encoded, num_posts=len(posts), loader=loader)
