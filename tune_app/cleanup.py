"""``python -m tune_app.cleanup [--study DIR] [--execute]``: reclaim a study's disk space.

Lists what a study no longer needs: temp folders left by interrupted saves, half-
pruned tombstones, corrupt checkpoints and valid checkpoints that the study's
retention policy (``study_config.yaml``) does not keep, with their sizes and the
total reclaimable bytes. Dry run by default; ``--execute`` deletes (checkpoint
folders become tombstones, so Tune's saved state stays valid). Protected
checkpoints (the study's best, each running trial's resume point) are never
touched. Without ``--study``, every study under ``./experiments`` is scanned.

Exit codes: 0 done (also when nothing was found), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from tune_app.checkpoints.failpoints import pause
from tune_app.config import AppConfig, ConfigError, load_study_config
from tune_app.object_store import mirrored_study
from tune_app.study_lock import StudyLockedError, study_lock
from tune_app.tracking.sanitize import sanitize

if TYPE_CHECKING:  # the checkpoint modules import torch: loaded in main's try, so Ctrl-C is handled there
    from tune_app.checkpoints.cleanup_scan import CleanupReport

STUDY_CONFIG = "study_config.yaml"
DEFAULT_ROOT = Path("experiments")


class CleanupError(Exception):
    """Bad input: the message says what is wrong."""


def find_studies(root: Path) -> list[Path]:
    """Study folders (holding ``study_config.yaml``) under ``root``."""
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob(STUDY_CONFIG) if p.is_file())


def _check_config(study: Path) -> AppConfig:
    try:
        return load_study_config(study)
    except ConfigError as exc:
        raise CleanupError(f"--study {study}: {exc}") from exc


def scan(study: Path, *, tmp_min_age_s: float) -> CleanupReport:
    """Cleanup report of one study, using its own metric, mode and retention policy."""
    from tune_app.checkpoints.cleanup_scan import scan_study
    from tune_app.checkpoints.retention import RetentionPolicy

    cfg = _check_config(study)
    r = cfg.retention
    policy = RetentionPolicy(keep_last_n=r.keep_last_n, keep_best_k=r.keep_best_k,
                             keep_best_k_max=r.keep_best_k_max, max_total_size_gb=r.max_total_size_gb)
    return scan_study(study, metric=cfg.tune.metric, policy=policy, tmp_min_age_s=tmp_min_age_s)


def format_report(study: Path, report: CleanupReport) -> str:
    """A table of candidates (path relative to the study, size, reason) and the total."""
    from tune_app.checkpoints.preflight import human_bytes

    lines = [f"Study {study}: {len(report.candidates)} candidate(s), "
             f"{len(report.protected)} protected checkpoint(s) kept"]
    if report.candidates:
        rows = [(str(c.path.relative_to(study)) if c.path.is_relative_to(study) else str(c.path),
                 human_bytes(c.bytes), c.reason) for c in report.candidates]
        width = max(len("path"), *(len(r[0]) for r in rows))
        lines.append(f"  {'path':<{width}}  {'size':>10}  reason")
        lines += [f"  {p:<{width}}  {size:>10}  {reason}" for p, size, reason in rows]
    lines.append(f"  reclaimable: {human_bytes(report.reclaimable_bytes)} ({report.reclaimable_bytes} bytes)")
    if report.over_budget:
        lines.append("  warning: the protected checkpoints alone exceed retention.max_total_size_gb")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tune_app.tracking.sanitize import install_std_streams

    install_std_streams()
    parser = argparse.ArgumentParser(prog="python -m tune_app.cleanup", description=__doc__.split("\n\n")[1])
    parser.add_argument("--study", type=Path, help=f"a study folder (default: every study under ./{DEFAULT_ROOT})")
    parser.add_argument("--execute", action="store_true", help="delete the candidates (default: dry run)")
    parser.add_argument("--tmp-min-age", type=float, default=600.0, metavar="SECONDS",
                        help="only list temp folders older than this (a running save is younger); default 600")
    args = parser.parse_args(argv)
    try:
        return _cleanup(args)
    except KeyboardInterrupt:
        what = ("deletion stopped part-way (each checkpoint is tombstoned so the study stays valid); run the same "
                "command again to finish" if args.execute else "nothing was deleted")
        print(f"interrupted: {what}", file=sys.stderr)
        return 130


def _cleanup(args: argparse.Namespace) -> int:
    locks = ExitStack()
    try:
        if args.study is not None:
            study = args.study.expanduser().resolve()
            if not study.is_dir():
                raise CleanupError(f"--study {args.study}: no such folder")
            if not (study / STUDY_CONFIG).is_file():
                raise CleanupError(f"--study {args.study}: not a tune_app study ({STUDY_CONFIG} is missing); "
                                   "pass the folder <tune.storage_path>/<tune.name>")
            studies = [study]
        else:
            studies = [s.resolve() for s in find_studies(DEFAULT_ROOT)]
            if not studies:
                print(f"No studies under ./{DEFAULT_ROOT} (folders with {STUDY_CONFIG}); nothing to clean.")
                return 0
        if args.execute:  # deleting needs the study to itself: a running study refuses
            for s in studies:
                cfg = _check_config(s)  # a broken config fails before any lock file is made
                locks.enter_context(study_lock(s, command="python -m tune_app.cleanup --execute"))
                locks.enter_context(mirrored_study(cfg))  # a bucket study: what went goes from the bucket too
        reports = [(s, scan(s, tmp_min_age_s=args.tmp_min_age)) for s in studies]
    except (CleanupError, StudyLockedError, ConfigError) as exc:
        locks.close()
        print(sanitize(f"error: {exc}"), file=sys.stderr)
        return 2
    with locks:
        return _print_and_execute(args, reports)


def _print_and_execute(args: argparse.Namespace, reports: list[tuple[Path, CleanupReport]]) -> int:
    from tune_app.checkpoints.cleanup_scan import execute
    from tune_app.checkpoints.preflight import human_bytes

    total = 0
    for study, report in reports:
        print(format_report(study, report))
        total += report.reclaimable_bytes
    if len(reports) > 1:
        print(f"Total reclaimable over {len(reports)} studies: {human_bytes(total)} ({total} bytes)")
    sys.stdout.flush()
    pause("cleanup")
    if not args.execute:
        target = f"--study {reports[0][0]} " if args.study is not None else ""
        print(f"Dry run: nothing was deleted. To delete, run: python -m tune_app.cleanup {target}--execute")
        return 0
    freed = sum(execute(report) for _, report in reports)
    print(f"Deleted: {human_bytes(freed)} ({freed} bytes) freed; protected checkpoints were kept.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
