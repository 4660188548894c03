"""Find (and optionally remove) what a study no longer needs on disk.

:func:`scan_study` only reads (``keeper.scan_checkpoints`` and the stale temps);
:func:`execute` has the study's ``CheckpointKeeper`` delete the candidates. Checkpoint
directories are tombstoned (never removed), so Ray Tune's saved state stays resolvable.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tune_app.atomic_fs import TMP_MARK as ATOMIC_TMP_MARK
from tune_app.checkpoints.keeper import CheckpointKeeper, scan_checkpoints
from tune_app.checkpoints.retention import (
    CheckpointRecord,
    RetentionPolicy,
    plan_retention,
)
from tune_app.checkpoints.store import TMP_PREFIX, dir_nbytes
from tune_app.outcome import TRIAL_STATE_FILE as OUTCOME_STATE_FILE

__all__ = ["Candidate", "CleanupReport", "TRIAL_STATE_FILE", "execute", "remove_torn_temps", "scan_study"]

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
    study_dir: Path | None = None


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
    keeper = CheckpointKeeper(study_dir, metric="")
    removed = []
    for path in _stale_temps(study_dir, 0.0, time.time()):
        keeper.remove_temp(path)
        removed.append(path)
    return removed


def scan_study(
    study_dir: Path,
    *,
    metric: str,
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
    report = CleanupReport(study_dir=study_dir)
    for tmp in _stale_temps(study_dir, tmp_min_age_s, time.time()):
        report.candidates.append(Candidate(tmp, dir_nbytes(tmp), REASON_TMP))

    records: list[CheckpointRecord] = []
    for found in scan_checkpoints(study_dir, metric, verify="hashes" if check_hashes else "sizes"):
        if found.kind == "half_pruned":
            report.candidates.append(Candidate(found.path, found.bytes, REASON_HALF_PRUNED))
        elif found.kind == "corrupt":
            report.candidates.append(Candidate(found.path, found.bytes, f"corrupt: {found.problem}"))
        elif found.record is not None:
            records.append(found.record)

    plan = plan_retention(records, policy)
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


def execute(report: CleanupReport, keeper: CheckpointKeeper | None = None) -> int:
    """Delete the report's candidates through the study's :class:`CheckpointKeeper`; return
    bytes freed.

    ``tmp-*`` leftovers are removed; checkpoint directories are tombstoned (the directory
    stays for Ray Tune). Protected paths are never touched, even if listed by mistake.
    """
    protected = {p.resolve() for p in report.protected}
    owner = keeper or CheckpointKeeper(report.study_dir or Path("."), metric="")
    freed = 0
    for cand in report.candidates:
        path = cand.path
        if path.resolve() in protected:
            _LOG.error("refusing to delete protected checkpoint %s", path)
            continue
        if not path.exists() and not path.is_symlink():
            continue
        freed += owner.remove_temp(path) if _is_temp(path.name) else owner.prune(path, cand.reason)
        _LOG.info("cleanup: removed %s (%s)", path, cand.reason)
    return freed
