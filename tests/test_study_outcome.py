"""How a finished ``fit()`` is summarised and reported: counts, failures and their messages.

Tune's ``Result.error`` is read from the study folder; when the disk is full Tune's
final state sync fails and the error files never get there. The trial's status in
Tune's controller still says ERROR, and its error text is in the driver's staging
folder: the study must end as *failed* (exit 1, the trial's actionable message), not
as *interrupted*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.experiment import Trial

from tune_app.config import compose
from tune_app.run import _report
from tune_app.tuner import summarise

ERROR_TEXT = """Failure # 1 (occurred at 2026-11-23_15-14-16)
ray::ImplicitFunc.train() (pid=1, ip=1)
tune_app.checkpoints.preflight.InsufficientStorageError: Disk full while saving checkpoint checkpoint_000002
  free on its filesystem:     1 MiB of 256 MiB, 0 of 3000 inodes free
"""


@dataclass
class FakeResult:
    path: str
    metrics: dict[str, Any]
    error: Exception | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeGrid:
    """The part of ``ResultGrid`` that ``summarise`` reads, with Tune's trials behind it."""

    results: list[FakeResult]
    trials: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._experiment_analysis = SimpleNamespace(trials=self.trials)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


def _trial(path: Path, status: str, error_file: Path | None = None) -> Any:
    return SimpleNamespace(path=str(path), status=status, error_file=str(error_file) if error_file else None,
                           run_metadata=SimpleNamespace(error_filename="error.txt" if error_file else None))


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    return compose([f"tune.storage_path={tmp_path / 'experiments'}", "tune.num_samples=2",
                        "tune.max_epochs=2", "tune.name=s"])


