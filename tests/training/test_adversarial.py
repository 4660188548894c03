"""FGM: perturbs the word embeddings along the gradient, restores them bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.training import batches, no_dropout, synthetic_posts
from tune_app.models.dual_head import DualHeadModel, build_model
from tune_app.models.encoders import load_encoder
from tune_app.models.losses import joint_loss
from tune_app.training.adversarial import FGM, word_embeddings


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[DualHeadModel, dict[str, Tensor]]:
    enc = load_encoder("tiny", seed=0)
    model = build_model(enc, num_outputs=10, pooling="mean", seed=0)
    no_dropout(model)
    posts = synthetic_posts(Path(tmp_path_factory.mktemp("fgm")), 12)
    return model, batches(posts, enc.tokenizer, batch_size=4, num_batches=1)[0]


def _loss(model: DualHeadModel, batch: dict[str, Tensor]) -> Tensor:
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return joint_loss(out, batch)[0]


def test_perturbs_along_gradient_and_restores_bit_exactly(
        setup: tuple[DualHeadModel, dict[str, Tensor]]) -> None:
    model, batch = setup
    model.zero_grad(set_to_none=True)
    clean = _loss(model, batch)
    clean.backward()
    weight = word_embeddings(model)
    before = weight.detach().clone()
    grad = weight.grad.detach().clone()  # type: ignore[union-attr]
    fgm = FGM(model, 0.5)
    assert fgm.attack() and fgm.active
    delta = weight.detach() - before
    assert torch.linalg.vector_norm(delta).item() == pytest.approx(0.5, rel=1e-4)
    assert torch.allclose(delta, 0.5 * grad / torch.linalg.vector_norm(grad), atol=1e-7)
    with torch.no_grad():
        adv = _loss(model, batch)
    assert adv.item() != clean.item()
    assert adv.item() > clean.item()  # a step up the gradient raises the loss
    fgm.restore()
    assert not fgm.active
    assert torch.equal(weight.detach(), before)
    fgm.restore()  # a second restore is a no-op
    assert torch.equal(weight.detach(), before)


def test_adversarial_gradients_accumulate_onto_the_clean_ones(
        setup: tuple[DualHeadModel, dict[str, Tensor]]) -> None:
    model, batch = setup
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    _loss(model, batch).backward()
    clean = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
    fgm = FGM(model, 1.0)
    assert fgm.attack()
    adv = _loss(model, batch)
    adv_grads = torch.autograd.grad(adv, params, retain_graph=True, allow_unused=True)
    adv.backward()
    fgm.restore()
    changed = 0
    for p, c, a in zip(params, clean, adv_grads, strict=True):
        want = c if a is None else c + a
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-5)  # type: ignore[arg-type]
        changed += int(a is not None and bool(a.abs().sum() > 0))
    assert changed > 0


def test_noop_at_epsilon_zero_or_without_gradient(
        setup: tuple[DualHeadModel, dict[str, Tensor]]) -> None:
    model, batch = setup
    weight = word_embeddings(model)
    before = weight.detach().clone()
    model.zero_grad(set_to_none=True)
    assert not FGM(model, 0.5).attack()  # no gradient yet
    _loss(model, batch).backward()
    fgm = FGM(model, 0.0)
    assert not fgm.attack() and not fgm.active
    assert torch.equal(weight.detach(), before)
    with pytest.raises(ValueError):
        FGM(model, -1.0)


def test_double_attack_is_refused(setup: tuple[DualHeadModel, dict[str, Tensor]]) -> None:
    model, batch = setup
    model.zero_grad(set_to_none=True)
    _loss(model, batch).backward()
    fgm = FGM(model, 0.1)
    assert fgm.attack()
    with pytest.raises(RuntimeError):
        fgm.attack()
    fgm.restore()
