"""The shared evaluation pass (``evaluation.forward.run_split``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tune_app.config import ConfigError, compose, validate
from tune_app.data.loader import build_split
from tune_app.evaluation.forward import SplitPass, run_split
from tune_app.models.encoders import load_encoder
from tune_app.trainable import class_weights, evaluate, loss_settings, make_model, num_labels
from tune_app.training.standalone import study_splits


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, ...]:
    cfg = compose(["data.num_posts=24", "model.evidence_head=start_end_linear",
                   f"tune.storage_path={tmp_path_factory.mktemp('fwd')}"])
    encoder = load_encoder(cfg.model.name, revision=None, seed=0)
    model = make_model(cfg, encoder, seed=0)
    split = build_split(list(study_splits(cfg).train), encoder.tokenizer, cfg, shuffle=False, seed=0)
    return cfg, model, split


def test_span_length_follows_config(setup: tuple[object, ...]) -> None:
    cfg, model, split = setup
    one = run_split(model, split, width=num_labels(cfg), device=torch.device("cpu"), max_span_tokens=1)  # type: ignore[arg-type]
    assert (one.span_end == one.span_start).all() and (one.span_start >= 1).all()
    wide = run_split(model, split, width=num_labels(cfg), device=torch.device("cpu"), max_span_tokens=64)  # type: ignore[arg-type]
    assert (wide.span_end - wide.span_start).max() > 0  # random heads pick longer spans when allowed
    assert (wide.span_margin >= one.span_margin - 1e-9).all()  # more spans allowed: never a worse best
    assert one.loss is None


def test_validation_metrics_use_the_configured_span_limit(setup: tuple[object, ...]) -> None:
    cfg, model, split = setup
    kwargs = loss_settings(cfg, class_weights(split, cfg, torch.device("cpu")))  # type: ignore[arg-type]
    a = evaluate(model, split, cfg, torch.device("cpu"), loss_kwargs=kwargs)  # type: ignore[arg-type]
    cfg.evaluation.max_span_tokens = 1  # type: ignore[attr-defined]
    try:
        b = evaluate(model, split, cfg, torch.device("cpu"), loss_kwargs=kwargs)  # type: ignore[arg-type]
    finally:
        cfg.evaluation.max_span_tokens = 64  # type: ignore[attr-defined]
    assert a["val_macro_f1"] == b["val_macro_f1"] and a["val_loss"] == b["val_loss"]
    assert a["val_evidence_f1"] != b["val_evidence_f1"] or a["val_null_accuracy"] != b["val_null_accuracy"]


def test_decided_spans_threshold() -> None:
    p = SplitPass(probs=np.zeros((1, 1)), labels=np.zeros((1, 1)), span_start=np.array([3, 5]),
                  span_end=np.array([4, 9]), span_margin=np.array([0.5, -0.1]), gold_start=np.zeros(2, int),
                  gold_end=np.zeros(2, int))
    assert [s.tolist() for s in p.decided_spans()] == [[3, 0], [4, 0]]
    assert [s.tolist() for s in p.decided_spans(-0.2)] == [[3, 5], [4, 9]]


def test_max_span_tokens_must_be_positive(tmp_path: Path) -> None:
    cfg = compose([f"tune.storage_path={tmp_path}"])
    cfg.evaluation.max_span_tokens = 0
    with pytest.raises(ConfigError, match="evaluation.max_span_tokens"):
        validate(cfg)
