"""The study's Optuna DB (``<study>/optuna.db``) with the real Tuner: readable while the study runs, and
once it ends exactly the study's trials with Tune's params and values; the README's snippet works on both."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from tests.integration.study_tools import REPO, end_group, start_run, tail, trial_dirs, wait_for
from tune_app.optuna_store import DB_FILE, load_optuna_study

NAME, SAMPLES, EPOCHS = "redsm5_study", 3, 2
METRIC = "val_macro_f1"
DOCUMENTED = "sqlite:///experiments/redsm5_study/optuna.db"


def readme_load_study_snippet(study: Path) -> str:
    """The README's ``optuna.load_study`` example, pointed at ``study``."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "optuna.load_study" in b).split("```")[0]
    assert DOCUMENTED in block, "the README's load_study example changed: update this test"
    return block.replace(DOCUMENTED, f"sqlite:///{study / DB_FILE}")


def _run_snippet(study: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_load_study_snippet(study), "README.md[load_study]", "exec"), {})  # noqa: S102
    return out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    storage = tmp_path_factory.mktemp("experiments")
    log = storage / "run.log"
    study_dir = storage / NAME
    seen: dict[str, Any] = {"running": [], "snippet_while_running": ""}

    def running_trial_visible() -> bool:
        loaded = load_optuna_study(study_dir) if (study_dir / DB_FILE).is_file() else None
        trials = loaded.get_trials(deepcopy=False) if loaded is not None else []
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if running:
            seen["running"] = running
            seen["snippet_while_running"] = _run_snippet(study_dir)
        return bool(running)

    proc = start_run([f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}", "model=tiny", "data.num_posts=60",
                      "evaluation.on_finish=false", f"tune.storage_path={storage}", f"tune.name={NAME}"], log)
    try:
        wait_for(running_trial_visible, 300, "a RUNNING trial in optuna.db", proc, log)
        rc = proc.wait(timeout=600)
    finally:
        end_group(proc)
    return {"dir": study_dir, "log": log, "rc": rc, **seen}


def test_the_db_shows_a_running_study(study: dict[str, Any]) -> None:
    assert study["rc"] == 0, tail(study["log"])
    for trial in study["running"]:
        assert trial.params and set(trial.distributions) == set(trial.params)
        assert trial.user_attrs["tune_trial_id"]
    assert "RUNNING" in study["snippet_while_running"], study["snippet_while_running"]


def test_the_finished_study_holds_exactly_tunes_trials(study: dict[str, Any]) -> None:
    assert study["rc"] == 0, tail(study["log"])
    loaded = load_optuna_study(study["dir"])
    assert loaded is not None and loaded.study_name == NAME
    assert loaded.direction.name == "MAXIMIZE"
    trials = loaded.get_trials(deepcopy=False)
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in trials}
    assert len(trials) == len(by_tune_id) == SAMPLES, [t.user_attrs for t in trials]
    assert [t.number for t in trials] == list(range(SAMPLES))
    for folder in trial_dirs(study["dir"]):
        results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        ot = by_tune_id[results[-1]["trial_id"]]
        assert ot.params == json.loads((folder / "params.json").read_text()), folder.name
        assert ot.state == TrialState.COMPLETE
        # The value OptunaSearch tells: the last result's metric (not the best epoch's).
        assert ot.value == pytest.approx(results[-1][METRIC])
        assert ot.intermediate_values == {r["epoch"]: pytest.approx(r[METRIC]) for r in results}
    printed = _run_snippet(study["dir"])
    assert printed.count("COMPLETE") == SAMPLES and "best trial" in printed, printed
