"""When Tune saves the study's state: bounded cost, and never behind a started trial.

Tune rewrites its whole experiment state (every trial's entry, the searcher, the
callbacks) at each sync. Syncing at every controller step (``TUNE_GLOBAL_CHECKPOINT_S=0``)
made that hundreds of rewrites per trial, each growing with the number of trials:
quadratic I/O over a 1000-trial study. Instead (set up by ``tuner._env_for_tune``):

* when a trial is added, before its actor starts, one fsynced line in the study's trial
  journal (``trial_journal``; the first trial of each start gets a full sync, waited for,
  instead: :func:`sync_state_when_trial_added`), so a kill before the new trial's first
  checkpoint cannot lose it: on resume it rejoins Tune's trials and the searcher
  (:func:`journaled_trials_rejoin_on_restore`) and continues under its own id and folder
  instead of being sampled again as a second trial next to an orphaned folder and MLflow run;
* Tune's own adaptive period (``auto``: syncing takes about 5 % of the time, at least 10 s
  apart), and its final sync when the study ends or is interrupted;
* **no** forced sync after each reported checkpoint (:func:`no_forced_sync_per_checkpoint`;
  Tune forces one when ``CheckpointConfig(num_to_keep)`` is set). A trial's own folder is
  the record of its checkpoints: on resume it continues from its newest valid checkpoint on
  disk and reports to Tune the epochs its saved state missed (``checkpoints.resume``);
  the scheduler's decisions are saved by the scheduler itself (``early_stopping``).
* each rewrite re-encodes only the trials that changed since the last one, and writes the
  state once, straight into the study folder (:func:`encode_state_incrementally`), instead
  of into Tune's staging folder and then copied.

So a study's full state is rewritten on Tune's adaptive period (about 5 % of the time), not
once per trial; adding a trial costs one journal line whatever the size of the study; and a
rewrite costs one durable write of the state file, not an encoding of every trial ever run
and a copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune_app import outcome
from tune_app.checkpoints.store import TMP_PREFIX

logger = logging.getLogger(__name__)

_MARK = "_tune_app_syncs_on_add"


def sync_state_when_trial_added() -> None:
    """Before a new trial's actor starts, something durable names it: the journal, or Tune's saved state.

    Tune offers no hook for this, so ``TuneController._schedule_trial_actor`` is wrapped
    (once per process): for a trial that has no folder name yet (a new one, not a restored
    one), the name is chosen first (``Trial.init_local_path``, which Tune calls right after
    anyway), then :func:`journal_new_trial` appends it to the study's trial journal (one fsynced
    line). Where it cannot (the controller has not saved its full state in this study yet, a
    remote study, a searcher that cannot adopt, a failed write), the controller's whole state
    is synced at once and waited for; an object-store study then puts that record into its
    bucket (:func:`before_new_trial_starts`). So a trial folder, checkpoint or MLflow run never exists
    unless Tune's saved state or the journal names its trial and folder, and a study with no
    saved state has run nothing (``resume=`` can then start it afresh). A Ray upgrade that
    renames either method fails ``tests/integration/test_state_sync.py``.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController._schedule_trial_actor, _MARK, False):
        return
    original = TuneController._schedule_trial_actor

    @functools.wraps(original)
    def schedule_trial_actor(self: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(trial, "relative_logdir", None):
            trial.init_local_path()
            if not journal_new_trial(self, trial):
                self.checkpoint(force=True, wait=True)
            before_new_trial_starts(self)
        return original(self, trial, *args, **kwargs)

    setattr(schedule_trial_actor, _MARK, True)
    TuneController._schedule_trial_actor = schedule_trial_actor  # type: ignore[method-assign]


def before_new_trial_starts(controller: Any) -> None:
    """Once the journal or Tune's saved state names a new trial, and before its actor starts:
    each of the controller's callbacks that has ``before_new_trial_starts`` runs it.

    For an object-store study that is ``callbacks.MirrorCallback``, which puts the journal (or
    the state) into the bucket, so the bucket never holds a trial folder its own state and
    journal do not name (a machine lost right after would resume with the trial sampled again
    beside an orphan).
    """
    for callback in getattr(controller._callbacks, "_callbacks", ()):
        hook = getattr(callback, "before_new_trial_starts", None)
        if callable(hook):
            hook()


#: Per controller that saved its full state into its (local) study in this process: the
#: trials journaled since. Only these journal new trials (the first trial of each start is
#: saved in full, which also removes an older journal, so a torn line is never appended to).
_journaled_since_save: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
#: At most this many trials between two full saves: a new trial past it gets a full save.
#: Tune's adaptive period alone can grow to a minute (it is 19x the last save, the Optuna DB
#: catch-up included): up to hundreds of short trials, each of which ``resume=`` would run
#: again (to report the epochs Tune missed) after a kill. 20 keeps that to seconds on the
#: smallest setting, and the full rewrite it forces costs under 10 ms per trial at 1000 trials.
JOURNAL_MAX_TRIALS = 20


def searcher_chain(search_alg: Any) -> list[Any]:
    """Tune's search algorithm and the searchers it wraps, outermost first
    (``SearchGenerator`` > ``ConcurrencyLimiter`` > the study's searcher)."""
    chain = [search_alg]
    for _ in range(8):  # Tune's wrappers nest two or three deep
        inner = getattr(chain[-1], "searcher", None)
        if inner is None:
            break
        chain.append(inner)
    return chain


def journal_new_trial(controller: Any, trial: Any) -> bool:
    """Append ``trial`` (just added, folder named, not started) to the study's trial journal.

    False when it cannot be journaled (see :func:`sync_state_when_trial_added`), or when
    :data:`JOURNAL_MAX_TRIALS` trials were journaled since the last full save: the caller
    saves Tune's whole state instead.
    """
    from tune_app import trial_journal

    study = local_experiment_dir(controller._storage)
    chain = searcher_chain(controller._search_alg)
    entry = getattr(chain[-1], "journal_entry", None)
    since = _journaled_since_save.get(controller)
    if study is None or since is None or since >= JOURNAL_MAX_TRIALS or not callable(entry):
        return False
    searcher = entry(trial.trial_id)
    if searcher is None:
        return False
    searcher["counter"] = getattr(chain[0], "_counter", None)
    try:
        trial_journal.append(study, trial_journal.JournaledTrial(
            trial_id=trial.trial_id, tune_entry=trial.get_json_state(), searcher=searcher))
    except OSError as exc:
        logger.warning("could not journal trial %s in %s (%s): saving Tune's whole state instead", trial.trial_id,
                       study, exc)
        return False
    _journaled_since_save[controller] = since + 1
    return True


_MOVED_MARK = "_tune_app_follows_moved_study"


def new_trials_follow_moved_study() -> None:
    """After ``Tuner.restore`` of a moved study, new trials go to its new location.

    Tune saves the searcher's ``Experiment`` (with the storage path of the study's first
    location) in ``search_gen_state-*.json`` and makes every later trial from it; restored
    trials get the new path, but trials sampled after the restore would be written under the
    old one (or fail when it is gone). ``TuneController.resume`` is wrapped (once per
    process) to point the restored experiment at the controller's own storage.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController.resume, _MOVED_MARK, False):
        return
    original = TuneController.resume

    @functools.wraps(original)
    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        experiment: Any = getattr(self._search_alg, "_experiment", None)
        old = getattr(experiment, "storage", None)
        if old is not None and old.experiment_fs_path != self._storage.experiment_fs_path:
            storage = copy.copy(self._storage)
            experiment.storage = storage
            experiment.spec["storage"] = storage
        return out

    setattr(resume, _MOVED_MARK, True)
    TuneController.resume = resume  # type: ignore[method-assign]


_FATAL_MARK = "_tune_app_failed_restore_is_fatal"


def failed_restore_is_fatal() -> None:
    """A ``Tuner.restore`` that cannot read the study's state raises; it never starts afresh.

    Tune logs "Failed to restore the run state" and then starts a new experiment in the same
    folder (unless ``fail_fast``): a second ``experiment_state-*.json`` beside the study's own,
    trials sampled from an empty searcher, and a study that later resumes from the wrong
    state. ``TuneController.resume`` is wrapped (once per process) so the controller re-raises
    its error, leaving the study as it was.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController.resume, _FATAL_MARK, False):
        return
    original = TuneController.resume

    @functools.wraps(original)
    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        fail_fast = self._fail_fast
        self._fail_fast = True  # read by TuneController.__init__ when resume raises
        out = original(self, *args, **kwargs)
        self._fail_fast = fail_fast
        return out

    setattr(resume, _FATAL_MARK, True)
    TuneController.resume = resume  # type: ignore[method-assign]


