"""The ``full`` search space: conditionals hold, every option is reachable and matches the
registries, TPE can run it, and 200 sampled configs validate, build and train one step."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from searchspaces import full, load_space
from tests.training import batches, synthetic_posts
from tune_app.config import AppConfig, compose
from tune_app.models.dual_head import COUPLING_METHODS, COUPLING_POOLINGS
from tune_app.models.encoders import LoadedEncoder, load_encoder
from tune_app.models.heads import CRITERIA_HEADS, EVIDENCE_HEADS, POOLINGS
from tune_app.models.losses import CRITERIA_LOSSES, pos_weight_from_labels
from tune_app.trainable import apply_params, make_model, make_optimizer
from tune_app.training.loop import train_one_epoch
from tune_app.training.optim import build_scheduler, optimizer_steps

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(n: int, seed: int, model: str = "tiny", sampler: Any = None) -> list[dict[str, Any]]:
    space = load_space("full", max_epochs=2, model=model)
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed),
                                direction="maximize")
    out = []
    for i in range(n):
        trial = study.ask()
        assert space(trial) is None
        out.append(dict(trial.params))
        study.tell(trial, float((i * 7919) % 101) / 100)  # arbitrary, varied objective values
    return out


@pytest.fixture(scope="module")
def samples() -> list[dict[str, Any]]:
    return [p for seed in range(4) for p in sample(100, seed)]


def test_option_lists_match_the_registries() -> None:
    assert set(full.CRITERIA_HEADS) == set(CRITERIA_HEADS)
    assert set(full.EVIDENCE_HEADS) == set(EVIDENCE_HEADS)
    assert set(full.POOLINGS) == set(POOLINGS)
    assert set(full.CRITERIA_LOSSES) == set(CRITERIA_LOSSES)
    assert set(full.COUPLING_METHODS) == set(COUPLING_METHODS)
    assert set(full.COUPLING_POOLINGS) == set(COUPLING_POOLINGS)
    assert "back_translation" not in full.AUGMENT_METHODS


def test_conditionals_hold(samples: list[dict[str, Any]]) -> None:
    for p in samples:
        coupled = p["model.coupling"] == "coupled"
        assert ("model.coupling_method" in p) == coupled, p
        assert ("model.coupling_pooling" in p) == coupled, p
        assert ("train.focal_gamma" in p) == (p["train.criteria_loss"] in ("focal", "adaptive_focal", "hybrid")), p
        assert ("train.hybrid_alpha" in p) == (p["train.criteria_loss"] == "hybrid"), p
        assert ("augment.method" in p) == ("augment.probability" in p) == p["augment.enabled"], p
        used = p["model.criteria_head"] != "linear" or p["model.evidence_head"] != "start_end_linear"
        assert ("model.head_hidden" in p) == used, p
        crf = p["model.evidence_head"] == "bio_crf"
        assert ("train.crf_lr_multiplier" in p) == ("train.crf_loss_reduction" in p) == crf, p
        if crf:
            assert 1.0 <= p["train.crf_lr_multiplier"] <= 100.0
        assert p["train.epochs"] in (1, 2) and p["train.seed_policy"] in ("study", "per_trial"), p
        if "train.focal_gamma" in p:
            assert 1.0 <= p["train.focal_gamma"] <= 5.0
        if "train.hybrid_alpha" in p:
            assert 0.1 <= p["train.hybrid_alpha"] <= 0.9
        if p["augment.enabled"]:
            assert p["augment.method"] in ("synonym", "insert", "swap", "char_perturb")
            assert 0.0 <= p["augment.probability"] <= 0.5
        assert 128 <= p.get("model.head_hidden", 128) <= 1024
        assert 0.1 <= p["model.dropout"] <= 0.5 and 0.0 <= p["train.label_smoothing"] <= 0.2
        assert all("." in k for k in p)  # every name is a dotted config key


def test_every_option_is_sampled(samples: list[dict[str, Any]]) -> None:
    def values(key: str) -> set[Any]:
        return {p[key] for p in samples if key in p}

    assert values("model.criteria_head") == set(full.CRITERIA_HEADS)
    assert values("model.evidence_head") == set(full.EVIDENCE_HEADS)
    assert values("model.pooling") == set(full.POOLINGS)
    assert values("model.coupling_method") == set(full.COUPLING_METHODS)
    assert values("model.coupling_pooling") == set(full.COUPLING_POOLINGS)
    assert values("train.criteria_loss") == set(full.CRITERIA_LOSSES)
    assert values("train.optimizer") == {"adamw", "radam"}
    assert values("train.scheduler") == {"linear", "cosine"}
    assert values("data.input_format") == {"multi_label", "binary_pairs"}
    assert values("augment.method") == set(full.AUGMENT_METHODS)
    assert values("train.grad_accumulation_steps") == {1, 2, 4}
    assert values("model.gradient_checkpointing") == {False, True}
    assert values("train.epochs") == {1, 2}  # max_epochs=2: from half (rounded up) to all
    assert values("train.seed_policy") == {"study", "per_trial"}
    assert values("train.crf_loss_reduction") == {"token_mean", "slot_mean"}
    assert 0.0 in values("train.fgm_epsilon") and max(values("train.fgm_epsilon")) > 0


def test_ranges_follow_the_encoder() -> None:
    tiny = sample(40, 0, model="tiny")
    big = sample(40, 0, model="bert-base")
    assert min(p["train.lr"] for p in tiny) >= 1e-3
    assert max(p["train.lr"] for p in big) <= 2e-4
    assert max(p["train.head_lr_multiplier"] for p in big) > 3.0
    space = load_space("full", max_epochs=1, model="tiny", augment=False)
    study = optuna.create_study()
    trial = study.ask()
    space(trial)
    assert not any(k.startswith("augment.") for k in trial.params)


def test_space_is_picklable_and_runs_under_tpe() -> None:
    space = load_space("full", max_epochs=2, model="tiny")
    assert pickle.loads(pickle.dumps(space)) is not None
    tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    params = sample(25, 0, sampler=tpe)  # conditional params after startup: no conflicts
    assert len(params) == 25


# --- 200 configs: validate, build, one training step ---------------------------------
@pytest.fixture(scope="module")
def base_cfg() -> AppConfig:
    return compose(["model=tiny", "searchspace=full", "data.max_length=64"])


@pytest.fixture(scope="module")
def encoder() -> LoadedEncoder:
    return load_encoder("tiny", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory,
         encoder: LoadedEncoder) -> dict[str, list[dict[str, torch.Tensor]]]:
    posts = synthetic_posts(Path(tmp_path_factory.mktemp("full_space")), 8)
    return {fmt: batches(posts, encoder.tokenizer, batch_size=2, num_batches=2, input_format=fmt,
                         max_length=64)
            for fmt in ("multi_label", "binary_pairs")}


def test_200_sampled_configs_validate_build_and_train(
        samples: list[dict[str, Any]], base_cfg: AppConfig, encoder: LoadedEncoder,
        data: dict[str, list[dict[str, torch.Tensor]]]) -> None:
    assert len(samples) >= 200
    initial = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    named = dict(encoder.model.named_parameters())
    word = named["embeddings.word_embeddings.weight"]
    low = named["encoder.layer.0.attention.self.query.weight"]
    seen: Counter[str] = Counter()
    for i, params in enumerate(samples[:200]):
        cfg = apply_params(base_cfg, params)  # raises ConfigError on an invalid sample
        encoder.model.load_state_dict(initial)
        torch.manual_seed(i)
        m, t = cfg.model, cfg.train
        model = make_model(cfg, encoder, seed=i)
        if m.evidence_head == "bio_crf":
            assert model.evidence_head.loss_reduction == t.crf_loss_reduction
        loader = data[cfg.data.input_format]
        labels = torch.cat([b["criteria_labels"] for b in loader])
        loss_kwargs = {"evidence_weight": t.evidence_weight, "criteria_loss": t.criteria_loss,
                       "pos_weight": pos_weight_from_labels(labels) if t.criteria_loss == "weighted_bce" else None,
                       "label_smoothing": t.label_smoothing, "focal_gamma": t.focal_gamma,
                       "hybrid_alpha": t.hybrid_alpha}
        opt = make_optimizer(cfg, model)
        sched = build_scheduler(opt, name=t.scheduler, warmup_ratio=t.warmup_ratio,
                                total_steps=optimizer_steps(len(loader), t.grad_accumulation_steps))
        grads: list[float] = []

        def record(g: torch.Tensor, out: list[float] = grads) -> None:
            out.append(float(g.norm()))

        hooks = [p.register_hook(record) for p in (word, low)]
        try:
            loss = train_one_epoch(model, loader, opt, sched, loss_kwargs=loss_kwargs, device="cpu",
                                   grad_accumulation_steps=t.grad_accumulation_steps,
                                   fgm_epsilon=t.fgm_epsilon, precision=t.precision,
                                   max_grad_norm=t.max_grad_norm)
        finally:
            for h in hooks:
                h.remove()
        where = f"sample {i}: {params}"
        assert torch.isfinite(torch.tensor(loss)), where
        assert len(grads) >= 2 * len(loader), where  # both encoder params, every backward
        assert all(g == g and g != float("inf") for g in grads) and max(grads) > 0, where
        assert all(torch.isfinite(p).all() for p in model.parameters()), where
        seen[m.evidence_head] += 1
    assert set(seen) == set(full.EVIDENCE_HEADS)
