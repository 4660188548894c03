"""What tune_app reads from Ray Tune's private surface, checked on a real ``Tuner``.

``tests/test_study_outcome.py`` and ``tests/test_early_stopping.py`` fake a ``ResultGrid``'s
``_experiment_analysis`` to drive ``tuner.summarise``; this test runs a real (trivial) Tuner so
that a Ray upgrade which renames or reshapes it fails here instead of silently emptying
``_tune_trials`` (and with it the failure and interruption counts of every study).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _trainable(config: dict[str, int]) -> None:
    from ray import tune

    tune.report({"score": float(config["i"])})
    if config["i"] == 1:
        raise RuntimeError("this trial fails on purpose")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import ray
    from ray import tune

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            _trainable, param_space={"i": tune.grid_search([0, 1, 2])},
            tune_config=tune.TuneConfig(metric="score", mode="max"),
            run_config=tune.RunConfig(storage_path=str(tmp_path_factory.mktemp("tune")), name="private_api",
                                      verbose=0, failure_config=tune.FailureConfig(fail_fast=False)))
        yield tuner.fit()
    finally:
        ray.shutdown()


def test_tune_trials_are_the_grids_trials_in_order(grid) -> None:  # type: ignore[no-untyped-def]
    from ray.tune.experiment import Trial

    from tune_app.tuner import _error_file, _tune_trials

    trials = _tune_trials(grid)
    assert len(trials) == len(grid) == 3, "ResultGrid._experiment_analysis.trials is gone or reshaped"
    assert all(isinstance(t, Trial) for t in trials)
    assert [Path(t.path) for t in trials] == [Path(r.path) for r in grid]
    statuses = {t.config["i"]: t.status for t in trials}
    assert statuses == {0: Trial.TERMINATED, 1: Trial.ERROR, 2: Trial.TERMINATED}
    failed = next(t for t in trials if t.status == Trial.ERROR)
    error = _error_file(failed)  # the attributes _error_file reads (run_metadata.error_filename, path)
    assert error is not None and "fails on purpose" in error.read_text()
