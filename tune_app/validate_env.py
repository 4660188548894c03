"""``python -m tune_app.validate_env [--skip NAME] [key=value ...]``: is this machine ready?

Checks, for the configuration the same Hydra overrides as ``tune_app.run`` compose:
Python and package versions (against ``pyproject.toml`` / ``poetry.lock``), the torch
device, a writable experiments dir, free disk against the retention policy's need,
the MLflow store, the Hugging Face cache and token (the token is never printed),
NLTK data (when augmentation is on) and a short ``ray.init`` + shutdown.

stdout: a human verdict, one line per check (``OK``/``WARN``/``FAIL``/``SKIP``, its name and
a short detail; a failure also names its fix), then ``ready`` or ``N checks failed: ...``.
``--json``: the full JSON report on stdout instead, and one line per failure with its fix
(and per warning) on stderr. Exit codes: 0 every required check passed, 1 a required check
failed, 2 bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tune_app.checkpoints.preflight import human_bytes
from tune_app.config import AppConfig, ConfigError

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
POETRY_LOCK = REPO / "poetry.lock"

#: Same margin as ``checkpoints.preflight``: room for metadata and the atomic tmp dir.
SAFETY_MARGIN_BYTES = 64 << 20

#: Distributions reported (and checked against pyproject's constraints when listed there).
PACKAGES: tuple[str, ...] = (
    "tune_app", "torch", "ray", "optuna", "transformers", "datasets", "huggingface-hub", "mlflow",
    "hydra-core", "omegaconf", "textattack", "pytorch-crf", "safetensors", "numpy", "pyarrow",
)

#: Config-only shapes of the hub encoders (BERT-style parameter layout; the pooler is
#: dropped). Used to size checkpoints when the model's ``config.json`` is not cached.
HUB_SIZE_TABLE: dict[str, dict[str, int]] = {
    "bert-base": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2},
    "mental-bert": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2},
    "psychbert": {"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2},
    # medicalai/ClinicalBERT is a multilingual DistilBERT (6 layers, 119,547 tokens).
    "clinicalbert": {"vocab_size": 119547, "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 12,
                     "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 1},
    "roberta-base": {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1},
}

CHECKS: tuple[str, ...] = ("python", "packages", "torch", "experiments_dir", "disk", "mlflow",
                           "huggingface", "nltk", "ray")


@dataclass
class Check:
    """One check's outcome; ``required`` failures make the exit code 1."""

    name: str
    ok: bool
    required: bool = True
    detail: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    fix: str | None = None