def test_an_errored_trial_whose_error_file_never_reached_the_study_is_a_failure(
        cfg: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done_dir, failed_dir = cfg.study_dir / "train_trial_a", cfg.study_dir / "train_trial_b"
    done_dir.mkdir(parents=True)
    failed_dir.mkdir()
    staging = tmp_path / "ray_session" / "driver_artifacts" / failed_dir.name
    staging.mkdir(parents=True)
    (staging / "error.txt").write_text(ERROR_TEXT)
    grid = FakeGrid(
        [FakeResult(str(done_dir), {"epoch": 2, "val_macro_f1": 0.5, "trial_id": "a"}),
         FakeResult(str(failed_dir), {"epoch": 1, "val_macro_f1": 0.2, "trial_id": "b"})],  # error=None: not synced
        [_trial(done_dir, Trial.TERMINATED), _trial(failed_dir, Trial.ERROR, staging / "error.txt")])

    outcome = summarise(grid, cfg)

    assert (outcome.terminated, outcome.errored, outcome.interrupted, outcome.complete) == (1, 1, False, False)
    assert outcome.failures == ((failed_dir.name, staging / "error.txt"),)
    assert (outcome.best_trial_id, outcome.best_score) == ("a", 0.5)
    assert _report(outcome, cfg) == 1
    err = capsys.readouterr().err
    assert f"Trial {failed_dir.name} failed:\nInsufficientStorageError: Disk full while saving" in err
    assert "0 of 3000 inodes free" in err and f"(error file: {staging / 'error.txt'})" in err
    assert f"resume: python -m tune_app.run resume={cfg.study_dir}" in err


def test_the_study_copy_of_the_error_file_is_preferred(cfg: Any, tmp_path: Path) -> None:
    trial_dir = cfg.study_dir / "train_trial_b"
    trial_dir.mkdir(parents=True)
    (trial_dir / "error.txt").write_text(ERROR_TEXT)
    staging = tmp_path / "staging_error.txt"
    staging.write_text("stale")
    grid = FakeGrid([FakeResult(str(trial_dir), {"epoch": 1})], [_trial(trial_dir, Trial.ERROR, staging)])
    assert summarise(grid, cfg).failures == ((trial_dir.name, trial_dir / "error.txt"),)


def test_a_failure_without_any_error_file_is_still_reported(
        cfg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    trial_dir = cfg.study_dir / "train_trial_b"
    grid = FakeGrid([FakeResult(str(trial_dir), {"epoch": 1})], [_trial(trial_dir, Trial.ERROR)])
    outcome = summarise(grid, cfg)
    assert outcome.failures == ((trial_dir.name, None),)
    assert _report(outcome, cfg) == 1
    assert "(error file: none saved)" in capsys.readouterr().err


def test_unfinished_trials_without_errors_are_an_interruption(cfg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    grid = FakeGrid([FakeResult(str(cfg.study_dir / "t"), {"epoch": 1})], [_trial(cfg.study_dir / "t", Trial.PAUSED)])
    outcome = summarise(grid, cfg)
    assert (outcome.errored, outcome.interrupted) == (0, True)
    assert _report(outcome, cfg) == 130
    assert "Study interrupted: 0/2 trials ended (0 finished, 0 stopped early, 0 failed)" in capsys.readouterr().err


def test_without_tune_trials_the_result_error_decides(cfg: Any) -> None:
    grid = FakeGrid([FakeResult(str(cfg.study_dir / "t"), {"epoch": 1}, error=RuntimeError("boom")),
                     FakeResult(str(cfg.study_dir / "u"), {"epoch": 2})])
    outcome = summarise(grid, cfg)
    assert (outcome.terminated, outcome.errored) == (1, 1)
    assert outcome.failures == (("t", cfg.study_dir / "t" / "error.txt"),)


def test_a_trial_that_sampled_fewer_epochs_is_finished(cfg: Any) -> None:
    short = FakeResult(str(cfg.study_dir / "t"), {"epoch": 1}, config={"train.epochs": 1})
    assert summarise(FakeGrid([short], [_trial(cfg.study_dir / "t", Trial.TERMINATED)]), cfg).terminated == 1
    assert summarise(FakeGrid([short]), cfg).terminated == 1
    unfinished = FakeResult(str(cfg.study_dir / "u"), {"epoch": 1}, config={"train.epochs": 2})
    assert summarise(FakeGrid([unfinished]), cfg).terminated == 0


def test_a_trial_stopped_by_sigint_is_unfinished_even_if_tune_says_terminated(cfg: Any) -> None:
    # After a SIGINT, Tune's in-memory trial reads TERMINATED; its epochs tell the truth.
    stopped = FakeResult(str(cfg.study_dir / "t"), {"epoch": 1})
    outcome = summarise(FakeGrid([stopped], [_trial(cfg.study_dir / "t", Trial.TERMINATED)]), cfg)
    assert (outcome.terminated, outcome.errored, outcome.interrupted) == (0, 0, True)


def test_the_best_trial_is_judged_by_its_best_epoch_as_in_the_report(cfg: Any) -> None:
    """A trial whose last epoch fell back still counts with its best one (the report's definition)."""
    import json

    from tune_app.evaluation.report import read_trial

    a_dir, b_dir = cfg.study_dir / "train_trial_a", cfg.study_dir / "train_trial_b"
    for path, scores in ((a_dir, [0.3, 0.9]), (b_dir, [0.95, 0.4])):
        path.mkdir(parents=True)
        history = [{"epoch": e, "val_macro_f1": s} for e, s in enumerate(scores, start=1)]
        (path / "trial_state.json").write_text(json.dumps({"status": "completed", "history": history}))
    grid = FakeGrid([FakeResult(str(a_dir), {"epoch": 2, "val_macro_f1": 0.9, "trial_id": "a"}),
                     FakeResult(str(b_dir), {"epoch": 2, "val_macro_f1": 0.4, "trial_id": "b"})],
                    [_trial(a_dir, Trial.TERMINATED), _trial(b_dir, Trial.TERMINATED)])
    outcome = summarise(grid, cfg)
    assert (outcome.best_trial_id, outcome.best_score) == ("b", 0.95)
    assert read_trial(b_dir, "val_macro_f1").best_score == outcome.best_score


def test_quiet_console_filter_keeps_our_warnings_and_library_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from tune_app.logs import VERBOSE_ENV, QuietConsoleFilter

    def record(name: str, level: int, **extra: object) -> logging.LogRecord:
        rec = logging.LogRecord(name, level, __file__, 1, "m", None, None)
        rec.__dict__.update(extra)
        return rec

    quiet = QuietConsoleFilter()
    monkeypatch.setenv(VERBOSE_ENV, "0")
    assert quiet.filter(record("tune_app.callbacks", logging.WARNING))
    assert not quiet.filter(record("tune_app.callbacks", logging.INFO))
    assert not quiet.filter(record("ray.tune", logging.WARNING)) and quiet.filter(record("ray.tune", logging.ERROR))
    assert not quiet.filter(record("tune_app.run", logging.ERROR, console=False)), "printed already"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert quiet.filter(record("ray.tune", logging.INFO)) and quiet.filter(record("tune_app.x", logging.DEBUG))
    assert not quiet.filter(record("tune_app.run", logging.INFO, console=False))


def test_tune_prints_its_own_tables_only_with_v(monkeypatch: pytest.MonkeyPatch) -> None:
    from tune_app.config import compose
    from tune_app.logs import VERBOSE_ENV
    from tune_app.tuner import tune_verbosity

    cfg = compose(["tune.verbose=2"])
    monkeypatch.setenv(VERBOSE_ENV, "0")
    assert tune_verbosity(cfg) == 0
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert tune_verbosity(cfg) == 2


def test_dashboard_hint_gives_the_address_and_how_to_authenticate() -> None:
    from tune_app.tuner import dashboard_hint

    hint = dashboard_hint("127.0.0.1:8265", None)
    assert "http://127.0.0.1:8265" in hint and "~/.ray/auth_token" in hint and "RAY_AUTH_MODE=disabled" in hint
    assert "ssh -L 8265:127.0.0.1:8265" in hint
    off = dashboard_hint("http://127.0.0.1:8265", "disabled")
    assert "authentication off" in off and "auth_token" not in off
