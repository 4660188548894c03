"""The ``fixed`` space: samples nothing, every trial runs the composed config as is.

For reproducibility checks and for measuring one configuration repeatedly. With
``tune.encoders`` it samples the encoder alone: each listed encoder with its model config's
defaults.
"""

from __future__ import annotations

from typing import Any


def define(trial: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna define-by-run with no parameters."""
    return {}
