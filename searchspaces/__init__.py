"""Search spaces, one module per space, chosen by the ``searchspace`` config key.

Each module defines ``define(trial, settings) -> dict | None``: an Optuna
define-by-run function. It samples with ``trial.suggest_*`` (conditionals are plain
``if``s) and may return constants. Parameter names are dotted config keys
(``train.lr``, ``model.criteria_head``) that the trainable applies over the
composed config. ``settings`` carries study-level facts the space may depend on
(``max_epochs``, ``model``: the encoder's model config name, ``encoders``).

**The encoder as a search dimension.** With ``settings["encoders"]`` (``tune.encoders``,
e.g. ``[tiny, minilm]``) every space first samples ``model`` from that list, then runs
with ``settings["model"]`` set to the sampled encoder: whatever a space derives from the
encoder (the LR range by encoder kind in ``small`` and ``full``) follows it, trial by
trial. The trainable gives such a trial that model config's ``model`` section and
training defaults, then applies the other sampled keys on top
(``tune_app.trainable.apply_params``).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from tune_app.config import ENCODER_PARAM

SpaceFn = Callable[[Any], dict[str, Any] | None]


def available_spaces() -> list[str]:
    """Names of the search-space modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def space_settings(cfg: Any) -> dict[str, Any]:
    """The ``settings`` of the study ``cfg`` (an ``AppConfig``) for :func:`load_space`."""
    return {"max_epochs": cfg.tune.max_epochs, "model": cfg.model.name, "encoders": list(cfg.tune.encoders)}


def load_space(name: str, **settings: Any) -> SpaceFn:
    """The define-by-run function of space ``name`` bound to ``settings`` (picklable).

    With ``settings["encoders"]`` (see the module docstring) it samples ``model`` first.
    """
    if name not in available_spaces():
        raise ValueError(f"searchspace={name!r} is not allowed; allowed values: {', '.join(available_spaces())}")
    module = importlib.import_module(f"searchspaces.{name}")
    if settings.get("encoders"):
        return functools.partial(_with_encoder, module.define, settings=settings)
    return functools.partial(module.define, settings=settings)


def _with_encoder(define: Callable[[Any, dict[str, Any]], dict[str, Any] | None], trial: Any,
                  settings: dict[str, Any]) -> dict[str, Any] | None:
    """Sample the encoder from ``settings["encoders"]``, then run ``define`` for that encoder."""
    encoder = trial.suggest_categorical(ENCODER_PARAM, list(settings["encoders"]))
    return define(trial, {**settings, "model": encoder})
