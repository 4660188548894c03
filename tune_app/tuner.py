"""Tuner assembly, restore and signals: the only place that creates a ``tune.Tuner``.

* ``build_tuner``: OptunaSearch (seeded TPE, define-by-run space from ``searchspaces/``),
  ``tune.max_concurrent_trials`` (1 by default), the function trainable, our callbacks.
* ``restore_tuner``: ``Tuner.restore(study_dir, ...)`` with ``resume_unfinished`` and
  ``resume_errored``: the interrupted trial continues from its checkpoint and the
  Optuna state survives (and ``<study>/optuna.db`` catches up with it).
* ``run_study``: fit with SIGTERM forwarded as SIGINT (Tune only handles SIGINT), then
  tell complete from interrupted by counting finished trials (Tune returns normally
  on SIGINT, so ``fit()`` returning means nothing by itself).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tune_app import outcome
from tune_app.atomic_fs import atomic_storage_filesystem
from tune_app.config import MODE, AppConfig
from tune_app.object_store import storage_filesystem_for

logger = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    """How a study ended: trial counts and whether it is complete."""

    study_dir: Path
    num_samples: int
    terminated: int
    best_trial_id: str | None
    best_score: float | None
    #: (trial folder name, Tune's ``error.txt`` of it) for each trial that ended in ERROR:
    #: the study's copy, or the driver's staging copy when Tune could not sync it (full disk).
    failures: tuple[tuple[str, Path | None], ...] = ()
    #: Trials the early-stopping scheduler ended before their planned epochs (an outcome, not an error);
    #: ``terminated`` counts the finished ones only.
    stopped: int = 0
    #: Trials Tune's saved state still holds as running (their own files may say they ended):
    #: a resume must run them so their last results reach Tune and MLflow.
    pending_in_tune: int = 0
    #: The epoch of ``best_score`` in the best trial.
    best_epoch: int | None = None
    metric: str = "val_macro_f1"
    #: Trials started after Tune's last full save, named only by the trial journal (not counted
    #: above: a resume rejoins them).
    journaled_only: int = 0

    @property
    def errored(self) -> int:
        return len(self.failures)

    @property
    def ended(self) -> int:
        """Finished plus stopped early: trials that will never train again."""
        return self.terminated + self.stopped

    @property
    def interrupted(self) -> bool:
        return self.ended + self.errored < self.num_samples

    @property
    def complete(self) -> bool:
        return self.ended >= self.num_samples and self.errored == 0 and self.pending_in_tune == 0

    @property
    def best_line(self) -> str:
        """``best trial f33bdb02: val_macro_f1 0.8912 (epoch 7)`` (``no trial scored yet`` before any)."""
        from tune_app.tracking.progress import fmt

        if self.best_score is None:
            return "no trial scored yet"
        epoch = f" (epoch {self.best_epoch})" if self.best_epoch else ""
        return f"best trial {self.best_trial_id}: {self.metric} {fmt(self.best_score)}{epoch}"

    @property
    def counts_line(self) -> str:
        """``N finished, K stopped early, F failed``."""
        from tune_app.outcome import FAILED, FINISHED, STOPPED, summary_line

        return summary_line({FINISHED: self.terminated, STOPPED: self.stopped, FAILED: self.errored})


def trial_resources(cfg: AppConfig, available: dict[str, float],
                    largest_node: dict[str, float] | None = None) -> dict[str, float]:
    """CPUs and GPUs of one trial, checked against what Ray sees (``available``, the cluster's
    total) and, on a cluster, its largest node (``largest_node``: a trial runs on one node).

    ``tune.cpus_per_trial=all`` shares the CPUs equally among ``tune.max_concurrent_trials``
    trials (all of them when trials run one at a time), at most one node's;
    ``tune.gpus_per_trial=-1`` one GPU when there is one. A request Ray cannot meet is a
    ``ConfigError`` before ``fit()``, never a study waiting forever.
    """
    from tune_app.config import ConfigError

    node = largest_node or available
    have_cpus = float(available.get("CPU", 0.0))
    have_gpus = float(available.get("GPU", 0.0))
    node_cpus, node_gpus = float(node.get("CPU", have_cpus)), float(node.get("GPU", have_gpus))
    concurrent = cfg.tune.max_concurrent_trials
    if cfg.tune.cpus_per_trial == "all":
        cpus = have_cpus if concurrent == 1 else max(1.0, float(int(have_cpus // concurrent)))
        cpus = min(cpus, node_cpus)
    else:
        cpus = float(cfg.tune.cpus_per_trial)
    gpus = float(cfg.tune.gpus_per_trial)
    if gpus < 0:
        gpus = 1.0 if have_gpus >= 1 else 0.0
    if cpus > node_cpus:
        where = "here" if largest_node is None else "on any one node (a trial runs on one node)"
        raise ConfigError(f"tune.cpus_per_trial={cfg.tune.cpus_per_trial} but Ray sees {node_cpus:g} CPU(s) "
                          f"{where}: use tune.cpus_per_trial=all or a number <= {node_cpus:g}")
    if gpus > node_gpus:
        where = "here" if largest_node is None else "on any one node"
        raise ConfigError(f"tune.gpus_per_trial={cfg.tune.gpus_per_trial} but Ray sees {node_gpus:g} GPU(s) "
                          f"{where}: use tune.gpus_per_trial=-1 (one GPU when there is one) or 0")
    if cfg.train.device == "cuda" and gpus <= 0:
        why = (f"Ray sees {have_gpus:g} GPU(s) here" if have_gpus < 1
               else f"tune.gpus_per_trial={cfg.tune.gpus_per_trial} gives the trial none")
        raise ConfigError(f"train.device=cuda but {why}: use train.device=auto (CUDA when the trial has a GPU, "
                          "else CPU) or train.device=cpu")
    fits = min(int(have_cpus // cpus) if cpus else concurrent, int(have_gpus // gpus) if gpus else concurrent)
    if concurrent > 1 and fits < concurrent:
        logger.warning("tune.max_concurrent_trials=%d but Ray has room for %d trial(s) of %g CPU / %g GPU at "
                       "once: the others wait for a free slot", concurrent, fits, cpus, gpus)
    return {"cpu": cpus, "gpu": gpus}


def largest_node() -> dict[str, float] | None:
    """The CPUs and GPUs of the cluster's largest live node (``None`` with one node: the total says it)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return None
    return {key: max(float(n.get(key, 0.0)) for n in nodes) for key in ("CPU", "GPU")}


