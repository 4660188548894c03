"""Optimizer with layer-wise LR decay / head LR multiplier, and warmup schedulers.

Parameter groups (:func:`param_groups`), with ``L`` encoder layers and decay ``d``:

* encoder layer ``N`` (a name containing ``encoder.layer.N.`` or ``transformer.layer.N.``):
  ``lr * d ** (L - N)``;
* encoder embeddings (names containing ``embeddings``): ``lr * d ** (L + 1)`` (lowest);
* anything else in the encoder (final LayerNorm, pooler): the top, ``lr``;
* everything outside ``model.encoder`` (pooling, heads, coupling): ``lr * head_lr_multiplier``;
* the transition scores of a CRF (names containing ``crf.``, the ``bio_crf`` head):
  ``lr * head_lr_multiplier * crf_lr_multiplier``, no weight decay (a CRF's few
  transition scores usually want a larger step than the emission weights).

Biases and LayerNorm weights get no weight decay. Groups carry a ``name`` key
(``"embeddings"``, ``"layer_3"``, ``"encoder_top"``, ``"heads"``, ``"crf"``, ``+ "/no_decay"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from tune_app.config import LR_SCHEDULES, OPTIMIZERS

_LAYER_RE = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.")
_CRF_RE = re.compile(r"(?:^|\.)crf\.")
_NORM_NAME_RE = re.compile(r"^(?:layer_?norm|ln(?:_\w+)?)$", re.IGNORECASE)


@dataclass
class _Group:
    name: str
    lr: float
    weight_decay: float
    params: list[nn.Parameter] = field(default_factory=list)


def _no_decay_ids(module: nn.Module) -> set[int]:
    """Ids of biases and LayerNorm weights (by module type, and by name as a fallback)."""
    ids: set[int] = set()
    for mod_name, mod in module.named_modules():
        is_norm = isinstance(mod, nn.LayerNorm) or bool(_NORM_NAME_RE.match(mod_name.rsplit(".", 1)[-1]))
        for p_name, p in mod.named_parameters(recurse=False):
            if p_name == "bias" or p_name.endswith("_bias") or is_norm:
                ids.add(id(p))
    return ids


def encoder_depth(name: str, num_layers: int) -> int:
    """Depth of encoder parameter ``name``: 0 embeddings, ``N + 1`` layer N, ``L + 1`` top."""
    found = _LAYER_RE.search("." + name)
    if found:
        return int(found.group(1)) + 1
    if "embeddings" in name:
        return 0
    return num_layers + 1


def num_encoder_layers(encoder: nn.Module) -> int:
    """Number of ``encoder.layer.N`` blocks (from the names; the config as a fallback)."""
    found = {int(m.group(1)) for n, _ in encoder.named_parameters() if (m := _LAYER_RE.search("." + n))}
    if found:
        return max(found) + 1
    return int(getattr(getattr(encoder, "config", None), "num_hidden_layers", 0) or 0)


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 layerwise_lr_decay: float = 1.0, head_lr_multiplier: float = 1.0,
                 crf_lr_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups (see the module docstring); empty groups are dropped,
    order is deterministic (embeddings, layers bottom-up, encoder top, heads, crf)."""
    if not 0.0 < layerwise_lr_decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}")
    if head_lr_multiplier <= 0:
        raise ValueError(f"head_lr_multiplier must be > 0, got {head_lr_multiplier}")
    if crf_lr_multiplier <= 0:
        raise ValueError(f"crf_lr_multiplier must be > 0, got {crf_lr_multiplier}")
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError("build_optimizer needs a model with an `encoder` submodule (DualHeadModel)")
    no_decay = _no_decay_ids(model)
    layers = num_encoder_layers(encoder)
    groups: dict[tuple[int, bool], _Group] = {}

    def add(key: int, base: str, group_lr: float, p: nn.Parameter, nd: bool | None = None) -> None:
        nd = id(p) in no_decay if nd is None else nd
        g = groups.get((key, nd))
        if g is None:
            g = groups[(key, nd)] = _Group(base + ("/no_decay" if nd else ""), group_lr,
                                           0.0 if nd else weight_decay)
        g.params.append(p)

    seen: set[int] = set()
    for name, p in encoder.named_parameters():
        seen.add(id(p))
        if not p.requires_grad:
            continue
        depth = encoder_depth(name, layers)
        base = ("embeddings" if depth == 0 else "encoder_top" if depth == layers + 1
                else f"layer_{depth - 1}")
        add(depth, base, lr * layerwise_lr_decay ** (layers + 1 - depth), p)
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        if _CRF_RE.search(name):
            add(layers + 3, "crf", lr * head_lr_multiplier * crf_lr_multiplier, p, nd=True)
        else:
            add(layers + 2, "heads", lr * head_lr_multiplier, p)
    return [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name}
            for _, g in sorted(groups.items())]


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    layerwise_lr_decay: float = 1.0, head_lr_multiplier: float = 1.0,
                    crf_lr_multiplier: float = 1.0) -> torch.optim.Optimizer:
    """AdamW or RAdam (decoupled weight decay) over :func:`param_groups` of ``model``."""
    groups = param_groups(model, lr=lr, weight_decay=weight_decay,
                          layerwise_lr_decay=layerwise_lr_decay,
                          head_lr_multiplier=head_lr_multiplier, crf_lr_multiplier=crf_lr_multiplier)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "radam":
        return torch.optim.RAdam(groups, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)
    raise ValueError(f"unknown optimizer '{name}'; allowed: {', '.join(OPTIMIZERS)}")


def optimizer_steps(num_batches: int, grad_accumulation_steps: int, epochs: int = 1) -> int:
    """Optimizer steps for ``epochs`` epochs of ``num_batches`` (a step every N batches and
    at the end of each epoch, as :func:`tune_app.training.loop.train_one_epoch` does)."""
    if grad_accumulation_steps < 1:
        raise ValueError(f"grad_accumulation_steps must be >= 1, got {grad_accumulation_steps}")
    return math.ceil(num_batches / grad_accumulation_steps) * epochs


def build_scheduler(optimizer: torch.optim.Optimizer, *, name: str, warmup_ratio: float,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``int(warmup_ratio * total_steps)`` optimizer steps, then linear or
    cosine decay to 0 at ``total_steps`` (transformers' schedules; one ``step()`` per
    optimizer step)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    total = max(1, int(total_steps))
    warmup = int(warmup_ratio * total)
    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    raise ValueError(f"unknown scheduler '{name}'; allowed: {', '.join(LR_SCHEDULES)}")
