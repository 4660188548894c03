"""The study's Optuna study on disk: ``<study>/optuna.db`` (SQLite), a mirror of the searcher's.

The searcher's in-memory Optuna study stays the sampler's source of truth: Tune pickles it with
its state and ``Tuner.restore`` brings it back, which is what makes a resume exact. This module
copies it into an Optuna SQLite study in the study folder, for ``optuna-dashboard``,
``optuna.load_study`` and the report's plots (:func:`load_optuna_study`).

* **When**: right after Tune saved its state into the study (``state_sync``'s ``save_to_dir``
  calls ``EarlyStopAwareOptunaSearch.sync_optuna_db``), and once when a study is restored
  (:func:`sync_from_saved_state`, from ``tuner.restore_tuner``). Tune saves for the first trial
  of each start (so it shows as RUNNING with its params a moment after it is suggested), on its
  adaptive period (every 10 s or more: later trials, their final states and their per-epoch
  intermediate values show up that far behind), and when the study ends or is interrupted.
  Trials added between two saves are named by the trial journal (``tune_app.trial_journal``),
  not by the DB.
* **Why after the save, not at each ask/report/tell**: the DB then never holds anything Tune's
  saved state does not (a trial sampled, or a tell made, after the last save and lost with a
  SIGKILL). After any kill it is *behind* or equal to the restored study, and catching up only
  adds trials, intermediate values and final states. Removing a trial is not in Optuna's storage
  API: a DB *ahead* of the restored study would have to be rebuilt, and rebuilding through that
  API costs ~40 ms per trial (38 s at 1000 trials) on every resume after a kill. Ray's
  ``OptunaSearch(storage=...)`` was rejected for the same reason and one more: its sampler
  would read the DB, so trials written after the last save would stay in the restored study
  (an orphaned RUNNING trial, a trial told twice), and the study would not be exact.
* **Exactness**: each Optuna trial of the study is one DB trial with the same number, params,
  distributions, user attributes (``tune_trial_id``), intermediate values (step = epoch), state
  and value. Rows are matched by number and Tune trial id: a trial told again after a resume
  updates its row, never adds one. A DB that is not a prefix of the study (edited, foreign,
  corrupt) is rebuilt from the study into a temp file and copied over the DB in one SQLite
  transaction (so a running ``optuna-dashboard`` sees the new content).
* **Values**: what the searcher told Optuna: a finished trial (``COMPLETE``) has its *last*
  epoch's metric (Ray's ``OptunaSearch`` tells the last result, not the best epoch); a trial
  stopped early (``PRUNED``) its last intermediate value; a failed one (``FAIL``) none.
* **Never in the way**: a failed write (a locked DB, a full disk) logs one warning and the study
  goes on; the next save (retried after a back-off) or the next restore catches the DB up.
  Only the driver writes (the searcher lives there); nothing here is pickled with the searcher
  (one mirror per DB path per process, opened lazily), and the DB follows the study folder: its
  path is the folder Tune saves into, so a moved study writes beside its new state.
* **Cost** (``benchmarks/bench_optuna_db.py``, 1000 trials x 10 epochs): 40-100 ms per trial
  (~22 ms per new trial, ~4 ms per epoch's intermediate value: Optuna's ORM, one commit each),
  ~0.7 s to open the DB once per process, 1.5 s to check a 1000-trial DB at a resume.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import pickle
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: The study's Optuna DB, in the study folder.
DB_FILE = "optuna.db"
#: SQLite's side files of the DB (a rollback journal; WAL files if someone switched the mode).
DB_SIDE_FILES = (f"{DB_FILE}-journal", f"{DB_FILE}-wal", f"{DB_FILE}-shm")
#: Optuna user attribute naming the Tune trial (set by ``tune_app.search``).
TUNE_TRIAL_ID_ATTR = "tune_trial_id"
#: Ray's ``OptunaSearch`` names its in-memory study this unless given a name (studies started
#: before the DB existed): their DB study is named after the study folder instead.
RAY_DEFAULT_STUDY_NAME = "optuna"
#: How long a write waits for a reader's lock (optuna-dashboard, ``load_study``) before it fails.
BUSY_TIMEOUT_S = 5.0
#: After a failed write, the mirror waits this long before trying again (doubling, up to the max).
RETRY_AFTER_S, RETRY_MAX_S = 30.0, 600.0


def db_path(study_dir: Path | str) -> Path:
    """``<study_dir>/optuna.db``."""
    return Path(study_dir) / DB_FILE


def storage_url(study_dir: Path | str) -> str:
    """The SQLAlchemy URL of the study's Optuna DB (absolute path): ``sqlite:////.../optuna.db``."""
    return f"sqlite:///{db_path(study_dir).resolve()}"


