"""Search spaces: importable, picklable, conditional, and every sample is a valid config."""

from __future__ import annotations

import pickle

import optuna

from searchspaces import available_spaces, load_space
from tune_app.config import compose
from tune_app.trainable import apply_params


def _sample(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def test_spaces_listed_and_picklable() -> None:
    assert "small" in available_spaces()
    space = load_space("small", max_epochs=3)
    assert pickle.loads(pickle.dumps(space)) is not None


def test_small_space_has_a_conditional_parameter() -> None:
    samples = _sample(load_space("small", max_epochs=3), 40)
    with_mlp = [s for s in samples if s["model.criteria_head"] == "mlp"]
    with_linear = [s for s in samples if s["model.criteria_head"] == "linear"]
    assert with_mlp and with_linear
    assert all("model.head_hidden" in s for s in with_mlp)
    assert not any("model.head_hidden" in s for s in with_linear)


def test_every_sample_is_a_valid_config() -> None:
    cfg = compose([])
    for params in _sample(load_space("small", max_epochs=3), 30, seed=1):
        apply_params(cfg, params)
