"""Per-trial and per-study evaluation reports.

* :func:`write_trial_report` - ``<trial>/evaluation_report.json`` from what the trial
  left on disk (``trial_state.json``, ``trial_config.yaml``, ``params.json``, its
  checkpoints): validation metrics only. The trainable calls it after every epoch.
* :func:`evaluate_study` - the best trial of the study by the optimisation metric,
  each of its co-best live checkpoints (retention keeps exactly those), thresholds
  calibrated on validation, metrics on the test split per checkpoint and aggregated.
* :func:`evaluate_finished_study` - the once-per-study test evaluation: runs
  :func:`evaluate_study`, writes ``<study>/evaluation_report.json`` plus plots, records
  it in ``meta/study.json`` (``test_evaluation``), so a second call does nothing, and logs
  its numbers on the study's MLflow study-level run.

Every study report holds ``baselines`` (:mod:`tune_app.evaluation.baselines`): TF-IDF +
logistic regression and always-positive for criteria matching, a lexical TF-IDF sentence
baseline for evidence binding, scored on the same split, and the model's margin over each;
``param_importance`` (:mod:`tune_app.evaluation.importance`: computed only from enough
scored trials, with their count) and ``precision_recall`` (:mod:`tune_app.evaluation.pr_curves`:
per-criterion PR curves and average precision of the evaluated checkpoints, pooled).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tune_app import outcome
from tune_app.checkpoints.failpoints import pause
from tune_app.config import AppConfig
from tune_app.evaluation.contracts import validate, validate_checkpoint_metadata
from tune_app.evaluation.predict import EvaluationError
from tune_app.outcome import STATE_COMPLETED, STATE_STATUSES, STATE_STOPPED
from tune_app.study import STUDY_META

logger = logging.getLogger(__name__)

REPORT_FILE = "evaluation_report.json"
PLOTS_DIR = "plots"
HTML_FILE = "evaluation_report.html"
TRIAL_STATE = "trial_state.json"
TRIAL_CONFIG = "trial_config.yaml"
#: ``schema_version`` of the trial report.
SCHEMA_VERSION = 1
#: ``schema_version`` of the study report (2: ``param_importance`` and ``precision_recall``).
STUDY_SCHEMA_VERSION = 2
TOP_TRIALS = 10
#: Scores closer than this are ties (co-best checkpoints / trials).
TIE_TOL = 1e-12


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: Any) -> None:
    from tune_app.study import write_json_atomic

    write_json_atomic(path, doc)


# --- what a study folder holds --------------------------------------------------------
@dataclass
class CheckpointInfo:
    """One ``checkpoint_N`` folder of a trial: its epoch and score, live or pruned."""

    path: Path
    status: str  # live | pruned | invalid
    epoch: int | None = None
    score: float | None = None
    model_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class TrialInfo:
    """A trial folder read back: id, status, validation history, params, checkpoints."""

    path: Path
    trial_id: str
    status: str
    history: list[dict[str, Any]]
    params: dict[str, Any]
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _trial_id(trial_dir: Path) -> str:
    """Tune's trial id (from ``result.json``, else an earlier report), else the folder name."""
    result = trial_dir / "result.json"
    if result.is_file():
        for line in reversed(result.read_text(encoding="utf-8", errors="replace").splitlines()):
            try:
                tid = json.loads(line).get("trial_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(tid, str) and tid:
                return tid
    report = _read_json(trial_dir / REPORT_FILE)
    if isinstance(report, dict) and isinstance(report.get("trial_id"), str) and report["trial_id"]:
        return str(report["trial_id"])
    return trial_dir.name


def read_checkpoints(trial_dir: Path, metric: str) -> list[CheckpointInfo]:
    """The trial's ``checkpoint_N`` folders in order (``keeper.scan_trial_checkpoints``), each
    live (verifies), pruned or invalid."""
    from tune_app.checkpoints.keeper import scan_trial_checkpoints

    out = []
    for found in scan_trial_checkpoints(trial_dir, verify="sizes"):
        if found.kind in {"tombstone", "half_pruned"}:
            out.append(CheckpointInfo(found.path, "pruned"))
            continue
        # An invalid one keeps its epoch and score: a corrupt best is reported as skipped.
        trainer = ((_read_json(found.path / "state.json") or {}).get("trainer_state") or {})
        manifest = _read_json(found.path / "manifest.json")
        epoch = trainer.get("epoch")
        out.append(CheckpointInfo(
            found.path, "live" if found.kind == "valid" else "invalid", epoch=epoch if isinstance(epoch, int) else None,
            score=_finite((trainer.get("metrics") or {}).get(metric)),
            model_sha256=(((manifest or {}).get("files") or {}).get("model.safetensors") or {}).get("sha256"),
        ))
    return out


def read_trial(trial_dir: Path, metric: str, params: dict[str, Any] | None = None
               ) -> TrialInfo:
    """Everything the reports need from one trial folder."""
    state = _read_json(trial_dir / TRIAL_STATE) or {}
    history = [h for h in state.get("history", []) if isinstance(h, dict)]
    if params is None:
        params = _read_json(trial_dir / "params.json")
    info = TrialInfo(path=trial_dir, trial_id=_trial_id(trial_dir),
                     status=str(state["status"]) if state.get("status") in STATE_STATUSES else "unknown",
                     history=history, params=dict(params or {}),
                     checkpoints=read_checkpoints(trial_dir, metric))
    info.best_score, info.best_epoch = outcome.best_epoch(history, metric)
    return info


def trial_dirs(study_dir: Path) -> list[Path]:
    """Trial folders of a study (those with ``params.json`` or ``trial_state.json``), sorted."""
    return sorted(p for p in Path(study_dir).iterdir()
                  if p.is_dir() and ((p / "params.json").is_file() or (p / TRIAL_STATE).is_file()))


def read_study_config(study_dir: Path) -> AppConfig:
    """The study's config, with its paths pointed at where the study folder is now."""
    from tune_app.config import load_study_config

    return load_study_config(study_dir)  # placed where the folder is (an object-store study keeps its bucket)


def read_trial_config(trial_dir: Path, study_cfg: AppConfig) -> AppConfig:
    """The trial's resolved config (``trial_config.yaml``; the study's if missing), paths fixed."""
    from tune_app import config as config_mod

    path = trial_dir / TRIAL_CONFIG
    if not path.is_file():
        return study_cfg
    cfg = config_mod.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))
    cfg.tune.storage_path, cfg.tune.name = study_cfg.tune.storage_path, study_cfg.tune.name
    return cfg


