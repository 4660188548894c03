"""Per-process caches of the reused trial worker: what stays loaded between trials.

With Tune's actor reuse (``tune.reuse_actors=true``, the default) one worker process
runs the study's trials one after another. What is expensive and the same for many
trials is kept here, each entry keyed by everything that changes its content:

* the posts of the data source: data settings + where they are read from + the files'
  size and mtime (a changed file is a new key);
* the tokenised split: data fingerprint (content hash) + split post ids + tokenizer
  signature + encoding settings (+ the augmentation and seed when augmentation is on);
* the encoder as loaded (pretrained weights in CPU memory, its tokenizer): name +
  revision (+ the seed for the random-init ``tiny`` encoder).

A trial never receives a cached object it could change: :func:`fresh_encoder` hands
out a deep copy of the pristine weights, never weights a previous trial trained. The
tokenised splits are lists of immutable examples that the loaders only read.

Each cache holds a bounded number of entries (the newest win), so a study that samples
several encoders keeps at most :data:`MAX_ENTRIES` of them in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Entries kept per cache (encoders of 1-10 GB: one or two at most in CPU memory).
MAX_ENTRIES: dict[str, int] = {"posts": 2, "split": 4, "encoder": 1}

_caches: dict[str, OrderedDict[Hashable, Any]] = {}
_stats: dict[str, dict[str, int]] = {}


def cached(kind: str, key: Hashable, build: Callable[[], T]) -> T:
    """The cached value of ``kind`` for ``key``, built (and kept) on a miss."""
    cache = _caches.setdefault(kind, OrderedDict())
    stats = _stats.setdefault(kind, {"hits": 0, "misses": 0})
    if key in cache:
        cache.move_to_end(key)
        stats["hits"] += 1
        return cache[key]  # type: ignore[no-any-return,unused-ignore]
    stats["misses"] += 1
    value = build()
    cache[key] = value
    while len(cache) > MAX_ENTRIES.get(kind, 2):
        cache.popitem(last=False)
    return value


def stats() -> dict[str, dict[str, int]]:
    """Hits and misses per cache kind in this process (copied)."""
    return {k: dict(v) for k, v in _stats.items()}


def clear() -> None:
    """Drop every cached value (tests; or to free memory)."""
    _caches.clear()
    _stats.clear()


def digest(value: Any) -> str:
    """A stable short hash of a JSON-able value (used inside cache keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def files_fingerprint(folder: Path | None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the files in ``folder``: a changed data file is a new key."""
    if folder is None or not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def fresh_encoder(name: str, *, revision: str | None, seed: int, gradient_checkpointing: bool) -> Any:
    """A ``LoadedEncoder`` whose model is a private copy of the cached pristine weights."""
    from tune_app.models.catalog import ENCODER_CATALOG
    from tune_app.models.encoders import load_encoder

    # Only the random-init tiny encoder depends on the seed.
    key = (name, revision, seed if ENCODER_CATALOG[name].source == "tiny" else None)
    pristine = cached("encoder", key, lambda: load_encoder(name, revision=revision, seed=seed))
    model = copy.deepcopy(pristine.model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return dataclasses.replace(pristine, model=model)
