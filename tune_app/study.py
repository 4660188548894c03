"""The study directory: what the driver prepares before Ray starts, and where it lives.

``<tune.storage_path>/<tune.name>/`` holds Tune's own files (experiment state,
``tuner.pkl``, one folder per trial), ``optuna.db`` (the Optuna study: ``tune_app.optuna_store``)
and ours:

* ``study_config.yaml`` - the resolved configuration the study was started with;
* ``meta/splits.json``  - the post ids of each split (the trainable reads only
  train/validation ids; only the evaluation touches test);
* ``meta/study.json``   - study metadata (created, code version, dataset revision,
  the test evaluation once done).

The JSON files live in ``meta/``, not beside Tune's: on restore Tune copies every
top-level ``*.json``/``*.pkl`` of the study into its staging folder and writes them all
back (non-atomically) at every state sync, so a top-level file of ours would be
rewritten with a stale copy, and truncated by a kill during that copy.

The data set itself is materialised once under ``<tune.storage_path>/datasets/``
(the synthetic set is generated there; real data stays where it is).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tune_app import __version__
from tune_app.config import AppConfig

logger = logging.getLogger(__name__)

STUDY_CONFIG = "study_config.yaml"
META_DIR = "meta"
SPLITS_FILE = f"{META_DIR}/splits.json"
STUDY_META = f"{META_DIR}/study.json"
TRIAL_CONFIG = "trial_config.yaml"


def fsync_path(path: Path) -> None:
    """Flush a file already written (by another writer) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + fsync + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as JSON, secrets redacted (``sanitize_value``), written atomically."""
    from tune_app.tracking.sanitize import sanitize_value

    write_text_atomic(path, json.dumps(sanitize_value(data), indent=2, sort_keys=True, default=str) + "\n")


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit (``+dirty`` if modified)."""
    root = Path(__file__).resolve().parent.parent
    commit = "unknown"
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if dirty:
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package_version": __version__, "git_commit": commit}


def dataset_dir(cfg: AppConfig) -> Path | None:
    """Where the posts are read from: the synthetic cache folder, ``data.path``, or None (hub)."""
    if cfg.data.source == "synthetic":
        return cfg.storage_dir / "datasets" / f"synthetic-n{cfg.data.num_posts}-s{cfg.data.synthetic_seed}"
    if cfg.data.source == "local":
        assert cfg.data.path
        return Path(cfg.data.path).expanduser().resolve()
    return None


def load_posts_for(cfg: AppConfig, only_post_ids: set[str] | None = None) -> Any:
    """Read the posts of ``cfg``'s data source (all, or only ``only_post_ids``)."""
    from tune_app.data.redsm5 import load_posts

    source = "hub" if cfg.data.source == "hub" else "local"
    return load_posts(
        source=source,  # type: ignore[arg-type]
        path=dataset_dir(cfg),
        hub_id=cfg.data.hub_id,
        revision=cfg.data.revision,
        special_case_policy=cfg.data.special_case_policy,  # type: ignore[arg-type]
        cache_dir=None,
        only_post_ids=only_post_ids,
    )


