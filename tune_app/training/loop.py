"""One training epoch: gradient accumulation, clipping, FGM, mixed precision.

The evaluation pass is :mod:`tune_app.evaluation.forward`; this module runs the train step
(and picks the device).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tune_app.config import PRECISIONS
from tune_app.models.losses import joint_loss
from tune_app.training.adversarial import FGM


def select_device(requested: str) -> torch.device:
    """``train.device``: ``cuda``, ``cpu``, or ``auto`` (CUDA when this process sees a GPU)."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype of ``train.precision`` on ``device``: None (fp32) on CPU and for
    ``fp32``; on CUDA ``bf16``/``fp16`` as asked, ``auto`` = bf16 where supported else fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; allowed: {', '.join(PRECISIONS)}")
    if torch.device(device).type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def make_grad_scaler(device: torch.device | str, precision: str = "auto") -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 autocast (bf16 and fp32 need none). Keep one
    per trial and pass it to every :func:`train_one_epoch` so its scale carries over."""
    enabled = autocast_dtype(device, precision) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _forward_loss(model: nn.Module, batch: Mapping[str, Tensor], loss_kwargs: Mapping[str, Any],
                  device: torch.device, dtype: torch.dtype | None) -> Tensor:
    ctx = (torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None
           else contextlib.nullcontext())
    with ctx:
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                    sentence_spans=batch.get("sentence_spans"))
        loss, _ = joint_loss(out, batch, **loss_kwargs)
    return loss


def train_one_epoch(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                    optimizer: torch.optim.Optimizer, scheduler: Any, *,
                    loss_kwargs: Mapping[str, Any], device: torch.device | str,
                    grad_accumulation_steps: int = 1, fgm_epsilon: float = 0.0,
                    precision: str = "auto", max_grad_norm: float = 1.0,
                    scaler: torch.amp.GradScaler | None = None,
                    on_batch: Callable[[], object] | None = None,
                    before_update: Callable[[], object] | None = None) -> float:
    """Train ``model`` for one pass over ``loader``; return the mean clean batch loss.

    ``loss_kwargs`` go to :func:`tune_app.models.losses.joint_loss` (evidence_weight,
    criteria_loss, pos_weight, label_smoothing, focal_gamma, hybrid_alpha). The optimizer
    and ``scheduler`` (may be None) step every ``grad_accumulation_steps`` batches and after
    the last batch; each batch's loss is divided by the size of its accumulation group, so
    N accumulated batches of size b give the mean gradient of the N*b examples (for equal
    per-batch normalisation). Gradients are clipped to ``max_grad_norm`` (<= 0: no
    clipping). ``fgm_epsilon > 0`` adds an FGM adversarial forward/backward per batch.
    ``on_batch()``, if given, runs after each batch (and its optimiser step, if any), on this
    thread: the trainable reports a background checkpoint there once it is durable.
    ``before_update()``, if given, runs before anything changes a parameter or the optimiser
    state in place (each optimiser step, each FGM perturbation): the trainable waits there
    until a background checkpoint has copied the previous epoch's state.
    On CUDA, ``precision`` autocasts (``auto``: bf16, fp16 + GradScaler where bf16 is
    unsupported); on CPU nothing changes, so a seeded run reproduces bit for bit.
    """
    if grad_accumulation_steps < 1:
        raise ValueError(f"grad_accumulation_steps must be >= 1, got {grad_accumulation_steps}")
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if scaler is None:
        scaler = make_grad_scaler(device, precision)
    fgm = FGM(model, fgm_epsilon) if fgm_epsilon > 0 else None
    try:
        num_batches: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        num_batches = None
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        scaler.unscale_(optimizer)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    total, seen, pending = 0.0, 0, 0
    for index, raw in enumerate(loader):
        batch = _to_device(raw, device)
        group_start = index - index % grad_accumulation_steps
        group = grad_accumulation_steps if num_batches is None else \
            min(grad_accumulation_steps, num_batches - group_start)
        loss = _forward_loss(model, batch, loss_kwargs, device, dtype)
        scaler.scale(loss / group).backward()
        if fgm is not None and before_update is not None:
            before_update()
        if fgm is not None and fgm.attack():
            try:
                adv = _forward_loss(model, batch, loss_kwargs, device, dtype)
                scaler.scale(adv / group).backward()
            finally:
                fgm.restore()
        total += float(loss.detach())
        seen += 1
        pending += 1
        if pending == grad_accumulation_steps:
            if before_update is not None:
                before_update()
            step()
            pending = 0
        if on_batch is not None:
            on_batch()
    if pending:
        if before_update is not None:
            before_update()
        step()
    return total / max(seen, 1)
