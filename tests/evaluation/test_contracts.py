"""The JSON Schema contracts accept valid examples and reject invalid ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.evaluation import evaluated_study, load_report
from tune_app.evaluation.contracts import (
    SCHEMAS,
    ContractError,
    errors,
    validate,
    validate_checkpoint_metadata,
    validator,
)
from tune_app.evaluation.report import trial_dirs


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluated_study(tmp_path_factory)


def _mutated(doc: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


def test_schemas_are_valid_json_schemas() -> None:
    for name in SCHEMAS:
        assert validator(name) is not None
    with pytest.raises(ValueError, match="unknown contract"):
        validator("nope")


STUDY_INVALID = [
    (["report_id"], "not-hex", "report_id"),
    (["best_trial_id"], KeyError, "best_trial_id"),
    (["test_metrics"], KeyError, "test_metrics"),  # split=test requires it
    (["decision_thresholds", "criteria", "FATIGUE"], 1.5, "criteria"),
    (["decision_thresholds", "strategy"], "median", "strategy"),
    (["test_metrics", "criteria_matching", "macro_f1"], -0.1, "macro_f1"),
    (["test_metrics", "evidence_binding", "char_f1"], KeyError, "char_f1"),
    (["evaluated_checkpoints"], [], "evaluated_checkpoints"),
    (["unexpected"], 1, "unexpected"),
    (["schema_version"], 1, "schema_version"),  # version 2 added the two sections below
    (["param_importance"], KeyError, "param_importance"),
    (["param_importance", "computed"], True, "param_importance"),  # computed without values
    (["precision_recall"], KeyError, "precision_recall"),
    (["precision_recall", "average_precision_macro"], 1.5, "average_precision_macro"),
]


@pytest.mark.parametrize(("path", "value", "named"), STUDY_INVALID)
def test_study_report_contract(study: Path, path: list[str | int], value: Any, named: str) -> None:
    report = load_report(study / "evaluation_report.json")
    assert errors(report, "study_report") == []
    bad = _mutated(report, path, value)
    problems = errors(bad, "study_report")
    assert problems and named in "\n".join(problems)
    with pytest.raises(ContractError, match="study_report"):
        validate(bad, "study_report")


TRIAL_INVALID = [
    (["status"], "weird"),
    (["trial_id"], ""),
    (["checkpoints", 0, "name"], "ckpt-1"),
    (["checkpoints", 0, "status"], "deleted"),
    (["history", 0, "epoch"], 0),
    (["optimization_metric_name"], "macro_f1"),
    (["validation_metrics"], {"val_macro_f1": "high"}),
    (["config"], KeyError),
]


@pytest.mark.parametrize(("path", "value"), TRIAL_INVALID)
def test_trial_report_contract(study: Path, path: list[str | int], value: Any) -> None:
    doc = load_report(trial_dirs(study)[0] / "evaluation_report.json")
    assert errors(doc, "trial_report") == []
    assert errors(_mutated(doc, path, value), "trial_report")


def test_checkpoint_metadata_contract(study: Path, tmp_path: Path) -> None:
    ckpt = trial_dirs(study)[0] / "checkpoint_000001"
    validate_checkpoint_metadata(ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    state = json.loads((ckpt / "state.json").read_text())
    assert errors(manifest, "checkpoint_metadata") == [] and errors(state, "checkpoint_metadata") == []
    assert errors(_mutated(manifest, ["files", "model.safetensors", "sha256"], "abc"), "checkpoint_metadata")
    assert errors(_mutated(manifest, ["files", "state.json"], KeyError), "checkpoint_metadata")
    assert errors(_mutated(state, ["trainer_state"], KeyError), "checkpoint_metadata")
    assert errors(_mutated(state, ["trainer_state", "epoch"], 0), "checkpoint_metadata")
    assert errors(_mutated(state, ["compat", "architecture"], KeyError), "checkpoint_metadata")
    broken = tmp_path / "checkpoint_000009"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps(_mutated(manifest, ["format_version"], 2)))
    (broken / "state.json").write_text(json.dumps(state))
    with pytest.raises(ContractError, match="manifest.json"):
        validate_checkpoint_metadata(broken)