# --- versions -----------------------------------------------------------------------
def _pyproject() -> dict[str, Any]:
    try:
        return tomllib.loads(PYPROJECT.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _locked_versions(lock: Path = POETRY_LOCK) -> dict[str, str]:
    try:
        data = tomllib.loads(lock.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {_norm(p["name"]): str(p["version"]) for p in data.get("package", []) if "name" in p}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def check_python(version: tuple[int, int, int] | None = None) -> Check:
    """The interpreter against ``requires-python`` (3.11 when pyproject is not readable)."""
    from packaging.specifiers import SpecifierSet

    v = version or (sys.version_info.major, sys.version_info.minor, sys.version_info.micro)
    text = ".".join(map(str, v))
    spec = str(_pyproject().get("project", {}).get("requires-python", ">=3.11,<3.12"))
    if SpecifierSet(spec).contains(text):
        return Check("python", True, detail={"version": text, "requires": spec, "executable": sys.executable})
    return Check("python", False, detail={"version": text, "requires": spec}, problem=f"Python {text} does not satisfy {spec}",
                 fix="use Python 3.11: PYTHON=python3.11 make install (or the container: make build)")


def check_packages(lock: Path = POETRY_LOCK) -> Check:
    """Installed versions vs pyproject's constraints (failure) and poetry.lock (warning)."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    wanted: dict[str, Requirement] = {}
    for line in _pyproject().get("project", {}).get("dependencies", []):
        req = Requirement(line)
        wanted[_norm(req.name)] = req
    locked = _locked_versions(lock)
    versions: dict[str, str | None] = {}
    bad, drift = [], []
    for name in sorted(set(PACKAGES) | set(wanted)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
        spec = wanted.get(_norm(name))
        installed = versions[name]
        if spec is not None and (installed is None or not spec.specifier.contains(installed, prereleases=True)):
            bad.append(f"{name} {installed or 'missing'} (needs {spec.specifier or 'any'})")
        lock_v = locked.get(_norm(name))
        if installed and lock_v:
            with contextlib.suppress(InvalidVersion):
                if Version(installed).public != Version(lock_v).public:
                    drift.append(f"{name} {installed} (locked {lock_v})")
    detail: dict[str, Any] = {"versions": versions, "lock_file": str(lock) if lock.exists() else None}
    if drift:
        detail["differs_from_lock"] = drift
    if bad:
        return Check("packages", False, detail=detail, problem="; ".join(bad),
                     fix="rebuild the environment from poetry.lock: make install (or make build)")
    return Check("packages", True, detail=detail)


# --- device -------------------------------------------------------------------------
def check_torch(cfg: AppConfig) -> Check:
    """CUDA or CPU; a failure only when the config asks for a GPU that is not there."""
    import torch

    cuda = torch.cuda.is_available()
    detail: dict[str, Any] = {"torch": torch.__version__, "built_with_cuda": torch.version.cuda,
                              "device": "cuda" if cuda else "cpu", "train.device": cfg.train.device,
                              "deterministic": cfg.train.deterministic,
                              "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if cuda:
        detail["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    wants_gpu = cfg.train.device == "cuda" or cfg.tune.gpus_per_trial > 0
    if wants_gpu and not cuda:
        why = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
        return Check("torch", False, detail=detail,
                     problem=f"the config asks for a GPU (train.device={cfg.train.device}, "
                             f"tune.gpus_per_trial={cfg.tune.gpus_per_trial}) but torch sees none ({why})",
                     fix="use train.device=auto tune.gpus_per_trial=-1, or install the CUDA torch build "
                         "(make install without TORCH_INDEX_URL; container: the trainer service with GPU access)")
    return Check("torch", True, detail=detail)


# --- storage ------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_experiments_dir(cfg: AppConfig) -> Check:
    """``tune.storage_path`` exists (created if needed) and takes a file."""
    root = cfg.storage_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".validate_env-"):
            pass
    except OSError as exc:
        return Check("experiments_dir", False, detail={"path": str(root)}, problem=f"cannot write to {root}: {exc}",
                     fix="tune.storage_path=<a writable folder> (container: mount it at /app/experiments "
                         "and build with UID/GID of its owner)")
    return Check("experiments_dir", True, detail={"path": str(root)})


def _meta_model_bytes(encoder_config: Any, cfg: AppConfig, name: str) -> int:
    """``estimate_checkpoint_bytes`` of the model ``cfg`` builds, on the meta device (no weights)."""
    import torch
    from transformers import AutoModel, BertTokenizerFast

    from tune_app.checkpoints.store import estimate_checkpoint_bytes
    from tune_app.models.encoders import TINY_VOCAB_PATH, LoadedEncoder
    from tune_app.trainable import make_model

    # The heads only read special-token ids from the tokenizer: the shipped one stands in.
    tokenizer = BertTokenizerFast(vocab_file=str(TINY_VOCAB_PATH), do_lower_case=True)
    with torch.device("meta"):
        try:
            encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_config(encoder_config)
        loaded = LoadedEncoder(model=encoder, tokenizer=tokenizer, hidden_size=int(encoder_config.hidden_size),
                               name=name, resolved_revision=None, signature="meta")
        model = make_model(cfg, loaded, seed=0)
    return estimate_checkpoint_bytes(model, torch.optim.AdamW(model.parameters()))


def projected_checkpoint_bytes(cfg: AppConfig) -> tuple[int, str]:
    """Projected size of one checkpoint of the configured model, and where the shape came from.

    tiny: its config; minilm: the package's ``config.json``; hub models: their cached
    ``config.json`` when present, else :data:`HUB_SIZE_TABLE`. No weights are loaded.
    """
    from transformers import AutoConfig, BertConfig

    from tune_app.models.encoders import (
        ENCODER_CATALOG,
        TINY_VOCAB_PATH,
        minilm_model_dir,
    )

    spec = ENCODER_CATALOG[cfg.model.name]
    if spec.source == "tiny":
        vocab = len({line.rstrip("\n") for line in TINY_VOCAB_PATH.read_text().splitlines()})
        return _meta_model_bytes(BertConfig(vocab_size=vocab, pad_token_id=0, **dict(spec.shape)), cfg, spec.name), \
            f"{spec.name} config"
    if spec.source == "package":
        return _meta_model_bytes(AutoConfig.from_pretrained(str(minilm_model_dir())), cfg, spec.name), \
            "package config.json"
    cached = _hub_cached_file(spec.hub_id or "", "config.json", cfg.model.revision or spec.default_revision)
    if cached:
        return _meta_model_bytes(AutoConfig.from_pretrained(str(Path(cached).parent)), cfg, spec.name), \
            "cached config.json"
    return _meta_model_bytes(BertConfig(**HUB_SIZE_TABLE[spec.name]), cfg, spec.name), "size table"


def check_disk(cfg: AppConfig, per_checkpoint: int | None = None, *, source: str = "",
               disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> Check:
    """Free space >= checkpoint x (keep_best_k + N x (keep_last_n + 1)) + margin, N =
    ``tune.max_concurrent_trials`` (each running trial: its last N and the save being written)."""
    if per_checkpoint is None:
        per_checkpoint, source = projected_checkpoint_bytes(cfg)
    r = cfg.retention
    concurrent = cfg.tune.max_concurrent_trials
    count = r.keep_best_k + concurrent * (r.keep_last_n + 1)  # +1: the checkpoint being written
    need = per_checkpoint * count + SAFETY_MARGIN_BYTES
    where = _existing_ancestor(cfg.storage_dir)
    usage = disk_usage(where)
    detail: dict[str, Any] = {
        "path": str(where), "model": cfg.model.name, "size_source": source, "retention": r.name,
        "checkpoint_bytes": per_checkpoint, "checkpoints_held": count, "needed_bytes": need,
        "free_bytes": int(usage.free), "needed": human_bytes(need), "free": human_bytes(usage.free),
        "retention.max_total_size_gb": r.max_total_size_gb, "max_concurrent_trials": concurrent,
    }
    if per_checkpoint * count > r.max_total_size_gb * (1 << 30):
        detail["warning"] = (f"{count} checkpoints ({human_bytes(per_checkpoint * count)}) exceed "
                             f"retention.max_total_size_gb={r.max_total_size_gb}: retention will prune harder")
    if usage.free < need:
        return Check("disk", False, detail=detail,
                     problem=f"{human_bytes(usage.free)} free under {where}, the retention policy needs "
                             f"{human_bytes(need)} ({count} x {human_bytes(per_checkpoint)} checkpoints "
                             f"of {cfg.model.name}"
                             + (f", {concurrent} trials at once" if concurrent > 1 else "")
                             + f" + {human_bytes(SAFETY_MARGIN_BYTES)} margin)",
                     fix="tune.storage_path=<bigger disk>, retention=minimal, a smaller model (model=tiny|minilm), "
                         + ("fewer trials at once (tune.max_concurrent_trials), " if concurrent > 1 else "")
                         + "or free space: python -m tune_app.cleanup --study <dir> --execute")
    return Check("disk", True, detail=detail)


# --- MLflow -------------------------------------------------------------------------
def check_mlflow(uri: str, timeout: float = 3.0) -> Check:
    """Open the sqlite store (read-only) or ping ``<uri>/health``; a new store needs a writable folder."""
    detail: dict[str, Any] = {"tracking_uri": uri}
    fix = "tracking.tracking_uri=null (sqlite under tune.storage_path) or a reachable MLflow server URI"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser()
        detail["path"] = str(path)
        if not path.exists():
            parent = _existing_ancestor(path.parent)
            if os.access(parent, os.W_OK):
                return Check("mlflow", True, detail={**detail, "exists": False})
            return Check("mlflow", False, detail=detail, problem=f"cannot create {path}: {parent} is not writable",
                         fix=fix)
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
            try:
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.Error as exc:
            return Check("mlflow", False, detail=detail, problem=f"{path} is not a readable sqlite database: {exc}",
                         fix=f"move {path} away, or {fix}")
        if tables and "experiments" not in tables:
            return Check("mlflow", False, detail=detail, problem=f"{path} is a sqlite database but not an MLflow store",
                         fix=f"move {path} away, or {fix}")
        return Check("mlflow", True, detail={**detail, "exists": True, "tables": len(tables)})
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310
                status = int(resp.status)
        except (urllib.error.URLError, OSError) as exc:
            return Check("mlflow", False, detail=detail, problem=f"MLflow server {uri} not reachable: {exc}",
                         fix=f"start it (mlflow server ...), or {fix}")
        return Check("mlflow", status == 200, detail={**detail, "status": status},
                     problem=None if status == 200 else f"{uri}/health answered {status}", fix=fix)
    if uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        ok = os.access(_existing_ancestor(path), os.W_OK)
        return Check("mlflow", ok, detail=detail, problem=None if ok else f"{path} is not writable", fix=fix)
    return Check("mlflow", True, required=False, detail=detail, problem=f"scheme of {uri} not checked")


# --- Hugging Face -------------------------------------------------------------------
def hf_paths() -> tuple[Path, Path]:
    """``(HF_HOME, hub cache)`` as huggingface_hub resolves them from the environment."""
    home = Path(os.environ.get("HF_HOME")
                or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub").expanduser()
    return home, hub


def hf_token_source() -> str | None:
    """Where a Hugging Face token would come from (never the token itself)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return f"env {var}"
    path = Path(os.environ.get("HF_TOKEN_PATH") or hf_paths()[0] / "token").expanduser()
    with contextlib.suppress(OSError):
        if path.read_text().strip():
            return f"file {path}"
    return None


def _hub_cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_paths()[1]), revision=revision)
    return found if isinstance(found, str) else None


