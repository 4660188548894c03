"""The ``small`` space: a few knobs that matter on the tiny CPU encoder.

Conditional: ``model.head_hidden`` exists only when ``model.criteria_head`` is ``mlp``.
"""

from __future__ import annotations

from typing import Any


def define(trial: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna define-by-run: sample one trial's parameters."""
    trial.suggest_float("train.lr", 2e-3, 1e-2, log=True)
    trial.suggest_categorical("train.batch_size", [8, 16])
    trial.suggest_float("train.evidence_weight", 0.2, 1.0)
    head = trial.suggest_categorical("model.criteria_head", ["linear", "mlp"])
    if head == "mlp":
        trial.suggest_categorical("model.head_hidden", [64, 128, 256])
    trial.suggest_float("model.dropout", 0.0, 0.3)
    return None
