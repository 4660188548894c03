"""The ``full`` space: every head, pooling, coupling, loss and optimisation knob.

Conditionals (plain ``if``s; a parameter is absent when it has no effect):

* ``model.head_hidden`` only when a head uses it (criteria head not ``linear`` or
  evidence head not ``start_end_linear``);
* ``model.coupling_method`` / ``model.coupling_pooling`` only when ``model.coupling`` is
  ``coupled``;
* ``train.focal_gamma`` only for ``focal`` / ``adaptive_focal`` / ``hybrid`` losses,
  ``train.hybrid_alpha`` only for ``hybrid``;
* ``augment.method`` / ``augment.probability`` only when ``augment.enabled``; only the
  offline methods (synonym, insert, swap, char_perturb) are sampled, never
  back_translation (it needs translation models);
* ``train.crf_lr_multiplier`` / ``train.crf_loss_reduction`` only for the ``bio_crf``
  evidence head.

Also sampled: ``model.gradient_checkpointing``; ``train.epochs`` from half of the study's
``tune.max_epochs`` (rounded up) to all of it; ``train.seed_policy`` (``study``: the
study's seed, ``per_trial``: a seed derived from it and the trial's params; either way a
trial is reproducible from its params + the study config).

Not sampled: ``data.max_length``; the encoder only with ``tune.encoders`` (``model``,
sampled before everything here: ``searchspaces/__init__.py``).

The learning-rate and head-multiplier ranges depend on ``settings["model"]`` (the sampled
encoder with ``tune.encoders``): the random-init ``tiny`` encoder trains from scratch
(larger LRs), pretrained encoders are fine-tuned (small LRs). ``settings["augment"] = False``
drops the augmentation knobs.
"""

from __future__ import annotations

from typing import Any

from searchspaces.small import encoder_kind
from tune_app import config
from tune_app.models.catalog import (
    COUPLING_METHODS,
    COUPLING_POOLINGS,
    CRF_LOSS_REDUCTIONS,
    CRITERIA_HEADS,
    CRITERIA_LOSSES,
    EVIDENCE_HEADS,
    POOLINGS,
)

FOCAL_LOSSES: tuple[str, ...] = ("focal", "adaptive_focal", "hybrid")
#: Augmentation the space samples: every method but back-translation, which downloads models.
AUGMENT_METHODS: tuple[str, ...] = tuple(m for m in config.AUGMENT_METHODS if m != "back_translation")
HEAD_HIDDEN: tuple[int, ...] = (128, 256, 512, 1024)

#: (low, high) learning rate and head LR multiplier: the tiny encoder vs pretrained ones.
LR_RANGE = {"tiny": (1e-3, 1e-2), "pretrained": (5e-6, 2e-4)}
HEAD_LR_MULTIPLIER_RANGE = {"tiny": (1.0, 3.0), "pretrained": (1.0, 30.0)}


def head_hidden_used(criteria_head: str, evidence_head: str) -> bool:
    """Whether ``model.head_hidden`` changes the model for these heads."""
    return criteria_head != "linear" or evidence_head != "start_end_linear"


def define(trial: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna define-by-run: sample one trial's parameters (dotted config keys)."""
    kind = encoder_kind(settings)

    # Optimisation.
    max_epochs = int(settings.get("max_epochs", 1))
    trial.suggest_int("train.epochs", (max_epochs + 1) // 2, max_epochs)
    trial.suggest_categorical("train.seed_policy", list(config.SEED_POLICIES))
    trial.suggest_float("train.lr", *LR_RANGE[kind], log=True)
    trial.suggest_categorical("train.batch_size", [8, 16, 32])
    trial.suggest_categorical("train.grad_accumulation_steps", [1, 2, 4])
    trial.suggest_float("train.warmup_ratio", 0.0, 0.2)
    trial.suggest_float("train.weight_decay", 0.0, 0.1)
    trial.suggest_categorical("train.scheduler", list(config.LR_SCHEDULES))
    trial.suggest_categorical("train.optimizer", list(config.OPTIMIZERS))
    trial.suggest_float("train.layerwise_lr_decay", 0.7, 1.0)
    trial.suggest_float("train.head_lr_multiplier", *HEAD_LR_MULTIPLIER_RANGE[kind], log=True)
    trial.suggest_categorical("train.fgm_epsilon", [0.0, 0.1, 0.5, 1.0])

    # Model.
    criteria_head = trial.suggest_categorical("model.criteria_head", list(CRITERIA_HEADS))
    evidence_head = trial.suggest_categorical("model.evidence_head", list(EVIDENCE_HEADS))
    if head_hidden_used(criteria_head, evidence_head):
        trial.suggest_categorical("model.head_hidden", list(HEAD_HIDDEN))
    if evidence_head == "bio_crf":
        trial.suggest_float("train.crf_lr_multiplier", 1.0, 100.0, log=True)
        trial.suggest_categorical("train.crf_loss_reduction", list(CRF_LOSS_REDUCTIONS))
    trial.suggest_float("model.dropout", 0.1, 0.5)
    trial.suggest_categorical("model.pooling", list(POOLINGS))
    if trial.suggest_categorical("model.coupling", ["independent", "coupled"]) == "coupled":
        trial.suggest_categorical("model.coupling_method", list(COUPLING_METHODS))
        trial.suggest_categorical("model.coupling_pooling", list(COUPLING_POOLINGS))

    # Loss.
    loss = trial.suggest_categorical("train.criteria_loss", list(CRITERIA_LOSSES))
    if loss in FOCAL_LOSSES:
        trial.suggest_float("train.focal_gamma", 1.0, 5.0)
    if loss == "hybrid":
        trial.suggest_float("train.hybrid_alpha", 0.1, 0.9)
    trial.suggest_float("train.label_smoothing", 0.0, 0.2)
    trial.suggest_float("train.evidence_weight", 0.2, 2.0)

    # Data.
    trial.suggest_categorical("data.input_format", ["multi_label", "binary_pairs"])
    if settings.get("augment", True) and trial.suggest_categorical("augment.enabled", [False, True]):
        trial.suggest_categorical("augment.method", list(AUGMENT_METHODS))
        trial.suggest_float("augment.probability", 0.05, 0.5)

    # Memory: recompute activations in the backward pass (slower, fits bigger encoders).
    trial.suggest_categorical("model.gradient_checkpointing", [False, True])
    return None
