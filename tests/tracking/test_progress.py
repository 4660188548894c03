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
    assert line == "Trial 42/1000 (4.2%) | best val_macro_f1 0.871 (trial 17) | ETA 3h 15m"


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
    cb = ProgressCallback(num_samples=total, metric="val_macro_f1", mode="max", study_dir=tmp_path)
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
    cb = ProgressCallback(num_samples=4, metric="val_macro_f1", mode="max", study_dir=tmp_path,
                          mlflow_callback=sink)  # type: ignore[arg-type]
    trials = [fake_trial(0, "TERMINATED", 60.0, 0.61), fake_trial(1, "ERROR", 120.0, None),
              fake_trial(2, "RUNNING", 90.0, 0.87), fake_trial(3, "RUNNING", None, 0.9)]
    cb.on_trial_complete(0, trials, trials[2])  # Tune calls this before the status turns TERMINATED
    line = "Trial 3/4 (75.0%) | best val_macro_f1 0.900 (trial 4) | ETA 1m 30s"
    assert capsys.readouterr().out.strip() == line
    assert json.loads((tmp_path / "progress.json").read_text())["line"] == line
    assert read_study_line(tmp_path) == line
    assert sink.tags[-1]["tune_app.progress"] == line and sink.tags[-1]["tune_app.progress.done"] == "3"


def test_min_mode_picks_the_lowest() -> None:
    from tune_app.tracking.progress import study_progress

    trials = [fake_trial(0, "TERMINATED", 1.0, 0.3), fake_trial(1, "TERMINATED", 1.0, 0.2)]
    assert study_progress(trials, 2, "val_macro_f1", "min").best_trial == 2


def test_epoch_line() -> None:
    line = format_epoch_progress(2, 4, trial_id="t1", metrics={"val_macro_f1": 0.5123}, metric="val_macro_f1",
                                 epoch_times=[1.0, 3.0], study_line="Trial 1/10 (10.0%)")
    assert line == ("trial t1 epoch 2/4 [#####.....] 50% | val_macro_f1 0.512 | 2.0 s/epoch | trial ETA 4s"
                    " || study: Trial 1/10 (10.0%)")