def check_resources(cfg: AppConfig) -> dict[str, float]:
    """Start (or join) Ray and check the trial's resource request against it (before any folder is made)."""
    import ray

    _ray_init(cfg)
    return trial_resources(cfg, ray.cluster_resources(), largest_node())


def make_trainable(cfg: AppConfig) -> Any:
    """The function trainable with the study config bound and resources attached.

    Also sets Tune's environment for the study (``_env_for_tune``), so a ``Tuner`` or
    ``Tuner.restore`` built around it by hand (the README's snippet) syncs like ours.
    """
    import ray
    from ray import tune

    from tune_app.trainable import train_trial

    _env_for_tune()
    initialized = ray.is_initialized()
    available = ray.cluster_resources() if initialized else {"CPU": float(os.cpu_count() or 1)}
    app_config = cfg.to_dict()
    # A relative storage path would name another folder in a Ray worker (its cwd is not ours).
    app_config["tune"]["storage_path"] = str(cfg.storage_dir)
    bound = tune.with_parameters(train_trial, app_config=app_config)
    return tune.with_resources(bound, trial_resources(cfg, available, largest_node() if initialized else None))


def make_callbacks(cfg: AppConfig) -> list[Any]:
    """Trial files, retention, storage pressure, MLflow (outage-tolerant) and study progress."""
    from tune_app.callbacks import RetentionCallback, StoragePressureCallback
    from tune_app.study import code_version
    from tune_app.tracking.mlflow_callback import ResumableMLflowLoggerCallback
    from tune_app.tracking.progress import ProgressCallback
    from tune_app.tracking.trial_files import StudyTrialFilesCallback

    retention = RetentionCallback.from_config(cfg)
    mlflow_cb = ResumableMLflowLoggerCallback(
        tracking_uri=cfg.tracking_uri,
        experiment_name=cfg.experiment_name,
        study_name=cfg.tune.name,
        study_dir=cfg.study_dir,
        buffer_warn_mb=cfg.tracking.buffer_warn_mb, close_timeout_s=cfg.tracking.close_timeout_s,
        # tune_app.seed: the study's seed on the study run; each trial run gets the seed it trained with.
        extra_tags={"tune_app.seed": str(cfg.seed), "tune_app.seed_policy": cfg.train.seed_policy,
                    "tune_app.model": cfg.model.name, "tune_app.dataset": cfg.data.name,
                    **{f"tune_app.{k}": v for k, v in code_version().items()}},
        metric=cfg.tune.metric, num_samples=cfg.tune.num_samples,
        study_seed=cfg.seed, seed_policy=cfg.train.seed_policy,
        study_params={"num_samples": cfg.tune.num_samples, "max_epochs": cfg.tune.max_epochs,
                      "metric": cfg.tune.metric, "mode": MODE, "searchspace": cfg.searchspace,
                      "scheduler": cfg.tune.scheduler, "sampler_seed": cfg.tune.sampler_seed,
                      "seed": cfg.seed, "seed_policy": cfg.train.seed_policy, "model": cfg.model.name,
                      "dataset": cfg.data.name},
    )
    from tune_app.callbacks import MirrorCallback
    from tune_app.object_store import study_mirror
    from tune_app.state_sync import TrimEndedTrialState

    mirror = study_mirror(cfg)
    return [
        StudyTrialFilesCallback(),
        TrimEndedTrialState(cfg.tune.metric),
        retention,
        StoragePressureCallback.from_config(cfg, retention),
        mlflow_cb,
        ProgressCallback(num_samples=cfg.tune.num_samples, metric=cfg.tune.metric,
                         study_dir=cfg.study_dir, mlflow_callback=mlflow_cb, max_epochs=cfg.tune.max_epochs),
        # last: the bucket gets what every callback above wrote for this event
        *([MirrorCallback(mirror)] if mirror is not None else []),
    ]