_NO_FORCE_MARK = "_tune_app_no_forced_sync_per_checkpoint"


def no_forced_sync_per_checkpoint() -> None:
    """Tune no longer forces a state sync after every reported checkpoint.

    With ``CheckpointConfig(num_to_keep)`` set, Tune's ``_ExperimentCheckpointManager``
    forces a full state rewrite after every ``num_to_keep`` checkpoints of a trial, so
    that its saved state names the trial's newest checkpoint. Here that is redundant (a
    resumed trial takes its newest valid checkpoint from its own folder, see the module)
    and was one of the two full rewrites per trial. ``TuneController._create_checkpoint_manager``
    is wrapped (once per process) to turn that off; the adaptive period and the sync when a
    trial is added stay.
    """
    from ray.tune.execution.tune_controller import TuneController

    if getattr(TuneController._create_checkpoint_manager, _NO_FORCE_MARK, False):
        return
    original = TuneController._create_checkpoint_manager

    @functools.wraps(original)
    def create_checkpoint_manager(self: Any) -> Any:
        manager = original(self)
        manager._sync_every_n_trial_checkpoints = None
        return manager

    setattr(create_checkpoint_manager, _NO_FORCE_MARK, True)
    TuneController._create_checkpoint_manager = create_checkpoint_manager  # type: ignore[method-assign]