def prepare_study(cfg: AppConfig) -> dict[str, Any]:
    """Create the study folder: save the config, materialise data, split it, save split ids.

    Runs in the driver before Ray starts. ``study_config.yaml`` is written first, so a
    folder left by a kill at any later point is a study that ``resume=`` finishes
    preparing (:func:`ensure_prepared`); every step is idempotent. ``meta/study.json``,
    written last, marks a prepared study. Returns the study metadata.
    """
    study = cfg.study_dir
    study.mkdir(parents=True, exist_ok=True)
    write_text_atomic(study / STUDY_CONFIG, cfg.to_yaml())
    from tune_app.checkpoints import failpoints

    failpoints.pause("prepare")  # crash tests: a kill during start-up, before Tune's first state
    loaded = materialise_data(cfg)
    if loaded.provided_splits:
        split_ids = {k: list(v) for k, v in loaded.provided_splits.items()}
        logger.info("using the splits provided by the data source")
    else:
        from tune_app.data.redsm5 import make_splits

        ratios = tuple(float(r) for r in cfg.data.split_ratios)
        split_ids = make_splits(loaded.posts, ratios=ratios, seed=cfg.data.split_seed)  # type: ignore[arg-type]
    from tune_app.data.redsm5 import check_disjoint, save_splits

    check_disjoint(split_ids)
    save_splits(split_ids, study / SPLITS_FILE, dataset_id=loaded.dataset_id, revision=loaded.revision,
                seed=cfg.data.split_seed, ratios=tuple(cfg.data.split_ratios))
    meta = {
        "study_name": cfg.tune.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_samples": cfg.tune.num_samples,
        "metric": cfg.tune.metric,
        "mode": cfg.tune.mode,
        "dataset_id": loaded.dataset_id,
        "dataset_revision": loaded.revision,
        "split_sizes": {k: len(v) for k, v in split_ids.items()},
        "study_dir": str(study),
        "study_uid": uuid.uuid4().hex,
        **code_version(),
    }
    write_json_atomic(study / STUDY_META, meta)
    return meta


def materialise_data(cfg: AppConfig) -> Any:
    """Generate the synthetic data set under the storage path if needed, then load the posts."""
    if cfg.data.source == "synthetic":
        from tune_app.data.synthetic import write_synthetic_redsm5

        target = dataset_dir(cfg)
        assert target is not None
        write_synthetic_redsm5(target, num_posts=cfg.data.num_posts, seed=cfg.data.synthetic_seed)
    return load_posts_for(cfg)


def read_study_meta(study_dir: Path) -> dict[str, Any] | None:
    """``meta/study.json``, or None when the study was never fully prepared (or it is unreadable)."""
    try:
        data = json.loads((study_dir / STUDY_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ensure_prepared(cfg: AppConfig) -> None:
    """Before a resume: finish a preparation a kill cut short, adopt a moved folder, restore data.

    * No ``meta/study.json``: the preparation is run again from the saved config.
    * The folder was moved (its recorded location is gone): it is adopted where it is now.
    * A copy whose original still exists would share the original's MLflow store: refused
      with a :class:`~tune_app.config.ConfigError` naming both folders.
    * The synthetic data set (kept under the storage path) is regenerated when missing,
      e.g. after a move; it is deterministic, and the split ids check it.
    """
    study = cfg.study_dir
    meta = read_study_meta(study)
    if meta is None:
        logger.info("study %s was not fully prepared (interrupted at start-up): preparing it now", study)
        prepare_study(cfg)
        return
    home = meta.get("study_dir")
    if home != str(study):
        _adopt_location(cfg, meta, Path(home) if home else None)
    data = dataset_dir(cfg)
    if cfg.data.source == "synthetic" and data is not None and not data.is_dir():
        logger.info("data set %s is missing (moved study?): generating it again", data)
        materialise_data(cfg)


def _adopt_location(cfg: AppConfig, meta: dict[str, Any], home: Path | None) -> None:
    from tune_app.config import ConfigError

    study = cfg.study_dir
    original = read_study_meta(home) if home is not None and home != study else None
    if original is not None and original.get("study_uid") == meta.get("study_uid"):
        own_store = cfg.tracking.tracking_uri is None and home is not None and home.parent != study.parent
        if not own_store:
            raise ConfigError(
                f"resume={study}: this folder is a copy of the study {home}, which still exists, and both "
                f"would write MLflow records into {cfg.tracking_uri}. Resume the original, or move this copy "
                f"under another folder (then it gets its own MLflow store there)")
        logger.warning("study %s is a copy of %s: it records into its own MLflow store %s",
                       study, home, cfg.tracking_uri)
        meta = {**meta, "study_uid": None, "copied_from": str(home)}  # from now on a study of its own
    elif home is not None:
        logger.warning("study moved from %s to %s: everything now goes to the new location", home, study)
    write_json_atomic(study / STUDY_META, {**meta, "study_dir": str(study),
                                           "study_uid": meta.get("study_uid") or uuid.uuid4().hex})

