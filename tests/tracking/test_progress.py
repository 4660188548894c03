"""Study progress: the line, the ETA (within 10% on known durations), the callback's outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tune_app.tracking.progress import (
    ProgressCallback,
    eta_seconds,
    format_duration,
    format_epoch_progress,
    format_progress,
    read_study_line,
)


def test_the_line_matches_the_spec() -> None:
    line = format_progress(42, 1000, metric="val_macro_f1", best_value=0.8714, best_trial=17,
                           eta_s=3 * 3600 + 15 * 60 + 10)
    assert line == "Trial 42/1000 (4.2%) | best val_macro_f1 0.8714 (trial 17) | ETA 3h 15m"


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (0, "0s"), (59.6, "1m 00s"), (125, "2m 05s"),
                                               (3 * 3600 + 60, "3h 1m"), (2 * 86400 + 7200, "2d 2h")])
def test_durations(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def fake_trial(i: int, status: str, seconds: float | None, best: float | None) -> Any:
    return SimpleNamespace(trial_id=f"id{i}", status=status,
                           last_result={"time_total_s": seconds} if seconds is not None else {},
                           metric_analysis={"val_macro_f1": {"max": best, "min": best}} if best is not None else {})


class Tags:
    def __init__(self) -> None:
        self.tags: list[dict[str, Any]] = []

    def set_study_tags(self, tags: dict[str, Any]) -> None:
        self.tags.append(tags)


def test_eta_within_ten_percent_on_a_synthetic_run(tmp_path: Path) -> None:
    """Durations alternate 5 s / 15 s with noise; a last-trial or median estimate would miss."""
    rng = random.Random(0)
    total = 200
    durations = [(5.0 if i % 2 else 15.0) * rng.uniform(0.9, 1.1) for i in range(total)]
    cb = ProgressCallback(num_samples=total, metric="val_macro_f1", study_dir=tmp_path)
    trials = [fake_trial(i, "PENDING", None, None) for i in range(total)]
    for done in range(1, total - 10):
        trials[done - 1] = fake_trial(done - 1, "TERMINATED", durations[done - 1], 0.5)
        progress = cb.report(trials)
        actual_remaining = sum(durations[done:])
        if done >= 10:
            assert progress.eta_s == pytest.approx(actual_remaining, rel=0.10), done


def test_eta_is_exact_for_constant_durations() -> None:
    assert eta_seconds([10.0] * 5, 95) == 950.0
    assert eta_seconds([], 10) is None and eta_seconds([3.0], 0) == 0.0


def test_callback_prints_logs_writes_and_tags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink = Tags()
    cb = ProgressCallback(num_samples=4, metric="val_macro_f1", study_dir=tmp_path,
                          mlflow_callback=sink, max_epochs=3, live=False)  # type: ignore[arg-type]
    trials = [fake_trial(0, "TERMINATED", 60.0, 0.61), fake_trial(1, "ERROR", 120.0, None),
              fake_trial(2, "RUNNING", 90.0, 0.87), fake_trial(3, "RUNNING", None, 0.9)]
    cb.on_trial_complete(0, trials, trials[2])  # Tune calls this before the status turns TERMINATED
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("trial 3/4 id2 | finished ?/3 epochs | best val_macro_f1 0.87 |")
    study_line = json.loads((tmp_path / "progress.json").read_text())["line"]
    assert study_line.startswith("Trial 3/4 (75.0%) | best val_macro_f1 0.9 (trial 4) | ETA ")
    assert read_study_line(tmp_path) == study_line
    assert sink.tags[-1]["tune_app.progress"] == study_line and sink.tags[-1]["tune_app.progress.done"] == "3"


def tagged_trial(tmp_path: Path, number: int, status: str, history: list[dict[str, Any]] | None,
                 last: dict[str, Any]) -> Any:
    """A Tune-like trial with its creation number in ``experiment_tag`` and its own trial_state.json."""
    folder = tmp_path / f"t{number}"
    folder.mkdir()
    if history is not None:
        (folder / "trial_state.json").write_text(json.dumps({"status": "completed", "history": history}))
    return SimpleNamespace(trial_id=f"id{number}", status=status, experiment_tag=f"{number}_lr=0.1",
                           last_result=last, metric_analysis={}, config={"train.lr": 0.0012345678},
                           storage=SimpleNamespace(trial_fs_path=str(folder)))


def test_after_a_restore_best_comes_from_each_trials_history_and_numbers_are_tune_s(tmp_path: Path) -> None:
    """Restored trials carry no running statistics; the list order is not the trials' numbers."""
    cb = ProgressCallback(num_samples=5, metric="val_macro_f1", study_dir=tmp_path, live=False)
    trials = [tagged_trial(tmp_path, 4, "TERMINATED", [{"epoch": 1, "val_macro_f1": 0.2}], {"epoch": 1}),
              tagged_trial(tmp_path, 2, "TERMINATED", [{"epoch": 1, "val_macro_f1": 0.3},
                                                       {"epoch": 2, "val_macro_f1": 0.7},
                                                       {"epoch": 3, "val_macro_f1": 0.5}], {"epoch": 3})]
    progress = cb.report(trials)
    assert (progress.best_value, progress.best_trial, progress.best_trial_id) == (0.7, 2, "id2")


