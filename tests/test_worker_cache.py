"""Per-process caches of the reused trial worker: keyed, bounded, never shared mutably."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tune_app import worker_cache
from tune_app.worker_cache import cached, fresh_encoder


@pytest.fixture(autouse=True)
def _empty() -> Iterator[None]:
    worker_cache.clear()
    yield
    worker_cache.clear()


def test_cached_builds_once_per_key_and_keeps_a_bounded_number() -> None:
    built: list[int] = []

    def build(n: int) -> int:
        built.append(n)
        return n * 10

    assert cached("split", ("a", 1), lambda: build(1)) == 10
    assert cached("split", ("a", 1), lambda: build(99)) == 10  # hit: not rebuilt
    assert cached("split", ("a", 2), lambda: build(2)) == 20  # another key: built
    assert built == [1, 2]
    for n in range(3, 3 + worker_cache.MAX_ENTRIES["split"]):
        cached("split", ("a", n), lambda n=n: build(n))
    assert cached("split", ("a", 1), lambda: build(1)) == 10 and built[-1] == 1, "the oldest was evicted"
    assert worker_cache.stats()["split"] == {"hits": 1, "misses": 2 + worker_cache.MAX_ENTRIES["split"] + 1}


def test_fresh_encoder_is_a_private_copy_of_the_pristine_weights() -> None:
    first = fresh_encoder("tiny", revision=None, seed=3, gradient_checkpointing=False)
    with torch.no_grad():
        for p in first.model.parameters():
            p.fill_(7.0)  # "training" the first trial's copy
    second = fresh_encoder("tiny", revision=None, seed=3, gradient_checkpointing=False)
    assert worker_cache.stats()["encoder"] == {"hits": 1, "misses": 1}
    assert second.tokenizer is first.tokenizer  # read-only, shared
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert a.data_ptr() != b.data_ptr()
        assert not torch.equal(a, b), "the second trial gets untrained weights"
    from tune_app.models.encoders import load_encoder

    direct = load_encoder("tiny", seed=3)
    for a, b in zip(direct.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    other_seed = fresh_encoder("tiny", revision=None, seed=4, gradient_checkpointing=False)
    assert not torch.equal(next(other_seed.model.parameters()), next(second.model.parameters()))
