"""Plots of a study report (matplotlib, Agg backend) and one self-contained HTML page.

``render_all`` writes ``plots/*.png`` beside the report and ``evaluation_report.html``
with the PNGs embedded as base64: optimisation history (trials in Tune's start order),
parameter importance (the report's ``param_importance``: Optuna fANOVA, only from
enough scored trials), Optuna's parallel-coordinate plot of the trials' params against
their best-epoch score, per-criterion F1, per-criterion precision-recall curves (the
report's ``precision_recall``) and the per-criterion confusion matrices.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tune_app.evaluation.trial_study import plot_study, quiet_optuna, start_order  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tune_app.evaluation.report import TrialInfo

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
HTML_FILE = "evaluation_report.html"


def _save(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (temp file + rename: never a half-written plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def _message(fig: Figure, text: str) -> None:
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="0.35", wrap=True)


def history_figure(trials: list[TrialInfo], metric: str) -> Figure:
    """Each trial's per-epoch scores, its best score, and the running best over trials (in start
    order; the best is the highest score)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ordered = sorted(trials, key=start_order)
    best_so_far: list[float] = []
    for i, t in enumerate(ordered):
        scores = [h.get(metric) for h in t.history]
        ys = [float(s) for s in scores if isinstance(s, int | float)]
        if ys:
            ax.scatter([i] * len(ys), ys, s=12, color="0.7", zorder=1)
        if t.best_score is not None:
            ax.scatter([i], [t.best_score], s=36, color="tab:blue", zorder=2)
            best_so_far.append(max([t.best_score, *best_so_far[-1:]]))
        else:
            best_so_far.append(best_so_far[-1] if best_so_far else math.nan)
    if ordered:
        ax.step(range(len(ordered)), best_so_far, where="post", color="tab:red", label="best so far")
        ax.legend(loc="lower right")
    else:
        _message(fig, "no trials")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history (grey: every epoch, blue: trial best)")
    ax.grid(alpha=0.3)
    return fig


def plot_history(trials: list[TrialInfo], metric: str, path: Path) -> Path:
    """PNG of :func:`history_figure`."""
    return _save(history_figure(trials, metric), path)


