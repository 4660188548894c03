"""``python -m tune_app.run [overrides...]`` | ``python -m tune_app.run resume=<study dir>``.

(``--help`` lists every config group, option and default; ``--cfg job [overrides...]``
prints the composed config and runs nothing: ``tune_app.cli_help``.)

Starts a study (Hydra overrides such as ``model=minilm tune.num_samples=50``) or
resumes an interrupted one (the same as ``Tuner.restore`` on that folder). Known
errors become one clear message and a non-zero exit, never a traceback.

Exit codes: 0 study complete (or nothing left to run), 1 trials failed,
2 bad input (config, data, disk), 130 interrupted (SIGINT/SIGTERM; resumable).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tune_app.errors import KNOWN_ERRORS, format_error
from tune_app.logs import setup_logging, setup_study_logging
from tune_app.tracking.sanitize import install_std_streams, sanitize

if TYPE_CHECKING:
    from tune_app.config import AppConfig

logger = logging.getLogger("tune_app.run")

#: ``-v``: everything on the console (Tune's tables, Ray workers' output, INFO logs).
VERBOSE_FLAGS = frozenset({"-v", "--verbose"})
_CLOCK: dict[str, float] = {}
#: Mirrored on the console by a print: in the study's JSON log only.
FILE_ONLY = {"console": False}


def _resume_target(overrides: list[str]) -> tuple[str | None, list[str]]:
    rest, target = [], None
    for o in overrides:
        key, sep, value = o.partition("=")
        if key == "resume" and sep:
            target = value if value not in {"", "null", "None"} else None
        else:
            rest.append(o)
    return target, rest


def main(argv: list[str] | None = None) -> int:
    install_std_streams()  # nothing printed by this process or its Ray workers carries a secret
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in args):
        from tune_app.cli_help import help_text

        print(help_text())
        return 0
    loud = any(a in VERBOSE_FLAGS for a in args)
    args = [a for a in args if a not in VERBOSE_FLAGS]
    _CLOCK["start"] = time.monotonic()
    setup_logging(verbose_console=loud)
    try:
        from tune_app.cli_help import cfg_text, wants_cfg

        if wants_cfg(args):
            print(cfg_text(args))
            return 0
        return _run(args)
    except KNOWN_ERRORS as exc:
        print(sanitize(format_error(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before Tune took over SIGINT (start-up) or after it handed it back
        print("interrupted: run the same command again (a study folder that was created resumes with "
              "`python -m tune_app.run resume=<study folder>`)", file=sys.stderr)
        return 130


def _run(args: list[str]) -> int:
    from tune_app.config import (
        ConfigError,
        apply_resume_overrides,
        check_resume_overrides,
        compose,
    )
    from tune_app.object_store import mirrored_study
    from tune_app.study_lock import study_lock

    target, overrides = _resume_target(args)
    if target is not None:
        check_resume_overrides(overrides)
        cfg = apply_resume_overrides(_resumed_config(target), overrides)
        with study_lock(cfg.study_dir), mirrored_study(cfg, say=_say):  # the folder found, wherever it was started
            return _resume(cfg)

    cfg = compose(overrides)
    from tune_app.start_checks import check_start
    from tune_app.study import STUDY_CONFIG
    from tune_app.tuner import check_resources

    check_start(cfg)  # storage folder and local data: bad ones fail before anything is created

    def refuse_existing() -> None:
        if (cfg.study_dir / STUDY_CONFIG).exists():
            raise ConfigError(
                f"study folder {cfg.study_dir} already exists. Resume it with "
                f"`python -m tune_app.run resume={cfg.study_dir}`, or start a new study with tune.name=<new name>")

    refuse_existing()
    check_resources(cfg)  # a request Ray cannot meet fails here, before the study folder exists
    with study_lock(cfg.study_dir), mirrored_study(cfg, say=_say):
        refuse_existing()  # another command may have created it meanwhile
        return _start(cfg)


def _resumed_config(target: str) -> AppConfig:
    """The configuration of the study ``resume=`` names, placed where its folder is: a study
    folder, or a bucket URI (its working copy, downloaded first when this machine has none).
    A folder that is no study, or a bad URI, is a ``ConfigError`` before any lock file is made."""
    from tune_app.config import ConfigError, load_study_config
    from tune_app.object_store import ObjectStoreError, fetch_study, parse_store_uri

    try:
        in_a_store = parse_store_uri(target) is not None
    except ObjectStoreError as exc:
        raise ConfigError(f"resume={target}: {exc}") from None
    if in_a_store:
        return fetch_study(target)
    study_dir = Path(target).expanduser().resolve()
    if not study_dir.is_dir():
        raise ConfigError(f"resume={target}: no such folder. Pass the study folder "
                          "<tune.storage_path>/<tune.name> that `python -m tune_app.run` printed")
    return load_study_config(study_dir)


def _start(cfg: object) -> int:
    """Prepare the study folder and run the study (the caller holds the study lock)."""
    from tune_app.config import AppConfig
    from tune_app.object_store import study_mirror
    from tune_app.study import prepare_study
    from tune_app.tracking.uri import create_sqlite_store
    from tune_app.tuner import discard_unstarted_tune_files, run_study

    assert isinstance(cfg, AppConfig)
    meta = prepare_study(cfg)
    create_sqlite_store(cfg.tracking_uri)  # a kill while MLflow makes its tables leaves no half-made store
    mirror = study_mirror(cfg)
    if mirror is not None:
        mirror.sync(force=True)  # the bucket has the study from here on: resume=<uri> works on any machine
    discard_unstarted_tune_files(cfg.study_dir)
    _study_logging(cfg)
    sizes = ", ".join(f"{k} {v}" for k, v in meta["split_sizes"].items())
    _say(f"Study {cfg.study_dir}: {cfg.tune.num_samples} trials of up to {cfg.tune.max_epochs} epochs | "
         f"model {'|'.join(cfg.tune.encoders) + ' (sampled per trial)' if cfg.tune.encoders else cfg.model.name} | data {cfg.data.name} ({sizes} posts; {meta['dataset_revision']}) | "
         f"scheduler {cfg.tune.scheduler} | searchspace {cfg.searchspace} | seed {cfg.seed}")
    _say(f"Log: {cfg.study_dir / 'logs' / 'study.jsonl'} (add -v to print everything)")
    return _report(run_study(cfg, resume=False), cfg)


def _say(line: str, file: TextIO | None = None) -> None:
    """A console line, also kept in the study's JSON log."""
    print(line, file=file, flush=True)
    logger.info(line, extra=FILE_ONLY)


