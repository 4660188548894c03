"""``python -m tune_app.evaluate --study DIR [--trial-id ID] [--split test|validation]``.

Recomputes an evaluation by hand (the study already evaluated its test split once
when it finished; see docs/reports.md). Without an existing study report, and for
the whole study on the test split, the result becomes the study report (recorded in
``meta/study.json``); otherwise it goes to ``<study>/manual_evaluation/`` (or ``--out``)
and, when a study report exists, the largest difference from it is printed. An
evaluation of the whole study on the test split is logged on the study's MLflow study
run (metrics at the next step; its JSON, HTML and plots replace the run's report files).

Exit codes: 0 ok, 2 bad input (missing study, no checkpoint to evaluate...), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("tune_app.evaluate")

MANUAL_DIR = "manual_evaluation"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune_app.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, type=Path, help="the study folder <storage_path>/<name>")
    p.add_argument("--trial-id", default=None, help="evaluate this trial (Tune id or folder name)")
    p.add_argument("--split", default="test", choices=("test", "validation"))
    p.add_argument("--out", type=Path, default=None, help="where to write the report and plots")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-plots", action="store_true", help="write the JSON report only")
    return p


def main(argv: list[str] | None = None) -> int:
    from tune_app.tracking.sanitize import install_std_streams

    install_std_streams()
    args = _parser().parse_args(argv)
    try:
        from tune_app.errors import KNOWN_ERRORS, format_error
        from tune_app.evaluation.contracts import ContractError
        from tune_app.evaluation.predict import EvaluationError
        from tune_app.logs import setup_logging
        from tune_app.tracking.sanitize import sanitize

        setup_logging()
        handled: tuple[type[BaseException], ...] = (EvaluationError, ContractError, *KNOWN_ERRORS)
        try:
            return _evaluate(args)
        except handled as exc:
            print(sanitize(format_error(exc)), file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("interrupted: the evaluation stopped (a report is written whole or not at all); "
              "run the same command again to evaluate", file=sys.stderr)
        return 130


def _evaluate(args: argparse.Namespace) -> int:
    from tune_app.config import load_study_config
    from tune_app.evaluation.predict import EvaluationError
    from tune_app.object_store import mirrored_study
    from tune_app.study_lock import study_lock

    study = args.study.expanduser().resolve()
    if not (study / "study_config.yaml").is_file():
        raise EvaluationError(f"{study} is not a tune_app study folder (no study_config.yaml)")
    cfg = load_study_config(study)  # a broken config fails here, before the lock file is made
    with study_lock(study), mirrored_study(cfg):  # never beside a run of the same study; bucket studies: uploaded
        return _evaluate_study(args, study)


def _evaluate_study(args: argparse.Namespace, study: Path) -> int:
    from tune_app.evaluation.report import (
        REPORT_FILE,
        evaluate_study,
        max_abs_difference,
        record_test_evaluation,
        recorded_test_evaluation,
        refresh_trial_reports,
        write_study_report,
    )

    existing = study / REPORT_FILE
    whole_test = args.trial_id is None and args.split == "test"
    becomes_study_report = args.out is None and whole_test and not existing.is_file()
    out = args.out or (study if becomes_study_report else study / MANUAL_DIR)
    if becomes_study_report:
        refresh_trial_reports(study)
    report = evaluate_study(study, split=args.split, trial_id=args.trial_id, device=args.device)
    path = write_study_report(report, out, study_dir=study, plots=not args.no_plots)
    if becomes_study_report and recorded_test_evaluation(study) is None:
        record_test_evaluation(study, report)
    if whole_test:  # the study's MLflow study run shows this evaluation (its files replace the last set)
        from tune_app.evaluation.report import log_report_to_mlflow, read_study_config

        log_report_to_mlflow(path.parent, read_study_config(study), report)
    m = report[f"{args.split}_metrics"]
    print(f"{args.split}: trial {report['best_trial_id']} ({len(report['evaluated_checkpoints'])} "
          f"checkpoint(s)) macro-F1 {m['criteria_matching']['macro_f1']:.4f}, evidence token F1 "
          f"{m['evidence_binding']['token_f1']:.4f}, char F1 {m['evidence_binding']['char_f1']:.4f}")
    print(f"report: {path}")
    if existing.is_file() and path != existing and whole_test:
        saved = json.loads(existing.read_text(encoding="utf-8"))
        diff = max_abs_difference(saved.get("test_metrics"), report["test_metrics"])
        print(f"largest difference from the study report {existing}: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