_ENCODE_MARK = "_tune_app_encodes_incrementally"
#: Per controller: trial id -> (Tune's cached ``(state_json, runtime_json)``, its encoding).
_encoded: weakref.WeakKeyDictionary[Any, dict[str, tuple[Any, str]]] = weakref.WeakKeyDictionary()


def encode_trial_data(entries: dict[str, Any], memo: dict[str, tuple[Any, str]]) -> str:
    """The JSON array of Tune's trial entries, reusing the encoding of unchanged ones.

    ``entries`` is ``TuneController._get_trial_checkpoints()``: trial id -> the pair of JSON
    strings Tune caches per trial (a new pair object whenever the trial changed). ``memo``
    is updated in place and keeps only the current trials.
    """
    parts = []
    for trial_id, pair in entries.items():
        held = memo.get(trial_id)
        if held is None or held[0] is not pair:
            held = (pair, json.dumps(list(pair)))
            memo[trial_id] = held
        parts.append(held[1])
    for gone in memo.keys() - entries.keys():
        del memo[gone]
    return "[" + ", ".join(parts) + "]"


def local_experiment_dir(storage: Any) -> Path | None:
    """The study folder when Tune writes it through the study's local filesystem (``atomic_fs``), else None."""
    from tune_app.atomic_fs import AtomicLocalFileSystem

    handler = getattr(getattr(storage, "storage_filesystem", None), "handler", None)
    if isinstance(getattr(handler, "fs", None), AtomicLocalFileSystem):
        return Path(storage.experiment_fs_path)
    return None


