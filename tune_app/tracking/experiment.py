"""The MLflow experiment of a study, with its artifacts in a stable folder.

MLflow gives an experiment it creates the artifact location ``<default root>/<id>``,
and a client opening a ``sqlite:`` store has ``./mlruns`` as that root: the folder the
creating command happened to run in. :func:`experiment_id` creates our experiments with
an explicit location instead: beside a local sqlite store, ``<store folder>/mlartifacts/
<experiment>`` (for the default store, ``<tune.storage_path>/mlartifacts/...``); for any
other store (an MLflow server, a SQL server), the server's default. MLflow records the
location as an absolute ``file://`` URI, so ``mlflow ui --backend-store-uri ...`` serves
the artifacts from any folder. An experiment that already exists keeps its location.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

#: The artifact root's folder name beside a local sqlite store.
ARTIFACTS_DIR = "mlartifacts"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def artifact_root(tracking_uri: str | None) -> Path | None:
    """``<folder of the sqlite file>/mlartifacts`` (absolute) for a local sqlite store, else ``None``."""
    from tune_app.tracking.uri import sqlite_path

    if not tracking_uri or not str(tracking_uri).lower().startswith("sqlite:"):
        return None
    path = sqlite_path(str(tracking_uri))
    return None if path is None else path.expanduser().resolve().parent / ARTIFACTS_DIR


def folder_name(experiment_name: str) -> str:
    """A file name for ``experiment_name``: itself when safe, else a cleaned form plus a short hash."""
    cleaned = _SAFE.sub("_", experiment_name).strip("._") or "experiment"
    if cleaned == experiment_name:
        return cleaned
    return f"{cleaned[:80]}-{hashlib.sha256(experiment_name.encode()).hexdigest()[:8]}"


def artifact_location(tracking_uri: str | None, experiment_name: str) -> str | None:
    """The ``file://`` artifact location a new experiment gets (``None``: the store's default)."""
    root = artifact_root(tracking_uri)
    return None if root is None else (root / folder_name(experiment_name)).as_uri()


def experiment_id(client: Any, experiment_name: str) -> str:
    """The id of ``experiment_name``, created (with :func:`artifact_location`) when missing."""
    exp = client.get_experiment_by_name(experiment_name)
    if exp is not None:
        return str(exp.experiment_id)
    location = artifact_location(getattr(client, "tracking_uri", None), experiment_name)
    try:
        return str(client.create_experiment(experiment_name, artifact_location=location))
    except Exception as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(experiment_name)  # created by another process meanwhile
        if exp is None:
            raise
        return str(exp.experiment_id)