def importance_figure(section: dict[str, Any]) -> Figure:
    """Bars of the report's ``param_importance`` section, titled with its method and trial
    count; when it was not computed, its reason instead of bars."""
    values = section.get("values") or {}
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(values) + 1.2)))
    if section.get("computed") and values:
        items = sorted(values.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
        ax.set_xlabel("importance")
        ax.set_title(f"Parameter importance ({section['method']}, from {section['num_trials']} scored trials)")
    else:
        ax.set_axis_off()
        _message(fig, str(section.get("reason") or "parameter importance was not computed"))
        ax.set_title("Parameter importance (not computed)")
    return fig


def plot_importance(section: dict[str, Any], path: Path) -> Path:
    """PNG of :func:`importance_figure`."""
    return _save(importance_figure(section), path)


def parallel_coordinate_figure(trials: list[TrialInfo], metric: str) -> Figure:
    """Optuna's parallel-coordinate plot of the scored trials' params against their best-epoch
    score (:func:`~tune_app.evaluation.trial_study.plot_study`); a message with 0-1 of them."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    study = plot_study(trials)
    n = len(study.trials)
    names = {k for t in study.trials for k in t.params}
    if n < 2 or not names:
        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.set_axis_off()
        _message(fig, f"parallel coordinates need \u2265 2 scored trials; this study has {n}" if n < 2
                 else "parallel coordinates: the trials have no params")
        ax.set_title("Parallel coordinates")
        return fig
    try:
        with quiet_optuna():
            ax = plot_parallel_coordinate(study, target_name=f"best {metric}")
    except ValueError as exc:  # a plot never costs the report
        logger.warning("parallel-coordinate plot unavailable: %s", exc)
        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.set_axis_off()
        _message(fig, f"parallel coordinates unavailable: {exc}")
        return fig
    fig = cast("Figure", ax.figure)
    fig.set_size_inches(max(8.0, 1.6 * (len(names) + 2)), 5)
    ax.set_facecolor("0.88")  # Optuna colours the worst trial near-white: keep it visible
    ax.set_title(f"Parallel coordinates: params vs best-epoch {metric} ({n} scored trials)", y=1.03)
    return fig


def plot_parallel_coordinate(trials: list[TrialInfo], metric: str, path: Path) -> Path:
    """PNG of :func:`parallel_coordinate_figure`."""
    return _save(parallel_coordinate_figure(trials, metric), path)


def precision_recall_figure(section: dict[str, Any]) -> Figure:
    """One PR curve per criterion of the report's ``precision_recall`` section (average
    precision in the legend, the calibrated threshold's operating point marked); criteria
    without a positive are named as skipped."""
    per = section.get("per_criterion") or {}
    skipped = section.get("skipped") or []
    fig, ax = plt.subplots(figsize=(8, 6))
    colors = plt.get_cmap("tab10" if len(per) <= 10 else "tab20")
    for i, (name, c) in enumerate(per.items()):
        color = colors(i % colors.N)
        ax.plot(c["curve"]["recall"], c["curve"]["precision"], drawstyle="steps-post", color=color,
                label=f"{name} (AP {c['average_precision']:.2f})")
        op = c["operating_point"]
        if op.get("precision") is not None and op.get("recall") is not None:
            ax.scatter([op["recall"]], [op["precision"]], color=color, marker="o", s=40,
                       edgecolors="black", zorder=3)
    if per:
        macro = section.get("average_precision_macro")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                  title=f"macro AP {macro:.3f}" if macro is not None else None)
    else:
        _message(fig, "no criterion has a positive in this split")
    if skipped:
        fig.text(0.5, -0.02, "skipped (no positive in the split): " + ", ".join(map(str, skipped)),
                 ha="center", va="top", fontsize=8, color="0.35", wrap=True)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title(f"Per-criterion precision-recall ({section.get('split')}, "
                 f"{section.get('num_checkpoints')} checkpoint(s) pooled; dot: calibrated threshold)")
    return fig


def plot_precision_recall(section: dict[str, Any], path: Path) -> Path:
    """PNG of :func:`precision_recall_figure`."""
    return _save(precision_recall_figure(section), path)


def plot_per_criterion_f1(report: dict[str, Any], path: Path) -> Path:
    metrics = report.get(f"{report['split']}_metrics") or {}
    per = (metrics.get("criteria_matching") or {}).get("per_criterion") or {}
    names = list(per)
    f1 = [per[n]["f1"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    bars = ax.barh(names[::-1], f1[::-1], color="tab:blue")
    for bar, n in zip(bars, names[::-1], strict=True):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{per[n]['f1']:.2f} (thr {per[n]['threshold']:.2f}, n={per[n]['support']:.0f})",
                va="center", fontsize=8)
    ax.set_xlim(0, 1.35)
    macro = (metrics.get("criteria_matching") or {}).get("macro_f1")
    if macro is not None:
        ax.axvline(macro, color="tab:red", linestyle="--", label=f"macro-F1 {macro:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlabel(f"F1 on {report['split']}")
    ax.set_title("Per-criterion F1")
    return _save(fig, path)


def plot_confusion(report: dict[str, Any], path: Path) -> Path:
    metrics = report.get(f"{report['split']}_metrics") or {}
    per = (metrics.get("criteria_matching") or {}).get("per_criterion") or {}
    names = list(per)
    cols = 5
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        cm = np.asarray(per[name]["confusion_matrix"], dtype=float)
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{v:g}", ha="center", va="center",
                    color="white" if v > cm.max() / 2 else "black", fontsize=9)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=7)
        ax.set_yticks([0, 1], ["gold 0", "gold 1"], fontsize=7)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_axis_off()
    fig.suptitle(f"Confusion matrices ({report['split']}, calibrated thresholds)")
    return _save(fig, path)


def _summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    m = report.get(f"{report['split']}_metrics") or {}
    cm, ev = m.get("criteria_matching") or {}, m.get("evidence_binding") or {}

    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, int | float) else "n/a"

    return [
        ("study", str(report["study_id"])), ("split", str(report["split"])),
        ("best trial", str(report["best_trial_id"])),
        (str(report["optimization_metric_name"]), num(report["best_validation_score"])),
        ("checkpoints", ", ".join(c["path"] for c in report["evaluated_checkpoints"])),
        ("threshold strategy", str(report["decision_thresholds"]["strategy"])),
        ("macro-F1", num(cm.get("macro_f1"))), ("micro-F1", num(cm.get("micro_f1"))),
        ("PR AUC (macro)", num(cm.get("pr_auc_macro"))),
        ("average precision (macro, pooled checkpoints)",
         num((report.get("precision_recall") or {}).get("average_precision_macro"))),
        ("evidence token F1", num(ev.get("token_f1"))), ("evidence char F1", num(ev.get("char_f1"))),
        ("evidence exact match", num(ev.get("exact_match"))), ("null-span accuracy", num(ev.get("null_accuracy"))),
        ("trials", str(report["trials_count"])), ("parameter importance", _importance_note(report)),
        ("generated", str(report["generated_at"])),
    ]


def _importance_note(report: dict[str, Any]) -> str:
    imp = report.get("param_importance") or {}
    if imp.get("computed"):
        return f"{imp['method']}, from {imp['num_trials']} scored trials"
    return str(imp.get("reason") or "not computed")


def baseline_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(system, task, score, model minus it)`` rows: the tuned model, then each baseline
    of the report's ``baselines`` (criteria: macro-F1; evidence: char F1)."""
    m = report.get(f"{report['split']}_metrics") or {}
    base = report.get("baselines") or {}
    deltas = base.get("model_minus_baseline") or {}

    def num(v: Any, sign: bool = False) -> str:
        if not isinstance(v, int | float):
            return "n/a"
        return f"{v:+.4f}" if sign else f"{v:.4f}"

    rows = [("tuned model", "criteria macro-F1", num((m.get("criteria_matching") or {}).get("macro_f1")), ""),
            ("tuned model", "evidence char F1", num((m.get("evidence_binding") or {}).get("char_f1")), "")]
    for task, metric, label in (("criteria_matching", "macro_f1", "criteria macro-F1"),
                                ("evidence_binding", "char_f1", "evidence char F1")):
        for name, scores in (base.get(task) or {}).items():
            rows.append((name, label, num(scores.get(metric)), num((deltas.get(task) or {}).get(name), sign=True)))
    return rows


def write_html(report: dict[str, Any], pngs: dict[str, Path], path: Path) -> Path:
    """One HTML page: a summary table, the model against the baselines, and every PNG
    inlined as a base64 data URI."""
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in _summary_rows(report))
    brows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in baseline_rows(report))
    btable = ("<h2>Against the baselines (same split)</h2>\n<table>\n<tr><th>system</th><th>task</th>"
              "<th>score</th><th>model minus baseline</th></tr>\n" + brows + "\n</table>"
              if report.get("baselines") else "")
    imgs = "\n".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode("ascii")}">'
        for title, p in pngs.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation report - {html.escape(str(report['study_id']))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}img{{max-width:100%}}</style></head>
