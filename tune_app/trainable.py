"""The function trainable: one trial, read top to bottom.

config + sampled params -> data (train/validation only) -> model -> resume from the
newest valid checkpoint -> epoch loop (train, validate, save checkpoint, report).

Checkpoints: each epoch's checkpoint is written atomically, hashed, straight into the
folder Tune will register for it (``<trial>/checkpoint_00000N``), and reported with an
empty staging folder, so Tune copies nothing and no byte is stored twice. With
``checkpoint.async_save`` the write runs on a background thread while the next epoch trains
(``checkpoints.async_save``) and the epoch is reported between training steps once its
checkpoint is durable; otherwise the epoch is saved and reported at once. On restore,
Tune's checkpoint is the preferred resume point; a corrupt one falls back to the
previous valid checkpoint of the trial (see ``checkpoints.store``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from tune_app import config as config_mod
from tune_app.config import AppConfig, ConfigError
from tune_app.data.loader import SplitData, build_split
from tune_app.early_stopping import training_slot
from tune_app.outcome import completed_final_result, stopped_final_result
from tune_app.study import (
    SPLITS_FILE,
    TRIAL_CONFIG,
    code_version,
    load_posts_for,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger("tune_app.trainable")

TRIAL_STATE = "trial_state.json"


# --- config ---------------------------------------------------------------------------
def apply_params(cfg: AppConfig, params: dict[str, Any]) -> AppConfig:
    """``cfg`` with the sampled ``params`` (dotted keys like ``train.lr``) applied, validated.

    ``model`` (the encoder as a search dimension, from ``tune.encoders``) comes first: the trial
    takes that model config's whole ``model`` section and its training defaults (``train.lr``...,
    ``config.config_for_encoder``); every other sampled key then applies on top.
    An unknown key or an invalid value raises ``ConfigError`` before any training.
    """
    encoder = params.get(config_mod.ENCODER_PARAM)
    if encoder is not None:
        if str(encoder) not in cfg.tune.encoders:
            raise ConfigError(f"search space sampled model={encoder!r}, which tune.encoders={cfg.tune.encoders} "
                              "does not list")
        out = config_mod.config_for_encoder(cfg, str(encoder))
    elif cfg.tune.encoders:
        raise ConfigError(f"tune.encoders={cfg.tune.encoders} but the search space sampled no model: the "
                          "searcher must be built with searchspaces.space_settings(cfg) (which passes "
                          "tune.encoders to the space)")
    else:
        out = copy.deepcopy(cfg)
    for key, value in sorted(params.items()):
        if key == config_mod.ENCODER_PARAM:
            continue
        if key == "seed":
            out.seed = int(value)
            continue
        section, _, name = key.partition(".")
        target = getattr(out, section, None) if name else None
        if target is None or not hasattr(target, name):
            raise ConfigError(f"search space parameter {key!r} does not name a config key (section.key)")
        setattr(target, name, value)
    config_mod.validate(out)
    return out


def _node_id() -> str | None:
    """The Ray node this worker runs on (``None`` outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a record, never a reason to fail the trial
        return None


def use_trial_cpus(ctx: Any) -> int:
    """Set torch's thread count to the CPUs Tune gave this trial (``tune.cpus_per_trial``)."""
    cpus = 0.0
    with contextlib.suppress(Exception):  # outside Tune (tests): keep torch's default
        cpus = float(ctx.get_trial_resources().required_resources.get("CPU", 0))
    threads = max(1, int(cpus)) if cpus else torch.get_num_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def prepare_cuda(device: torch.device) -> None:
    """Before a trial on CUDA: TF32 matmuls allowed, this trial's peak memory counted alone."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.cuda.reset_peak_memory_stats(device)


def release_memory() -> None:
    """After a trial on CUDA: collect its tensors and hand cached blocks back (reused worker).

    On CPU reference counting frees the trial's tensors; a full collection there would
    only add to every trial's cost.
    """
    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@contextlib.contextmanager
def gpu_oom_as_trial_error(cfg: AppConfig, device: torch.device) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one actionable ``TrialOutOfMemoryError``.

    The trial ends as failed with the message; the study goes on with the next trial
    (the worker frees the memory first).
    """
    from tune_app.checkpoints import failpoints
    from tune_app.errors import TrialOutOfMemoryError

    try:
        if failpoints.triggered("oom"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (failpoint oom)")
        yield
    except torch.cuda.OutOfMemoryError as exc:
        t, m = cfg.train, cfg.model
        peak = (f"; peak allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                if device.type == "cuda" else "")
        release_memory()
        raise TrialOutOfMemoryError(
            f"trial ran out of GPU memory ({str(exc).splitlines()[0]}{peak}) with model={m.name}, "
            f"train.batch_size={t.batch_size}, train.precision={t.precision}, "
            f"model.gradient_checkpointing={str(m.gradient_checkpointing).lower()}, "
            f"data.max_length={cfg.data.max_length}. Fix: lower train.batch_size (and raise "
            "train.grad_accumulation_steps to keep the effective batch), use train.precision=bf16 "
            "(or fp16), set model.gradient_checkpointing=true, or lower data.max_length"
        ) from None


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (all devices); optionally request deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def trial_seed(cfg: AppConfig, params: dict[str, Any]) -> int:
    """The trial's seed under ``train.seed_policy``: the study ``seed``, or (``per_trial``)
    one derived from it and the sampled ``params`` (``tune_app.seeds``, which the driver's
    MLflow callback uses too)."""
    from tune_app.seeds import derive_seed

    return derive_seed(cfg.seed, cfg.train.seed_policy, params)


# --- data -----------------------------------------------------------------------------
def _train_val_posts(cfg: AppConfig, split_ids: dict[str, list[str]]) -> tuple[list[Any], list[Any], tuple[Any, ...]]:
    """The train and validation posts (cached per worker) and a key naming their content."""
    from tune_app.study import dataset_dir
    from tune_app.worker_cache import cached, digest, files_fingerprint

    wanted = set(split_ids["train"]) | set(split_ids["validation"])
    source_key = ("posts", digest(dataclasses.asdict(cfg.data)), str(dataset_dir(cfg)),
                  files_fingerprint(dataset_dir(cfg)), digest(sorted(wanted)))
    loaded = cached("posts", source_key, lambda: load_posts_for(cfg, only_post_ids=wanted))
    posts = {p.post_id: p for p in loaded.posts}
    train_posts = [posts[i] for i in sorted(split_ids["train"])]
    val_posts = [posts[i] for i in sorted(split_ids["validation"])]
    data_key = (loaded.dataset_id, loaded.revision, digest(split_ids["train"]), digest(split_ids["validation"]))
    return train_posts, val_posts, data_key


def num_labels(cfg: AppConfig) -> int:
    """Labels per post: the nine symptoms, plus NO_SYMPTOMS when included."""
    from tune_app.data.schema import SYMPTOMS

    return len(SYMPTOMS) + (1 if cfg.data.include_no_symptoms else 0)


def num_outputs(cfg: AppConfig) -> int:
    """Criteria logits per model input: one per label, or one per (post, criterion) pair."""
    return 1 if cfg.data.input_format == "binary_pairs" else num_labels(cfg)


# --- model and optimiser --------------------------------------------------------------
def make_model(cfg: AppConfig, encoder: Any, *, seed: int) -> Any:
    """The dual-head model ``cfg.model`` describes, on ``encoder`` (heads seeded by ``seed``)."""
    from tune_app.models.dual_head import build_model

    m = cfg.model
    options = {"loss_reduction": cfg.train.crf_loss_reduction} if m.evidence_head == "bio_crf" else None
    return build_model(encoder, num_outputs=num_outputs(cfg), criteria_head=m.criteria_head,
                       evidence_head=m.evidence_head, pooling=m.pooling, head_hidden=m.head_hidden,
                       dropout=m.dropout, coupling=m.coupling, coupling_method=m.coupling_method,
                       coupling_pooling=m.coupling_pooling, evidence_options=options, seed=seed)


def make_optimizer(cfg: AppConfig, model: Any) -> torch.optim.Optimizer:
    """The optimiser ``cfg.train`` describes (groups: layer-wise decay, heads, CRF)."""
    from tune_app.training import build_optimizer

    t = cfg.train
    return build_optimizer(model, name=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                           layerwise_lr_decay=t.layerwise_lr_decay, head_lr_multiplier=t.head_lr_multiplier,
                           crf_lr_multiplier=t.crf_lr_multiplier)


# --- one epoch ------------------------------------------------------------------------
def class_weights(split: SplitData, cfg: AppConfig, device: torch.device) -> torch.Tensor | None:
    """``pos_weight`` from the training labels when the loss asks for it (``weighted_bce``)."""
    from tune_app.models.losses import pos_weight_from_labels

    if cfg.train.criteria_loss != "weighted_bce":
        return None
    labels = torch.tensor([e.criteria_labels for e in split.encoded], dtype=torch.float32)
    return pos_weight_from_labels(labels).to(device)


def loss_settings(cfg: AppConfig, pos_weight: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments of ``joint_loss`` for this config (training and validation alike)."""
    t = cfg.train
    return {"evidence_weight": t.evidence_weight, "criteria_loss": t.criteria_loss, "pos_weight": pos_weight,
            "label_smoothing": t.label_smoothing, "focal_gamma": t.focal_gamma, "hybrid_alpha": t.hybrid_alpha}


def evaluate(model: torch.nn.Module, split: SplitData, cfg: AppConfig, device: torch.device,
             loss_kwargs: dict[str, Any], prefix: str = "val_") -> dict[str, float]:
    """Loss and metrics of ``split`` (the shared pass, ``evaluation.forward.run_split``)."""
    from tune_app.evaluation.forward import run_split
    from tune_app.evaluation.metrics import SplitOutputs, split_metrics

    gathered = run_split(model, split, width=num_labels(cfg), device=device,
                         max_span_tokens=cfg.evaluation.max_span_tokens, loss_kwargs=loss_kwargs)
    start, end = gathered.decided_spans()
    outputs = SplitOutputs(probs=gathered.probs, labels=gathered.labels, pred_start=start, pred_end=end,
                           gold_start=gathered.gold_start, gold_end=gathered.gold_end)
    metrics = split_metrics(outputs, threshold=cfg.train.threshold, prefix=prefix)
    metrics[f"{prefix}loss"] = float(gathered.loss or 0.0)
    return metrics


# --- what a trial trains ----------------------------------------------------------------
@dataclass
class TrainingRun:
    """Model, data, optimiser, schedule and loss of one trial, built from its config.

    The trainable and the in-process trainer (``training.standalone``) both build it with
    :func:`build_training_run` and step it with :meth:`run_epoch`, so what the learning
    tests measure is what a trial trains.
    """

    cfg: AppConfig
    seed: int
    device: torch.device
    model: Any
    train: SplitData
    val: SplitData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loss_kwargs: dict[str, Any]
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        return self.cfg.trial_epochs

    def run_epoch(self, epoch: int, on_batch: Callable[[], object] | None = None,
                  before_update: Callable[[], object] | None = None) -> dict[str, Any]:
        """Train epoch ``epoch`` (its shuffle seeded by the trial seed and the epoch, so a
        resumed trial draws the same batches) and evaluate on validation: ``epoch``,
        ``train_loss`` and the ``val_*`` metrics. ``on_batch()`` runs after each training batch,
        ``before_update()`` before each in-place change of the weights or optimiser state."""
        from tune_app.training import train_one_epoch

        t = self.cfg.train
        assert self.train.loader.generator is not None
        self.train.loader.generator.manual_seed(self.seed * 100_003 + epoch)
        train_loss = train_one_epoch(
            self.model, self.train.loader, self.optimizer, self.scheduler, loss_kwargs=self.loss_kwargs,
            device=self.device, grad_accumulation_steps=t.grad_accumulation_steps, fgm_epsilon=t.fgm_epsilon,
            precision=t.precision, max_grad_norm=t.max_grad_norm, scaler=self.scaler, on_batch=on_batch,
            before_update=before_update)
        return {"epoch": epoch, "train_loss": train_loss,
                **evaluate(self.model, self.val, self.cfg, self.device, loss_kwargs=self.loss_kwargs)}


def build_training_run(cfg: AppConfig, encoder: Any, train_posts: list[Any], val_posts: list[Any], *,
                       seed: int, device: torch.device, train_cache_key: tuple[Any, ...] | None = None,
                       val_cache_key: tuple[Any, ...] | None = None) -> TrainingRun:
    """Seed every RNG with ``seed``, then build the model on ``encoder`` (a private copy),
    the encoded splits (cached under the given keys, which must name the posts' content and
    the tokenizer), the optimiser, the schedule over ``cfg.trial_epochs`` and the loss."""
    from tune_app.training import build_scheduler, make_grad_scaler, optimizer_steps

    t = cfg.train
    seed_everything(seed, deterministic=t.deterministic)
    model = make_model(cfg, encoder, seed=seed).to(device)
    pin = device.type == "cuda"
    train = build_split(train_posts, encoder.tokenizer, cfg, shuffle=True, seed=seed,
                        cache_key=train_cache_key, pin_memory=pin)
    val = build_split(val_posts, encoder.tokenizer, cfg, shuffle=False, seed=seed,
                      cache_key=val_cache_key, pin_memory=pin)
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = optimizer_steps(len(train.loader), t.grad_accumulation_steps)
    scheduler = build_scheduler(optimizer, name=t.scheduler, warmup_ratio=t.warmup_ratio,
                                total_steps=steps_per_epoch * cfg.trial_epochs)
    return TrainingRun(cfg=cfg, seed=seed, device=device, model=model, train=train, val=val,
                       optimizer=optimizer, scheduler=scheduler, scaler=make_grad_scaler(device, t.precision),
                       loss_kwargs=loss_settings(cfg, class_weights(train, cfg, device)),
                       steps_per_epoch=steps_per_epoch)


# --- checkpoints ----------------------------------------------------------------------
@dataclass
class TrialState:
    """What the trainable keeps beside its checkpoints: status and the metric history."""

    status: str = "running"
    history: list[dict[str, Any]] = field(default_factory=list)


def next_checkpoint_dir(storage: Any) -> Path:
    """The folder Tune will register for the next reported checkpoint."""
    from ray.train._internal.storage import StorageContext

    name = StorageContext._make_checkpoint_dir_name(storage.current_checkpoint_index + 1)
    return Path(storage.trial_fs_path) / name


def compat_metadata(model: Any, cfg: AppConfig) -> dict[str, Any]:
    from tune_app.models.dual_head import architecture_signature

    return {
        **code_version(),
        "architecture": architecture_signature(model),
        "heads": {"criteria": cfg.model.criteria_head, "evidence": cfg.model.evidence_head,
                  "pooling": cfg.model.pooling, "input_format": cfg.data.input_format,
                  "num_outputs": num_outputs(cfg)},
    }


def _previous_starts(trial_dir: Path) -> list[dict[str, Any]]:
    """Earlier (re)starts of this trial, from ``trial_state.json``: shows where each resumed."""
    try:
        return list(json.loads((trial_dir / TRIAL_STATE).read_text()).get("starts", []))
    except (OSError, ValueError):
        return []


def choose_async_save(cfg: AppConfig, device: torch.device, snapshot_bytes: int) -> bool:
    """Whether this trial writes its checkpoints in the background (``checkpoint.async_save``).

    Part of the trial's preflight: a background save keeps a snapshot of ``snapshot_bytes``
    (model + optimiser state) in host memory; when that much is not free the trial saves
    synchronously, with a warning, instead of risking the OOM killer.
    """
    from tune_app.checkpoints.async_save import snapshot_fits_in_memory, use_async_save
    from tune_app.checkpoints.preflight import human_bytes

    if not use_async_save(cfg.checkpoint.async_save, device):
        return False
    if not snapshot_fits_in_memory(snapshot_bytes):
        logger.warning("checkpoint.async_save: not enough free host memory for a %s snapshot of the model and "
                       "optimiser state; this trial saves its checkpoints synchronously", human_bytes(snapshot_bytes))
        return False
    logger.info("checkpoints are written in the background (snapshot: %s of host memory)",
                human_bytes(snapshot_bytes))
    return True


_WATCHING_PARENT: list[int] = []


def exit_with_ray_node(poll_s: float = 0.5) -> None:
    """End this worker within ``poll_s`` once the Ray node that started it is gone.

    A SIGKILL of the study's driver takes its Ray node (raylet) with it, but a trial worker
    in the middle of an epoch only notices at its next call into Ray, after it may have saved
    one more checkpoint into a study that the next ``resume=`` already owns. So each worker
    watches its parent (the raylet) once per process and exits as soon as it is replaced.
    """
    if _WATCHING_PARENT:
        return
    parent = os.getppid()
    try:
        import psutil

        if "raylet" not in psutil.Process(parent).name():
            return  # not a Ray worker (e.g. called in-process by a test)
    except Exception:  # noqa: BLE001 - psutil missing or the parent already gone: no watchdog
        return
    _WATCHING_PARENT.append(parent)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="tune_app-ray-node-watchdog", daemon=True).start()


# --- the trainable --------------------------------------------------------------------
def train_trial(params: dict[str, Any], app_config: dict[str, Any]) -> None:
    """Ray Tune function trainable: train one sampled config, report every epoch.

    No secret leaves the trial: the worker's stdout/stderr are sanitised, and an exception
    whose text holds one is replaced by a sanitised copy (same class when it can be rebuilt,
    so the driver still recognises our errors; ``from None``: the original chain stays here),
    which is what Tune writes to ``error.txt``/``error.pkl``.
    """
    from tune_app.tracking.jsonlog import quiet_exit_requests
    from tune_app.tracking.sanitize import install_std_streams, sanitized_exception

    install_std_streams()
    quiet_exit_requests()
    exit_with_ray_node()
    try:
        _run_trial(params, app_config)
    except Exception as exc:
        clean = sanitized_exception(exc)
        if clean is None:
            raise
        raise clean from None


def _run_trial(params: dict[str, Any], app_config: dict[str, Any]) -> None:
    """The trial: its log session, the early-stopped check, then ``_train``."""
    from tune_app.tracking.jsonlog import setup_trial_logging

    started = time.monotonic()
    cfg = apply_params(config_mod.from_dict(app_config), params)
    ctx = tune.get_context()
    storage = ctx.get_storage()
    trial_dir = Path(storage.trial_fs_path)
    trial_dir.mkdir(parents=True, exist_ok=True)
    log_session = setup_trial_logging(trial_dir, study_id=cfg.tune.name, trial_id=ctx.get_trial_id(),
                                      max_bytes=cfg.tracking.log_max_bytes,
                                      backup_count=cfg.tracking.log_backup_count)
    try:
        # Ended before a restore, and Tune's saved state missed it (a kill can land between the
        # scheduler's decision or the last epoch and Tune's next save; a trial only the trial
        # journal names): never trained again, nothing loaded; the epochs Tune's saved state
        # lacks go back to it instead (each ``tune.report`` is harmless when Tune had it).
        stopped = stopped_final_result(trial_dir)
        if stopped is not None or completed_final_result(trial_dir, cfg.trial_epochs) is not None:
            from tune_app.checkpoints.resume import epochs_tune_missed

            logger.info("trial %s had %s before the study stopped: not training it again, reporting the epochs "
                        "Tune's saved state missed", ctx.get_trial_id(),
                        f"been stopped early at epoch {stopped.get('epoch')}" if stopped is not None
                        else f"trained all {cfg.trial_epochs} epochs")
            tune_ckpt = tune.get_checkpoint()
            for result in epochs_tune_missed(trial_dir, Path(tune_ckpt.path) if tune_ckpt is not None else None):
                tune.report(result)
            return
        with training_slot(ctx.get_trial_id()):
            _train(cfg, params, ctx, storage, trial_dir)
    finally:
        release_memory()  # the worker is reused: nothing of this trial stays allocated
        log_session.close()
    logger.info("trial %s done in %.1f s", ctx.get_trial_id(), time.monotonic() - started)


def _train(cfg: AppConfig, params: dict[str, Any], ctx: Any, storage: Any, trial_dir: Path) -> None:
    """The body of ``train_trial`` (inside the trial's log session)."""
    from tune_app.checkpoints import failpoints
    from tune_app.checkpoints.async_save import AsyncCheckpointer, StateSnapshotter
    from tune_app.checkpoints.guard import (
        ensure_room,
        prepare_epoch_save,
        run_failure_hook,
        save_epoch_checkpoint,
        study_reclaimer,
        write_epoch_checkpoint,
    )
    from tune_app.checkpoints.resume import plan_resume
    from tune_app.checkpoints.retention import saves_resume_state
    from tune_app.checkpoints.store import (
        capture_rng_state,
        check_compat,
        estimate_checkpoint_bytes,
        load_checkpoint,
        restore_rng_state,
    )
    from tune_app.data.redsm5 import load_splits
    from tune_app.evaluation.report import write_trial_report
    from tune_app.object_store import mirrors_to_a_store
    from tune_app.tracking.progress import log_epoch_progress
    from tune_app.training.loop import select_device
    from tune_app.worker_cache import fresh_encoder

    study_dir = cfg.study_dir
    write_text_atomic(trial_dir / TRIAL_CONFIG, cfg.to_yaml())
    seed = trial_seed(cfg, params)
    threads = use_trial_cpus(ctx)
    device = select_device(cfg.train.device)
    if device.type == "cuda":
        prepare_cuda(device)
    logger.info("trial %s: %d torch thread(s), device %s, precision %s", ctx.get_trial_id(), threads,
                device, cfg.train.precision)
    failpoints.pause("trial_start")  # crash tests: a kill before the trial's first report

    # Data: only the train and validation posts are ever read here (cached per worker).
    split_ids = load_splits(study_dir / SPLITS_FILE)
    train_posts, val_posts, data_key = _train_val_posts(cfg, split_ids)
    if cfg.augment.enabled and cfg.augment.probability > 0:
        # Training split only; deterministic under the trial seed, so a resumed trial
        # rebuilds the same data.
        from tune_app.data.augment import augment_posts, summarise, write_records

        train_posts, records = augment_posts(train_posts, method=cfg.augment.method,
                                             probability=cfg.augment.probability, seed=seed)
        write_records(trial_dir / "augmentation.jsonl", records)
        logger.info("augmentation: %s", summarise(records, len(train_posts)))
        train_key: tuple[Any, ...] = (*data_key, "train", cfg.augment.method, cfg.augment.probability, seed)
    else:
        train_key = (*data_key, "train")

    # A private copy of the (cached) pristine encoder, then every RNG seeded: what ran
    # before in this worker never changes this trial's draws.
    encoder = fresh_encoder(cfg.model.name, revision=cfg.model.revision, seed=seed,
                            gradient_checkpointing=cfg.model.gradient_checkpointing)
    run = build_training_run(cfg, encoder, train_posts, val_posts, seed=seed, device=device,
                             train_cache_key=(*train_key, encoder.signature),
                             val_cache_key=(*data_key, "validation", encoder.signature))
    model, optimizer, scheduler, epochs = run.model, run.optimizer, run.scheduler, run.epochs
    compat = compat_metadata(model, cfg)

    # Resume: the newest valid checkpoint, also one Tune's saved state missed (a kill before
    # its sync): those epochs are reported to Tune again first (checkpoints.resume).
    state = TrialState()
    start_epoch = 1
    tune_ckpt = tune.get_checkpoint()
    preferred = Path(tune_ckpt.path) if tune_ckpt is not None else None
    plan = plan_resume(trial_dir, tune_checkpoint=preferred, next_index=storage.current_checkpoint_index + 1)
    resume_from = plan.resume_from
    if resume_from is not None:
        loaded = load_checkpoint(resume_from, map_location=device)
        check_compat(loaded.compat, compat)
        model.load_state_dict(loaded.model_state)
        if loaded.optimizer_state is not None:
            optimizer.load_state_dict(loaded.optimizer_state)
        elif int(loaded.trainer_state["epoch"]) < epochs:
            # A kept best demoted to weights only (its newer checkpoints were corrupt); the
            # last epoch's is weights only by design and nothing trains after it.
            logger.warning("trial %s resumes from %s, which holds weights only: the optimiser and the "
                           "learning-rate schedule start afresh from this epoch", ctx.get_trial_id(),
                           resume_from.name)
        if loaded.scheduler_state is not None:
            scheduler.load_state_dict(loaded.scheduler_state)
        if loaded.rng_state is not None:
            restore_rng_state(loaded.rng_state)
        state.history = list(loaded.trainer_state.get("history", []))
        start_epoch = int(loaded.trainer_state["epoch"]) + 1
        logger.info("trial %s resumes at epoch %d from %s", ctx.get_trial_id(), start_epoch, resume_from.name)
    elif preferred is not None:
        logger.error("trial %s: no valid checkpoint left in %s; restarting from epoch 1 "
                     "(metrics already logged are not logged again)", ctx.get_trial_id(), trial_dir)

    staging = Path(tempfile.mkdtemp(prefix="tune_app-empty-"))  # reported: Tune copies nothing
    uploads = mirrors_to_a_store(storage)

    def registered() -> Any:
        """What a report registers: the folder itself when Tune uploads it to an object store
        (its copy onto itself streams the files to the bucket), else an empty one."""
        return tune.Checkpoint.from_directory(str(next_checkpoint_dir(storage) if uploads else staging))
    starts = _previous_starts(trial_dir) + [{
        "start_epoch": start_epoch, "resumed_from": resume_from.name if resume_from else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "torch_threads": threads,
        "node_id": _node_id(),  # on a cluster: which node ran this attempt
    }]
    finished = start_epoch > epochs and bool(state.history)
    write_json_atomic(trial_dir / TRIAL_STATE, {"status": "completed" if finished else "running",
                                                "epoch": start_epoch - 1, "seed": seed,
                                                "history": state.history, "starts": starts})
    for missed in plan.catch_up:  # before anything else reaches Tune, in epoch order
        tune.report(missed.metrics, checkpoint=registered() if missed.registers else None)
    projected = estimate_checkpoint_bytes(model, optimizer)
    # Not enough room even after keeping only the study's single best: stop before training.
    reclaim = study_reclaimer(study_dir, metric=cfg.tune.metric)
    # Each of the study's concurrent trials may be writing a checkpoint this size at once.
    saves = cfg.tune.max_concurrent_trials
    ensure_room(study_dir, projected, reclaim, concurrent_saves=saves)
    background = choose_async_save(cfg, device, projected)
    param_ptrs = {p.data_ptr() for p in model.parameters()}

    def copy_now(path: str, tensor: torch.Tensor) -> bool:
        """Copy at once what may change before the next optimiser step: model buffers, schedule."""
        return path.startswith("scheduler_state") or (path.startswith("model_state")
                                                     and tensor.data_ptr() not in param_ptrs)

    epoch_times: list[float] = []
    # Leaving: the write in flight is waited for first, then the snapshot's buffers are freed.
    with StateSnapshotter() as snapshotter, AsyncCheckpointer() as saver:
        for epoch in range(start_epoch, epochs + 1):
            epoch_start = time.monotonic()
            with gpu_oom_as_trial_error(cfg, device):
                # Between training steps: the previous epoch's background checkpoint, once durable,
                # is reported to Tune right there (from this thread).
                metrics = run.run_epoch(epoch, on_batch=saver.poll if background else None,
                                        before_update=saver.wait_filled if background else None)
            metrics["epoch_time_s"] = time.monotonic() - epoch_start
            if device.type == "cuda":
                metrics["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            saver.wait()  # the previous epoch reaches Tune (and takes its checkpoint index) before this save
            epoch_times.append(metrics["epoch_time_s"])
            log_epoch_progress(epoch, epochs, trial_id=ctx.get_trial_id(), metrics=metrics,
                               metric=cfg.tune.metric, epoch_times=epoch_times, study_dir=study_dir)
            state.history.append(dict(metrics))
            state.status = "completed" if epoch == epochs else "running"

            target = next_checkpoint_dir(storage)

            def write_state(status: str, epoch: int = epoch) -> None:
                write_json_atomic(trial_dir / TRIAL_STATE, {"status": status, "epoch": epoch, "seed": seed,
                                                            "history": state.history, "starts": starts})

            def publish(_saved: object = None, metrics: dict[str, Any] = metrics, status: str = state.status,
                        write_state: Callable[[str], None] = write_state, target: Path = target) -> None:
                """The epoch's checkpoint is durable: trial_state.json, the trial report, then Tune."""
                if next_checkpoint_dir(storage) != target:  # a report in between would misalign Tune's index
                    raise RuntimeError(f"checkpoint {target.name} is no longer the folder Tune registers next "
                                       f"({next_checkpoint_dir(storage).name}): not reporting it")
                write_state(status)
                write_trial_report(trial_dir, trial_id=ctx.get_trial_id(), metric=cfg.tune.metric, params=params)
                failpoints.pause("report")  # crash tests: the checkpoint is on disk, Tune has not seen it
                tune.report(metrics, checkpoint=registered())

            # The last epoch's checkpoint is never resumed from (a trial that trained all its epochs
            # is never trained again: outcome.completed_final_result), so it holds weights only
            # unless kept bests keep their optimiser state (issue 19: save only what can be kept).
            resume_state = ({"optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict()}
                            if saves_resume_state(epoch, epochs, keep_optimizer_state=cfg.retention.keep_optimizer_state)
                            else {})
            if not resume_state:
                logger.info("epoch %d is the trial's last: checkpoint %s holds weights only", epoch, target.name)
            trainer_state = {"epoch": epoch, "step": epoch * run.steps_per_epoch, "metrics": metrics,
                             "history": state.history, "params": params, "seed": seed, "metric": cfg.tune.metric}
            # The epoch's metrics reach trial_state.json before the save and Tune/MLflow even
            # when the save is refused (disk full): a failed save never loses a metric.
            on_failure = functools.partial(tune.report, dict(metrics))
            if not background:
                save_epoch_checkpoint(
                    target, study_dir, projected_bytes=projected, reclaim=reclaim, concurrent_saves=saves,
                    before_save=lambda: write_state("running"), on_failure=on_failure,
                    model_state=model.state_dict(), **resume_state, trainer_state=trainer_state, compat=compat,
                    rng_state=capture_rng_state(),
                )
                publish()
                continue
            try:
                prepare_epoch_save(target, study_dir, projected_bytes=projected, reclaim=reclaim,
                                   before_save=lambda: write_state("running"), concurrent_saves=saves)
            except BaseException:
                run_failure_hook(on_failure)
                raise
            stall = time.monotonic()
            # Weights and optimiser state only change at the next optimiser step (or FGM perturbation):
            # on CPU the writer copies them first, while the next batch runs forward and backward
            # (run_epoch's before_update waits for that copy); the rest is copied here.
            snapshot, fill = snapshotter.take_deferred(
                {"model_state": model.state_dict(), **resume_state}, copy_now=copy_now)
            saver.start(functools.partial(write_epoch_checkpoint, target, study_dir, projected_bytes=projected,
                                          **snapshot, trainer_state=copy.deepcopy(trainer_state), compat=compat,
                                          rng_state=capture_rng_state()),
                        fill=fill, on_durable=publish, on_failure=on_failure, label=f"{trial_dir.name}/{target.name}")
            logger.info("epoch %d: checkpoint %s snapshotted in %.3f s, writing in the background", epoch,
                        target.name, time.monotonic() - stall)
        saver.wait()  # the last epoch reaches Tune once its checkpoint is durable

    if finished and not plan.catch_up:
        # Restarted after its last epoch (e.g. killed before Tune recorded the end):
        # report the final result again; MLflow skips the step it already holds.
        tune.report(dict(state.history[-1]))
