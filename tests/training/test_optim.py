"""Parameter groups (layer-wise LR decay, head multiplier, no-decay) and warmup schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel

from tune_app.models.dual_head import DualHeadModel, build_model
from tune_app.models.encoders import load_encoder
from tune_app.training.optim import (
    build_optimizer,
    build_scheduler,
    encoder_depth,
    optimizer_steps,
    param_groups,
)

LR, WD, DECAY, MULT = 1e-3, 0.05, 0.8, 10.0


@pytest.fixture(scope="module")
def model() -> DualHeadModel:
    enc = load_encoder("tiny", seed=0)  # BERT, 2 layers, no pooler
    return build_model(enc, num_outputs=10, criteria_head="mlp", evidence_head="biaffine",
                       pooling="attention", head_hidden=32, coupling="coupled", seed=0)


def _lookup(model: nn.Module, groups: list[dict]) -> dict[str, dict]:
    by_id = {id(p): g for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_every_parameter_in_exactly_one_group(model: DualHeadModel) -> None:
    groups = param_groups(model, lr=LR, weight_decay=WD, layerwise_lr_decay=DECAY,
                          head_lr_multiplier=MULT)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(g["params"] for g in groups)


def test_group_learning_rates_are_exact(model: DualHeadModel) -> None:
    groups = param_groups(model, lr=LR, weight_decay=WD, layerwise_lr_decay=DECAY,
                          head_lr_multiplier=MULT)
    g = _lookup(model, groups)
    # 2 layers: embeddings decay^3, layer 0 decay^2, layer 1 decay^1, heads lr * mult.
    assert g["encoder.embeddings.word_embeddings.weight"]["lr"] == LR * DECAY ** 3
    assert g["encoder.embeddings.LayerNorm.weight"]["lr"] == LR * DECAY ** 3
    assert g["encoder.encoder.layer.0.attention.self.query.weight"]["lr"] == LR * DECAY ** 2
    assert g["encoder.encoder.layer.1.output.dense.bias"]["lr"] == LR * DECAY
    for name in ("criteria_head.net.1.weight", "evidence_head.bilinear", "pooling.score.weight",
                 "coupling.label_proj.weight"):
        if name in g:
            assert g[name]["lr"] == LR * MULT, name
    heads = [n for n in g if not n.startswith("encoder.")]
    assert heads and all(g[n]["lr"] == LR * MULT for n in heads)
    assert math.isclose(LR * DECAY ** 3, 5.12e-4)
    names = sorted({x["name"] for x in groups})
    assert names == sorted(["embeddings", "embeddings/no_decay", "layer_0", "layer_0/no_decay",
                            "layer_1", "layer_1/no_decay", "heads", "heads/no_decay"])


def test_no_decay_for_biases_and_layernorm(model: DualHeadModel) -> None:
    g = _lookup(model, param_groups(model, lr=LR, weight_decay=WD))
    for name, group in g.items():
        if name.endswith("bias") or "LayerNorm" in name:
            assert group["weight_decay"] == 0.0, name
        elif name.endswith("weight") and "LayerNorm" not in name:
            assert group["weight_decay"] == WD, name
    assert g["encoder.encoder.layer.0.attention.output.LayerNorm.weight"]["weight_decay"] == 0.0
    assert g["encoder.encoder.layer.0.attention.self.key.bias"]["weight_decay"] == 0.0
    assert g["encoder.encoder.layer.0.attention.self.key.weight"]["weight_decay"] == WD


def test_defaults_give_one_lr_everywhere(model: DualHeadModel) -> None:
    groups = param_groups(model, lr=LR, weight_decay=WD)
    assert {g["lr"] for g in groups} == {LR}


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=40)
        self.encoder = RobertaModel(cfg, add_pooling_layer=True)  # pooler: unmatched -> top
        self.head = nn.Linear(16, 2)


def test_roberta_layers_and_unmatched_encoder_params_are_top() -> None:
    m = _Wrapped()
    g = _lookup(m, param_groups(m, lr=LR, weight_decay=WD, layerwise_lr_decay=0.5,
                                head_lr_multiplier=2.0))
    assert g["encoder.embeddings.word_embeddings.weight"]["lr"] == LR * 0.5 ** 4
    assert g["encoder.encoder.layer.0.intermediate.dense.weight"]["lr"] == LR * 0.5 ** 3
    assert g["encoder.encoder.layer.2.intermediate.dense.weight"]["lr"] == LR * 0.5
    assert g["encoder.pooler.dense.weight"]["lr"] == LR
    assert g["encoder.pooler.dense.weight"]["name"] == "encoder_top"
    assert g["head.weight"]["lr"] == LR * 2.0


def test_encoder_depth_names() -> None:
    assert encoder_depth("embeddings.word_embeddings.weight", 6) == 0
    assert encoder_depth("encoder.layer.5.output.dense.weight", 6) == 6
    assert encoder_depth("encoder.layer.10.output.dense.weight", 12) == 11
    assert encoder_depth("transformer.layer.0.ffn.lin1.weight", 6) == 1  # DistilBERT
    assert encoder_depth("pooler.dense.weight", 6) == 7


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("radam", torch.optim.RAdam)])
def test_build_optimizer(model: DualHeadModel, name: str, cls: type) -> None:
    opt = build_optimizer(model, name=name, lr=LR, weight_decay=WD, layerwise_lr_decay=DECAY,
                          head_lr_multiplier=MULT)
    assert type(opt) is cls
    assert sorted({g["lr"] for g in opt.param_groups}) == sorted(
        {LR * DECAY ** 3, LR * DECAY ** 2, LR * DECAY, LR * MULT})
    if name == "radam":
        assert all(g["decoupled_weight_decay"] for g in opt.param_groups)
    # A fresh optimizer loads the state of another (what resuming from a checkpoint does).
    again = build_optimizer(model, name=name, lr=LR, weight_decay=WD, layerwise_lr_decay=DECAY,
                            head_lr_multiplier=MULT)
    again.load_state_dict(opt.state_dict())


def test_bad_names_and_values_raise(model: DualHeadModel) -> None:
    with pytest.raises(ValueError, match="allowed: adamw, radam"):
        build_optimizer(model, name="sgd", lr=LR, weight_decay=WD)
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        param_groups(model, lr=LR, weight_decay=WD, layerwise_lr_decay=0.0)
    opt = build_optimizer(model, name="adamw", lr=LR, weight_decay=WD)
    with pytest.raises(ValueError, match="allowed: linear, cosine"):
        build_scheduler(opt, name="step", warmup_ratio=0.1, total_steps=10)


def _lrs(name: str, warmup_ratio: float, total: int) -> list[list[float]]:
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.25}])
    sched = build_scheduler(opt, name=name, warmup_ratio=warmup_ratio, total_steps=total)
    out = []
    for _ in range(total + 1):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_linear_schedule_shape() -> None:
    lrs = _lrs("linear", 0.2, 10)  # warmup 2 steps, then linear to 0 at step 10
    expected = [0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert [a for a, _ in lrs] == pytest.approx(expected)
    assert [b for _, b in lrs] == pytest.approx([0.25 * e for e in expected])  # per-group base LR


def test_cosine_schedule_shape() -> None:
    lrs = [a for a, _ in _lrs("cosine", 0.2, 10)]
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[6] == pytest.approx(0.5)  # half-way through the 8 decay steps
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert lrs[10] == pytest.approx(0.0)
    assert lrs[4] > _lrs("linear", 0.2, 10)[4][0]  # cosine stays higher early on


def test_no_warmup_starts_at_full_lr() -> None:
    assert _lrs("linear", 0.0, 4)[0][0] == 1.0


def test_optimizer_steps() -> None:
    assert optimizer_steps(10, 1) == 10
    assert optimizer_steps(10, 4, epochs=3) == 9  # 3 steps per epoch (4, 4, 2)
    assert optimizer_steps(8, 4) == 2


def test_crf_transitions_get_their_own_learning_rate_without_decay() -> None:
    enc = load_encoder("tiny", seed=0)
    crf_model = build_model(enc, num_outputs=3, evidence_head="bio_crf", head_hidden=16, seed=0)
    groups = param_groups(crf_model, lr=LR, weight_decay=WD, head_lr_multiplier=MULT, crf_lr_multiplier=30.0)
    g = _lookup(crf_model, groups)
    crf = [n for n in g if ".crf." in n]
    assert sorted(n.rsplit(".", 1)[1] for n in crf) == ["end_transitions", "start_transitions", "transitions"]
    for name in crf:
        assert g[name]["name"] == "crf/no_decay" and g[name]["weight_decay"] == 0.0
        assert g[name]["lr"] == pytest.approx(LR * MULT * 30.0)
    assert g["evidence_head.emit.1.weight"]["lr"] == LR * MULT and g["evidence_head.emit.1.weight"]["name"] == "heads"
    assert [x["name"] for x in groups][-1] == "crf/no_decay"
    with pytest.raises(ValueError, match="crf_lr_multiplier must be > 0"):
        param_groups(crf_model, lr=LR, weight_decay=WD, crf_lr_multiplier=0.0)
