"""The report's plots and the sections they draw from (no study folder, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune_app.evaluation.plots import history_figure
from tune_app.evaluation.report import TrialInfo


def _trial(n: int, score: float | None, params: dict[str, Any], history: list[dict[str, Any]] | None = None
           ) -> TrialInfo:
    """A trial as Tune names its folder: random id, then the start number ``n``."""
    return TrialInfo(path=Path(f"train_trial_{(n * 7919) % 99991:05x}_{n}_x"), trial_id=f"id{n}",
                     status="completed", history=history or [], params=params, best_score=score)


# --- history --------------------------------------------------------------------------------
def test_history_running_best_follows_the_mode() -> None:
    trials = [_trial(i, s, {}, [{"epoch": 1, "val_loss": s}]) for i, s in enumerate([0.5, 0.3, 0.4, 0.2])]
    for mode, expected in (("min", [0.5, 0.3, 0.3, 0.2]), ("max", [0.5, 0.5, 0.5, 0.5])):
        fig = history_figure(trials[::-1], "val_loss", mode)
        best = next(line for line in fig.axes[0].get_lines() if line.get_label() == "best so far")
        assert list(best.get_ydata()) == expected
