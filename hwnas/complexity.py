"""A network's size as papers report it: parameters and multiply-accumulates (MACs) of one inference."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

AUXILIARY_PREFIX = "auxiliary_head."  # a training-only head (DARTS): not part of the network as deployed


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network as deployed: the auxiliary head, used only in training, is not counted."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(AUXILIARY_PREFIX))


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one (C, H, W) example through `model` in eval mode: those of its convolutions and
    matrix products, as torch's FlopCounterMode counts them (FLOPs / 2). BatchNorm, activations, pooling and
    additions are not counted; papers differ in what they count (the DARTS paper gives its ImageNet network 574M,
    this count 530M), so compare networks counted alike."""
    was_training = model.training
    param = next(model.parameters(), torch.zeros(()))  # a network without parameters runs on the CPU
    x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