def check_huggingface(cfg: AppConfig) -> Check:
    """Cache location, token presence, and whether hub model/data can be had (cached or online)."""
    from tune_app.hub import hub_offline
    from tune_app.models.encoders import ENCODER_CATALOG

    home, hub = hf_paths()
    token = hf_token_source()
    offline = hub_offline()
    spec = ENCODER_CATALOG[cfg.model.name]
    needs_hub = spec.source == "hub" or cfg.data.source == "hub"
    detail: dict[str, Any] = {"HF_HOME": str(home), "hub_cache": str(hub), "cache_exists": hub.exists(),
                              "cache_writable": os.access(_existing_ancestor(hub), os.W_OK),
                              "token_present": token is not None, "token_source": token, "offline": offline,
                              "needed": needs_hub}
    problems: list[str] = []
    fixes: list[str] = []
    if needs_hub and not detail["cache_writable"]:
        problems.append(f"the Hugging Face cache {hub} is not writable")
        fixes.append("HF_HOME=<writable folder> (container: mount the cache read-write at /cache/huggingface)")
    if spec.source == "hub":
        revision = cfg.model.revision or spec.default_revision
        cached = _hub_cached_file(spec.hub_id or "", "config.json", revision) is not None
        gated = "gated" in spec.description.lower()
        detail["model"] = {"hub_id": spec.hub_id, "revision": revision, "cached": cached, "gated": gated}
        if not cached and offline:
            problems.append(f"model {spec.hub_id}@{revision} is not in the cache and the hub is offline")
            fixes.append("download it once online (unset HF_HUB_OFFLINE) or copy it into HF_HOME; or model=tiny|minilm")
        elif not cached and gated and token is None:
            problems.append(f"model {spec.hub_id} is gated and no Hugging Face token is set")
            fixes.append("accept its terms on huggingface.co and export HF_TOKEN (or `hf auth login`)")
    if cfg.data.source == "hub":
        cached = (hub / f"datasets--{cfg.data.hub_id.replace('/', '--')}").is_dir()
        detail["dataset"] = {"hub_id": cfg.data.hub_id, "cached": cached}
        if not cached and (offline or token is None):
            problems.append(f"dataset {cfg.data.hub_id} is gated, not cached"
                            + (" and the hub is offline" if offline else " and no token is set"))
            fixes.append("accept its terms on huggingface.co and export HF_TOKEN, or data=local data.path=<folder>")
    if problems:
        return Check("huggingface", False, detail=detail, problem="; ".join(problems), fix="; ".join(fixes))
    return Check("huggingface", True, required=needs_hub, detail=detail)


