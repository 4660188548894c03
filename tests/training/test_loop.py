"""The epoch loop: reproducible under a seed, accumulation == bigger batch, step counts,
FGM, sentence_spans pass-through, mixed-precision settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.training import batches, no_dropout, synthetic_posts
from tune_app.data.schema import Post
from tune_app.models.dual_head import DualHeadModel, build_model
from tune_app.models.encoders import load_encoder
from tune_app.training.adversarial import word_embeddings
from tune_app.training.loop import autocast_dtype, make_grad_scaler, train_one_epoch
from tune_app.training.optim import build_optimizer, build_scheduler, optimizer_steps

LOSS = {"evidence_weight": 0.5, "criteria_loss": "bce"}


@pytest.fixture(scope="module")
def posts(tmp_path_factory: pytest.TempPathFactory) -> list[Post]:
    return synthetic_posts(Path(tmp_path_factory.mktemp("loop")), 24)


def _model(seed: int = 0, **kw: Any) -> tuple[DualHeadModel, Any]:
    enc = load_encoder("tiny", seed=seed)
    return build_model(enc, num_outputs=10, seed=seed, **kw), enc.tokenizer


def _run(posts: list[Post], seed: int, *, fgm: float = 0.0, accum: int = 1,
         epochs: int = 2) -> tuple[list[float], dict[str, Tensor]]:
    torch.manual_seed(seed)
    model, tok = _model(seed, criteria_head="mlp", pooling="attention", head_hidden=32, dropout=0.2)
    data = batches(posts, tok, batch_size=4, num_batches=5)
    opt = build_optimizer(model, name="adamw", lr=5e-3, weight_decay=0.01, layerwise_lr_decay=0.9,
                          head_lr_multiplier=2.0)
    sched = build_scheduler(opt, name="linear", warmup_ratio=0.1,
                            total_steps=optimizer_steps(len(data), accum, epochs))
    losses = [train_one_epoch(model, data, opt, sched, loss_kwargs=LOSS, device="cpu",
                              grad_accumulation_steps=accum, fgm_epsilon=fgm)
              for _ in range(epochs)]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_reproduces_bit_exactly(posts: list[Post]) -> None:
    losses_a, state_a = _run(posts, 3, fgm=0.3, accum=2)
    losses_b, state_b = _run(posts, 3, fgm=0.3, accum=2)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses_a[1] != losses_a[0]  # it trains
    losses_c, _ = _run(posts, 4, fgm=0.3, accum=2)
    assert losses_c != losses_a  # and the seed matters


def _sgd_delta(model: DualHeadModel, data: list[dict[str, Tensor]], accum: int) -> dict[str, Tensor]:
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, data, opt, None, loss_kwargs=LOSS, device="cpu",
                    grad_accumulation_steps=accum, max_grad_norm=0.0)
    return {k: before[k] - p.detach() for k, p in model.named_parameters()}  # == the gradient


def test_accumulating_two_batches_of_4_matches_one_batch_of_8(posts: list[Post]) -> None:
    def fresh() -> tuple[DualHeadModel, Any]:
        model, tok = _model(0, pooling="mean")
        return no_dropout(model), tok  # type: ignore[return-value]

    model, tok = fresh()
    small = batches(posts, tok, batch_size=4, num_batches=2)
    big = batches(posts, tok, batch_size=8, num_batches=1)
    g_acc = _sgd_delta(model, small, accum=2)
    g_big = _sgd_delta(fresh()[0], big, accum=1)
    g_one = _sgd_delta(fresh()[0], small[:1], accum=1)
    assert all(torch.allclose(g_acc[k], g_big[k], atol=2e-6, rtol=1e-4) for k in g_acc)
    # Not trivially equal: half the data gives another gradient.
    assert not all(torch.allclose(g_one[k], g_big[k], atol=2e-6, rtol=1e-4) for k in g_acc)
    assert any(g_acc[k].abs().sum() > 0 for k in g_acc if k.startswith("encoder."))


class _Counter:
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1


@pytest.mark.parametrize("num_batches,accum,expected", [(5, 2, 3), (4, 2, 2), (3, 1, 3), (2, 4, 1)])
def test_steps_every_n_batches_and_at_the_end(posts: list[Post], num_batches: int, accum: int,
                                              expected: int) -> None:
    model, tok = _model(0)
    data = batches(posts, tok, batch_size=2, num_batches=num_batches)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    calls: list[int] = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    sched = _Counter()
    loss = train_one_epoch(model, data, opt, sched, loss_kwargs=LOSS, device="cpu",
                           grad_accumulation_steps=accum)
    assert len(calls) == sched.steps == expected == optimizer_steps(num_batches, accum)
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.grad is None for p in model.parameters())  # zeroed after the last step


def test_fgm_changes_the_update(posts: list[Post]) -> None:
    _, plain = _run(posts, 1, fgm=0.0, epochs=1)
    _, adv = _run(posts, 1, fgm=1.0, epochs=1)
    key = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(plain[key], adv[key])
    assert all(torch.isfinite(v).all() for v in adv.values() if v.is_floating_point())


def test_sentence_spans_reach_the_model(posts: list[Post]) -> None:
    model, tok = _model(0, evidence_head="sentence_reranker")
    data = batches(posts, tok, batch_size=2, num_batches=1)
    t = data[0]["input_ids"].shape[1]
    data[0]["sentence_spans"] = torch.tensor([[[1, 3], [4, t - 2]], [[1, t - 2], [-1, -1]]])
    seen: list[Any] = []
    model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs.get("sentence_spans")),
                                    with_kwargs=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_one_epoch(model, data, opt, None, loss_kwargs=LOSS, device="cpu")
    assert seen and seen[0] is not None and torch.equal(seen[0], data[0]["sentence_spans"])


def test_precision_settings() -> None:
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert autocast_dtype("cpu", precision) is None  # autocast on CUDA only
        assert not make_grad_scaler("cpu", precision).is_enabled()
    assert autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cuda", "bf16") == torch.bfloat16
    assert autocast_dtype("cuda", "fp16") == torch.float16
    with pytest.raises(ValueError, match="allowed: auto, fp32, bf16, fp16"):
        autocast_dtype("cpu", "fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_trains(posts: list[Post]) -> None:
    model, tok = _model(0, evidence_head="biaffine", head_hidden=32)
    model = model.cuda()
    data = batches(posts, tok, batch_size=4, num_batches=3)
    dtype = autocast_dtype("cuda", "auto")
    assert dtype in (torch.bfloat16, torch.float16)
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.01)
    scaler = make_grad_scaler("cuda", "auto")
    assert scaler.is_enabled() == (dtype == torch.float16)
    weight = word_embeddings(model)
    before = weight.detach().clone()
    loss = train_one_epoch(model, data, opt, None, loss_kwargs=LOSS, device="cuda",
                           grad_accumulation_steps=2, fgm_epsilon=0.5, scaler=scaler)
    after = weight.detach()
    assert torch.isfinite(torch.tensor(loss))
    assert after.dtype == torch.float32 and not torch.equal(before, after)


def test_hooks_run_around_every_in_place_update(posts: list[Post]) -> None:
    """``before_update`` runs before each FGM perturbation and each optimiser step (the weights
    are then still what they were), ``on_batch`` after each batch (a background save's hooks)."""
    torch.manual_seed(0)
    model, tok = _model(0)
    data = batches(posts, tok, batch_size=4, num_batches=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    weight = next(model.parameters())
    events: list[str] = []
    last = {"weight": weight.detach().clone()}

    def before_update() -> None:
        assert torch.equal(weight.detach(), last["weight"]), "the weights changed before before_update"
        events.append("before_update")

    def on_batch() -> None:
        last["weight"] = weight.detach().clone()
        events.append("on_batch")

    train_one_epoch(model, data, opt, None, loss_kwargs=LOSS, device="cpu", grad_accumulation_steps=2,
                    fgm_epsilon=0.3, on_batch=on_batch, before_update=before_update)
    # 5 batches: an FGM perturbation in each, steps after batches 2, 4 and (the rest) 5.
    assert events == ["before_update", "on_batch", "before_update", "before_update", "on_batch",
                      "before_update", "on_batch", "before_update", "before_update", "on_batch",
                      "before_update", "on_batch", "before_update"]
