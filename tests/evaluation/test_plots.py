"""The report's plots and the sections they draw from (no study folder, no model)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from tune_app.evaluation.contracts import validator
from tune_app.evaluation.importance import MIN_IMPORTANCE_TRIALS, param_importance
from tune_app.evaluation.plots import (
    history_figure,
    importance_figure,
    parallel_coordinate_figure,
    precision_recall_figure,
)
from tune_app.evaluation.pr_curves import precision_recall_report
from tune_app.evaluation.report import TrialInfo
from tune_app.evaluation.trial_study import TUNE_TRIAL_ID_ATTR, plot_study

NAMES = ["DEPRESSED_MOOD", "ANHEDONIA", "SLEEP_ISSUES"]


def _trial(n: int, score: float | None, params: dict[str, Any], history: list[dict[str, Any]] | None = None
           ) -> TrialInfo:
    """A trial as Tune names its folder: random id, then the start number ``n``."""
    return TrialInfo(path=Path(f"train_trial_{(n * 7919) % 99991:05x}_{n}_x"), trial_id=f"id{n}",
                     status="completed", history=history or [], params=params, best_score=score)


def _trials(n: int, unscored: int = 0) -> list[TrialInfo]:
    """``n`` scored trials whose score follows ``train.lr`` (dropout is noise), plus unscored ones."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n + unscored):
        lr = float(rng.uniform(1e-3, 1e-2))
        params: dict[str, Any] = {"train.lr": lr, "model.dropout": float(rng.uniform(0, 0.3)),
                                  "model.criteria_head": ["linear", "mlp"][i % 2], "train.batch_size": [8, 16][i % 2]}
        if params["model.criteria_head"] == "mlp":  # conditional, as in searchspaces/small.py
            params["model.head_hidden"] = [64, 128][(i // 2) % 2]
        out.append(_trial(i, 50 * lr + float(rng.normal(0, 0.005)) if i < n else None, params))
    return out[::-1]  # not in start order


def _texts(fig: Figure) -> str:
    return " | ".join([t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes])


def _section_errors(section: dict[str, Any], key: str) -> list[str]:
    """Violations of the study-report schema by one of its sections."""
    sub = validator("study_report").schema["properties"][key]
    from jsonschema import Draft202012Validator

    v = Draft202012Validator({**sub, "$defs": validator("study_report").schema["$defs"]})
    return [e.message for e in v.iter_errors(section)]


# --- parameter importance -------------------------------------------------------------------
def test_importance_below_the_minimum_is_not_computed_and_says_why() -> None:
    trials = _trials(4, unscored=3)
    section = param_importance(trials)
    assert section["computed"] is False and section["values"] == {} and section["method"] is None
    assert section["num_trials"] == 4 and section["min_trials"] == MIN_IMPORTANCE_TRIALS == 10
    assert section["reason"] == "parameter importance needs \u2265 10 scored trials; this study has 4"
    assert _section_errors(section, "param_importance") == []
    fig = importance_figure(section)
    assert "this study has 4" in _texts(fig) and not fig.axes[0].patches  # no bars


def test_importance_from_enough_trials_is_computed_and_names_its_count() -> None:
    trials = _trials(MIN_IMPORTANCE_TRIALS + 2, unscored=2)
    section = param_importance(trials)
    assert section["computed"] is True and section["method"] == "optuna fANOVA" and section["reason"] is None
    assert section["num_trials"] == 12
    # Params every scored trial has; the conditional head_hidden is not one of them.
    assert set(section["values"]) == {"train.lr", "model.dropout", "model.criteria_head", "train.batch_size"}
    assert max(section["values"], key=section["values"].get) == "train.lr"
    assert sum(section["values"].values()) == pytest.approx(1.0)
    assert _section_errors(section, "param_importance") == []
    fig = importance_figure(section)
    assert "Parameter importance (optuna fANOVA, from 12 scored trials)" in _texts(fig)
    assert len(fig.axes[0].patches) == 4


def test_importance_without_a_varied_param_is_not_computed() -> None:
    trials = [_trial(i, 0.1 * i, {"train.lr": 0.01}) for i in range(12)]
    section = param_importance(trials)
    assert section["computed"] is False and section["num_trials"] == 12
    assert "no parameter varies" in section["reason"]


def test_bad_importance_sections_violate_the_schema() -> None:
    section = param_importance(_trials(4))
    assert _section_errors({**section, "computed": True}, "param_importance")  # computed: needs values, method
    assert _section_errors({**section, "reason": None}, "param_importance")  # not computed: needs a reason


# --- the Optuna study of the plots, parallel coordinates -------------------------------------
def test_plot_study_holds_exactly_the_scored_trials_in_start_order() -> None:
    trials = _trials(5, unscored=2) + [_trial(9, 0.3, {"train.lr": 0.005, "flag": True, "name": None}),
                                       _trial(10, 0.2, {"train.lr": 0.004, "odd": float("nan")}),
                                       _trial(11, 0.1, {"train.lr": 0.003, "odd": 1.5})]
    study = plot_study(trials)
    assert study.direction.name == "MAXIMIZE"
    scored = sorted((t for t in trials if t.best_score is not None), key=lambda t: int(t.path.name.split("_")[3]))
    assert len(study.trials) == 8
    assert [t.user_attrs[TUNE_TRIAL_ID_ATTR] for t in study.trials] == [t.trial_id for t in scored]
    for ot, t in zip(study.trials, scored, strict=True):
        assert ot.value == t.best_score
        assert set(ot.params) == set(t.params)  # conditional params stay missing
        for name, value in t.params.items():
            if name == "odd":
                continue  # below
            assert ot.params[name] == (value if isinstance(value, int | float) and not isinstance(value, bool)
                                       else str(value))
    assert study.trials[-3].params["flag"] == "True" and study.trials[-3].params["name"] == "None"
    # A non-finite number makes the param categorical (Optuna refuses NaN in a range).
    assert [t.params["odd"] for t in study.trials[-2:]] == ["nan", "1.5"]


def test_parallel_coordinate_plots_the_scored_trials_with_optuna_and_no_warning() -> None:
    trials = _trials(6, unscored=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = parallel_coordinate_figure(trials, "val_macro_f1")
    assert not [w for w in caught if "experimental" in str(w.message).lower()], [str(w.message) for w in caught]
    assert "params vs best-epoch val_macro_f1 (6 scored trials)" in _texts(fig)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "best val_macro_f1" and "model.criteria_head" in labels and "model.head_hidden" in labels
    # Optuna draws one line per trial (a LineCollection of segments).
    assert sum(len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments")) == 6


def test_parallel_coordinate_of_a_param_every_trial_shares_warns_nothing() -> None:
    """The default study samples one criteria head value: matplotlib notes the flat axis."""
    trials = [_trial(i, 0.1 * i, {"model.criteria_head": "mlp", "train.lr": 0.001 * (i + 1)}) for i in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_coordinate_figure(trials, "val_macro_f1")
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize("n", [0, 1])
def test_parallel_coordinate_with_fewer_than_two_scored_trials_is_a_message(n: int) -> None:
    fig = parallel_coordinate_figure(_trials(n, unscored=2), "val_macro_f1")
    assert f"parallel coordinates need \u2265 2 scored trials; this study has {n}" in _texts(fig)


def test_parallel_coordinate_without_params_is_a_message() -> None:
    fig = parallel_coordinate_figure([_trial(i, 0.1 * i, {}) for i in range(3)], "val_macro_f1")
    assert "the trials have no params" in _texts(fig)


def test_parallel_coordinate_failure_is_a_message_not_a_lost_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna.visualization.matplotlib as ovm

    def broken(*_: Any, **__: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(ovm, "plot_parallel_coordinate", broken)
    assert "parallel coordinates unavailable: boom" in _texts(parallel_coordinate_figure(_trials(3), "m"))


# --- precision-recall -----------------------------------------------------------------------
def _labels(n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(1)
    labels = rng.random((n, 3)) < np.array([0.3, 0.5, 0.0])  # SLEEP_ISSUES: no positive
    labels[0, :2] = True
    return labels


def test_pr_perfect_predictor_has_average_precision_one() -> None:
    labels = _labels()
    probs = np.where(labels, 0.9, 0.1)
    section = precision_recall_report([probs], [labels], np.full(3, 0.5), NAMES, split="test")
    assert section["skipped"] == ["SLEEP_ISSUES"] and set(section["per_criterion"]) == set(NAMES[:2])
    for name in NAMES[:2]:
        c = section["per_criterion"][name]
        assert c["average_precision"] == pytest.approx(1.0)
        assert c["operating_point"] == {"precision": 1.0, "recall": 1.0}
    assert section["average_precision_macro"] == pytest.approx(1.0)
    assert _section_errors(section, "precision_recall") == []


def test_pr_constant_predictor_average_precision_is_the_positive_rate() -> None:
    labels = _labels()
    probs = np.full(labels.shape, 0.4)
    section = precision_recall_report([probs, probs], [labels, labels], np.array([0.3, 0.5, 0.5]), NAMES,
                                      split="test")
    assert section["num_checkpoints"] == 2 and section["num_samples"] == 80  # pooled
    for j, name in enumerate(NAMES[:2]):
        c = section["per_criterion"][name]
        assert c["average_precision"] == pytest.approx(labels[:, j].mean())
        assert c["positive_rate"] == pytest.approx(labels[:, j].mean()) and c["positives"] == 2 * labels[:, j].sum()
    # Threshold 0.3 < 0.4: everything predicted; 0.5: nothing predicted (no precision to mark).
    assert section["per_criterion"]["DEPRESSED_MOOD"]["operating_point"] == \
        {"precision": pytest.approx(labels[:, 0].mean()), "recall": 1.0}
    assert section["per_criterion"]["ANHEDONIA"]["operating_point"] == {"precision": None, "recall": 0.0}
    assert _section_errors(section, "precision_recall") == []


def test_pr_plot_names_each_average_precision_and_the_skipped_criteria() -> None:
    labels = _labels()
    probs = np.clip(labels * 0.5 + np.random.default_rng(2).random(labels.shape) * 0.6, 0, 1)
    section = precision_recall_report([probs], [labels], np.full(3, 0.5), NAMES, split="test")
    fig = precision_recall_figure(section)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"{n} (AP {section['per_criterion'][n]['average_precision']:.2f})" for n in NAMES[:2]]
    assert "skipped (no positive in the split): SLEEP_ISSUES" in _texts(fig)
    assert len(fig.axes[0].collections) == 2  # one operating point per drawn criterion
    empty = precision_recall_report([probs[:, 2:]], [labels[:, 2:]], np.full(1, 0.5), NAMES[2:], split="test")
    assert empty["per_criterion"] == {} and empty["average_precision_macro"] is None
    assert "no criterion has a positive" in _texts(precision_recall_figure(empty))


# --- history --------------------------------------------------------------------------------
def test_history_running_best_is_the_highest_so_far() -> None:
    trials = [_trial(i, s, {}, [{"epoch": 1, "val_macro_f1": s}]) for i, s in enumerate([0.2, 0.4, 0.3, 0.5])]
    fig = history_figure(trials[::-1], "val_macro_f1")
    best = next(line for line in fig.axes[0].get_lines() if line.get_label() == "best so far")
    assert list(best.get_ydata()) == [0.2, 0.4, 0.4, 0.5]


def test_plot_study_takes_the_sampled_distributions_from_the_studys_optuna_db(tmp_path: Path) -> None:
    """Log scale, full range and typed choices as sampled; the values stay the report's best epochs."""
    import optuna

    from tune_app.optuna_store import storage_url

    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    batch = optuna.distributions.CategoricalDistribution([8, 16, 32])
    db = optuna.create_study(study_name="s", storage=storage_url(tmp_path))
    db.add_trial(optuna.trial.create_trial(params={"train.lr": 0.01, "train.batch_size": 8},
                                           distributions={"train.lr": lr, "train.batch_size": batch}, value=0.1))
    trials = [TrialInfo(path=tmp_path / f"train_trial_{i}", trial_id=f"id{i}", status="completed", history=[],
                        params={"train.lr": 0.001 * (i + 1), "train.batch_size": [8, 16][i % 2]},
                        best_score=0.5 + i / 10) for i in range(3)]
    study = plot_study(trials)
    assert [t.distributions["train.lr"] for t in study.trials] == [lr] * 3
    assert study.trials[1].params["train.batch_size"] == 16 and study.trials[1].distributions["train.batch_size"] == batch
    assert [t.value for t in study.trials] == [0.5, 0.6, 0.7]
    # Without the DB: ranges spanning the trials' own values, linear.
    elsewhere = [TrialInfo(path=tmp_path / "other" / t.path.name, trial_id=t.trial_id, status=t.status, history=[],
                           params=t.params, best_score=t.best_score) for t in trials]
    rebuilt = plot_study(elsewhere).trials[0].distributions["train.lr"]
    assert not rebuilt.log and rebuilt.high == pytest.approx(0.003)


def test_plot_study_ignores_a_db_distribution_the_trials_do_not_fit(tmp_path: Path) -> None:
    import optuna

    from tune_app.optuna_store import storage_url

    db = optuna.create_study(study_name="s", storage=storage_url(tmp_path))
    db.add_trial(optuna.trial.create_trial(params={"train.lr": 0.5},
                                           distributions={"train.lr": optuna.distributions.FloatDistribution(0.1, 1)},
                                           value=0.1))
    trials = [TrialInfo(path=tmp_path / f"t{i}", trial_id=f"id{i}", status="completed", history=[],
                        params={"train.lr": 0.001 * (i + 1)}, best_score=0.5) for i in range(2)]
    assert plot_study(trials).trials[0].distributions["train.lr"].low == pytest.approx(0.001)
