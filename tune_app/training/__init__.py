"""Training step pieces wired into the trainable: optimizer/scheduler, FGM, the epoch loop."""

from tune_app.training.adversarial import FGM
from tune_app.training.loop import autocast_dtype, make_grad_scaler, select_device, train_one_epoch
from tune_app.training.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_steps,
    param_groups,
)

__all__ = [
    "FGM",
    "autocast_dtype",
    "build_optimizer",
    "build_scheduler",
    "make_grad_scaler",
    "optimizer_steps",
    "param_groups",
    "select_device",
    "train_one_epoch",
]
