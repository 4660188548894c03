"""What a new study needs before its folder is created: a usable storage folder and readable data.

Called by ``python -m tune_app.run`` after the config is composed and validated, so that
these mistakes are one ``ConfigError``/``DataError`` (exit 2) and leave nothing behind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tune_app.config import AppConfig, ConfigError


def check_storage_path(cfg: AppConfig) -> None:
    """``tune.storage_path`` must be (or be creatable as) a writable folder, and the study folder no file."""
    key = "tune.local_copy_dir" if cfg.object_store is not None else "tune.storage_path"
    raw = cfg.tune.local_copy_dir if cfg.object_store is not None else cfg.tune.storage_path
    probe = cfg.storage_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={raw!r} is not usable: {probe} is a file, not a folder; "
                          f"set {key}=<a folder> (e.g. {key}=~/experiments)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}={raw!r} is not writable ({exc.strerror}: cannot create files in "
                          f"{probe}); fix its permissions or choose a writable folder, e.g. "
                          f"{key}=~/experiments") from None
    if cfg.study_dir.exists() and not cfg.study_dir.is_dir():
        raise ConfigError(f"tune.name={cfg.tune.name!r}: {cfg.study_dir} is a file, not a study folder; "
                          "choose another tune.name or move the file")


def check_object_store(cfg: AppConfig) -> None:
    """An object-store ``tune.storage_path``: its bucket answers and holds no study of this name yet."""
    from tune_app.object_store import ObjectStoreError, open_store, remote_study_exists

    store = cfg.object_store
    if store is None:
        return
    try:
        remote = open_store(store)
        taken = remote_study_exists(remote, store.child(cfg.tune.name))
    except ObjectStoreError as exc:
        raise ConfigError(f"tune.storage_path: {exc}") from None
    if taken:
        raise ConfigError(f"{store.child(cfg.tune.name).uri} already holds a study. Resume it with "
                          f"`python -m tune_app.run resume={store.child(cfg.tune.name).uri}`, or start a new "
                          "study with tune.name=<new name>")


def check_start(cfg: AppConfig) -> None:
    """Every start-time check of the paths a new study writes to and reads from."""
    check_storage_path(cfg)
    check_object_store(cfg)
    if cfg.data.source == "local" and cfg.data.path:
        from tune_app.data.redsm5 import check_local_files

        check_local_files(Path(cfg.data.path).expanduser())
