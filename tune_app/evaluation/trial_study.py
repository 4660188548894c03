"""The study's trials as an Optuna study, for the report's Optuna plots and importance.

:func:`plot_study` is the one place the report gets an ``optuna.Study`` from: today an
in-memory study rebuilt from the trial folders (params and best-epoch score); if the
project keeps the Optuna study in SQLite under the study folder, loading it goes here.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

    from tune_app.evaluation.report import TrialInfo

#: Optuna user attribute naming the Tune trial behind an Optuna trial (as ``tune_app.search``).
TUNE_TRIAL_ID_ATTR = "tune_trial_id"

_TUNE_TRIAL_NUMBER = re.compile(r"^[^_].*?_[0-9a-f]{5,}_(\d+)_")


def start_order(trial: TrialInfo) -> tuple[int, str]:
    """Sort key: Tune's trial number from the folder name (``<trainable>_<id>_<N>_<params>...``,
    N counts trials in the order Tune created them), then the name; a folder without one last."""
    found = _TUNE_TRIAL_NUMBER.match(trial.path.name)
    return (int(found.group(1)) if found else sys.maxsize, trial.path.name)


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def distribution(values: list[Any]) -> BaseDistribution:
    """The Optuna distribution spanning ``values``: int or float range, else categorical of
    their strings (bools, strings, None, non-finite numbers, mixed types)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return IntDistribution(min(values), max(values))
    if all(is_number(v) and math.isfinite(v) for v in values):
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution(sorted({str(v) for v in values}))


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO logs and ``ExperimentalWarning`` (its matplotlib plots) off, then back; also
    matplotlib's note on a one-value axis (a param every trial shares), which it widens itself."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")
            yield
    finally:
        optuna.logging.set_verbosity(before)


def scored(trials: list[TrialInfo]) -> list[TrialInfo]:
    """The trials with a best-epoch score, in start order."""
    return sorted((t for t in trials if t.best_score is not None), key=start_order)


def sampled_distributions(trials: list[TrialInfo]) -> dict[str, Any]:
    """Each param's distribution as the searcher sampled it, from the Optuna DB of the trials' study.

    Only distributions every one of ``trials``' values fits are returned (a DB of another
    study, or one behind the trial folders, changes nothing); ``{}`` without a readable DB.
    """
    from tune_app.optuna_store import db_path, load_optuna_study

    folders = {t.path.parent for t in trials if isinstance(t.path, Path)}
    if len(folders) != 1 or not db_path(next(iter(folders))).is_file():
        return {}
    study = load_optuna_study(next(iter(folders)))
    if study is None:
        return {}
    found: dict[str, Any] = {}
    for frozen in study.get_trials(deepcopy=False):
        for name, dist in frozen.distributions.items():
            found.setdefault(name, dist)

    def fits(dist: Any, value: Any) -> bool:
        try:
            return bool(dist._contains(dist.to_internal_repr(value)))
        except (ValueError, TypeError):
            return False

    return {n: d for n, d in found.items() if all(fits(d, t.params[n]) for t in trials if n in t.params)}


def plot_study(trials: list[TrialInfo]) -> optuna.Study:
    """An in-memory Optuna study with one ``COMPLETE`` trial per scored trial (in start order).

    Each holds the trial's params (those it has: conditional params stay missing) and its
    best-epoch score as value (the report's trial score, stopped trials included), with its
    Tune trial id as user attribute ``tune_trial_id``. A param's distribution is the one it was
    sampled from, read from the study's Optuna DB (``<study>/optuna.db``: log scales, full
    ranges and choices), else one spanning its values over these trials (categorical values
    as strings). The DB's own trials are not used as they are: Optuna holds a stopped trial as
    PRUNED and a finished one with its last epoch, where the report ranks every trial by its
    best epoch. Trials without a score are left out.
    """
    import optuna

    kept = scored(trials)
    names = sorted({k for t in kept for k in t.params})
    sampled = sampled_distributions(kept)
    dists = {n: sampled.get(n) or distribution([t.params[n] for t in kept if n in t.params]) for n in names}
    with quiet_optuna():
        study = optuna.create_study(direction="maximize")
        for t in kept:
            params = {n: (str(v) if n not in sampled
                          and isinstance(dists[n], optuna.distributions.CategoricalDistribution) else v)
                      for n, v in t.params.items()}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={n: dists[n] for n in params}, value=t.best_score,
                user_attrs={TUNE_TRIAL_ID_ATTR: t.trial_id}))
    return study
