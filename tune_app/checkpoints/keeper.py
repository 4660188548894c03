"""The one owner of a study's checkpoint bytes on disk: one scan, one deleter.

:func:`scan_checkpoints` (:func:`scan_trial_checkpoints` per trial) is the only reader that
turns a study folder into checkpoint records (the retention callback after a restore, the
trainable's pre-save reclaim, the cleanup command, where a trial resumes, the reports).
:class:`CheckpointKeeper` is the only code that deletes checkpoint bytes: it tombstones
checkpoints (``store.prune_checkpoint``: the folder stays for Ray Tune, with a ``PRUNED``
marker), drops the optimiser state of checkpoints kept only to be evaluated
(``store.demote_checkpoint``: study bests that are not a running trial's resume point),
finishes prunes a crash interrupted and removes temps a killed writer left. Who decides
*when* (and calls it):

* ``callbacks.RetentionCallback``: after every checkpoint and trial end, the retention plan;
* ``callbacks.StoragePressureCallback``: while free space is short, the escalation steps;
* ``checkpoints.guard`` (in the trainable): before a save that does not fit, the study's
  single best (storage-pressure step 3 done in place);
* ``python -m tune_app.cleanup --execute``: the cleanup report's candidates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tune_app.checkpoints.errors import CheckpointError
from tune_app.checkpoints.retention import (
    CheckpointRecord,
    RetentionPolicy,
    plan_retention,
    plan_single_best,
    protected_paths,
)
from tune_app.checkpoints.store import (
    PRUNED_FILE,
    STATE_FILE,
    TMP_PREFIX,
    checkpoint_index,
    demote_checkpoint,
    dir_nbytes,
    is_tombstone,
    prune_checkpoint,
    verify_checkpoint,
)
from tune_app.outcome import trial_ended

__all__ = ["CheckpointKeeper", "ScannedCheckpoint", "Verify", "checkpoint_score", "scan_checkpoints",
           "scan_trial_checkpoints"]

logger = logging.getLogger(__name__)

#: How much :func:`scan_checkpoints` checks: ``none`` (a ``state.json`` is there), ``sizes``
#: (manifest, file sizes) or ``hashes`` (every byte against its SHA-256).
Verify = Literal["none", "sizes", "hashes"]


def checkpoint_score(ckpt: Path, metric: str) -> float | None:
    """``trainer_state.metrics[metric]`` of a checkpoint's ``state.json``; None if absent or not a number."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        value = state["trainer_state"]["metrics"][metric]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class ScannedCheckpoint:
    """A ``checkpoint_*`` folder of a trial as found on disk.

    ``kind``: ``valid`` (``record`` set), ``tombstone`` (pruned), ``half_pruned`` (a prune a
    crash interrupted: marker written, files left; ``bytes`` = what is left), ``corrupt``
    (fails verification: ``problem`` says why) or ``incomplete`` (no ``state.json``; only
    with ``verify="none"``).
    """

    path: Path
    kind: str
    bytes: int
    record: CheckpointRecord | None = None
    problem: str = ""


def scan_checkpoints(study_dir: Path | str, metric: str, *, verify: Verify = "none") -> list[ScannedCheckpoint]:
    """Every ``<study>/<trial>/checkpoint_*`` folder, trial by trial in name order
    (:func:`scan_trial_checkpoints` for each trial folder)."""
    study = Path(study_dir)
    if not study.is_dir():
        return []
    return [found for trial_dir in sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX))
            for found in scan_trial_checkpoints(trial_dir, metric, verify=verify)]


def scan_trial_checkpoints(trial_dir: Path | str, metric: str | None = None, *,
                           verify: Verify = "none") -> list[ScannedCheckpoint]:
    """A trial's ``checkpoint_*`` folders, oldest first, each classified (``ScannedCheckpoint.kind``);
    a valid one as a retention record (score = its ``metric``, None without one; finished =
    the trial has ended, ``outcome.trial_ended``; unknown counts as running, which keeps its
    resume point). The one reader of what a trial folder holds: retention, cleanup, resume
    and the reports all ask it."""
    trial_dir = Path(trial_dir)
    found: list[ScannedCheckpoint] = []
    if not trial_dir.is_dir():
        return found
    folders = sorted((index, entry) for entry in trial_dir.iterdir()
                     if (index := checkpoint_index(entry)) is not None and entry.is_dir())
    finished: bool | None = None
    for index, ckpt in folders:
        if is_tombstone(ckpt):
            if any(e.name != PRUNED_FILE for e in ckpt.iterdir()):
                found.append(ScannedCheckpoint(ckpt, "half_pruned", dir_nbytes(ckpt) - dir_nbytes(ckpt / PRUNED_FILE)))
            else:
                found.append(ScannedCheckpoint(ckpt, "tombstone", dir_nbytes(ckpt)))
            continue
        if verify == "none":
            if not (ckpt / STATE_FILE).is_file():
                found.append(ScannedCheckpoint(ckpt, "incomplete", dir_nbytes(ckpt), problem="no state.json"))
                continue
        else:
            check = verify_checkpoint(ckpt, check_hashes=verify == "hashes")
            if not check.ok:
                what = f"{check.bad_file}: {check.problem}" if check.bad_file else str(check.problem)
                found.append(ScannedCheckpoint(ckpt, "corrupt", dir_nbytes(ckpt), problem=what))
                continue
        if finished is None:
            finished = trial_ended(trial_dir)
        size = dir_nbytes(ckpt)
        found.append(ScannedCheckpoint(ckpt, "valid", size, CheckpointRecord(
            trial_id=trial_dir.name, path=str(ckpt), index=index,
            score=checkpoint_score(ckpt, metric) if metric else None, size_bytes=size, trial_finished=finished)))
    return found


