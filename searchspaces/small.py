"""The ``small`` space: a few knobs that matter, with ranges that fit the encoder kind.

The learning rate (and, for pretrained encoders, the heads' LR multiplier) is sampled
around the defaults of the model config (``configs/model/*.yaml``): the random-init
``tiny`` encoder trains from scratch (LR 2e-3 to 1e-2; heads at the same LR), a
pretrained encoder is fine-tuned (LR 2e-5 to 2e-4, heads 5x to 30x faster). An LR made
for one kind ruins the other: ``minilm`` at 5e-3 unlearns, ``tiny`` at 5e-5 barely moves.

Conditional: ``model.head_hidden`` exists only when ``model.criteria_head`` is ``mlp``;
``train.head_lr_multiplier`` only for pretrained encoders. With ``tune.encoders`` the encoder
is sampled first (``model``) and the kind, hence the LR range, is that trial's encoder's.
"""

from __future__ import annotations

from typing import Any

#: (low, high) of the learning rate per encoder kind (log-uniform).
LR_RANGE: dict[str, tuple[float, float]] = {"tiny": (2e-3, 1e-2), "pretrained": (2e-5, 2e-4)}
#: (low, high) of the heads' LR multiplier for pretrained encoders (log-uniform).
HEAD_LR_MULTIPLIER_RANGE: tuple[float, float] = (5.0, 30.0)


def encoder_kind(settings: dict[str, Any]) -> str:
    """``tiny`` (random init, trained from scratch: the catalog's ``tiny`` source) or ``pretrained``."""
    from tune_app.models.catalog import ENCODER_CATALOG

    spec = ENCODER_CATALOG.get(str(settings.get("model", "tiny")))
    return "tiny" if spec is None or spec.source == "tiny" else "pretrained"


def define(trial: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna define-by-run: sample one trial's parameters."""
    kind = encoder_kind(settings)
    trial.suggest_float("train.lr", *LR_RANGE[kind], log=True)
    if kind == "pretrained":
        trial.suggest_float("train.head_lr_multiplier", *HEAD_LR_MULTIPLIER_RANGE, log=True)
    trial.suggest_categorical("train.batch_size", [8, 16])
    trial.suggest_float("train.evidence_weight", 0.2, 1.0)
    head = trial.suggest_categorical("model.criteria_head", ["linear", "mlp"])
    if head == "mlp":
        trial.suggest_categorical("model.head_hidden", [64, 128, 256])
    trial.suggest_float("model.dropout", 0.0, 0.3)
    return None