# --- per-trial report -----------------------------------------------------------------
def _metrics_only(entry: dict[str, Any]) -> dict[str, float | None]:
    return {k: _finite(v) for k, v in entry.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)}


def build_trial_report(trial_dir: Path, *, trial_id: str | None = None, metric: str | None = None,
                       params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trial report of ``trial_dir`` (validation metrics, config, checkpoint references)."""
    trial_dir = Path(trial_dir)
    cfg_doc = yaml.safe_load((trial_dir / TRIAL_CONFIG).read_text(encoding="utf-8")) \
        if (trial_dir / TRIAL_CONFIG).is_file() else {}
    tune_doc = (cfg_doc or {}).get("tune") or {}
    metric = metric or tune_doc.get("metric") or "val_macro_f1"
    info = read_trial(trial_dir, metric, params)
    latest = info.history[-1] if info.history else {}
    best = next((h for h in info.history if h.get("epoch") == info.best_epoch), {})
    doc = {
        "report_type": "trial", "schema_version": SCHEMA_VERSION,
        "study_id": trial_dir.parent.name, "trial_id": trial_id or info.trial_id,
        "trial_dir": trial_dir.name, "generated_at": _now(), "status": info.status,
        "epochs_completed": len(info.history), "optimization_metric_name": metric,
        "optimization_mode": "max", "best_validation_score": info.best_score, "best_epoch": info.best_epoch,
        "validation_metrics": _metrics_only(latest), "best_validation_metrics": _metrics_only(best),
        "history": [{"epoch": int(h["epoch"]), "metrics": _metrics_only(h)} for h in info.history
                    if isinstance(h.get("epoch"), int)],
        "params": info.params, "config": cfg_doc or {},
        "checkpoints": [{"name": c.name, "path": f"{trial_dir.name}/{c.name}", "status": c.status,
                         "epoch": c.epoch, "score": c.score, "model_sha256": c.model_sha256}
                        for c in info.checkpoints],
    }
    return _clean(doc)


def write_trial_report(trial_dir: Path, *, trial_id: str | None = None, metric: str | None = None,
                       params: dict[str, Any] | None = None) -> Path:
    """Build, validate and atomically write ``<trial_dir>/evaluation_report.json``."""
    doc = build_trial_report(trial_dir, trial_id=trial_id, metric=metric, params=params)
    path = Path(trial_dir) / REPORT_FILE
    validate(doc, "trial_report", where=str(path))
    _write_json(path, doc)
    return path


# --- choosing what to evaluate ----------------------------------------------------------
@dataclass
class Selection:
    """The trial to evaluate, its co-best live checkpoints, and trials tied with it."""

    trial: TrialInfo
    checkpoints: list[CheckpointInfo]
    score: float
    tied_trial_ids: list[str]


def select_checkpoints(trials: list[TrialInfo], trial_id: str | None = None) -> Selection:
    """The best trial (by its best live checkpoint's score) and all its checkpoints at that score.

    Retention keeps the study's best checkpoint(s) (ties) and tombstones the rest, so
    the co-best checkpoints are exactly the live ones with the best score. Trials
    tied at the best score: the first (by folder name) is evaluated, the others listed.
    With ``trial_id`` (Tune id or folder name), that trial is evaluated instead.
    """
    if trial_id is not None:
        trials = [t for t in trials if trial_id in (t.trial_id, t.path.name)]
        if not trials:
            raise EvaluationError(f"no trial {trial_id!r} in this study")
    scored = []
    for t in trials:
        live = [c for c in t.checkpoints if c.status == "live" and c.score is not None]
        if live:
            scored.append((max(c.score for c in live if c.score is not None), t, live))
    if not scored:
        which = f"trial {trial_id!r}" if trial_id else "this study"
        raise EvaluationError(f"{which} has no live checkpoint with a score (all pruned or invalid); "
                              "nothing to evaluate")
    best = max(s for s, _, _ in scored)
    tied = [(t, live) for s, t, live in scored if abs(s - best) <= TIE_TOL]
    trial, live = tied[0]
    # Invalid ones at the best score are kept too: the evaluation reports them as skipped.
    chosen = [c for c in trial.checkpoints if c.status in ("live", "invalid") and c.score is not None
              and abs(c.score - best) <= TIE_TOL]
    history_best = max((t.best_score for t in trials if t.best_score is not None), default=None)
    if history_best is not None and best < history_best - TIE_TOL:
        logger.warning("the best validation score in the trial histories (%s) has no live checkpoint; "
                       "evaluating the best live one (%s)", history_best, best)
    return Selection(trial=trial, checkpoints=chosen, score=best,
                     tied_trial_ids=[t.trial_id for t, _ in tied[1:]])


# --- the study evaluation -------------------------------------------------------------
def split_metrics_of(preds: Any, thresholds: np.ndarray, null_threshold: float) -> dict[str, Any]:
    """``{criteria_matching, evidence_binding}`` of predictions at the given thresholds."""
    from tune_app.evaluation.metrics import apply_null_threshold, criteria_report, evidence_report

    start, end = apply_null_threshold(preds.span_start, preds.span_end, preds.span_margin, null_threshold)
    return {
        "criteria_matching": criteria_report(preds.probs, preds.labels, thresholds, preds.criteria),
        "evidence_binding": evidence_report(start, end, preds.gold_start, preds.gold_end,
                                            preds.char_spans(start, end), preds.gold_chars),
    }


def _mean_tree(items: list[Any]) -> Any:
    """Element-wise mean of equally shaped JSON trees (None where every value is None)."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _mean_tree([it[k] for it in items]) for k in first}
    if isinstance(first, list):
        return [_mean_tree([it[i] for it in items]) for i in range(len(first))]
    values = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if not values:
        return first if not isinstance(first, int | float) else None
    if all(isinstance(v, int) for v in items) and len(set(items)) == 1:
        return first
    return float(np.mean(values))


def _flat_scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k != "per_criterion":
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def aggregate(per_checkpoint: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean over checkpoints of every metric, and the std of the top-level scalars."""
    mean = _mean_tree(per_checkpoint)
    flats = [_flat_scalars(m) for m in per_checkpoint]
    std = {k: float(np.std([f[k] for f in flats])) for k in flats[0]} if flats else {}
    return mean, {"method": "mean", "num_checkpoints": len(per_checkpoint), "std": std}


def _top_trials(trials: list[TrialInfo], n: int = TOP_TRIALS) -> list[dict[str, Any]]:
    ranked = sorted(trials, key=lambda t: (t.best_score is None, -(t.best_score or 0.0), t.path.name))
    return [{"rank": i + 1, "trial_id": t.trial_id, "trial_dir": t.path.name,
             "best_validation_score": t.best_score, "best_epoch": t.best_epoch, "status": t.status,
             "params": t.params} for i, t in enumerate(ranked[:n])]


def evaluate_study(study_dir: Path, *, split: str = "test", trial_id: str | None = None,
                   device: str | None = None, source: str = "manual") -> dict[str, Any]:
    """Evaluate the best trial (or ``trial_id``) of a study on ``split``; return the report.

    Thresholds (criteria and evidence null threshold) are calibrated on the validation
    predictions of the evaluated checkpoints (pooled) and applied to ``split``.
    """
    from tune_app.evaluation.baselines import baseline_report
    from tune_app.evaluation.importance import param_importance
    from tune_app.evaluation.pr_curves import precision_recall_report
    from tune_app.evaluation.predict import (
        criteria_names,
        load_model,
        load_split_posts,
        predict,
    )
    from tune_app.evaluation.thresholds import calibrate_criteria, calibrate_null_threshold
    from tune_app.training.loop import select_device

    study_dir = Path(study_dir).resolve()
    study_cfg = read_study_config(study_dir)
    metric = study_cfg.tune.metric
    trials = [read_trial(d, metric) for d in trial_dirs(study_dir)]
    if not trials:
        raise EvaluationError(f"{study_dir} holds no trial folders; run the study first")
    sel = select_checkpoints(trials, trial_id)
    cfg = read_trial_config(sel.trial.path, study_cfg)
    torch_device = select_device(device or cfg.train.device)
    names = criteria_names(cfg)
    val_posts = load_split_posts(study_dir, cfg, "validation")
    eval_posts = val_posts if split == "validation" else load_split_posts(study_dir, cfg, split)

    val_preds, eval_preds, used, skipped = [], [], [], []
    for ckpt in sel.checkpoints:
        try:
            validate_checkpoint_metadata(ckpt.path)
            loaded = load_model(ckpt.path, cfg, torch_device)
        except (EvaluationError, ValueError) as exc:
            logger.error("skipping checkpoint %s: %s", ckpt.path, exc)
            skipped.append({"path": f"{sel.trial.path.name}/{ckpt.name}", "reason": str(exc)})
            continue
        vp = predict(loaded.model, loaded.tokenizer, val_posts, cfg, torch_device)
        val_preds.append(vp)
        eval_preds.append(vp if split == "validation" else
                          predict(loaded.model, loaded.tokenizer, eval_posts, cfg, torch_device))
        used.append(ckpt)
    if not used:
        raise EvaluationError(f"no loadable checkpoint among {[c.name for c in sel.checkpoints]} of trial "
                              f"{sel.trial.trial_id}: {skipped}")

    strategy = cfg.evaluation.threshold_strategy
    pooled_probs = np.concatenate([p.probs for p in val_preds])
    pooled_labels = np.concatenate([p.labels for p in val_preds])
    thresholds = calibrate_criteria(pooled_probs, pooled_labels, strategy)  # type: ignore[arg-type]
    def pooled(attr: str) -> np.ndarray:
        return np.concatenate([getattr(p, attr) for p in val_preds])

    null_threshold = calibrate_null_threshold(pooled("span_start"), pooled("span_end"), pooled("span_margin"),
                                              pooled("gold_start"), pooled("gold_end"))
    default_thr = np.full(len(names), float(cfg.train.threshold))
    before = [split_metrics_of(p, default_thr, 0.0) for p in val_preds]
    after = [split_metrics_of(p, thresholds, null_threshold) for p in val_preds]
    per_ckpt = [split_metrics_of(p, thresholds, null_threshold) for p in eval_preds]
    mean, agg = aggregate(per_ckpt)
    baselines = baseline_report(load_split_posts(study_dir, cfg, "train"), eval_posts,
                                include_no_symptoms=cfg.data.include_no_symptoms, split=split,
                                model_metrics=mean)

    def headline(ms: list[dict[str, Any]]) -> dict[str, Any]:
        m = aggregate(ms)[0]
        return {"macro_f1": m["criteria_matching"]["macro_f1"],
                "token_f1": m["evidence_binding"]["token_f1"], "slot_f1": m["evidence_binding"]["slot_f1"]}

    meta = _read_json(study_dir / STUDY_META) or {}
    report: dict[str, Any] = {
        "report_type": "study", "schema_version": STUDY_SCHEMA_VERSION, "report_id": uuid.uuid4().hex,
        "study_id": str(meta.get("study_name") or study_dir.name),
        "scope": "trial" if trial_id is not None else "study", "split": split,
        "best_trial_id": sel.trial.trial_id, "best_trial_dir": sel.trial.path.name,
        "tied_best_trial_ids": sel.tied_trial_ids, "generated_at": _now(), "source": source,
        "optimization_metric_name": metric, "optimization_mode": "max", "best_validation_score": sel.score,
        "config": cfg.to_dict(),
        "data": {"dataset_id": meta.get("dataset_id"), "dataset_revision": meta.get("dataset_revision"),
                 "split_sizes": {"validation": len(val_posts), split: len(eval_posts)}},
        "decision_thresholds": {
            "strategy": strategy, "criteria": {n: float(t) for n, t in zip(names, thresholds, strict=True)},
            "evidence_null_threshold": float(null_threshold),
            "max_span_tokens": cfg.evaluation.max_span_tokens,
            "calibrated_on": {"split": "validation", "trial_id": sel.trial.trial_id,
                              "checkpoints": [c.name for c in used]},
            "validation_before": {"criteria_threshold": float(cfg.train.threshold), **headline(before)},
            "validation_after": headline(after),
        },
        "evaluated_checkpoints": [
            {"name": c.name, "path": f"{sel.trial.path.name}/{c.name}", "epoch": c.epoch,
             "validation_score": c.score, "model_sha256": c.model_sha256, "metrics": m}
            for c, m in zip(used, per_ckpt, strict=True)],
        "skipped_checkpoints": skipped,
        f"{split}_metrics": mean, "aggregation": agg, "baselines": baselines,
        "precision_recall": precision_recall_report([p.probs for p in eval_preds], [p.labels for p in eval_preds],
                                                    thresholds, names, split=split),
        "trials_count": len(trials), "trials_completed": sum(t.status == STATE_COMPLETED for t in trials),
        # Stopped early by the scheduler: considered like any other trial (best epoch, checkpoints).
        "trials_stopped": sum(t.status == STATE_STOPPED for t in trials),
        "top_trials": _top_trials(trials),
        "param_importance": param_importance(trials),
    }
    report = _clean(report)
    validate(report, "study_report", where=f"report of {study_dir}")
    return report


def write_study_report(report: dict[str, Any], out_dir: Path, *, study_dir: Path | None = None,
                       plots: bool = True) -> Path:
    """Validate and write ``evaluation_report.json`` (+ PNG plots and the HTML page) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from tune_app.evaluation.plots import render_all

        trials = []
        if study_dir is not None:
            metric = report["optimization_metric_name"]
            trials = [read_trial(d, metric) for d in trial_dirs(study_dir)]
        report["artifacts"] = render_all(report, trials, out_dir)
    path = out_dir / REPORT_FILE
    validate(report, "study_report", where=str(path))
    pause("study_report")
    _write_json(path, report)
    return path


def refresh_trial_reports(study_dir: Path) -> list[Path]:
    """Rewrite every trial's report (final checkpoint status after retention)."""
    return [write_trial_report(d) for d in trial_dirs(study_dir)]


def recorded_test_evaluation(study_dir: Path) -> dict[str, Any] | None:
    """The ``test_evaluation`` entry of ``meta/study.json`` when the test split was evaluated."""
    rec = (_read_json(Path(study_dir) / STUDY_META) or {}).get("test_evaluation")
    return rec if isinstance(rec, dict) and rec.get("status") == "done" else None


def evaluate_finished_study(study_dir: Path, *, device: str | None = None, force: bool = False
                            ) -> Path | None:
    """The once-per-study test evaluation, for the driver when a study completes.

    Skipped (returns None) when ``evaluation.on_finish`` is false, or when ``meta/study.json``
    already records a test evaluation whose report exists (unless ``force``). Otherwise
    refreshes the trial reports, evaluates the best trial on the test split, writes
    ``<study>/evaluation_report.json`` with its plots, records it in ``meta/study.json`` and
    logs it on the study's MLflow study-level run (metrics; JSON, HTML and plots as
    artifacts). A study evaluated before whose study run holds no report yet (MLflow was
    unreachable then) gets it logged now.
    """
    study_dir = Path(study_dir).resolve()
    cfg = read_study_config(study_dir)
    if not cfg.evaluation.on_finish and not force:
        logger.info("evaluation.on_finish is false: the test split was not evaluated "
                    "(run `python -m tune_app.evaluate --study %s`)", study_dir)
        return None
    done = recorded_test_evaluation(study_dir)
    if done and (study_dir / REPORT_FILE).is_file() and not force:
        logger.info("test split of %s already evaluated (report %s, %s); not evaluated again",
                    study_dir, done.get("report_id"), done.get("generated_at"))
        log_report_to_mlflow(study_dir, cfg, only_if_missing=True)  # MLflow was down when it was written
        return None
    refresh_trial_reports(study_dir)
    report = evaluate_study(study_dir, split="test", device=device, source="on_finish")
    path = write_study_report(report, study_dir, study_dir=study_dir)
    record_test_evaluation(study_dir, report)
    log_report_to_mlflow(study_dir, cfg, report)
    logger.info("test evaluation of %s: best trial %s, test macro-F1 %.4f -> %s", study_dir,
                report["best_trial_id"], report["test_metrics"]["criteria_matching"]["macro_f1"], path)
    return path


def log_report_to_mlflow(report_dir: Path, cfg: AppConfig, report: dict[str, Any] | None = None, *,
                         only_if_missing: bool = False) -> str | None:
    """Log the study report in ``report_dir`` (``report``, else read from its JSON) on the
    study's MLflow study run: metrics, and the JSON, HTML and plots as artifacts (replacing
    the previous set). Best effort: the run id, or None (MLflow unreachable, no report)."""
    from tune_app.tracking.report_log import log_study_report

    report = report if report is not None else _read_json(Path(report_dir) / REPORT_FILE)
    if not report:
        return None
    return log_study_report(report, tracking_uri=cfg.tracking_uri, experiment_name=cfg.experiment_name,
                            study_name=cfg.tune.name, report_dir=Path(report_dir), only_if_missing=only_if_missing)


def record_test_evaluation(study_dir: Path, report: dict[str, Any]) -> None:
    """Note in ``meta/study.json`` that the test split was evaluated (read-modify-write, atomic)."""
    meta_path = Path(study_dir) / STUDY_META
    meta = _read_json(meta_path) or {}
    meta["test_evaluation"] = {
        "status": "done", "report_id": report["report_id"], "generated_at": report["generated_at"],
        "best_trial_id": report["best_trial_id"], "report": REPORT_FILE, "source": report.get("source"),
        "checkpoints": [c["path"] for c in report["evaluated_checkpoints"]],
    }
    _write_json(meta_path, meta)


def max_abs_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between the numbers of two equally shaped metric trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return math.inf
        return max((max_abs_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((max_abs_difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf
