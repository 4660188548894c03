"""Search spaces, one module per space, chosen by the ``searchspace`` config key.

Each module defines ``define(trial, settings) -> dict | None``: an Optuna
define-by-run function. It samples with ``trial.suggest_*`` (conditionals are plain
``if``s) and may return constants. Parameter names are dotted config keys
(``train.lr``, ``model.criteria_head``) that the trainable applies over the
composed config. ``settings`` carries study-level facts the space may depend on
(e.g. ``max_epochs``).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

SpaceFn = Callable[[Any], dict[str, Any] | None]


def available_spaces() -> list[str]:
    """Names of the search-space modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_space(name: str, **settings: Any) -> SpaceFn:
    """The define-by-run function of space ``name`` bound to ``settings`` (picklable)."""
    if name not in available_spaces():
        raise ValueError(f"searchspace={name!r} is not allowed; allowed values: {', '.join(available_spaces())}")
    module = importlib.import_module(f"searchspaces.{name}")
    return functools.partial(module.define, settings=settings)