def _ray_init(cfg: AppConfig) -> None:
    import ray

    from tune_app.tracking.dashboard import log_to_ray_session, name_trial_tasks

    # Trial tasks carry the trial, its epoch and score (the dashboard's task list).
    name_trial_tasks(metric=cfg.tune.metric, max_epochs=cfg.trial_epochs)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # A reused worker waits this long for the last trial's thread to end (after its final
    # report: cleanup, logs); Tune's 2 s default made a loaded machine start a new worker.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    from tune_app.logs import quiet_library_console, verbose

    loud = verbose()
    if not loud:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its verbose=0 still prints a config table
        # Its notice that the local cluster uses a token (printed before any handler of ours can see it).
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    check_reachable(cfg.tune.address)
    context = ray.init(
        address=cfg.tune.address,
        # On an existing cluster the workers do not inherit this process's environment.
        runtime_env={"env_vars": worker_env()} if cfg.tune.address else None,
        include_dashboard=cfg.tune.include_dashboard,
        dashboard_host=os.environ.get("TUNE_APP_DASHBOARD_HOST", "127.0.0.1"),
        # Quiet (the default): Ray's records go through our logging (study log; console at
        # ERROR); the workers print only warnings and errors (jsonlog's console filter), the
        # rest stays in their logs (trial.jsonl, Ray's session logs).
        configure_logging=loud,
        logging_level=logging.INFO if loud else logging.WARNING,
        log_to_driver=True,
    )
    if not loud:
        # Ray's records go to ours: the study's JSON log, and the quiet console rule.
        logging.getLogger("ray").propagate = True
        quiet_library_console("ray")
    session_dir = getattr(context, "address_info", {}).get("session_dir")
    if session_dir:
        log_to_ray_session(session_dir)  # the dashboard's Logs page lists it
    url = getattr(context, "dashboard_url", None)
    if cfg.tune.include_dashboard and url:
        print(dashboard_hint(str(url), os.environ.get("RAY_AUTH_MODE")), flush=True)


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """A ``host:port`` / ``ray://host:port`` cluster answers on its port, else a ``ConfigError``
    at once (Ray itself retries an unreachable address for minutes). ``auto``: Ray's own error."""
    import socket

    from tune_app.config import ConfigError

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        start = ("ray start --head --ray-client-server-port=10001" if address.startswith("ray://")
                 else "ray start --head --port=6379")
        raise ConfigError(f"tune.address={address}: no Ray cluster answers there ({exc.strerror or exc}). Start "
                          f"one (`{start}` on the head node), check host and port, or drop tune.address to run "
                          "on a local Ray") from None


