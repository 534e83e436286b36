"""The learning-rate schedules of DARTS's weight steps and of training from scratch, per epoch in closed form, so
that a run extended to more epochs on resume follows the longer schedule from where it stands (a stateful
scheduler would wrap around, or decay from a different start)."""

from __future__ import annotations

import math

import torch

from hwnas.config import TrainConfig


def cosine_lr(epoch: int, epochs: int, lr_max: float, lr_min: float) -> float:
    """The learning rate of `epoch` (0-based) of `epochs`: cosine annealing without restarts (SGDR, Loshchilov &
    Hutter, ICLR 2017, Eq. 5)."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs))


def train_lr(epoch: int, cfg: TrainConfig) -> float:
    """The learning rate of `epoch` (0-based) of `cfg.epochs` when training a network from scratch.

    The first `cfg.warmup_epochs` W ramp linearly up to `cfg.lr` (lr·(e+1)/W, PC-DARTS's ImageNet training); then,
    over the remaining epochs, `cosine` anneals to `cfg.lr_min` (DARTS on CIFAR-10), `linear` decays to it (PC-DARTS
    on ImageNet) and `exponential` multiplies by `cfg.lr_decay` each epoch, never below it (DARTS on ImageNet: 0.97).
    """
    lr, lr_min = cfg.lr, cfg.lr_min
    if epoch < cfg.warmup_epochs:
        return lr * (epoch + 1) / cfg.warmup_epochs
    done, span = epoch - cfg.warmup_epochs, cfg.epochs - cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        return cosine_lr(done, span, lr, lr_min)
    if cfg.lr_schedule == "linear":
        return lr_min + (lr - lr_min) * (1.0 - done / span)
    if cfg.lr_schedule == "exponential":
        return max(lr_min, lr * cfg.lr_decay**done)
    raise ValueError(f"unknown learning-rate schedule {cfg.lr_schedule!r}")  # TrainConfig.validate rejects it first


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
