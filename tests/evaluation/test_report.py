"""Study and trial reports on a real study folder (tiny-model checkpoints, no Ray)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from PIL import Image

from tests.evaluation import evaluated_study, load_report, make_study
from tune_app.evaluation.contracts import errors
from tune_app.evaluation.predict import EvaluationError
from tune_app.evaluation.report import (
    CheckpointInfo,
    TrialInfo,
    evaluate_finished_study,
    evaluate_study,
    max_abs_difference,
    select_checkpoints,
    trial_dirs,
    write_trial_report,
)
from tune_app.study import STUDY_META

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluated_study(tmp_path_factory)


def _trial(name: str, ckpts: list[tuple[str, float | None]]) -> TrialInfo:
    return TrialInfo(path=Path(name), trial_id=name, status="completed", history=[], params={},
                     checkpoints=[CheckpointInfo(Path(name) / f"checkpoint_{i:06d}", status, epoch=i + 1,
                                                 score=score) for i, (status, score) in enumerate(ckpts)])


def test_selection_takes_every_co_best_live_checkpoint_of_the_best_trial() -> None:
    a = _trial("a", [("pruned", None), ("live", 0.7), ("live", 0.7), ("live", 0.6)])
    b = _trial("b", [("live", 0.7), ("invalid", 0.9)])
    c = _trial("c", [("live", 0.5)])
    sel = select_checkpoints([c, a, b])
    assert sel.trial.trial_id == "a" and sel.score == 0.7
    assert [ck.name for ck in sel.checkpoints] == ["checkpoint_000001", "checkpoint_000002"]
    assert sel.tied_trial_ids == ["b"]
    assert [ck.name for ck in select_checkpoints([a, b, c], trial_id="c").checkpoints] == ["checkpoint_000000"]
    with pytest.raises(EvaluationError, match="no live checkpoint"):
        select_checkpoints([_trial("d", [("pruned", None)])])
    with pytest.raises(EvaluationError, match="no trial"):
        select_checkpoints([a], trial_id="zz")


def test_study_report_contents(study: Path) -> None:
    report = load_report(study / "evaluation_report.json")
    assert errors(report, "study_report") == []
    assert report["best_trial_id"] == "t0000_00000" and report["best_validation_score"] == 0.5
    assert [c["path"].split("/")[-1] for c in report["evaluated_checkpoints"]] == \
        ["checkpoint_000001", "checkpoint_000002"]
    assert report["aggregation"]["num_checkpoints"] == 2
    assert report["trials_count"] == 2 and [t["trial_id"] for t in report["top_trials"]] == \
        ["t0000_00000", "t0001_00001"]
    thr = report["decision_thresholds"]
    assert thr["strategy"] == "per_criterion" and len(thr["criteria"]) == 10
    per = report["test_metrics"]["criteria_matching"]["per_criterion"]
    assert {n: p["threshold"] for n, p in per.items()} == pytest.approx(thr["criteria"])
    # The mean over checkpoints: here both checkpoints hold the same weights.
    first = report["evaluated_checkpoints"][0]["metrics"]
    assert max_abs_difference(first, report["test_metrics"]) < 1e-12
    assert report["test_metrics"]["criteria_matching"]["num_posts"] == report["data"]["split_sizes"]["test"]


def test_study_report_records_importance_and_precision_recall(study: Path) -> None:
    report = load_report(study / "evaluation_report.json")
    assert report["schema_version"] == 2
    imp = report["param_importance"]
    assert imp["computed"] is False and imp["num_trials"] == 2 and imp["min_trials"] == 10
    assert imp["reason"] == "parameter importance needs \u2265 10 scored trials; this study has 2"
    pr = report["precision_recall"]
    per = report["test_metrics"]["criteria_matching"]["per_criterion"]
    assert pr["split"] == "test" and pr["num_checkpoints"] == 2
    assert pr["num_samples"] == 2 * report["data"]["split_sizes"]["test"]  # both checkpoints pooled
    assert set(pr["per_criterion"]) | set(pr["skipped"]) == set(per)
    assert pr["skipped"] == [n for n, c in per.items() if c["pr_auc"] is None]
    for name, c in pr["per_criterion"].items():
        # Identical weights in both checkpoints: pooled AP = each checkpoint's AP.
        assert c["average_precision"] == pytest.approx(per[name]["pr_auc"])
        assert c["threshold"] == pytest.approx(report["decision_thresholds"]["criteria"][name])
        assert c["operating_point"]["recall"] == pytest.approx(per[name]["recall"])


def test_study_json_records_the_test_evaluation_and_it_is_not_redone(study: Path) -> None:
    report = load_report(study / "evaluation_report.json")
    record = json.loads((study / STUDY_META).read_text())["test_evaluation"]
    assert record["status"] == "done" and record["report_id"] == report["report_id"]
    assert evaluate_finished_study(study) is None  # a second call (resume of a finished study)
    assert load_report(study / "evaluation_report.json")["report_id"] == report["report_id"]


def test_trial_reports_hold_validation_metrics_and_checkpoint_status(study: Path) -> None:
    for trial in trial_dirs(study):
        doc = load_report(trial / "evaluation_report.json")
        assert errors(doc, "trial_report") == []
        assert "test" not in json.dumps(doc["validation_metrics"])
        assert doc["history"][0]["metrics"]["val_macro_f1"] in (0.2, 0.4)
    best = load_report(trial_dirs(study)[0] / "evaluation_report.json")
    assert best["best_validation_score"] == 0.5 and best["best_epoch"] == 2
    assert [c["status"] for c in best["checkpoints"]] == ["pruned", "live", "live"]
    assert best["config"]["train"]["lr"] == pytest.approx(0.001)


def test_write_trial_report_while_running(tmp_path: Path) -> None:
    trial = tmp_path / "s" / "train_trial_x"
    trial.mkdir(parents=True)
    (trial / "trial_state.json").write_text(json.dumps(
        {"status": "running", "history": [{"epoch": 1, "val_macro_f1": 0.3, "val_loss": float("nan")}]}))
    path = write_trial_report(trial, trial_id="x1", metric="val_macro_f1", params={"train.lr": 1})
    doc = load_report(path)
    assert doc["trial_id"] == "x1" and doc["status"] == "running" and doc["checkpoints"] == []
    assert doc["validation_metrics"] == {"val_macro_f1": 0.3, "val_loss": None}


def test_plots_are_real_images_and_the_html_embeds_them(study: Path) -> None:
    report = load_report(study / "evaluation_report.json")
    pngs = [study / p for k, p in report["artifacts"].items() if k != "html"]
    assert {p.name for p in pngs} == {"optimization_history.png", "param_importance.png",
                                      "parallel_coordinate.png", "per_criterion_f1.png",
                                      "precision_recall.png", "confusion_matrices.png"}
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, png
        with Image.open(png) as im:
            im.verify()
        assert mpimg.imread(png).shape[0] > 100
    page = (study / report["artifacts"]["html"]).read_text()
    assert page.count("data:image/png;base64,iVBORw0KGgo") == 6
    assert "parameter importance needs \u2265 10 scored trials; this study has 2" in page
    assert 'src="plots/' not in page and report["best_trial_id"] in page


def test_manual_cli_reproduces_the_report(study: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tune_app.evaluate", "--study", str(study)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    manual = load_report(study / "manual_evaluation" / "evaluation_report.json")
    saved = load_report(study / "evaluation_report.json")
    assert manual["report_id"] != saved["report_id"] and manual["source"] == "manual"
    assert max_abs_difference(manual["test_metrics"], saved["test_metrics"]) <= 1e-6
    assert manual["decision_thresholds"]["criteria"] == pytest.approx(saved["decision_thresholds"]["criteria"],
                                                                      abs=1e-6)
    assert "largest difference from the study report" in out.stdout


def test_single_trial_on_validation_and_bad_input(study: Path, tmp_path: Path) -> None:
    report = evaluate_study(study, split="validation", trial_id="t0000_00000")
    assert report["scope"] == "trial" and "test_metrics" not in report
    assert errors(report, "study_report") == []
    # Calibrated and measured on the same split: at least as good as the defaults.
    after = report["validation_metrics"]["criteria_matching"]["macro_f1"]
    assert after >= report["decision_thresholds"]["validation_before"]["macro_f1"]
    with pytest.raises(EvaluationError, match="no live checkpoint"):
        evaluate_study(study, trial_id="t0001_00001")  # all its checkpoints were pruned
    bad = subprocess.run([sys.executable, "-m", "tune_app.evaluate", "--study", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a tune_app study" in bad.stderr


def test_corrupt_co_best_checkpoint_is_skipped_and_reported(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / study.name
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("manual_evaluation", "plots"))
    shutil.copytree(study.parent / "datasets", tmp_path / "datasets")  # the synthetic data
    ckpt = trial_dirs(copy)[0] / "checkpoint_000002"
    model = bytearray((ckpt / "model.safetensors").read_bytes())
    model[-1] ^= 0xFF  # bit rot: same size, wrong hash
    (ckpt / "model.safetensors").write_bytes(bytes(model))
    report = evaluate_study(copy)
    assert [c["name"] for c in report["evaluated_checkpoints"]] == ["checkpoint_000001"]
    assert report["skipped_checkpoints"][0]["path"].endswith("checkpoint_000002")
    assert "sha256" in report["skipped_checkpoints"][0]["reason"]
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["format_version"] = 99  # structurally invalid now: still listed as skipped
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert evaluate_study(copy)["skipped_checkpoints"][0]["path"].endswith("checkpoint_000002")


def test_on_finish_false_skips_and_global_strategy(tmp_path: Path) -> None:
    study = make_study(tmp_path, scores=[[0.5]], num_posts=40,
                       overrides=["evaluation.on_finish=false", "evaluation.threshold_strategy=global"])
    assert evaluate_finished_study(study) is None
    assert not (study / "evaluation_report.json").exists()
    assert "test_evaluation" not in json.loads((study / STUDY_META).read_text())
    report = evaluate_study(study)
    values = set(report["decision_thresholds"]["criteria"].values())
    assert report["decision_thresholds"]["strategy"] == "global" and len(values) == 1


def test_the_history_plot_orders_trials_as_tune_started_them() -> None:
    """Folder names sort by the random trial id; Tune's trial number (after it) is the start order."""
    from tune_app.evaluation.plots import start_order

    names = ["train_trial_f00aa111_1_lr=0.1_2026-12-02_09-00-01", "train_trial_0bb22333_10_lr=0.2_2026-12-02_09-00-09",
             "train_trial_a0cc4455_2_lr=0.3_2026-12-02_09-00-02", "copied-by-hand"]
    ordered = sorted((_trial(n, []) for n in names), key=start_order)
    assert [t.path.name.split("_")[3] if t.path.name.startswith("train") else t.path.name for t in ordered] == \
        ["1", "2", "10", "copied-by-hand"]
