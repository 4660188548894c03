"""Each model config carries the training defaults that make its encoder learn, and the
``small`` space samples ranges that fit the encoder kind (random-init tiny vs pretrained)."""

from __future__ import annotations

import optuna
import pytest

from searchspaces import load_space
from searchspaces.small import HEAD_LR_MULTIPLIER_RANGE, LR_RANGE, encoder_kind
from tune_app.config import compose, group_options


def _sample(model: str, n: int = 25) -> list[dict[str, object]]:
    space = load_space("small", max_epochs=2, model=model)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("model", group_options("model"))
def test_model_config_defaults_lie_in_the_small_space_of_its_kind(model: str) -> None:
    cfg = compose([f"model={model}"])
    kind = encoder_kind({"model": model})
    low, high = LR_RANGE[kind]
    assert low <= cfg.train.lr <= high, (model, cfg.train.lr)
    assert cfg.train.warmup_ratio > 0
    if kind == "tiny":
        assert cfg.train.head_lr_multiplier == 1.0
    else:
        assert HEAD_LR_MULTIPLIER_RANGE[0] <= cfg.train.head_lr_multiplier <= HEAD_LR_MULTIPLIER_RANGE[1]


def test_pretrained_defaults_differ_from_tiny_and_overrides_still_win() -> None:
    tiny, minilm = compose([]), compose(["model=minilm"])
    assert tiny.model.name == "tiny" and tiny.train.lr == pytest.approx(5e-3)
    assert minilm.train.lr == pytest.approx(1e-4) and minilm.train.head_lr_multiplier == pytest.approx(10.0)
    assert compose(["model=minilm", "train.lr=3e-5"]).train.lr == pytest.approx(3e-5)
    assert compose(["train.head_lr_multiplier=2", "model=minilm"]).train.head_lr_multiplier == pytest.approx(2.0)


@pytest.mark.parametrize("model", ["tiny", "minilm", "bert-base"])
def test_small_space_samples_the_range_of_the_encoder_kind(model: str) -> None:
    kind = encoder_kind({"model": model})
    low, high = LR_RANGE[kind]
    for params in _sample(model):
        assert low <= float(params["train.lr"]) <= high  # type: ignore[arg-type]
        assert ("train.head_lr_multiplier" in params) == (kind == "pretrained")
    assert LR_RANGE["pretrained"][1] < LR_RANGE["tiny"][0]


def test_minilm_pools_by_mean_as_it_was_trained() -> None:
    """all-MiniLM-L6-v2 is a mean-pooling sentence encoder: with cls pooling it learned
    slower on both heads (140 posts x 2 epochs: macro-F1 0.43 vs 0.47, evidence F1 0.68 vs
    0.76; docs/learning.md)."""
    assert compose(["model=minilm"]).model.pooling == "mean"
    assert compose(["model=minilm", "model.pooling=cls"]).model.pooling == "cls"
