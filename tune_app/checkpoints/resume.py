"""Where an interrupted trial continues: its newest valid checkpoint, even one Tune never saw.

Tune's saved state names the last checkpoint it registered, but a kill can land after a
checkpoint folder was published and before Tune's state reached the disk (the sync is
asynchronous). Resuming from Tune's checkpoint would then re-train epochs that were
already saved. :func:`plan_resume` instead walks on from Tune's checkpoint through the
folders Tune would register next (``checkpoint_<k>``, ``k`` = Tune's next index), while
each one verifies and holds a later epoch, walking past tombstones (retention prunes a
running trial's older checkpoints as soon as a newer one exists, and Tune's state can be
several checkpoints behind: it is synced when a trial starts, not after each checkpoint),
and returns:

* ``resume_from``: the newest checkpoint of that chain (or Tune's, or an older valid one
  when Tune's is corrupt, or None);
* ``catch_up``: the results to report to Tune before training goes on, in order: for each
  chain folder, the epochs of its history that came after the previous one (reported
  without a checkpoint) and its own epoch (reported with one, so Tune registers exactly
  that folder and its checkpoint index stays aligned with the folders on disk); a pruned
  folder on the way is registered again with the epoch it held (the last epochs before the
  next folder's, from that folder's history).

Re-reporting an epoch Tune already had is harmless: MLflow keeps one value per step and
the study's trial files one row per epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.checkpoints.keeper import scan_trial_checkpoints
from tune_app.checkpoints.store import (
    PRUNED_FILE,
    CorruptCheckpointError,
    checkpoint_index,
    is_tombstone,
    read_trainer_state,
    verify_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatchUpReport:
    """One result to hand to Tune again; ``registers`` = report it with the next checkpoint folder."""

    metrics: dict[str, Any]
    registers: bool


@dataclass(frozen=True)
class ResumePlan:
    resume_from: Path | None
    catch_up: tuple[CatchUpReport, ...] = field(default=())


def epochs_tune_missed(trial_dir: Path, tune_checkpoint: Path | None) -> list[dict[str, Any]]:
    """For a trial that trained all its epochs but whose end Tune's saved state missed: each
    epoch's result (``trial_state.json`` history) after the epoch of Tune's checkpoint, in order,
    its final result last. All of them when Tune holds no readable checkpoint of it (a trial only
    the trial journal named): re-reporting an epoch Tune had is harmless, missing one is not
    (the Optuna study, the scheduler's rungs and MLflow would lack it)."""
    from tune_app.outcome import read_trial_state

    history = [dict(h) for h in read_trial_state(trial_dir).get("history", []) if isinstance(h, dict)]
    held = 0
    if tune_checkpoint is not None:
        try:
            held = int(read_trainer_state(tune_checkpoint)["epoch"])
        except (CorruptCheckpointError, ValueError, TypeError):  # pruned, torn or foreign: report every epoch
            held = 0
    missed = [h for h in history if not isinstance(h.get("epoch"), int) or h["epoch"] > held]
    return missed or history[-1:]


def checkpoint_dir_name(index: int) -> str:
    """Tune's folder name for checkpoint ``index`` (``checkpoint_000003``)."""
    from ray.train._internal.storage import StorageContext

    return str(StorageContext._make_checkpoint_dir_name(index))


def _epoch(state: dict[str, Any]) -> int:
    return int(state["epoch"])


def find_resumable_checkpoint(trial_dir: Path, *, preferred: Path | None = None) -> Path | None:
    """Newest valid checkpoint of a trial, falling back past invalid ones.

    Candidates are the trial's ``checkpoint_*`` folders (``keeper.scan_trial_checkpoints``;
    ``tmp-*`` never), newest first. With ``preferred`` (Tune's latest), the search starts
    there: it and anything older. Each invalid candidate is logged (ERROR for a corrupt one
    naming the file and problem, WARNING for a pruned tombstone). Returns None when no
    candidate verifies (hashes checked).
    """
    found = [(checkpoint_index(s.path), s.path) for s in scan_trial_checkpoints(trial_dir)]
    newest_first = [(i, p) for i, p in reversed(found) if i is not None]
    candidates = [p for _, p in newest_first]
    if preferred is not None:
        preferred = Path(preferred)
        limit = checkpoint_index(preferred)
        if limit is None:
            logger.error("preferred checkpoint %s has no checkpoint_<n> name; ignoring it", preferred)
        else:
            candidates = [preferred, *(p for i, p in newest_first if i <= limit and p.resolve() != preferred.resolve())]
    for candidate in candidates:
        check = verify_checkpoint(candidate)
        if check.ok:
            return candidate
        if check.bad_file == PRUNED_FILE:
            logger.warning("skipping %s: %s", candidate, check.problem)
        else:
            where = candidate / check.bad_file if check.bad_file else candidate
            logger.error("checkpoint %s is not loadable: %s: %s; falling back to the previous one",
                         candidate, where, check.problem)
    return None


def plan_resume(trial_dir: Path, *, tune_checkpoint: Path | None, next_index: int) -> ResumePlan:
    """Plan the resume of the trial in ``trial_dir`` (see the module doc).

    ``tune_checkpoint`` is ``tune.get_checkpoint()``'s folder (None when Tune has none) and
    ``next_index`` the index Tune gives the trial's next reported checkpoint.
    """
    base = find_resumable_checkpoint(trial_dir, preferred=tune_checkpoint) if tune_checkpoint else None
    last_epoch = _epoch(read_trainer_state(base)) if base is not None else 0
    resume_from, reports = base, []
    index = next_index
    pruned = 0  # tombstones since the last folder of the chain
    while (folder := trial_dir / checkpoint_dir_name(index)).is_dir():
        if is_tombstone(folder):  # retention pruned it once a newer one existed: walk on
            pruned += 1
            index += 1
            continue
        if not verify_checkpoint(folder).ok:
            break
        state = read_trainer_state(folder)
        epoch = _epoch(state)
        if epoch <= last_epoch:  # a folder of an earlier run of this trial: not a continuation
            break
        missed = [dict(h) for h in state.get("history", []) if last_epoch < int(h.get("epoch", 0)) < epoch]
        if len(missed) < pruned:  # more pruned checkpoints than epochs between: not this chain
            break
        # The pruned checkpoints held the last of the missed epochs (a checkpoint is saved at
        # the end of an epoch): each is registered again, so Tune's index meets this folder's.
        plain = len(missed) - pruned
        reports += [CatchUpReport(m, registers=k >= plain) for k, m in enumerate(missed)]
        reports.append(CatchUpReport(dict(state["metrics"]), registers=True))
        resume_from, last_epoch, pruned = folder, epoch, 0
        index += 1
    if resume_from is not None and resume_from != base:
        logger.warning("%s: Tune's saved state missed %d checkpoint(s) (a kill before its state sync); "
                       "resuming from the newest, %s", trial_dir.name, index - next_index, resume_from.name)
    return ResumePlan(resume_from, tuple(reports))
