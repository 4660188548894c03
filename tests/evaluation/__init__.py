"""Tests of the evaluation: metrics, thresholds, contracts, reports, plots, CLI.

``make_study`` builds a real study folder (synthetic data, splits, configs, trial
folders with real tiny-model checkpoints, retention tombstones) without running Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

NAME = "evalstudy"


def make_study(root: Path, *, scores: list[list[float]], num_posts: int = 80,
               overrides: list[str] | None = None, prune: bool = True) -> Path:
    """A study under ``root`` with one trial per ``scores`` row (one checkpoint per epoch).

    Checkpoints hold a tiny model with trial-seeded random weights and the given
    ``val_macro_f1`` score; with ``prune``, every checkpoint but those at the study's
    best score is tombstoned, as retention leaves it.
    """
    from tune_app.checkpoints.store import prune_checkpoint, save_checkpoint
    from tune_app.config import compose
    from tune_app.models.dual_head import architecture_signature, build_model
    from tune_app.models.encoders import load_encoder
    from tune_app.study import code_version, prepare_study

    cfg = compose([f"tune.storage_path={root}", f"tune.name={NAME}", f"data.num_posts={num_posts}",
                   f"tune.num_samples={len(scores)}", f"tune.max_epochs={max(map(len, scores))}",
                   *(overrides or [])])
    prepare_study(cfg)
    study = cfg.study_dir
    best = max(s for row in scores for s in row)
    for t, row in enumerate(scores):
        trial_id = f"t{t:04d}_{t:05d}"
        trial = study / f"train_trial_{trial_id}_{t}_lr={0.001 * (t + 1):.4f}"
        trial.mkdir()
        params: dict[str, Any] = {"train.lr": 0.001 * (t + 1), "model.dropout": 0.1 + 0.05 * (t % 3),
                                  "model.pooling": ["cls", "mean"][t % 2]}
        cfg.train.lr, cfg.model.dropout, cfg.model.pooling = (params["train.lr"], params["model.dropout"],
                                                             params["model.pooling"])
        (trial / "trial_config.yaml").write_text(cfg.to_yaml())
        (trial / "params.json").write_text(json.dumps(params))
        encoder = load_encoder("tiny", seed=t)
        model = build_model(encoder, num_outputs=10, pooling=cfg.model.pooling,
                            head_hidden=cfg.model.head_hidden, seed=100 + t)
        compat = {**code_version(), "architecture": architecture_signature(model),
                  "heads": {"criteria": "linear", "evidence": "start_end_linear"}}
        history = []
        for e, score in enumerate(row, start=1):
            metrics = {"epoch": e, "val_macro_f1": score, "val_loss": 1.0 / e, "train_loss": 2.0 / e}
            history.append(metrics)
            save_checkpoint(trial / f"checkpoint_{e - 1:06d}", model_state=model.state_dict(),
                            trainer_state={"epoch": e, "step": e * 10, "metrics": metrics,
                                           "history": history, "params": params, "seed": t,
                                           "metric": "val_macro_f1"}, compat=compat)
            with (trial / "result.json").open("a") as fh:
                fh.write(json.dumps({"trial_id": trial_id, **metrics}) + "\n")
            if prune and score != best:
                prune_checkpoint(trial / f"checkpoint_{e - 1:06d}", reason="test retention")
        (trial / "trial_state.json").write_text(json.dumps(
            {"status": "completed", "epoch": len(row), "seed": t, "history": history, "starts": []}))
    return study


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def study_cfg_doc(study: Path) -> dict[str, Any]:
    return yaml.safe_load((study / "study_config.yaml").read_text())


_SHARED: dict[str, Path] = {}


def evaluated_study(factory: Any) -> Path:
    """One study per test session, built and evaluated once (``evaluate_finished_study``).

    Trial 0 has two co-best checkpoints (epochs 2 and 3, score 0.5); trial 1 none.
    """
    if "study" not in _SHARED:
        from tune_app.evaluation.report import evaluate_finished_study

        study = make_study(factory.mktemp("evaluated"), scores=[[0.2, 0.5, 0.5], [0.4, 0.3]])
        assert evaluate_finished_study(study) is not None
        _SHARED["study"] = study
    return _SHARED["study"]
