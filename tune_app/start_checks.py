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
    raw = cfg.tune.storage_path
    probe = cfg.storage_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"tune.storage_path={raw!r} is not usable: {probe} is a file, not a folder; "
                          "set tune.storage_path=<a folder> (e.g. tune.storage_path=experiments)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"tune.storage_path={raw!r} is not writable ({exc.strerror}: cannot create files in "
                          f"{probe}); fix its permissions or choose a writable folder, e.g. "
                          "tune.storage_path=~/experiments") from None
    if cfg.study_dir.exists() and not cfg.study_dir.is_dir():
        raise ConfigError(f"tune.name={cfg.tune.name!r}: {cfg.study_dir} is a file, not a study folder; "
                          "choose another tune.name or move the file")


def check_start(cfg: AppConfig) -> None:
    """Every start-time check of the paths a new study writes to and reads from."""
    check_storage_path(cfg)
    if cfg.data.source == "local" and cfg.data.path:
        from tune_app.data.redsm5 import check_local_files

        check_local_files(Path(cfg.data.path).expanduser())
