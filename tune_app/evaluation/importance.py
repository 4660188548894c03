"""Parameter importance of a study, only from enough scored trials (report key ``param_importance``).

Optuna's fANOVA on :func:`tune_app.evaluation.trial_study.plot_study` (the trials' params and
best-epoch scores); if fANOVA cannot run, a correlation fallback. With fewer than
:data:`MIN_IMPORTANCE_TRIALS` scored trials nothing is computed and the section says why.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tune_app.evaluation.trial_study import is_number, plot_study, quiet_optuna, scored

if TYPE_CHECKING:
    from tune_app.evaluation.report import TrialInfo

logger = logging.getLogger(__name__)

#: Fewest scored trials importance is computed from. fANOVA fits a random forest of the
#: score over the params; with a handful of trials it ranks noise (any param that happens to
#: split 4 points looks decisive). 10 is also what Optuna's TPE sampler waits for
#: (``n_startup_trials``) before it trusts a model of the score surface.
MIN_IMPORTANCE_TRIALS = 10
FANOVA = "optuna fANOVA"
CORRELATION = "correlation (fallback)"


def _section(n: int, *, values: dict[str, float] | None = None, method: str | None = None,
             reason: str | None = None) -> dict[str, Any]:
    return {"computed": values is not None, "method": method, "num_trials": n,
            "min_trials": MIN_IMPORTANCE_TRIALS, "values": values or {}, "reason": reason}


def _varied(kept: list[TrialInfo]) -> list[str]:
    """Params every scored trial has, with at least two distinct values."""
    names = sorted({k for t in kept for k in t.params})
    return [n for n in names
            if all(n in t.params for t in kept) and len({repr(t.params[n]) for t in kept}) > 1]


def _correlations(kept: list[TrialInfo], varied: list[str]) -> dict[str, float]:
    """|Spearman rho| (numeric params) or the correlation ratio (categorical), summing to 1."""
    from scipy.stats import spearmanr

    y = np.array([t.best_score for t in kept], dtype=float)
    raw: dict[str, float] = {}
    for n in varied:
        vals = [t.params[n] for t in kept]
        if all(is_number(v) for v in vals):
            rho = spearmanr(np.asarray(vals, dtype=float), y).statistic
            raw[n] = abs(float(rho)) if np.isfinite(rho) else 0.0
        else:  # correlation ratio: share of score variance explained by the category
            groups: dict[str, list[float]] = {}
            for v, s in zip(vals, y, strict=True):
                groups.setdefault(str(v), []).append(float(s))
            total = float(((y - y.mean()) ** 2).sum())
            between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
            raw[n] = float(np.sqrt(between / total)) if total > 0 else 0.0
    total_raw = sum(raw.values())
    return {k: v / total_raw for k, v in raw.items()} if total_raw > 0 else raw


def param_importance(trials: list[TrialInfo]) -> dict[str, Any]:
    """The report's ``param_importance`` section: ``computed``, ``method``, ``num_trials``
    (scored trials), ``min_trials``, ``values`` (param -> importance, summing to 1) and,
    when not computed, ``reason``."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    kept = scored(trials)
    n = len(kept)
    if n < MIN_IMPORTANCE_TRIALS:
        return _section(n, reason=f"parameter importance needs \u2265 {MIN_IMPORTANCE_TRIALS} scored "
                                  f"trials; this study has {n}")
    varied = _varied(kept)
    if not varied:
        return _section(n, reason="no parameter varies across the scored trials")
    try:
        with quiet_optuna():
            imp = get_param_importances(plot_study(kept), evaluator=FanovaImportanceEvaluator(seed=0))
        if imp and all(math.isfinite(v) for v in imp.values()):
            return _section(n, values={k: float(v) for k, v in imp.items()}, method=FANOVA)
    except Exception as exc:  # e.g. too few distinct trials for the forest; fall back below
        logger.info("fANOVA importance unavailable (%s); using correlations", exc)
    return _section(n, values=_correlations(kept, varied), method=CORRELATION)