#: Environment the trial workers need (set here by ``_ray_init`` / ``_env_for_tune`` before Ray starts).
_WORKER_ENV_PREFIXES = ("TUNE_", "RAY_CHDIR_TO_TRIAL_DIR")


def worker_env() -> dict[str, str]:
    """The ``TUNE_*`` / ``TUNE_APP_*`` settings of this process, for workers on an existing cluster."""
    return {k: v for k, v in os.environ.items() if k.startswith(_WORKER_ENV_PREFIXES)}


def dashboard_hint(url: str, auth_mode: str | None) -> str:
    """Where the Ray dashboard is and how to get in (Ray 2.60 asks for a token by default)."""
    address = url if url.startswith("http") else f"http://{url}"
    if (auth_mode or "").lower() == "disabled":
        return f"Ray dashboard: {address} (token authentication off: RAY_AUTH_MODE=disabled; trusted hosts only)"
    return (f"Ray dashboard: {address}; it asks for a token: paste the contents of ~/.ray/auth_token "
            "(on a trusted host, start with RAY_AUTH_MODE=disabled to turn that off). Remote machine: "
            f"ssh -L {address.rsplit(':', 1)[-1]}:127.0.0.1:{address.rsplit(':', 1)[-1]} <host>")


def _env_for_tune() -> None:
    """Tune's state syncs at bounded cost (see ``state_sync`` and docs/architecture.md):
    on its own adaptive period (~5 % of the time), not after each checkpoint; a new trial is
    named by a line of the trial journal (the first of each start by a full sync); a rewrite
    re-encodes only the trials that changed; each trial's entry keeps only its best and
    latest checkpoint, with only the score of each."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    # Trial files go straight to the study (tracking.trial_files), not through each sync.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from tune_app import state_sync

    state_sync.sync_state_when_trial_added()
    state_sync.no_forced_sync_per_checkpoint()
    state_sync.encode_state_incrementally()
    state_sync.new_trials_follow_moved_study()
    state_sync.failed_restore_is_fatal()
    state_sync.journaled_trials_rejoin_on_restore()


def make_scheduler(cfg: AppConfig) -> Any:
    """``tune.scheduler``: FIFO, or Tune's ASHA / median stopping rule made durable (issue 12)."""
    from tune_app.early_stopping import make_scheduler as _make

    return _make(cfg)


def tune_verbosity(cfg: AppConfig) -> int:
    """Tune's own console output: ``tune.verbose`` with ``-v``, else none (our lines replace it)."""
    from tune_app.logs import verbose

    return cfg.tune.verbose if verbose() else 0


def build_tuner(cfg: AppConfig) -> Any:
    """A new ``Tuner`` for ``cfg`` (the study folder must have been prepared)."""
    import optuna
    from ray import tune

    from searchspaces import load_space, space_settings
    from tune_app.search import EarlyStopAwareOptunaSearch

    _env_for_tune()
    from tune_app.logs import verbose

    if not verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory..."
    space = load_space(cfg.searchspace, **space_settings(cfg))
    # constant_liar: with trials running at once, TPE treats each running trial as a bad result
    # at its point, so the next proposals spread out instead of piling onto the running ones.
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.sampler_seed, n_startup_trials=cfg.tune.n_startup_trials,
                                         constant_liar=True)
    # study_name: also the name of the study's Optuna DB (<study>/optuna.db, tune_app.optuna_store).
    search = EarlyStopAwareOptunaSearch(space=space, metric=cfg.tune.metric, mode=MODE, sampler=sampler,
                                        max_epochs=cfg.tune.max_epochs, study_name=cfg.tune.name)
    return tune.Tuner(
        make_trainable(cfg),
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=make_scheduler(cfg),
            metric=cfg.tune.metric,
            mode=MODE,
            num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            reuse_actors=cfg.tune.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=cfg.tune.name,
            storage_path=str(cfg.storage_dir),
            # Tune's state files are rewritten at every sync: atomically, so a kill never tears one.
            storage_filesystem=storage_filesystem_for(cfg),
            callbacks=make_callbacks(cfg),
            # Tune's bookkeeping keeps each trial's best and latest checkpoint entry
            # (num_to_keep=1), so its state stays small (the sync Tune would force after
            # each checkpoint is off: state_sync.no_forced_sync_per_checkpoint). It never
            # deletes checkpoint bytes: the study filesystem ignores
            # its deletes (atomic_fs); RetentionCallback alone decides which bytes stay
            # (and keeps pruned folders as tombstones so Tune's saved state resolves).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=cfg.tune.metric,
                checkpoint_score_order=MODE,
            ),
            # A retried attempt resumes from the trial's newest valid checkpoint (the trainable's plan).
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            verbose=tune_verbosity(cfg),
        ),
    )