class CheckpointKeeper:
    """Deletes a study's checkpoint bytes, and nothing else does (see the module docstring).

    ``records`` is the keeper's view of the study's valid checkpoints (path -> record): read
    from disk on first use (finishing interrupted prunes), then kept up to date by
    :meth:`add` and by every prune.
    """

    def __init__(self, study_dir: Path | str, *, metric: str, verify: Verify = "none",
                 finish_interrupted: bool = True, keep_optimizer_state: bool = True) -> None:
        self.study_dir = Path(study_dir)
        self.metric = metric
        self.verify: Verify = verify
        #: False: a kept checkpoint that is no longer a resume point loses its optimiser and
        #: scheduler state (``retention.keep_optimizer_state``; false by default).
        self.keep_optimizer_state = keep_optimizer_state
        #: Finish prunes a crash interrupted when reading the records (the driver; the trainable's
        #: reclaim leaves them to it, so two processes never prune one folder at once).
        self.finish_interrupted = finish_interrupted
        self._records: dict[str, CheckpointRecord] | None = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_records": None}  # rebuilt from disk after a restore

    @property
    def records(self) -> dict[str, CheckpointRecord]:
        if self._records is None:
            self._records = {}
            for found in scan_checkpoints(self.study_dir, self.metric, verify=self.verify):
                if found.kind == "half_pruned" and self.finish_interrupted:
                    freed = self.prune(found.path, "finishing an interrupted prune")
                    logger.info("retention: finished the interrupted prune of %s (%.1f MB)", found.path, freed / 1e6)
                elif found.record is not None:
                    self._records[found.record.path] = found.record
        return self._records

    def add(self, record: CheckpointRecord) -> None:
        """A checkpoint that was just written (or a trial that just ended: its records again)."""
        self.records[record.path] = record

    def prune(self, path: Path | str, reason: str) -> int:
        """Tombstone one checkpoint (or finish its interrupted prune); returns bytes freed."""
        freed = prune_checkpoint(Path(path), reason=reason)
        if self._records is not None:
            self._records.pop(str(path), None)
        return freed

    def prune_paths(self, paths: Iterable[str], reasons: Mapping[str, str] | str) -> int:
        """Tombstone each of ``paths`` (in path order) for its reason; returns bytes freed."""
        return sum(self.prune(p, reasons if isinstance(reasons, str) else reasons.get(p, "retention"))
                   for p in sorted(paths))

    def enforce(self, policy: RetentionPolicy | None) -> tuple[int, int, bool]:
        """Prune what ``policy`` does not keep (``None``: the study's single best and the resume
        points only), then demote what is kept only to be evaluated (unless
        ``keep_optimizer_state``). Returns (checkpoints pruned, bytes freed, protected alone
        over the size cap)."""
        records = list(self.records.values())
        plan = (plan_single_best(records) if policy is None
                else plan_retention(records, policy))
        freed = self.prune_paths(plan.delete, plan.reasons)
        if not self.keep_optimizer_state:
            freed += sum(self.demote(p) for p in sorted(plan.weights_only))
        return len(plan.delete), freed, plan.over_budget

    def demote(self, path: str) -> int:
        """Drop a kept checkpoint's optimiser state (``store.demote_checkpoint``); bytes freed.
        A checkpoint that cannot be demoted (corrupt, gone) is left as it is."""
        try:
            freed = demote_checkpoint(Path(path))
        except (OSError, CheckpointError) as exc:
            logger.warning("retention: could not drop the optimiser state of %s: %s", path, exc)
            return 0
        record = self.records.get(path)
        if freed and record is not None:
            self.records[path] = dataclasses.replace(record, size_bytes=max(record.size_bytes - freed, 0))
        return freed

    def prune_unprotected(self, trial_id: str, policy: RetentionPolicy, reason: str) -> int:
        """Tombstone ``trial_id``'s checkpoints that ``policy`` does not protect (study best,
        resume point); returns bytes freed."""
        records = list(self.records.values())
        keep = protected_paths(records, policy)
        return self.prune_paths([r.path for r in records if r.trial_id == trial_id and r.path not in keep], reason)

    def remove_temp(self, path: Path) -> int:
        """Remove a temp a killed writer left (a ``tmp-*`` checkpoint folder or a torn atomic
        write); only safe while nothing writes to the study. Returns bytes freed."""
        size = dir_nbytes(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return size
