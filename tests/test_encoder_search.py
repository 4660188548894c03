"""The encoder as a search dimension (``tune.encoders``): sampling, the trial's config,
checkpoint compatibility and start-up validation."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from searchspaces import load_space, space_settings
from searchspaces.small import LR_RANGE
from tune_app import run
from tune_app.config import ConfigError, compose, from_dict
from tune_app.trainable import apply_params, compat_metadata, make_model

ENCODERS = "tune.encoders=[tiny,minilm]"


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return compose([ENCODERS])


def test_compose_keeps_each_encoders_sections(cfg) -> None:  # type: ignore[no-untyped-def]
    assert cfg.model.name == "tiny" and cfg.tune.encoders == ["tiny", "minilm"]
    for name in ("tiny", "minilm"):
        alone = compose([f"model={name}"])
        sections = cfg.encoder_configs[name]
        assert sections["model"] == vars(alone.model)
        assert sections["train"] == {"lr": alone.train.lr, "warmup_ratio": alone.train.warmup_ratio,
                                     "head_lr_multiplier": alone.train.head_lr_multiplier}


def test_sampled_encoder_brings_its_model_section_and_train_defaults(cfg) -> None:  # type: ignore[no-untyped-def]
    minilm = compose(["model=minilm"])
    trial = apply_params(cfg, {"model": "minilm", "train.batch_size": 16, "model.dropout": 0.2})
    assert trial.model.name == "minilm" and trial.model.pooling == minilm.model.pooling == "mean"
    assert trial.model.head_hidden == minilm.model.head_hidden and trial.model.dropout == 0.2
    assert (trial.train.lr, trial.train.head_lr_multiplier) == (minilm.train.lr, minilm.train.head_lr_multiplier)
    assert trial.train.batch_size == 16
    # a sampled LR applies on top of the encoder's default; the study config is untouched
    assert apply_params(cfg, {"model": "minilm", "train.lr": 3e-5}).train.lr == 3e-5
    assert cfg.model.name == "tiny" and cfg.train.lr == compose([]).train.lr
    tiny = apply_params(cfg, {"model": "tiny"})
    assert vars(tiny.model) == vars(compose([]).model) and tiny.train.lr == compose([]).train.lr
    # the trial's saved config names its encoder, and reads back as that model
    assert from_dict(yaml.safe_load(trial.to_yaml())).model.name == "minilm"


def test_study_overrides_apply_to_every_encoder() -> None:
    cfg = compose([ENCODERS, "model=minilm", "model.evidence_head=biaffine", "train.warmup_ratio=0.2"])
    for name in ("tiny", "minilm"):
        trial = apply_params(cfg, {"model": name})
        assert trial.model.name == name and trial.model.evidence_head == "biaffine"
        assert trial.train.warmup_ratio == 0.2
    assert apply_params(cfg, {"model": "tiny"}).train.lr == compose([]).train.lr


def test_model_sampled_only_from_the_list_and_always_when_listed(cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="does not list"):
        apply_params(cfg, {"model": "bert-base"})
    with pytest.raises(ConfigError, match="sampled no model"):
        apply_params(cfg, {"train.lr": 1e-3})


@pytest.mark.parametrize(("overrides", "expected"), [
    (["tune.encoders=[tiny,minlm]"], ["'minlm'", "did you mean minilm", "tiny", "roberta-base", "Offline"]),
    (["tune.encoders=[tiny,tiny]"], ["'tiny' twice"]),
    (["tune.encoders=[minilm]", "data.max_length=600"], ["data.max_length=600", "at most 512"]),
])
def test_bad_encoder_lists_are_config_errors(overrides: list[str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    assert all(part in str(info.value) for part in expected), str(info.value)


def test_uncached_hub_encoder_is_refused_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    with pytest.raises(ConfigError, match=r"'bert-base' \(google-bert/bert-base-uncased@main\) is not in the"):
        compose(["tune.encoders=[tiny,bert-base]"])
    compose(["tune.encoders=[tiny,bert-base-random,minilm]"])  # the offline ones need nothing


def test_unknown_encoder_exits_2_before_the_study_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(["tune.encoders=[tiny,nope]", f"tune.storage_path={tmp_path / 'exp'}"])
    err = capsys.readouterr().err
    assert code == 2 and "tune.encoders: 'nope' is not an encoder" in err and "minilm" in err, err
    assert not (tmp_path / "exp").exists()


def test_space_samples_the_encoder_and_the_lr_range_follows_it(cfg) -> None:  # type: ignore[no-untyped-def]
    space = load_space("small", **space_settings(cfg))
    assert pickle.loads(pickle.dumps(space)) is not None
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4),
                                direction="maximize")
    seen = set()
    for i in range(12):
        trial = study.ask()
        space(trial)
        params = dict(trial.params)
        kind = "tiny" if params["model"] == "tiny" else "pretrained"
        low, high = LR_RANGE[kind]
        assert low <= params["train.lr"] <= high
        assert ("train.head_lr_multiplier" in params) == (kind == "pretrained")
        trial_cfg = apply_params(cfg, params)  # every sample is a valid config of its encoder
        assert trial_cfg.model.name == params["model"] and trial_cfg.train.lr == params["train.lr"]
        seen.add(params["model"])
        study.tell(trial, float(i % 3))
    assert seen == {"tiny", "minilm"}
    # without tune.encoders the space is what it was: no "model" parameter
    plain = load_space("small", **space_settings(compose([])))
    trial = optuna.create_study().ask()
    plain(trial)
    assert "model" not in trial.params


@pytest.mark.parametrize("space_name", ["full", "fixed"])
def test_every_space_samples_the_encoder(cfg, space_name: str) -> None:  # type: ignore[no-untyped-def]
    from searchspaces import full

    space = load_space(space_name, **space_settings(cfg))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(8):
        trial = study.ask()
        space(trial)
        params = dict(trial.params)
        seen.add(params["model"])
        if space_name == "fixed":
            assert list(params) == ["model"]
        else:
            low, high = full.LR_RANGE["tiny" if params["model"] == "tiny" else "pretrained"]
            assert low <= params["train.lr"] <= high
        assert apply_params(cfg, params).model.name == params["model"]
        study.tell(trial, 0.0)
    assert seen == {"tiny", "minilm"}


def test_checkpoint_of_one_encoder_is_incompatible_with_the_other(cfg) -> None:  # type: ignore[no-untyped-def]
    from tune_app.checkpoints.store import IncompatibleCheckpointError, check_compat
    from tune_app.models.encoders import load_encoder

    compat = {}
    for name in ("tiny", "minilm"):
        trial = apply_params(cfg, {"model": name})
        model = make_model(trial, load_encoder(name, seed=0), seed=0)
        compat[name] = compat_metadata(model, trial)
        assert compat[name]["architecture"]["encoder_name"] == name
    assert compat["tiny"]["architecture"]["encoder_signature"] != compat["minilm"]["architecture"]["encoder_signature"]
    check_compat(compat["minilm"], compat["minilm"])
    with pytest.raises(IncompatibleCheckpointError, match="architecture"):
        check_compat(compat["minilm"], compat["tiny"])