def _study_logging(cfg: object) -> None:
    from tune_app.config import AppConfig

    assert isinstance(cfg, AppConfig)
    setup_study_logging(cfg.study_dir, study_id=cfg.tune.name, max_bytes=cfg.tracking.log_max_bytes,
                        backup_count=cfg.tracking.log_backup_count)


def _resume(cfg: object) -> int:
    """Resume a study from any point a kill can leave it at (the caller holds the study lock).

    Before Tune saved any state (a kill during start-up) the study starts from its saved
    config; otherwise ``Tuner.restore``. Torn temp files of killed writers are removed first.
    """
    from tune_app.checkpoints.cleanup_scan import remove_torn_temps
    from tune_app.config import AppConfig, ConfigError
    from tune_app.study import ensure_prepared
    from tune_app.tracking.replay import replay_pending
    from tune_app.tracking.uri import create_sqlite_store
    from tune_app.trial_journal import journal_path
    from tune_app.tuner import (
        can_restore,
        check_resources,
        check_tune_state_readable,
        has_tune_state,
        run_study,
        study_status,
    )

    assert isinstance(cfg, AppConfig)
    study = cfg.study_dir
    for path in remove_torn_temps(study):
        logger.info("removed %s, left by an interrupted write", path.relative_to(study))
    if not has_tune_state(study):
        check_resources(cfg)
        _say(f"Tune saved no state in {study} (interrupted at start-up): starting the study from its saved config")
        return _start(cfg)
    check_tune_state_readable(study)
    ensure_prepared(cfg)
    create_sqlite_store(cfg.tracking_uri)
    _study_logging(cfg)
    if not can_restore(study):
        raise ConfigError(f"resume={study}: Tune's tuner.pkl is missing beside its saved state, so Tune cannot "
                          "restore the study. Restore the file from a backup, or start a new study")
    status = study_status(cfg)
    if status.complete:
        replay_pending(cfg.study_dir, cfg.tracking_uri, experiment_name=cfg.experiment_name)  # nothing else replays it
        _say(f"Study {cfg.study_dir} is already complete: {status.ended}/{status.num_samples} "
             f"trials ({status.counts_line}); {status.best_line}. Nothing was re-run.")
        _tracking_note(cfg.study_dir)
        code = _evaluate_on_finish(cfg.study_dir)
        _say(mlflow_hint(cfg))
        return code
    journaled = (f"; {status.journaled_only} more trial(s) started after Tune's last full save (named by "
                 f"{journal_path(cfg.study_dir)}) rejoin the study" if status.journaled_only else "")
    _say(f"Resuming {cfg.study_dir}: {status.ended}/{status.num_samples} trials ended ({status.counts_line}); "
         f"{status.best_line}{journaled}")
    return _report(run_study(cfg, resume=True), cfg)