def test_trial_line_names_its_number_outcome_best_epoch_and_params_in_four_digits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0, 130.0])  # setup, trial start, trial end: 30 s between trial ends
    monkeypatch.setattr("tune_app.tracking.progress.time.monotonic", lambda: next(clock))
    cb = ProgressCallback(num_samples=3, metric="val_macro_f1", study_dir=tmp_path, max_epochs=4,
                          live=False)
    cb.setup()
    trial = tagged_trial(tmp_path, 1, "RUNNING", [{"epoch": 1, "val_macro_f1": 0.123456},
                                                  {"epoch": 2, "val_macro_f1": 0.654321}], {"epoch": 2})
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_error(0, [trial], trial)
    line = capsys.readouterr().out.strip()
    assert line == ("trial 1/3 id1 | FAILED after 2/4 epochs | best val_macro_f1 0.6543 (epoch 2) | 30.0 s "
                    "| lr=0.001235 | study ETA 1m 00s"), line


def test_live_line_only_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trial = tagged_trial(tmp_path, 1, "RUNNING", None, {})
    for live in (False, True):
        cb = ProgressCallback(num_samples=2, metric="val_macro_f1", study_dir=tmp_path, max_epochs=4,
                              live=live)
        cb.on_trial_result(0, [trial], trial, {"epoch": 2, "val_macro_f1": 0.5})
        out = capsys.readouterr().out
        if live:
            assert out == "\r\x1b[Ktrial 1/2 id1 epoch 2/4 | val_macro_f1 0.5 | 0 ended | study ETA ?"
        else:
            assert out == ""


def test_live_line_is_off_when_stdout_is_not_a_tty() -> None:
    from tune_app.tracking.progress import LiveLine

    assert LiveLine().enabled is False  # pytest captures stdout: not a terminal


def test_callback_unpickled_from_an_older_study_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """A study's tuner.pkl keeps the callback as first pickled; attributes added later have defaults."""
    import pickle

    cb = ProgressCallback(num_samples=2, metric="val_macro_f1", study_dir=tmp_path)
    for added in ("max_epochs", "live"):
        del cb.__dict__[added]
    old = pickle.loads(pickle.dumps(cb))
    trial = tagged_trial(tmp_path, 1, "RUNNING", [{"epoch": 1, "val_macro_f1": 0.5}], {"epoch": 1})
    old.on_trial_complete(0, [trial], trial)
    assert "trial 1/2 id1 | finished 1/? epochs" in capsys.readouterr().out


def test_the_best_trial_is_the_highest_scoring() -> None:
    from tune_app.tracking.progress import study_progress

    trials = [fake_trial(0, "TERMINATED", 1.0, 0.3), fake_trial(1, "TERMINATED", 1.0, 0.2)]
    assert study_progress(trials, 2, "val_macro_f1").best_trial == 1


def test_epoch_line() -> None:
    line = format_epoch_progress(2, 4, trial_id="t1", metrics={"val_macro_f1": 0.5123}, metric="val_macro_f1",
                                 epoch_times=[1.0, 3.0], study_line="Trial 1/10 (10.0%)")
    assert line == ("trial t1 epoch 2/4 [#####.....] 50% | val_macro_f1 0.512 | 2.0 s/epoch | trial ETA 4s"
                    " || study: Trial 1/10 (10.0%)")