def restore_tuner(cfg: AppConfig) -> Any:
    """``Tuner.restore`` of ``cfg``'s study: unfinished and errored trials resume."""
    from ray import tune

    _env_for_tune()
    tuner = tune.Tuner.restore(
        str(cfg.study_dir),
        trainable=make_trainable(cfg),
        resume_unfinished=True,
        resume_errored=True,
        storage_filesystem=storage_filesystem_for(cfg),
    )
    # tuner.pkl holds the callbacks of the folder's first location (MLflow store, study
    # paths): a moved study gets them rebuilt for where it is now.
    local = tuner._local_tuner
    assert local is not None, "Tuner.restore without a local tuner (Ray changed?)"
    local.get_run_config().callbacks = make_callbacks(cfg)
    local.get_run_config().verbose = tune_verbosity(cfg)  # this command's -v, not the first one's
    # The Optuna DB catches up with the searcher state this restore resumes (also for a finished
    # study, which fit() never saves again), in the folder the study is in now.
    from tune_app.optuna_store import sync_from_saved_state

    sync_from_saved_state(cfg.study_dir)
    return tuner


def has_tune_state(study_dir: Path) -> bool:
    """Whether Tune saved the study's state (``experiment_state-*.json``): only then did a trial run.

    Tune writes ``tuner.pkl`` when ``fit()`` starts and its experiment state at the first
    sync, which ``state_sync`` forces (and waits for) before the first trial starts.
    """
    return study_dir.is_dir() and any(study_dir.glob("experiment_state-*.json"))


def can_restore(study_dir: Path) -> bool:
    """``Tuner.restore`` will work: Tune's ``tuner.pkl`` and its saved experiment state are there."""
    from ray import tune

    return has_tune_state(study_dir) and bool(
        tune.Tuner.can_restore(str(study_dir), storage_filesystem=atomic_storage_filesystem()))


