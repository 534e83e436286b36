"""The cosine learning-rate schedule of DARTS's weight steps and of training from scratch."""

from __future__ import annotations

import math

import torch


def cosine_lr(epoch: int, epochs: int, lr_max: float, lr_min: float) -> float:
    """The learning rate of `epoch` (0-based) of `epochs`: cosine annealing without restarts (SGDR, Loshchilov &
    Hutter, ICLR 2017, Eq. 5), in closed form, so that a run extended to more epochs on resume follows the longer
    schedule from where it stands (a stateful scheduler would wrap around and climb back to `lr_max`)."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
