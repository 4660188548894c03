"""The config schema is data: every constrained key carries its allowed values or range in its
field, validation checks each one from there, and the trainer, data pipeline and search spaces
read the same lists."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from tune_app import config
from tune_app.config import AppConfig, ConfigError, from_dict


def _constrained(obj: Any = None, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    obj = AppConfig() if obj is None else obj
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        if dataclasses.is_dataclass(value):
            yield from _constrained(value, f"{prefix}{spec.name}.")
        elif spec.metadata:
            yield f"{prefix}{spec.name}", dict(spec.metadata)


def _with(key: str, value: Any) -> dict[str, Any]:
    data = AppConfig().to_dict()
    *sections, last = key.split(".")
    node = data
    for section in sections:
        node = node[section]
    node[last] = value
    return data


CONSTRAINED = dict(_constrained())


def test_the_schema_constrains_the_keys_a_run_depends_on() -> None:
    for key in ("model.name", "model.pooling", "train.optimizer", "train.scheduler", "train.device",
                "train.precision", "data.source", "data.long_text", "tune.metric", "tune.scheduler",
                "searchspace", "augment.method", "train.warmup_ratio", "tune.num_samples", "data.num_posts"):
        assert key in CONSTRAINED, key


@pytest.mark.parametrize("key", sorted(k for k, m in CONSTRAINED.items() if "choices" in m))
def test_a_value_outside_a_keys_choices_is_refused_naming_the_key_and_every_allowed_value(key: str) -> None:
    allowed = CONSTRAINED[key]["choices"]
    allowed = tuple(allowed() if callable(allowed) else allowed)
    from_dict(_with(key, allowed[-1]))  # every listed value is accepted (alone)
    with pytest.raises(ConfigError) as err:
        from_dict(_with(key, "no-such-value"))
    assert f"{key}='no-such-value' is not allowed" in str(err.value)
    assert all(a in str(err.value) for a in allowed), str(err.value)


@pytest.mark.parametrize("key", sorted(k for k, m in CONSTRAINED.items() if "min_int" in m))
def test_an_integer_below_its_minimum_is_refused(key: str) -> None:
    minimum = CONSTRAINED[key]["min_int"]
    with pytest.raises(ConfigError, match=rf"{key}={minimum - 1} is invalid: must be an integer >= {minimum}"):
        from_dict(_with(key, minimum - 1))


@pytest.mark.parametrize("key", sorted(k for k, m in CONSTRAINED.items() if "range" in m))
def test_a_number_outside_its_range_is_refused_and_its_bounds_accepted(key: str) -> None:
    lo, hi = CONSTRAINED[key]["range"]
    for bound in (lo, hi):
        from_dict(_with(key, bound))
    for outside in (lo - 0.01, hi + 0.01):
        with pytest.raises(ConfigError, match=rf"{key}=.* must be a number in \[{lo}, {hi}\]"):
            from_dict(_with(key, outside))


def test_allowed_values_are_defined_once_and_read_by_their_users() -> None:
    from searchspaces import full
    from tune_app.data import augment
    from tune_app.training import optim

    assert optim.OPTIMIZERS is config.OPTIMIZERS and optim.LR_SCHEDULES is config.LR_SCHEDULES
    assert augment.AUGMENT_METHODS is config.AUGMENT_METHODS
    assert set(full.AUGMENT_METHODS) == set(config.AUGMENT_METHODS) - {"back_translation"}


def test_every_choice_the_full_space_samples_is_one_the_schema_allows() -> None:
    import optuna

    from searchspaces import full

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(60):
        trial = study.ask()
        full.define(trial, {"max_epochs": 4, "encoders": []})
        for key, value in trial.params.items():
            allowed = CONSTRAINED.get(key, {}).get("choices")
            if allowed is not None and not callable(allowed):
                assert value in allowed, (key, value)
        study.tell(trial, 0.0)
