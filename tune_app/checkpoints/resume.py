"""Where an interrupted trial continues: its newest valid checkpoint, even one Tune never saw.

Tune's saved state names the last checkpoint it registered, but a kill can land after a
checkpoint folder was published and before Tune's state reached the disk (the sync is
asynchronous). Resuming from Tune's checkpoint would then re-train epochs that were
already saved. :func:`plan_resume` instead walks on from Tune's checkpoint through the
folders Tune would register next (``checkpoint_<k>``, ``k`` = Tune's next index), while
each one verifies and holds a later epoch, and returns:

* ``resume_from``: the newest checkpoint of that chain (or Tune's, or an older valid one
  when Tune's is corrupt, or None);
* ``catch_up``: the results to report to Tune before training goes on, in order: for each
  chain folder, the epochs of its history that came after the previous one (reported
  without a checkpoint) and its own epoch (reported with one, so Tune registers exactly
  that folder and its checkpoint index stays aligned with the folders on disk).

Re-reporting an epoch Tune already had is harmless: MLflow keeps one value per step and
the study's trial files one row per epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.checkpoints.store import (
    find_resumable_checkpoint,
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


def checkpoint_dir_name(index: int) -> str:
    """Tune's folder name for checkpoint ``index`` (``checkpoint_000003``)."""
    from ray.train._internal.storage import StorageContext

    return str(StorageContext._make_checkpoint_dir_name(index))


def _epoch(state: dict[str, Any]) -> int:
    return int(state["epoch"])


def plan_resume(trial_dir: Path, *, tune_checkpoint: Path | None, next_index: int) -> ResumePlan:
    """Plan the resume of the trial in ``trial_dir`` (see the module doc).

    ``tune_checkpoint`` is ``tune.get_checkpoint()``'s folder (None when Tune has none) and
    ``next_index`` the index Tune gives the trial's next reported checkpoint.
    """
    base = find_resumable_checkpoint(trial_dir, preferred=tune_checkpoint) if tune_checkpoint else None
    last_epoch = _epoch(read_trainer_state(base)) if base is not None else 0
    resume_from, reports = base, []
    index = next_index
    while (folder := trial_dir / checkpoint_dir_name(index)).is_dir():
        if not verify_checkpoint(folder).ok:
            break
        state = read_trainer_state(folder)
        epoch = _epoch(state)
        if epoch <= last_epoch:  # a folder of an earlier run of this trial: not a continuation
            break
        missed = [dict(h) for h in state.get("history", []) if last_epoch < int(h.get("epoch", 0)) < epoch]
        reports += [CatchUpReport(m, registers=False) for m in missed]
        reports.append(CatchUpReport(dict(state["metrics"]), registers=True))
        resume_from, last_epoch = folder, epoch
        index += 1
    if resume_from is not None and resume_from != base:
        logger.warning("%s: Tune's saved state missed %d checkpoint(s) (a kill before its state sync); "
                       "resuming from the newest, %s", trial_dir.name, index - next_index, resume_from.name)
    return ResumePlan(resume_from, tuple(reports))