def load_optuna_study(study_dir: Path | str, study_name: str | None = None) -> optuna.Study | None:
    """The study's Optuna study from ``<study_dir>/optuna.db``, or None.

    None when the study has no DB yet (no state saved: nothing ran), or it cannot be read (a
    warning says why). ``study_name`` defaults to the only study the DB holds (``tune.name``).
    Reading works while the study runs; the DB is at most one Tune state save behind the searcher.
    """
    import optuna

    path = db_path(study_dir)
    if not path.is_file():  # optuna.load_study would create an empty DB
        return None
    url = storage_url(study_dir)
    try:
        if study_name is None:
            names = optuna.get_all_study_names(url)
            if len(names) != 1:
                logger.warning("%s holds %d Optuna studies (%s): pass study_name", path, len(names), names)
                return None
            study_name = names[0]
        return optuna.load_study(study_name=study_name, storage=url)
    except Exception as exc:  # noqa: BLE001 - a reader must not fail on a damaged DB
        logger.warning("cannot read the Optuna study in %s (%s: %s); `python -m tune_app.run resume=%s` "
                       "rebuilds it", path, type(exc).__name__, exc, Path(study_dir))
        return None


def mirror_study(study_dir: Path | str, study: optuna.Study) -> bool:
    """Bring ``<study_dir>/optuna.db`` in line with ``study`` (an in-memory ``optuna.Study``).

    Never raises: False when the DB could not be written (logged once per failure streak).
    """
    name = study.study_name
    if name == RAY_DEFAULT_STUDY_NAME:
        name = Path(study_dir).name
    mirror = _mirror_for(db_path(study_dir), name, list(study.directions))
    return mirror.sync(study.get_trials(deepcopy=False))


def sync_from_saved_state(study_dir: Path | str) -> bool:
    """Mirror the Optuna study of the searcher Tune saved in ``study_dir`` (what a restore resumes).

    The newest ``searcher-state-*.pkl`` (the one ``Tuner.restore`` loads). False when there is
    none, it cannot be read, or the DB could not be written.
    """
    saved = sorted(Path(study_dir).glob("searcher-state-*.pkl"))
    if not saved:
        return False
    try:
        with saved[-1].open("rb") as fh:
            state = pickle.load(fh)
    except Exception as exc:  # noqa: BLE001 - Tune's restore reports a bad searcher state itself
        logger.warning("cannot read %s to update %s: %s", saved[-1].name, DB_FILE, exc)
        return False
    study = state.get("_ot_study") if isinstance(state, dict) else None
    return study is not None and mirror_study(study_dir, study)


_MIRRORS: dict[Path, OptunaMirror] = {}


def _mirror_for(path: Path, study_name: str, directions: list[Any]) -> OptunaMirror:
    key = path.resolve()
    mirror = _MIRRORS.get(key)
    if mirror is None or mirror.study_name != study_name or mirror.directions != directions:
        if mirror is not None:
            mirror.close()
        mirror = _MIRRORS[key] = OptunaMirror(key, study_name, directions)
    return mirror


class _Diverged(Exception):
    """The DB holds something the in-memory study does not: rebuild it."""


@dataclass
class _Row:
    """One DB trial: what it holds, the study's trial object it was last synced with, its storage id."""

    held: Any  # a FrozenTrial of its own (a copy, or read from the DB)
    #: The in-memory study's FrozenTrial the row matches: Optuna's in-memory storage replaces a
    #: stored trial whenever it changes, so the same object means nothing to write. (The replaced
    #: object may still change: ``optuna.Trial`` updates its cached copy in place; hence ``held``.)
    source: Any = None
    trial_id: int | None = None

    @classmethod
    def of(cls, trial: Any, trial_id: int | None = None) -> _Row:
        return cls(copy.deepcopy(trial), trial, trial_id)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _same_seq(a: Sequence[Any] | None, b: Sequence[Any] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def _same_steps(a: dict[int, float], b: dict[int, float]) -> bool:
    return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())


