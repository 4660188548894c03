"""N concurrent trials and a Ray cluster: config, resources, the disk check, the Tuner built."""

from __future__ import annotations

import logging
from collections import namedtuple
from pathlib import Path

import pytest

from tune_app.checkpoints.preflight import InsufficientStorageError, preflight
from tune_app.config import ConfigError, compose, validate
from tune_app.tuner import trial_resources, worker_env

GIB = 1 << 30
Usage = namedtuple("Usage", "total used free")


def test_sequential_is_the_default() -> None:
    cfg = compose([])
    assert (cfg.tune.max_concurrent_trials, cfg.tune.address, cfg.tune.max_failures) == (1, None, 0)


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "head-node.internal:6379", "ray://head:10001",
                                     "[::1]:6379"])
def test_ray_addresses_are_accepted(address: str) -> None:
    validate(compose([f"tune.address='{address}'"]))


@pytest.mark.parametrize("address", ["localhost", "http://head:8265", "ray://", "head:port", "a b:1"])
def test_a_bad_address_names_the_forms_ray_accepts(address: str) -> None:
    with pytest.raises(ConfigError, match=r"tune.address=.* is not a Ray address: use auto .*6379.*ray://"):
        validate(compose([f"tune.address='{address}'"]))


@pytest.mark.parametrize("key", ["tune.max_concurrent_trials=0", "tune.max_failures=-1"])
def test_counts_below_their_minimum_fail(key: str) -> None:
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        validate(compose([key]))


def test_all_cpus_are_shared_by_the_concurrent_trials() -> None:
    assert trial_resources(compose(["tune.max_concurrent_trials=2"]), {"CPU": 8.0}) == {"cpu": 4.0, "gpu": 0.0}
    assert trial_resources(compose(["tune.max_concurrent_trials=3"]), {"CPU": 8.0}) == {"cpu": 2.0, "gpu": 0.0}
    # More trials than CPUs: one CPU each (the rest wait for a slot).
    assert trial_resources(compose(["tune.max_concurrent_trials=4"]), {"CPU": 2.0})["cpu"] == 1.0
    # Sequential: every CPU, as before.
    assert trial_resources(compose([]), {"CPU": 8.0})["cpu"] == 8.0


def test_a_trial_must_fit_one_node_of_a_cluster() -> None:
    two_nodes = {"CPU": 2.0}, {"CPU": 1.0, "GPU": 0.0}
    # "all" of a sequential study on two 1-CPU nodes: one node's CPU, not the cluster's 2.
    assert trial_resources(compose([]), *two_nodes)["cpu"] == 1.0
    with pytest.raises(ConfigError, match=r"cpus_per_trial=2 but Ray sees 1 CPU\(s\) on any one node"):
        trial_resources(compose(["tune.cpus_per_trial=2"]), *two_nodes)
    with pytest.raises(ConfigError, match=r"gpus_per_trial=2.* but Ray sees 1 GPU\(s\) on any one node"):
        trial_resources(compose(["tune.gpus_per_trial=2"]), {"CPU": 4.0, "GPU": 2.0}, {"CPU": 2.0, "GPU": 1.0})


def test_more_concurrent_trials_than_fit_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tune_app.tuner"):
        trial_resources(compose(["tune.max_concurrent_trials=3", "tune.cpus_per_trial=1"]), {"CPU": 2.0})
    assert "tune.max_concurrent_trials=3 but Ray has room for 2 trial(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tune_app.tuner"):
        trial_resources(compose(["tune.max_concurrent_trials=2", "tune.cpus_per_trial=1"]), {"CPU": 2.0})
    assert "room for" not in caplog.text


def test_the_disk_check_makes_room_for_every_concurrent_save(tmp_path: Path) -> None:
    free = Usage(100 * GIB, 97 * GIB, 3 * GIB)
    preflight(tmp_path, projected_checkpoint_bytes=GIB, reclaimable_bytes=0, disk_usage=lambda p: free,
              concurrent_saves=2)
    with pytest.raises(InsufficientStorageError) as info:
        preflight(tmp_path, projected_checkpoint_bytes=GIB, reclaimable_bytes=0, disk_usage=lambda p: free,
                  concurrent_saves=3)
    assert "1.0 GiB x 3 trials saving at once (tune.max_concurrent_trials)" in str(info.value)


