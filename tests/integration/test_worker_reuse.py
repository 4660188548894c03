"""Issue 11: one reused worker runs the study's trials, and a trial's result never depends
on what ran before it in that worker; the worker's thread count follows the study's CPUs;
a GPU out-of-memory error fails only its trial, with the fix in the message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.study_tools import mlflow_runs, run, tail, trial_dirs, trial_state

BASE = ["model=tiny", "data.num_posts=40", "tune.max_epochs=2", "evaluation.on_finish=false",
        "tune.n_startup_trials=1"]
PAYLOAD = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def _by_order(study: Path) -> list[Path]:
    """Trial folders in Tune's creation order (``..._<n>_...`` in the folder name)."""
    return sorted(trial_dirs(study), key=lambda p: int(p.name.split("_")[3]))


def _fingerprint(trial: Path) -> tuple[dict[str, object], list[dict[str, float]], dict[str, dict[str, str]]]:
    """Params, per-epoch metrics (not timings) and the payload hashes of every kept checkpoint."""
    state = trial_state(trial)
    history = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in state["history"]]
    hashes = {}
    for ckpt in sorted(trial.glob("checkpoint_*")):
        if (ckpt / "manifest.json").is_file():  # pruned ones are tombstones
            files = json.loads((ckpt / "manifest.json").read_text())["files"]
            hashes[ckpt.name] = {name: files[name]["sha256"] for name in PAYLOAD if name in files}
    return json.loads((trial / "params.json").read_text()), history, hashes


@pytest.mark.slow
def test_reused_worker_gives_every_trial_the_result_it_gets_alone(tmp_path: Path) -> None:
    """The same 3 sampled trials with actor reuse (one process) and without (a fresh process
    each): identical params, per-epoch metrics and checkpoint hashes, trial by trial. Trial 3
    of the reused run follows two others with different params in the same process."""
    studies = {}
    for reuse in ("true", "false"):
        log = tmp_path / f"reuse-{reuse}.log"
        storage = tmp_path / f"reuse-{reuse}"
        rc = run([*BASE, "tune.num_samples=3", f"tune.reuse_actors={reuse}", f"tune.storage_path={storage}",
                  "retention=permissive"], log)
        assert rc == 0, tail(log)
        studies[reuse] = _by_order(storage / "redsm5_study")
        assert len(studies[reuse]) == 3
    pids = {trial_state(t)["starts"][0]["pid"] for t in studies["true"]}
    assert len(pids) == 1, f"reused actor: one worker process ran every trial, got {pids}"
    assert len({trial_state(t)["starts"][0]["pid"] for t in studies["false"]}) == 3
    params = [_fingerprint(t)[0] for t in studies["true"]]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3, "the trials differ in their params"
    assert any(_fingerprint(t)[2] for t in studies["true"]), "some checkpoint is kept to compare"
    for reused, alone in zip(studies["true"], studies["false"], strict=True):
        assert _fingerprint(reused) == _fingerprint(alone), f"{reused.name} differs from {alone.name}"


def test_trial_threads_follow_the_studys_cpus_and_oom_fails_only_its_trial(tmp_path: Path) -> None:
    """Default ``tune.cpus_per_trial=all``: torch uses every CPU Ray sees. With the ``oom``
    failpoint every trial hits a CUDA out-of-memory error: each fails with the fix in its
    message, the study goes on to the next trial and exits 1."""
    log = tmp_path / "run.log"
    rc = run([*BASE, "tune.num_samples=1", f"tune.storage_path={tmp_path / 'ok'}"], log)
    assert rc == 0, tail(log)
    (trial,) = trial_dirs(tmp_path / "ok" / "redsm5_study")
    assert trial_state(trial)["starts"][0]["torch_threads"] == os.cpu_count()

    env_log = tmp_path / "oom.log"
    os.environ["TUNE_APP_FAILPOINTS"] = "oom=1"
    try:
        rc = run([*BASE, "tune.num_samples=2", "tune.cpus_per_trial=1", f"tune.storage_path={tmp_path / 'oom'}"],
                 env_log)
    finally:
        del os.environ["TUNE_APP_FAILPOINTS"]
    out = env_log.read_text(errors="replace")
    assert rc == 1, tail(env_log)
    assert len(trial_dirs(tmp_path / "oom" / "redsm5_study")) == 2, "the study went on after the first OOM"
    assert "Study ended with 2 failed trial(s)" in out
    assert out.count("TrialOutOfMemoryError: trial ran out of GPU memory") >= 2, tail(env_log)
    for fix in ("train.batch_size", "train.precision=bf16", "model.gradient_checkpointing=true"):
        assert fix in out
    assert all(r["status"] == "FAILED" for r in mlflow_runs(tmp_path / "oom", "redsm5_study"))
    for t in trial_dirs(tmp_path / "oom" / "redsm5_study"):
        assert trial_state(t)["starts"][0]["torch_threads"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_is_released_between_trials(tmp_path: Path) -> None:
    """20 identical trials of a bert-base-size encoder in one worker: trial 20's peak
    allocated GPU memory is within 5 % of trial 2's (nothing of earlier trials stays)."""
    log = tmp_path / "gpu.log"
    rc = run(["model=bert-base-random", "searchspace=fixed", "data.num_posts=40", "tune.max_epochs=1",
              "tune.num_samples=20", "train.precision=bf16", "evaluation.on_finish=false",
              f"tune.storage_path={tmp_path}"], log, timeout=1800)
    assert rc == 0, tail(log)
    peaks = [trial_state(t)["history"][-1]["gpu_peak_allocated_mb"] for t in _by_order(tmp_path / "redsm5_study")]
    assert len(peaks) == 20
    assert abs(peaks[19] - peaks[1]) <= 0.05 * peaks[1], peaks