class OptunaMirror:
    """Writes an in-memory Optuna study's trials into one SQLite Optuna study, incrementally.

    Holds an open ``RDBStorage`` and, per DB trial, what it holds and the study's trial object it
    was synced with: a sync skips the trials whose object is the same (Optuna's in-memory storage
    replaces a trial object whenever it changes) and writes only what changed in the others.
    """

    def __init__(self, path: Path, study_name: str, directions: list[Any]) -> None:
        self.path = Path(path)
        self.study_name = study_name
        self.directions = list(directions)
        self._storage: Any = None
        self._study_id: int | None = None
        self._rows: list[_Row] | None = None  # None: read the DB at the next sync
        self._failing = False
        self._retry_at = 0.0
        self._backoff = RETRY_AFTER_S

    def sync(self, trials: Sequence[Any]) -> bool:
        """Make the DB hold exactly ``trials`` (the study's, in number order). Never raises."""
        if self._failing and time.monotonic() < self._retry_at:
            return False
        try:
            if self._rows is None:
                self._load(trials)
            try:
                self._apply(trials)
            except _Diverged as why:
                self._rebuild(trials, str(why))
        except Exception as exc:  # noqa: BLE001 - the mirror must never fail or stop the study
            self._fail(exc)
            return False
        if self._failing:
            logger.info("Optuna study DB %s is written again (%d trials)", self.path, len(trials))
            self._failing, self._backoff = False, RETRY_AFTER_S
        return True

    def close(self) -> None:
        """Close the DB connection (the next sync reopens it and reads the DB again)."""
        if self._storage is not None:
            with contextlib.suppress(Exception):
                self._storage.engine.dispose()
        self._storage, self._study_id, self._rows = None, None, None

    # --- reading the DB -----------------------------------------------------------------------------
    def _open(self) -> None:
        import optuna

        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no study folder {self.path.parent}")
        self._storage = optuna.storages.RDBStorage(
            f"sqlite:///{self.path}", engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT_S}})

    def _load(self, trials: Sequence[Any]) -> None:
        """Open the DB and index its trials; rebuild it unless it is a prefix of ``trials``."""
        try:
            self._open()
            storage = self._storage
            studies = {s.study_name: s for s in storage.get_all_studies()}
        except Exception as exc:
            if not _is_corrupt(exc):
                raise  # locked, disk full...: try again later
            self._rebuild(trials, f"SQLite cannot read it: {exc.__class__.__name__}")
            return
        ours = studies.get(self.study_name)
        if ours is None and not studies:
            self._study_id = storage.create_new_study(self.directions, self.study_name)
            self._rows = []
            return
        if ours is None or len(studies) > 1 or list(ours.directions) != self.directions:
            self._rebuild(trials, f"it holds studies {sorted(studies)}, not only {self.study_name!r} "
                                  f"({'/'.join(d.name.lower() for d in self.directions)})")
            return
        self._study_id = storage.get_study_id_from_name(self.study_name)
        held = sorted(storage.get_all_trials(self._study_id, deepcopy=False), key=lambda t: t.number)
        self._rows = [_Row(t) for t in held]  # read from the DB: no source object yet
        if [t.number for t in held] != list(range(len(held))):
            self._rows = None
            self._rebuild(trials, "its trial numbers have gaps")

    # --- writing ------------------------------------------------------------------------------------
    def _apply(self, trials: Sequence[Any]) -> None:
        rows = self._rows
        assert rows is not None and self._study_id is not None
        if len(rows) > len(trials):
            raise _Diverged(f"it holds {len(rows)} trials, the study {len(trials)}")
        for i, trial in enumerate(trials):
            if trial.number != i:
                raise _Diverged(f"the study's trial {i} is numbered {trial.number}")
            if i < len(rows):
                if rows[i].source is not trial:
                    self._update(rows[i], trial)
                continue
            trial_id = self._storage.create_new_trial(self._study_id, template_trial=trial)
            rows.append(_Row.of(trial, trial_id))

    def _update(self, row: _Row, trial: Any) -> None:
        from optuna.trial import TrialState

        held = row.held
        if held.params != trial.params or held.distributions != trial.distributions:
            raise _Diverged(f"trial {trial.number} has other params")
        if held.user_attrs.get(TUNE_TRIAL_ID_ATTR) != trial.user_attrs.get(TUNE_TRIAL_ID_ATTR):
            raise _Diverged(f"trial {trial.number} is another Tune trial")
        if held.state == trial.state and _same_seq(held.values, trial.values) \
                and _same_steps(held.intermediate_values, trial.intermediate_values) \
                and held.user_attrs == trial.user_attrs:
            row.source = trial
            return
        if held.state != TrialState.RUNNING or held.intermediate_values.keys() - trial.intermediate_values.keys():
            raise _Diverged(f"trial {trial.number} is {held.state.name} in it, {trial.state.name} in the study")
        storage = self._storage
        if row.trial_id is None:
            row.trial_id = storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        for key, value in trial.user_attrs.items():
            if key not in held.user_attrs or held.user_attrs[key] != value:
                storage.set_trial_user_attr(row.trial_id, key, value)
        for step, value in trial.intermediate_values.items():
            if step not in held.intermediate_values or not _same(held.intermediate_values[step], value):
                storage.set_trial_intermediate_value(row.trial_id, step, value)
        if trial.state != TrialState.RUNNING:
            storage.set_trial_state_values(row.trial_id, trial.state, trial.values)
        row.held, row.source = copy.deepcopy(trial), trial

    def _rebuild(self, trials: Sequence[Any], why: str) -> None:
        """Write ``trials`` into a new DB file, then replace the DB's content with it."""
        import optuna

        from tune_app.atomic_fs import TMP_MARK

        logger.warning("Optuna study DB %s does not match the study (%s): rebuilding it from the study's %d "
                       "trials", self.path, why, len(trials))
        self.close()
        tmp = self.path.with_name(f".{self.path.name}{TMP_MARK}{uuid.uuid4().hex}")
        try:
            # A scratch file: no journal, no fsync per commit (one fsync at the end).
            storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}",
                                                 engine_kwargs={"creator": lambda: _scratch_connection(tmp)})
            try:
                study_id = storage.create_new_study(self.directions, self.study_name)
                for trial in trials:
                    storage.create_new_trial(study_id, template_trial=trial)
            finally:
                storage.engine.dispose()
            from tune_app.study import fsync_path

            fsync_path(tmp)
            _replace_db(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._open()
        self._study_id = self._storage.get_study_id_from_name(self.study_name)
        self._rows = [_Row.of(t) for t in trials]

    def _fail(self, exc: BaseException) -> None:
        if not self._failing:
            logger.warning("could not write the Optuna study DB %s (%s: %s); the study goes on and the DB is "
                           "caught up at a later state save or at the next resume", self.path,
                           type(exc).__name__, exc)
        else:
            logger.debug("Optuna study DB %s still not writable: %s", self.path, exc)
        self._failing = True
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        self.close()


def _is_corrupt(exc: BaseException) -> bool:
    """Whether SQLite refused the file itself (not a database, malformed), not a lock or a full disk."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        for err in (seen, orig):
            if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def _scratch_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def _replace_db(new: Path, path: Path) -> None:
    """Give ``path`` the content of ``new``: one SQLite transaction (open readers see it), or a rename.

    The rename is the fallback for a DB SQLite cannot open (not a database): its side files go
    first, so an old rollback journal is never applied to the new file.
    """
    try:
        with contextlib.closing(sqlite3.connect(new)) as src, \
                contextlib.closing(sqlite3.connect(path, timeout=10.0)) as dst:
            src.backup(dst)
        return
    except sqlite3.DatabaseError as exc:
        logger.warning("replacing %s whole (%s)", path, exc)
    for side in DB_SIDE_FILES:
        (path.parent / side).unlink(missing_ok=True)
    os.replace(new, path)
