"""Is ``tracking.tracking_uri`` a store MLflow can open? Checked before Ray starts.

The scheme is looked up in MLflow's own tracking-store registry (built-in schemes plus
installed plugins; no network call, no torch import). A ``sqlite:`` store's folder must
exist or be creatable. The default (empty URI) is the study's sqlite file.
"""

from __future__ import annotations

import os
from pathlib import Path

KEY = "tracking.tracking_uri"
_HELP = ("leave it empty for sqlite:///<tune.storage_path>/mlflow.db, or give sqlite:///<file>, "
         "file:<folder> or a plain folder, http(s)://<server>, postgresql://..., mysql://..., databricks")


def tracking_schemes() -> list[str]:
    """URI schemes MLflow's tracking-store registry accepts here (``""`` = a local path)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return sorted(_tracking_store_registry._registry)


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite://`` URI (``None``: in memory)."""
    rest = uri.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest).expanduser()


def _unwritable_folder(path: Path) -> str | None:
    """Why the folder holding ``path`` cannot be created or written, else ``None``."""
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    folder = path.parent.resolve()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"its folder {folder} cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"its folder {folder} cannot be {'written' if existing == folder else 'created'} ({existing} is read-only)"
    return None


def tracking_uri_problem(uri: str | None) -> str | None:
    """A one-line ``ConfigError`` message when ``uri`` cannot be a tracking store, else ``None``."""
    if uri is None or not str(uri).strip():
        return None
    uri = str(uri).strip()
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception:  # noqa: BLE001 - MLflow's message talks about the model registry: ours is clearer
        schemes = ", ".join(s for s in tracking_schemes() if s)
        return f"{KEY}={uri!r} is not a tracking store MLflow knows (schemes: {schemes}); {_HELP}"
    if uri.lower().startswith("sqlite:"):
        path = sqlite_path(uri)
        problem = _unwritable_folder(path) if path is not None else None
        if problem:
            return f"{KEY}={uri!r} cannot be used: {problem}; point it at a writable folder, or {_HELP}"
    return None



def create_sqlite_store(uri: str | None) -> bool:
    """Create a missing ``sqlite:`` tracking store in one step; True when this call created it.

    MLflow creates a sqlite store on first use by running its schema migrations in place,
    several steps, not all in one transaction: a kill in the middle leaves a database every
    later open fails on ("table _alembic_tmp_experiments already exists"), and the study's
    MLflow records can then only be buffered. Here the store is built under a temp name
    beside it and linked into place only when complete (``os.link``: if another command
    created it meanwhile, that one is kept). Any other URI, or an existing file: nothing to do.
    """
    import uuid

    if uri is None or not str(uri).lower().startswith("sqlite:"):
        return False
    path = sqlite_path(str(uri))
    if path is None or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        from mlflow.tracking._tracking_service.utils import _get_store

        from tune_app.study import fsync_path

        store = _get_store(f"sqlite:///{tmp}")  # creates the tables and runs every migration
        store.engine.dispose()
        fsync_path(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