# --- NLTK, Ray ----------------------------------------------------------------------
def check_nltk(cfg: AppConfig) -> Check:
    """Stopwords, TextAttack's marker (+ WordNet for synonym/insert); required when augmenting."""
    from tune_app.data.nltk_setup import INSTALL_HINT, missing_resources, nltk_data_dir

    wordnet = cfg.augment.method in {"synonym", "insert"}
    missing = missing_resources(wordnet=wordnet)
    detail = {"augment.enabled": cfg.augment.enabled, "augment.method": cfg.augment.method,
              "nltk_data": str(nltk_data_dir()), "missing": missing}
    if not missing or not cfg.augment.enabled:
        return Check("nltk", True, required=cfg.augment.enabled, detail=detail)
    return Check("nltk", False, detail=detail, problem="TextAttack data missing: " + "; ".join(missing),
                 fix=f"{INSTALL_HINT}; or augment.enabled=false")


def check_ray(cfg: AppConfig) -> Check:
    """``ray.init`` (one CPU, no dashboard) and shutdown, timed; with ``tune.address``, joining that
    cluster (reachable, live nodes, one trial's CPUs/GPUs on one node) instead."""
    import ray

    started = time.monotonic()
    detail: dict[str, Any] = {"ray": ray.__version__, "include_dashboard": cfg.tune.include_dashboard}
    with contextlib.suppress(OSError):
        detail["shm_free"] = human_bytes(shutil.disk_usage("/dev/shm").free)
    address = cfg.tune.address
    try:
        if address:  # the study's cluster: reachable, and room for one trial on one of its nodes
            from tune_app.tuner import check_reachable, largest_node, trial_resources

            detail["address"] = address
            check_reachable(address)
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            detail["nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
            detail["trial_resources"] = trial_resources(cfg, ray.cluster_resources(), largest_node())
        else:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        detail["cluster_cpus"] = ray.cluster_resources().get("CPU")
    except ConfigError as exc:
        return Check("ray", False, detail=detail, problem=str(exc),
                     fix="change tune.address, tune.cpus_per_trial or tune.gpus_per_trial as the problem says")
    except Exception as exc:  # noqa: BLE001 - any start failure is the finding
        return Check("ray", False, detail=detail, problem=f"ray.init failed: {type(exc).__name__}: {exc}",
                     fix="`ray stop` stale instances; free /tmp and /dev/shm (container: shm_size); unset RAY_ADDRESS")
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
    detail["seconds"] = round(time.monotonic() - started, 1)
    return Check("ray", True, detail=detail)


# --- CLI ----------------------------------------------------------------------------
def run_checks(cfg: AppConfig, skip: set[str] | frozenset[str] = frozenset()) -> list[Check]:
    """Every check not in ``skip``; a check that crashes is reported as failed."""
    steps: dict[str, Callable[[], Check]] = {
        "python": check_python, "packages": check_packages, "torch": lambda: check_torch(cfg),
        "experiments_dir": lambda: check_experiments_dir(cfg), "disk": lambda: check_disk(cfg),
        "mlflow": lambda: check_mlflow(cfg.tracking_uri), "huggingface": lambda: check_huggingface(cfg),
        "nltk": lambda: check_nltk(cfg), "ray": lambda: check_ray(cfg),
    }
    out = []
    for name, step in steps.items():
        if name in skip:
            continue
        try:
            out.append(step())
        except Exception as exc:  # noqa: BLE001 - report, go on with the other checks
            out.append(Check(name, False, problem=f"check crashed: {type(exc).__name__}: {exc}",
                             fix="see the error; rerun with the same overrides after fixing it"))
    return out


USAGE = f"""usage: python -m tune_app.validate_env [--json] [--skip NAME[,NAME]] [key=value ...]

Checks this machine for the configuration the overrides compose (as tune_app.run), e.g.
  python -m tune_app.validate_env model=minilm tune.storage_path=/mnt/big
Checks: {', '.join(CHECKS)}.
Prints one line per check (OK, WARN, FAIL with its fix, SKIP) and a verdict; --json prints
the full JSON report instead (failures with their fixes on stderr).
Exit 0: all required checks pass; 1: a required check failed; 2: bad arguments.
"""


def parse_args(argv: list[str]) -> tuple[set[str], list[str], bool]:
    """``(checks to skip, Hydra overrides, --json given)``; raises ``ConfigError`` on an unknown check."""
    skip: set[str] = set()
    overrides: list[str] = []
    as_json = False
    it = iter(argv)
    for arg in it:
        if arg == "--skip" or arg.startswith("--skip="):
            value = arg.partition("=")[2] if "=" in arg else next(it, "")
            skip.update(s for s in value.split(",") if s)
        elif arg == "--json":
            as_json = True
        else:
            overrides.append(arg)
    unknown = sorted(skip - set(CHECKS))
    if unknown:
        raise ConfigError(f"--skip {','.join(unknown)}: unknown check; allowed: {', '.join(CHECKS)}")
    return skip, overrides, as_json


# --- the human verdict --------------------------------------------------------------
def _short_list(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def summary(check: Check) -> str:
    """A short human detail of a passed check (what was found), from its ``detail``."""
    d = check.detail
    if check.name == "python":
        return f"Python {d.get('version')} ({d.get('requires')})"
    if check.name == "packages":
        versions = d.get("versions", {})
        text = f"{sum(v is not None for v in versions.values())} packages within pyproject's pins"
        drift = d.get("differs_from_lock")
        return text + (f"; differ from poetry.lock: {_short_list(drift)}" if drift else "")
    if check.name == "torch":
        where = ", ".join(d.get("gpus") or []) or d.get("device")
        return f"torch {d.get('torch')} on {where} (train.device={d.get('train.device')})"
    if check.name == "experiments_dir":
        return f"{d.get('path')} is writable"
    if check.name == "disk":
        return (f"{d.get('free')} free under {d.get('path')}, needs {d.get('needed')} ({d.get('checkpoints_held')} "
                f"checkpoints of {d.get('model')}, retention={d.get('retention')})")
    if check.name == "mlflow":
        exists = d.get("exists")
        state = "" if exists is None else "store exists" if exists else "store will be created"
        return f"{d.get('tracking_uri')}" + (f" ({state})" if state else "")
    if check.name == "huggingface":
        token = d.get("token_source") or "none"  # where the token comes from, never the token
        needed = "needed" if d.get("needed") else "not needed by this config"
        return f"cache {d.get('hub_cache')}, token: {token}, {'offline' if d.get('offline') else 'online'}; {needed}"
    if check.name == "nltk":
        if not d.get("augment.enabled"):
            return "not needed (augment.enabled=false)"
        return f"TextAttack data present in {d.get('nltk_data')}"
    if check.name == "ray":
        return f"ray {d.get('ray')} started and stopped in {d.get('seconds')} s"
    return ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def verdict_lines(checks: list[Check], skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One line per check (``OK``/``WARN``/``FAIL``/``SKIP``, name, detail; a failure names its
    fix), in ``CHECKS`` order, then the verdict: ``ready: ...`` or ``N checks failed: ...``."""
    width = max(len(c) for c in CHECKS)
    by_name = {c.name: c for c in checks}
    lines: list[str] = []
    failed: list[str] = []
    warned: list[str] = []
    for name in [*CHECKS, *(n for n in by_name if n not in CHECKS)]:
        c = by_name.get(name)
        if c is None:
            if name in skip:
                lines.append(f"{'SKIP':<4}  {name:<{width}}  skipped (--skip)")
            continue
        if not c.ok:
            tag = "FAIL" if c.required else "WARN"
            text = f"{c.problem} -> fix: {c.fix}" if c.fix else str(c.problem)
        else:
            tag, text = "OK", summary(c)
            if c.detail.get("warning"):
                tag, text = "WARN", f"{text}; {c.detail['warning']}"
        if tag == "FAIL":
            failed.append(name)
        elif tag == "WARN":
            warned.append(name)
        lines.append(f"{tag:<4}  {name:<{width}}  {text}".rstrip())
    notes = "".join([f"; {_plural(len(warned), 'warning')} ({', '.join(warned)})" if warned else "",
                     f"; {len(skip)} skipped ({', '.join(n for n in CHECKS if n in skip)})" if skip else ""])
    if failed:
        lines.append(f"{_plural(len(failed), 'check')} failed: {', '.join(failed)} (fixes above){notes}")
    else:
        lines.append(f"ready: {_plural(len(checks), 'check')} run, none failed{notes}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in args):
        print(USAGE)
        return 0
    from tune_app.config import compose

    try:
        skip, overrides, as_json = parse_args(args)
        cfg = compose(overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds only the verdict (or pure JSON)
        checks = run_checks(cfg, skip)
    failed = [c for c in checks if c.required and not c.ok]
    if not as_json:
        print(f"validate_env: model={cfg.model.name} data={cfg.data.name} retention={cfg.retention.name} "
              f"storage={cfg.storage_dir}")
        print("\n".join(verdict_lines(checks, skip)))
        return 1 if failed else 0
    report = {
        "ok": not failed,
        "config": {"overrides": overrides, "model": cfg.model.name, "data": cfg.data.source,
                   "retention": cfg.retention.name, "storage_path": str(cfg.storage_dir),
                   "tracking_uri": cfg.tracking_uri},
        "skipped": sorted(skip),
        "checks": [asdict(c) for c in checks],
    }
    print(json.dumps(report, indent=2, default=str))
    for c in checks:
        if not c.ok:
            tag = "FAIL" if c.required else "WARN"
            print(f"{tag} {c.name}: {c.problem} -> fix: {c.fix}", file=sys.stderr)
        elif c.detail.get("warning"):
            print(f"WARN {c.name}: {c.detail['warning']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