<body><h1>Evaluation report: {html.escape(str(report['study_id']))}</h1>
<table>{rows}</table>
{btable}
{imgs}
</body></html>
"""
    from tune_app.study import write_text_atomic

    write_text_atomic(path, page)
    return path


def render_all(report: dict[str, Any], trials: list[TrialInfo], out_dir: Path) -> dict[str, str]:
    """Write every plot and the HTML page under ``out_dir``; return their paths relative to it."""
    plots = Path(out_dir) / PLOTS_DIR
    metric = report["optimization_metric_name"]
    pngs = {
        "Optimisation history": plot_history(trials, metric, plots / "optimization_history.png"),
        "Parameter importance": plot_importance(report["param_importance"], plots / "param_importance.png"),
        "Parallel coordinates": plot_parallel_coordinate(trials, metric, plots / "parallel_coordinate.png"),
        "Per-criterion F1": plot_per_criterion_f1(report, plots / "per_criterion_f1.png"),
        "Per-criterion precision-recall": plot_precision_recall(report["precision_recall"],
                                                                plots / "precision_recall.png"),
        "Confusion matrices": plot_confusion(report, plots / "confusion_matrices.png"),
    }
    page = write_html(report, pngs, Path(out_dir) / HTML_FILE)
    out = {p.stem: str(p.relative_to(out_dir)) for p in pngs.values()}
    out["html"] = str(page.relative_to(out_dir))
    return out
