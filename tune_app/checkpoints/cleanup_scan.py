"""Find (and optionally remove) what a study no longer needs on disk.

:func:`scan_study` only reads; :func:`execute` deletes. Checkpoint directories are
tombstoned (never removed), so Ray Tune's saved state stays resolvable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tune_app.atomic_fs import TMP_MARK as ATOMIC_TMP_MARK
from tune_app.checkpoints.retention import (
    CheckpointRecord,
    Mode,
    RetentionPolicy,
    plan_retention,
)
from tune_app.checkpoints.store import (
    PRUNED_FILE,
    STATE_FILE,
    TMP_PREFIX,
    checkpoint_index,
    dir_nbytes,
    is_tombstone,
    prune_checkpoint,
    verify_checkpoint,
)
from tune_app.outcome import TRIAL_STATE_FILE as OUTCOME_STATE_FILE
from tune_app.outcome import trial_ended

__all__ = ["Candidate", "CleanupReport", "TRIAL_STATE_FILE", "checkpoint_score", "execute", "scan_study",
           "trial_finished"]

_LOG = logging.getLogger(__name__)

#: Written by the Tune integration into each trial dir (see ``tune_app.outcome``).
TRIAL_STATE_FILE = OUTCOME_STATE_FILE

REASON_TMP = "stale temp from an interrupted save or state write"
REASON_HALF_PRUNED = "half-pruned"


@dataclass(frozen=True)
class Candidate:
    """Something cleanup may delete, its size and why."""

    path: Path
    bytes: int
    reason: str


@dataclass
class CleanupReport:
    """Result of :func:`scan_study`; ``protected`` are kept checkpoints, never candidates."""

    candidates: list[Candidate] = field(default_factory=list)
    protected: list[Path] = field(default_factory=list)
    reclaimable_bytes: int = 0
    over_budget: bool = False


def trial_finished(trial_dir: Path) -> bool:
    """True when the trial has ended (finished, or stopped early): ``tune_app.outcome.trial_ended``.

    Unknown (no readable ``trial_state.json``) counts as running, which keeps its resume point.
    """
    return trial_ended(trial_dir)


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


def _is_temp(name: str) -> bool:
    """A checkpoint temp (``tmp-*``) or an interrupted atomic write of Tune's files (``.<name>.tmp-*``)."""
    return name.startswith(TMP_PREFIX) or (name.startswith(".") and ATOMIC_TMP_MARK in name)


def _stale_temps(study_dir: Path, min_age_s: float, now: float) -> list[Path]:
    temps: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(study_dir):
        for name in [*dirnames, *filenames]:
            if not _is_temp(name):
                continue
            full = Path(dirpath, name)
            try:
                age = now - full.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age >= min_age_s:
                temps.append(full)
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
    return sorted(temps)


def remove_torn_temps(study_dir: Path) -> list[Path]:
    """Delete every temp a killed writer left in the study (checkpoint ``tmp-*``, ``.<name>.tmp-*``).

    Only safe while nothing writes to the study: ``resume=`` calls it holding the study lock.
    """
    removed = []
    for path in _stale_temps(study_dir, 0.0, time.time()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def scan_study(
    study_dir: Path,
    *,
    metric: str,
    mode: Mode = "max",
    policy: RetentionPolicy,
    check_hashes: bool = True,
    tmp_min_age_s: float = 0.0,
) -> CleanupReport:
    """List deletable things in ``<study_dir>/<trial>/``.

    Candidates: ``tmp-*`` anywhere (older than ``tmp_min_age_s``; use a positive
    value while a study may be saving), tombstones with payload left, checkpoints
    that fail verification ("corrupt: ..."), and valid checkpoints that
    :func:`plan_retention` would delete (score = ``state.json``
    ``trainer_state.metrics[metric]``, index from the directory name, finished when
    the trial has ended: ``trial_state.json`` says ``completed`` or ``stopped``). ``check_hashes=False``
    skips reading every payload byte (sizes and manifest only).
    """
    study_dir = Path(study_dir)
    report = CleanupReport()
    for tmp in _stale_temps(study_dir, tmp_min_age_s, time.time()):
        report.candidates.append(Candidate(tmp, dir_nbytes(tmp), REASON_TMP))

    records: list[CheckpointRecord] = []
    for trial_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        if trial_dir.name.startswith(TMP_PREFIX):
            continue
        finished = trial_finished(trial_dir)
        for ckpt in sorted(trial_dir.iterdir()):
            index = checkpoint_index(ckpt)
            if index is None or not ckpt.is_dir():
                continue
            if is_tombstone(ckpt):
                leftover = dir_nbytes(ckpt) - dir_nbytes(ckpt / PRUNED_FILE)
                if any(e.name != PRUNED_FILE for e in ckpt.iterdir()):
                    report.candidates.append(Candidate(ckpt, leftover, REASON_HALF_PRUNED))
                continue
            check = verify_checkpoint(ckpt, check_hashes=check_hashes)
            if not check.ok:
                what = f"{check.bad_file}: {check.problem}" if check.bad_file else check.problem
                report.candidates.append(Candidate(ckpt, dir_nbytes(ckpt), f"corrupt: {what}"))
                continue
            records.append(
                CheckpointRecord(
                    trial_id=trial_dir.name,
                    path=str(ckpt),
                    index=index,
                    score=checkpoint_score(ckpt, metric),
                    size_bytes=dir_nbytes(ckpt),
                    trial_finished=finished,
                )
            )

    plan = plan_retention(records, policy, mode=mode)
    report.over_budget = plan.over_budget
    for r in records:
        if r.path in plan.delete:
            report.candidates.append(
                Candidate(Path(r.path), r.size_bytes, f"retention: {plan.reasons[r.path]}")
            )
        else:
            report.protected.append(Path(r.path))
    report.reclaimable_bytes = sum(c.bytes for c in report.candidates)
    return report


def execute(report: CleanupReport) -> int:
    """Delete the report's candidates; return bytes freed.

    ``tmp-*`` leftovers are removed; checkpoint directories are tombstoned with
    :func:`prune_checkpoint` (the directory stays for Ray Tune). Protected paths
    are never touched, even if listed by mistake.
    """
    protected = {p.resolve() for p in report.protected}
    freed = 0
    for cand in report.candidates:
        path = cand.path
        if path.resolve() in protected:
            _LOG.error("refusing to delete protected checkpoint %s", path)
            continue
        if not path.exists() and not path.is_symlink():
            continue
        if _is_temp(path.name):
            size = dir_nbytes(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            freed += size
        else:
            freed += prune_checkpoint(path, reason=cand.reason)
        _LOG.info("cleanup: removed %s (%s)", path, cand.reason)
    return freed