def write_state_files(study: Path, write: Any, final_last: str) -> None:
    """Run ``write(folder)``, which writes Tune's state files, and move them into ``study`` durably.

    The files are written in a ``tmp-state-*`` folder inside the study (a kill leaves only
    that temp, which ``resume=`` removes), fsynced, and renamed into the study one by one,
    ``final_last`` (the experiment state) last.
    """
    from tune_app.study import fsync_path

    scratch = study / f"{TMP_PREFIX}state-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        write(scratch)
        names = sorted((p.name for p in scratch.iterdir() if p.is_file() and not p.name.startswith((".", TMP_PREFIX))),
                       key=lambda name: name == final_last)
        for name in names:
            fsync_path(scratch / name)
            os.replace(scratch / name, study / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sync_optuna_db(search_alg: Any, study: Path) -> None:
    """Once Tune's state is in ``study``, the searcher mirrors its Optuna study there (``optuna.db``).

    ``search_alg`` is Tune's wrapper (``SearchGenerator`` > ``ConcurrencyLimiter`` > searcher);
    a searcher without ``sync_optuna_db`` (not ours) is left alone. Never raises.
    """
    sync = getattr(searcher_chain(search_alg)[-1], "sync_optuna_db", None)
    if callable(sync):
        sync(study)


_staging_dropped: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _drop_ended_trials_staging(controller: Any) -> None:
    """Remove the empty staging folder of each ended trial (once per trial)."""
    done = _staging_dropped.setdefault(controller, set())
    for trial in controller._trials:
        if trial.trial_id in done or not outcome.tune_ended(trial.status):
            continue
        done.add(trial.trial_id)
        # not empty (an error file), already gone, or no folder yet: it stays
        with contextlib.suppress(OSError, TypeError):
            os.rmdir(trial.local_path)


def encode_state_incrementally() -> None:
    """Tune's state rewrite re-encodes only the trials that changed, and writes the study once.

    ``TuneController.save_to_dir`` ``json.dump``s every trial's entry (two JSON strings,
    escaped again) at every sync into a staging folder, which Tune's syncer then copies
    into the study (through ``atomic_fs``: a second write and an fsync): at 1000 trials about
    11 MB escaped, written twice and copied, per rewrite. It is replaced (once per process) by
    the same JSON document, byte for byte, built from each trial's cached encoding; for a
    local study the experiment state and the searcher's files are written straight into the
    study folder, atomically and fsynced (:func:`write_state_files`), and only the callbacks'
    state goes through the staging folder. Any other storage keeps Tune's staging and upload.
    A Ray upgrade that changes the format fails ``tests/test_state_sync_unit.py``.
    """
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.utils.serialization import TuneFunctionEncoder

    from tune_app import trial_journal

    if getattr(TuneController.save_to_dir, _ENCODE_MARK, False):
        return

    @functools.wraps(TuneController.save_to_dir)
    def save_to_dir(self: Any) -> None:
        memo = _encoded.setdefault(self, {})
        trial_data = encode_trial_data(self._get_trial_checkpoints(), memo)
        runner_data = json.dumps(self.__getstate__(), cls=TuneFunctionEncoder)
        stats = json.dumps({"start_time": self._start_time})
        document = f'{{"trial_data": {trial_data}, "runner_data": {runner_data}, "stats": {stats}}}'
        name = self.experiment_state_file_name

        def write(folder: Path) -> None:
            with open(folder / name, "w") as f:
                f.write(document)
            self._search_alg.save_to_dir(str(folder), session_str=self._session_str)

        staging = Path(self._storage.experiment_driver_staging_path)
        staging.mkdir(parents=True, exist_ok=True)
        study = local_experiment_dir(self._storage)
        if study is not None:
            try:
                write_state_files(study, write, final_last=name)
            except OSError as exc:  # a full disk (bytes or inodes): as a failed upload in Tune, not fatal
                logger.warning("could not save Tune's state in %s (%s); the study keeps its previous state, which "
                               "a resume starts from", study, exc)
                return
            _journaled_since_save[self] = 0
            trial_journal.clear(study)  # the state just saved names every journaled trial
            sync_optuna_db(self._search_alg, study)  # never ahead of the state just saved
            # After a restore Tune's staging folder holds copies of the study's root files
            # (old state, progress.json): its syncer would copy them back over the live ones
            # at every sync. Only the callbacks' state (written next) goes through it.
            for stale in staging.glob("*"):
                if stale.is_file() and stale.suffix in (".json", ".pkl"):
                    stale.unlink(missing_ok=True)
            # Tune makes an (empty) staging folder per trial and its syncer walks them all at
            # every sync: an ended trial's empty one goes (one with an error file stays).
            _drop_ended_trials_staging(self)
        else:
            write(staging)
        self._callbacks.save_to_dir(str(staging), session_str=self._session_str)

    setattr(save_to_dir, _ENCODE_MARK, True)
    TuneController.save_to_dir = save_to_dir  # type: ignore[method-assign]

_REJOIN_MARK = "_tune_app_journaled_trials_rejoin"
#: Per restoring controller: the journaled trials merged into the restored trials, to adopt.
_rejoining: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def merge_journal(trial_data: list[Any], journal: list[Any]) -> list[Any]:
    """The journaled trials (``trial_journal.JournaledTrial``) that ``trial_data`` (Tune's saved
    trial entries) lacks, in journal order, each once."""
    known = {json.loads(state).get("trial_id") for state, _ in trial_data}
    missing = []
    for record in journal:
        if record.trial_id not in known:
            known.add(record.trial_id)
            missing.append(record)
    return missing


def adopt_journaled_trials(search_alg: Any, records: list[Any]) -> None:
    """The searcher chain takes back the journaled trials Tune restored (in the order sampled):
    the study's searcher its Optuna trial and sampler state, the concurrency limiter its live
    trial, ``SearchGenerator`` its trial count (so ``num_samples`` still counts them)."""
    chain = searcher_chain(search_alg)
    adopt = getattr(chain[-1], "adopt", None)
    for record in records:
        if callable(adopt):
            adopt(record.trial_id, record.searcher)
        for wrapper in chain[1:-1]:
            live = getattr(wrapper, "live_trials", None)
            if getattr(wrapper, "_limit_concurrency", False) and isinstance(live, set) \
                    and record.trial_id not in live:
                live.add(record.trial_id)
                wrapper.num_unfinished_live_trials += 1
        counter = record.searcher.get("counter")
        if isinstance(counter, int) and counter > getattr(chain[0], "_counter", counter):
            chain[0]._counter = counter


def journaled_trials_rejoin_on_restore() -> None:
    """``Tuner.restore`` also restores the trials only the trial journal names (``trial_journal``).

    ``TuneController._restore_trials`` is wrapped (once per process) to add, to the trials of
    Tune's newest saved state, the journaled ones it lacks (their entries as they were when
    added: PENDING, folder named), and ``TuneController.resume`` to have the searcher chain adopt
    them once it is restored (:func:`adopt_journaled_trials`). Each then resumes like any
    unfinished trial: in its own folder, from its newest valid checkpoint, reporting the epochs
    Tune's state missed (``checkpoints.resume``), or reporting its final result again when it
    had finished.
    """
    from ray.tune.execution.tune_controller import TuneController

    from tune_app import trial_journal

    if getattr(TuneController.resume, _REJOIN_MARK, False):
        return
    original_restore, original_resume = TuneController._restore_trials, TuneController.resume

    @functools.wraps(original_restore)
    def restore_trials(self: Any, experiment_state: dict[str, Any]) -> Any:
        study = local_experiment_dir(self._storage)
        records = trial_journal.read(study) if study is not None else []
        missing = merge_journal(experiment_state["trial_data"], records)
        if missing:
            experiment_state = {**experiment_state,
                                "trial_data": [*experiment_state["trial_data"], *(r.tune_entry for r in missing)]}
            _rejoining[self] = missing
            logger.info("%d trial(s) added after Tune's last saved state rejoin the study from %s: %s",
                        len(missing), trial_journal.JOURNAL_FILE, ", ".join(r.trial_id for r in missing))
        return original_restore(self, experiment_state)

    @functools.wraps(original_resume)
    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original_resume(self, *args, **kwargs)
        adopt_journaled_trials(self._search_alg, _rejoining.pop(self, []))
        return out

    setattr(resume, _REJOIN_MARK, True)
    TuneController._restore_trials = restore_trials  # type: ignore[method-assign]
    TuneController.resume = resume  # type: ignore[method-assign]


class TrimEndedTrialState(Callback):
    """Shrinks each ended trial's entry in Tune's saved state to what is still read.

    Tune keeps, per trial and per numeric metric ever reported, running statistics
    (``metric_analysis``) and the last 5 and 10 values (``metric_n_steps``): about 9 KB of
    the ~21 KB each trial adds to every state rewrite. Once a trial has ended nothing
    updates them, and only the study's metric is still read (``ResultGrid.get_best_result``),
    so the rest is dropped. Results stay whole in the trial's ``result.json`` and in MLflow.
    """

    def __init__(self, metric: str) -> None:
        self.keep = {metric, "epoch", "training_iteration"}

    def _trim(self, trial: Any) -> None:
        meta = getattr(trial, "run_metadata", None)
        if meta is None or not hasattr(meta, "metric_analysis"):
            return
        meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if k in self.keep}
        meta.metric_n_steps = {k: v for k, v in meta.metric_n_steps.items() if k in self.keep}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trim(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trim(trial)