def test_workers_on_a_cluster_get_the_tune_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    env = worker_env()
    assert env["TUNE_GLOBAL_CHECKPOINT_S"] == "auto" and env["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    assert "HF_TOKEN" not in env  # secrets are not copied into Ray's job config


def test_the_tuner_runs_n_trials_at_once_with_retries(tmp_path: Path) -> None:
    from tune_app.tuner import build_tuner

    cfg = compose([f"tune.storage_path={tmp_path}", "tune.max_concurrent_trials=2", "tune.max_failures=2",
                   "tune.cpus_per_trial=1"])
    tuner = build_tuner(cfg)
    local = tuner._local_tuner
    assert local._tune_config.max_concurrent_trials == 2
    assert local.get_run_config().failure_config.max_failures == 2
    sampler = local._tune_config.search_alg._sampler
    assert sampler._constant_liar is True  # TPE spreads proposals away from the running trials


def test_a_resume_may_run_on_another_cluster_and_takes_nothing_else(tmp_path: Path) -> None:
    import yaml

    from tune_app.cli_help import cfg_text
    from tune_app.config import apply_resume_overrides

    cfg = compose(["tune.address=auto", "tune.max_concurrent_trials=2"])
    moved = apply_resume_overrides(cfg, ["tune.address=ray://other-head:10001"])
    assert moved.tune.address == "ray://other-head:10001" and moved.tune.max_concurrent_trials == 2
    assert apply_resume_overrides(cfg, ["tune.address=null"]).tune.address is None
    assert apply_resume_overrides(cfg, []) is cfg
    with pytest.raises(ConfigError, match="not a Ray address"):
        apply_resume_overrides(cfg, ["tune.address=nowhere"])
    with pytest.raises(ConfigError, match=r"takes no other overrides but tune.address \(got tune.num_samples=9\)"):
        apply_resume_overrides(cfg, ["tune.address=auto", "tune.num_samples=9"])
    study = tmp_path / "study"
    study.mkdir()
    (study / "study_config.yaml").write_text(compose(["tune.name=study"]).to_yaml())
    shown = yaml.safe_load(cfg_text(["--cfg", "job", f"resume={study}", "tune.address=10.1.2.3:6379"]))
    assert shown["tune"]["address"] == "10.1.2.3:6379"


def test_an_unreachable_cluster_fails_at_once_naming_the_address(tmp_path: Path) -> None:
    """Ray itself retries an address nobody answers for minutes; the study fails in seconds."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tune_app.run", "tune.address=127.0.0.1:1",
                          f"tune.storage_path={tmp_path}"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "tune.address=127.0.0.1:1: no Ray cluster answers there" in out.stderr
    assert "ray start --head --port=6379" in out.stderr
    assert not (tmp_path / "redsm5_study").exists()


@pytest.mark.parametrize("uri", ["hdfs://nn:8020/studies", "ftp://host/x"])
def test_a_uri_that_is_no_object_store_says_what_works(uri: str) -> None:
    """Not a folder named 'hdfs:' in the current directory: a clear refusal that says what works."""
    with pytest.raises(ConfigError, match=r"tune.storage_path.* is not an object store .*s3://<bucket>.*mounts"):
        validate(compose([f"tune.storage_path='{uri}'"]))


@pytest.mark.parametrize("uri", ["s3://bucket/studies", "gs://bucket/x"])
def test_an_object_store_study_runs_on_this_machine_not_on_a_cluster(uri: str, tmp_path: Path) -> None:
    cfg = compose([f"tune.storage_path='{uri}'", f"tune.local_copy_dir={tmp_path}"])
    validate(cfg)
    assert cfg.study_dir == tmp_path / uri.split("://")[0] / "bucket" / uri.split("/", 3)[3] / "redsm5_study"
    assert cfg.tracking_uri == f"sqlite:///{cfg.study_dir / 'mlflow.db'}", "the MLflow store travels with the study"
    with pytest.raises(ConfigError, match=r"with tune.address='auto'.*runs its trials on this machine.*mount"):
        validate(compose([f"tune.storage_path='{uri}'", "tune.address=auto"]))


def test_validate_env_checks_the_studys_cluster() -> None:
    from tune_app.validate_env import check_ray

    down = check_ray(compose(["tune.address=127.0.0.1:1"]))
    assert not down.ok and "tune.address=127.0.0.1:1: no Ray cluster answers there" in (down.problem or "")
    assert down.detail["address"] == "127.0.0.1:1"
