"""Config composition and validation: bad values fail before Ray starts, naming key and allowed values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tune_app.config import ConfigError, compose, group_options
from tune_app.trainable import apply_params, trial_seed

REPO_ARGS = {"cwd": str(__import__("pathlib").Path(__file__).resolve().parents[1])}


def test_defaults_compose_and_groups_exist() -> None:
    cfg = compose([])
    assert cfg.model.name == "tiny"
    assert cfg.tune.metric == "val_macro_f1" and cfg.tune.mode == "max"
    assert cfg.data.source == "synthetic"
    for group in ("model", "data", "retention", "tune"):
        assert group_options(group), group
    assert {"default", "aggressive", "minimal", "permissive"} <= set(group_options("retention"))


def test_overrides_apply(tmp_path) -> None:
    cfg = compose(["tune.num_samples=3", "tune.max_epochs=2", "model=minilm", "retention=aggressive",
                   f"tune.storage_path={tmp_path}", "tune.name=abc", "seed=7", "searchspace=small"])
    assert (cfg.tune.num_samples, cfg.tune.max_epochs, cfg.model.name, cfg.seed) == (3, 2, "minilm", 7)
    assert cfg.retention.keep_last_n == 0
    assert cfg.study_dir == tmp_path / "abc"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=nope", ["model", "'nope'", "tiny", "minilm", "roberta-base"]),
        ("tune.max_epochs=-1", ["tune.max_epochs", "-1", ">= 1"]),
        ("tune.num_samples=0", ["tune.num_samples", ">= 1"]),
        ("tune.metric=val_loss", ["tune.metric", "val_macro_f1"]),
        ("tune.mode=min", ["tune.mode", "max"]),
        ("retention=huge", ["retention", "default", "aggressive"]),
        ("retention.keep_best_k=3", ["retention.keep_best_k", "keep_best_k_max"]),
        ("data.input_format=pairs", ["data.input_format", "binary_pairs", "multi_label"]),
        ("data.split_ratios=[0.5,0.5,0.5]", ["data.split_ratios", "sum to 1"]),
        ("searchspace=huge", ["searchspace", "small"]),
        ("+tune.bogus=1", ["tune.bogus", "allowed keys"]),
        ("train.epochs=9", ["train.epochs=9", "tune.max_epochs=8", "raise tune.max_epochs"]),
        ("train.seed_policy=random", ["train.seed_policy", "study", "per_trial"]),
        ("train.crf_loss_reduction=sum", ["train.crf_loss_reduction", "token_mean", "slot_mean"]),
        ("train.crf_lr_multiplier=0", ["train.crf_lr_multiplier", "[0.1, 1000.0]"]),
    ],
)
def test_invalid_values_name_key_and_allowed_values(override: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        compose([override])
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_trial_seed_follows_the_seed_policy() -> None:
    params = {"train.lr": 0.01, "train.seed_policy": "per_trial"}
    cfg = apply_params(compose(["seed=7"]), params)
    seed = trial_seed(cfg, params)
    assert seed == trial_seed(cfg, dict(reversed(params.items())))  # reproducible from the params
    assert 0 <= seed < 2**31 and seed != 7
    assert trial_seed(cfg, {**params, "train.lr": 0.02}) != seed  # trials differ
    assert trial_seed(apply_params(compose(["seed=8"]), params), params) != seed  # and studies too
    assert trial_seed(compose(["seed=7"]), {"train.lr": 0.01}) == 7  # policy "study"


def test_trial_epochs_default_to_the_study_maximum() -> None:
    assert compose(["tune.max_epochs=3"]).trial_epochs == 3
    assert compose(["tune.max_epochs=3", "train.epochs=2"]).trial_epochs == 2


def test_sampled_params_are_validated_before_training() -> None:
    cfg = compose([])
    assert apply_params(cfg, {"train.lr": 0.01, "model.criteria_head": "mlp"}).train.lr == 0.01
    with pytest.raises(ConfigError, match="train.batch_size"):
        apply_params(cfg, {"train.batch_size": 0})
    with pytest.raises(ConfigError, match="does not name a config key"):
        apply_params(cfg, {"train.nope": 1})


def test_cli_bad_input_exits_nonzero_with_one_message_and_no_traceback(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tune_app.run", "tune.max_epochs=-2",
                           f"tune.storage_path={tmp_path}"], capture_output=True, text=True, timeout=120,
                          **REPO_ARGS)
    assert proc.returncode == 2
    assert "tune.max_epochs" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid config"
