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


def test_validation_imports_neither_torch_nor_transformers() -> None:
    """Driver and trial validate a config without the heavy stack (a bad override answers fast)."""
    code = ("import sys\n"
            "from tune_app.config import compose, ConfigError, validate\n"
            "import tune_app.run, tune_app.errors\n"
            "cfg = compose(['model=minilm', 'model.evidence_head=bio_crf', 'train.precision=bf16'])\n"
            "validate(cfg)\n"
            "try:\n    compose(['train.precision=fp8'])\nexcept ConfigError as e:\n    print(e)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **REPO_ARGS)
    lines = out.stdout.strip().splitlines()
    assert "train.precision='fp8' is not allowed; allowed values: auto, fp32, bf16, fp16" in lines[0]
    assert lines[-1] == "[]", out.stdout


def test_the_driver_builds_the_trainable_without_transformers() -> None:
    """Every ``run`` command (start, ``resume=``, also of a finished study) builds the trainable
    on the driver; only the trial's worker needs transformers (about 5 s of imports here)."""
    code = ("import sys\n"
            "import tune_app.trainable, tune_app.tuner\n"
            "print(sorted(m for m in ('transformers', 'sklearn') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **REPO_ARGS)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("value", ["0", "-1", "abc", "true"])
def test_cpus_per_trial_is_all_or_a_positive_number(value: str) -> None:
    with pytest.raises(ConfigError, match="tune.cpus_per_trial"):
        compose([f"tune.cpus_per_trial={value}"])
    assert compose([]).tune.cpus_per_trial == "all"
    assert compose(["tune.cpus_per_trial=1.5"]).tune.cpus_per_trial == 1.5


def test_trial_resources_are_checked_against_what_ray_sees() -> None:
    from tune_app.tuner import trial_resources

    cfg = compose([])
    assert trial_resources(cfg, {"CPU": 8.0}) == {"cpu": 8.0, "gpu": 0.0}
    assert trial_resources(cfg, {"CPU": 8.0, "GPU": 2.0}) == {"cpu": 8.0, "gpu": 1.0}
    with pytest.raises(ConfigError, match=r"tune.cpus_per_trial=64 but Ray sees 2 CPU\(s\)"):
        trial_resources(compose(["tune.cpus_per_trial=64"]), {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"tune.gpus_per_trial=2.* but Ray sees 0 GPU\(s\)"):
        trial_resources(compose(["tune.gpus_per_trial=2"]), {"CPU": 2.0})


def test_an_unmeetable_resource_request_exits_2_before_the_study_exists(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "tune_app.run", "tune.cpus_per_trial=64",
                          f"tune.storage_path={tmp_path}"], capture_output=True, text=True, timeout=300,
                         **REPO_ARGS)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "tune.cpus_per_trial=64 but Ray sees" in out.stderr
    assert not (tmp_path / "redsm5_study").exists()
