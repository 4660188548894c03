"""Fast Gradient Method (Miyato et al., 2017) on the encoder's word embeddings.

Usage, after the clean backward::

    fgm = FGM(model, epsilon)
    if fgm.attack():            # weights += epsilon * g / ||g||
        adv_loss(model).backward()   # gradients accumulate onto the clean ones
        fgm.restore()           # weights back, bit for bit

The direction is the embedding matrix' current ``.grad`` (under gradient accumulation it
includes the earlier micro-batches of the group; a loss-scaler's scale cancels out).
"""

from __future__ import annotations

import torch
from torch import nn


def word_embeddings(model: nn.Module) -> torch.Tensor:
    """The word-embedding weight of ``model`` (a Hugging Face encoder or a module whose
    ``encoder`` is one, e.g. :class:`tune_app.models.dual_head.DualHeadModel`)."""
    for candidate in (model, getattr(model, "encoder", None)):
        get = getattr(candidate, "get_input_embeddings", None)
        if callable(get):
            emb = get()
            if isinstance(emb, nn.Embedding):
                return emb.weight
    raise TypeError(f"{type(model).__name__} has no word embeddings (get_input_embeddings)")


class FGM:
    """Perturbs the word embeddings by ``epsilon * g / ||g||_2`` and restores them."""

    def __init__(self, model: nn.Module, epsilon: float) -> None:
        if epsilon < 0:
            raise ValueError(f"fgm epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.weight = word_embeddings(model)
        self._backup: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        """True between a successful :meth:`attack` and :meth:`restore`."""
        return self._backup is not None

    @torch.no_grad()
    def attack(self) -> bool:
        """Add the perturbation; False (nothing changed) at epsilon 0, without a gradient,
        or with a zero or non-finite gradient norm (e.g. an overflowed fp16 step)."""
        if self._backup is not None:
            raise RuntimeError("FGM.attack called twice without restore")
        grad = self.weight.grad
        if self.epsilon == 0.0 or grad is None:
            return False
        norm = torch.linalg.vector_norm(grad.float())
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            return False
        self._backup = self.weight.detach().clone()
        self.weight.add_((self.epsilon * grad.float() / norm).to(self.weight.dtype))
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved weights back (bit-exact); a no-op when nothing is perturbed."""
        if self._backup is None:
            return
        self.weight.copy_(self._backup)
        self._backup = None