def check_tune_state_readable(study_dir: Path) -> None:
    """The experiment state ``Tuner.restore`` will read (the newest) is JSON; else a ``ConfigError``.

    Tune writes it atomically (``atomic_fs``), so only a hand edit or a bad copy tears it;
    restoring from it would fail with a traceback.
    """
    import json

    from tune_app.config import ConfigError

    states = sorted(study_dir.glob("experiment_state-*.json"))
    if not states:
        return
    newest = states[-1]
    try:
        json.loads(newest.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        older = f" or move it aside to resume from the older {states[-2].name}" if len(states) > 1 else ""
        raise ConfigError(f"resume={study_dir}: Tune's saved state {newest.name} is unreadable ({exc}). Restore "
                          f"it from a backup{older}; the study's trials were not touched") from None


def discard_unstarted_tune_files(study_dir: Path) -> list[str]:
    """Remove what Tune wrote before a kill that came before its first state sync.

    Only ``tuner.pkl`` (and its ``.tmp`` leftovers) can be there: no trial has started (see
    :func:`has_tune_state`), so the study starts afresh from its saved config.
    """
    removed = []
    for path in [study_dir / "tuner.pkl", *study_dir.glob(".tuner.pkl.tmp-*")]:
        if path.exists():
            path.unlink()
            removed.append(path.name)
    return removed


@contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """Forward SIGTERM as SIGINT so Tune stops cleanly (saving state) instead of dying."""

    def forward(signum: int, frame: FrameType | None) -> None:
        logger.warning("SIGTERM received: stopping the study cleanly (like Ctrl-C)")
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tune_trials(result_grid: Any) -> list[Any]:
    """Tune's ``Trial`` objects behind a ``ResultGrid``, in the grid's order (``[]`` if unknown).

    After ``fit()`` these are the controller's in-memory trials, so their status is
    right even when Tune's final state sync failed (a full disk) and the error files
    never reached the study folder, where ``Result.error`` looks for them.
    """
    analysis = getattr(result_grid, "_experiment_analysis", None)
    trials = list(getattr(analysis, "trials", None) or [])
    return trials if len(trials) == len(result_grid) else []


def _error_file(trial: Any) -> Path | None:
    """The study's copy of the trial's ``error.txt``, else the driver's staging copy."""
    name = getattr(getattr(trial, "run_metadata", None), "error_filename", None) or "error.txt"
    candidates = [Path(trial.path) / name] if getattr(trial, "path", None) else []
    if getattr(trial, "error_file", None):
        candidates.append(Path(trial.error_file))
    return next((c for c in candidates if c.is_file()), None)


def summarise(result_grid: Any, cfg: AppConfig) -> StudyOutcome:
    """Count finished, stopped-early and failed trials and find the best one, from Tune's results.

    Each trial's outcome comes from ``tune_app.outcome.classify``: Tune's ERROR is a failure;
    ``trial_state.json`` tells a trial stopped early (Tune marks its last result ``done`` as
    well); else its epochs against its planned epochs (not Tune's status: after a SIGINT its
    in-memory trials read TERMINATED too).
    """

    trials = _tune_trials(result_grid)
    terminated = stopped = 0
    failures: list[tuple[str, Path | None]] = []
    best_id, best, best_ep = None, None, None
    for i, result in enumerate(result_grid):
        metrics = result.metrics or {}
        trial = trials[i] if trials else None
        errored = (trial is not None and outcome.tune_failed(trial.status)) or result.error is not None
        state = outcome.read_trial_state(result.path) if getattr(result, "path", None) else {}
        kind = outcome.classify(errored=errored, state=state, last_epoch=metrics.get("epoch"),
                                planned=outcome.planned_epochs(getattr(result, "config", None), cfg.tune.max_epochs),
                                done=bool(metrics.get("done")))
        if kind == outcome.FAILED:
            failures.append((Path(result.path).name, _error_file(trial) if trial is not None
                             else Path(result.path) / "error.txt"))
        elif kind == outcome.FINISHED:
            terminated += 1
        elif kind == outcome.STOPPED:
            stopped += 1
        # The trial's best epoch (as the study report), not its last one.
        score, epoch = outcome.best_epoch([*state.get("history", []), metrics], cfg.tune.metric)
        if score is not None and (best is None or score > best):
            best, best_id, best_ep = score, metrics.get("trial_id"), epoch
    return StudyOutcome(study_dir=cfg.study_dir, num_samples=cfg.tune.num_samples, terminated=terminated,
                        best_trial_id=best_id, best_score=best, failures=tuple(failures), stopped=stopped,
                        best_epoch=best_ep, metric=cfg.tune.metric)


def run_study(cfg: AppConfig, *, resume: bool) -> StudyOutcome:
    """Start (or restore) the study and fit it to the end or to an interruption."""
    _ray_init(cfg)
    tuner = restore_tuner(cfg) if resume else build_tuner(cfg)
    with sigterm_as_sigint():
        results = tuner.fit()
    return summarise(results, cfg)


def study_status(cfg: AppConfig) -> StudyOutcome:
    """Outcome of a saved study without running anything (restore + ``get_results``).

    A trial whose own files say it ended, but which Tune's saved state still holds as
    running (killed after its last epoch, before Tune took that result), keeps the study
    from counting as complete: the resume must run it, so its last results reach Tune and
    MLflow (the trainable reports them again). ``journaled_only`` counts the trials only the
    trial journal names (the restore adds them; ``state_sync.journaled_trials_rejoin_on_restore``).
    """
    from tune_app import trial_journal

    _ray_init(cfg)
    results = restore_tuner(cfg).get_results()
    summary = summarise(results, cfg)
    trials = _tune_trials(results)
    unseen = [t for t in trials if not outcome.tune_ended(t.status)]
    known = {t.trial_id for t in trials} | {r.metrics.get("trial_id") for r in results if r.metrics}
    journaled = {r.trial_id for r in trial_journal.read(cfg.study_dir)} - known
    return dataclasses.replace(summary, pending_in_tune=len(unseen), journaled_only=len(journaled))