def _evaluate_on_finish(study_dir: Path) -> int:
    """The once-per-study test evaluation; 0 when done or not needed, 1 when it failed."""
    from tune_app.evaluation.contracts import ContractError
    from tune_app.evaluation.predict import EvaluationError
    from tune_app.evaluation.report import evaluate_finished_study

    try:
        path = evaluate_finished_study(study_dir)
    except (EvaluationError, ContractError) as exc:
        print(f"Test evaluation failed: {exc}\nRun it by hand: python -m tune_app.evaluate --study {study_dir}",
              file=sys.stderr)
        return 1
    if path is not None:
        _say(f"Test evaluation: {_test_score(path)}report {path.parent / 'evaluation_report.html'} (JSON: {path})")
    elif (study_dir / "evaluation_report.json").is_file():
        _say(f"Test evaluation: report {study_dir / 'evaluation_report.html'} (done before)")
    return 0


def _test_score(report_path: Path) -> str:
    """``test macro-F1 0.8739 (trial f33bdb02); `` from a written report ('' if unreadable)."""
    import json

    try:
        report = json.loads(report_path.read_text())
        value = report["test_metrics"]["criteria_matching"]["macro_f1"]
        return f"test macro-F1 {value:.4g} (trial {report['best_trial_id']}); "
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def mlflow_hint(cfg: object) -> str:
    """How to open the study's MLflow runs (the local store's UI command, or the server's address)."""
    from tune_app.config import AppConfig

    assert isinstance(cfg, AppConfig)
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:"):
        return (f"MLflow (experiment {cfg.experiment_name}): mlflow ui --backend-store-uri {uri} --port 5000, "
                "then open http://127.0.0.1:5000")
    return f"MLflow (experiment {cfg.experiment_name}): {uri}"


def _elapsed() -> str:
    from tune_app.tracking.progress import format_duration

    start = _CLOCK.get("start")
    return f" in {format_duration(time.monotonic() - start)}" if start is not None else ""


def _report(outcome: object, cfg: object) -> int:
    from tune_app.tuner import StudyOutcome

    assert isinstance(outcome, StudyOutcome)
    if outcome.complete:
        _say(f"Study complete: {outcome.ended}/{outcome.num_samples} trials ({outcome.counts_line}){_elapsed()}; "
             f"{outcome.best_line}. Results in {outcome.study_dir}")
        _tracking_note(outcome.study_dir)
        code = _evaluate_on_finish(outcome.study_dir)
        _say(mlflow_hint(cfg))
        return code
    if outcome.errored:
        for trial, error_file in outcome.failures:
            print(f"Trial {trial} failed:\n{trial_error(error_file)}\n"
                  f"(error file: {error_file or 'none saved'})\n", file=sys.stderr)
        print(f"Study ended with {outcome.errored} failed trial(s) ({outcome.counts_line}, of "
              f"{outcome.num_samples}). After fixing the cause, resume: python -m tune_app.run resume={outcome.study_dir}",
              file=sys.stderr)
        _tracking_note(outcome.study_dir, sys.stderr)
        _say(mlflow_hint(cfg), file=sys.stderr)
        return 1
    _say(f"Study interrupted: {outcome.ended}/{outcome.num_samples} trials ended ({outcome.counts_line})"
         f"{_elapsed()}; {outcome.best_line}. Resume with:\n"
         f"  python -m tune_app.run resume={outcome.study_dir}", file=sys.stderr)
    _tracking_note(outcome.study_dir, sys.stderr)
    return 130


def _tracking_note(study_dir: Path, file: TextIO | None = None) -> None:
    """How many MLflow records are still buffered (or refused) and the command that replays them."""
    from tune_app.tracking.replay import pending_note

    note = pending_note(study_dir)
    if note:
        print(note, file=file)


_EXC_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))(?::\s?(.*))?$")
_CHAIN_MARKERS = ("The above exception", "During handling of the above", "Traceback (most recent call last)")


def error_message(error_text: str, max_lines: int = 40) -> str:
    """The exception line and message (no traceback) of the last failure in Tune's ``error.txt``.

    Our own actionable errors (``KNOWN_ERRORS``) win over whatever Ray raised while
    wrapping them; otherwise the last exception in the text is used.
    """
    block = error_text.split("Failure # ")[-1].splitlines()
    known = {cls.__name__ for cls in KNOWN_ERRORS}
    found = [(i, m) for i, line in enumerate(block) if (m := _EXC_LINE.match(line))]
    if not found:
        return "\n".join(line for line in block[-max_lines:] if line.strip())
    start, match = next(((i, m) for i, m in reversed(found) if m.group(1) in known), found[-1])
    lines = [f"{match.group(1)}: {match.group(2) or ''}".rstrip()]
    for line in block[start + 1:]:
        if line.startswith(_CHAIN_MARKERS) or _EXC_LINE.match(line) or "ray::" in line:
            break
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[:max_lines])


def trial_error(error_file: Path | None) -> str:
    """The error message in a failed trial's Tune ``error.txt`` (see :func:`error_message`)."""
    try:
        text = error_file.read_text(errors="replace") if error_file is not None else ""
    except OSError:
        text = ""
    return error_message(text) if text.strip() else "(no error text: see the trial's output above)"


if __name__ == "__main__":
    sys.exit(main())
