"""The eight DARTS candidate ops (Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019).

Definitions follow the paper and its reference code: separable convs are (ReLU, depthwise, pointwise, BN) twice,
dilated convs once, pooling with `count_include_pad=False`, skip as identity or FactorizedReduce at stride 2.
`affine=False` BatchNorm inside the supernet, `affine=True` in derived networks.
"""

from __future__ import annotations

import torch
from torch import nn

from hwnas.ops.depthwise import DepthwiseConv2d
from hwnas.registry import Registry

OPS: Registry = Registry("op")  # name -> factory(C, stride, affine) -> nn.Module
DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that normalises a CPU channels-last (NHWC) input of fewer than 8 channels in NCHW.

    torch's channels-last CPU batch norm vectorises over channels and is slow below that width: forward and
    backward on (64, 4, 32, 32) took 2.95 ms in NHWC, 1.20 ms in NCHW plus 4 × 0.14 ms of copies (from 8 channels
    on, NHWC is the faster). PC-DARTS hands its first cells' candidates C/K = 4 channels. Same values and
    gradients either way; the output keeps the input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if nhwc and x.shape[1] < 8 and x.device.type == "cpu":
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU - depthwise (dilated) conv - pointwise conv - BN."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(c_in, kernel, stride, padding, dilation),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """A DilConv (dilation 1) at the given stride followed by one at stride 1: the paper's sep_conv."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (stride 2 halves H and W)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve H and W with two offset stride-2 1x1 convs, concatenated (skip_connect at stride 2).

    Training on the CPU, each conv runs as stride 1 on the subsampled input (the same sums, bit for bit):
    oneDNN's stride-2 1x1 weight gradient for NHWC tensors (input or weight channels_last) with fewer input
    channels than its channel block (16 with AVX-512) writes past its buffer (oneDNN issue #6035, open), which
    crashed searches at `--init-channels 4` with an odd batch. Evaluation, inference and export keep the strided
    conv.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        assert c_out % 2 == 0, "FactorizedReduce needs an even channel count"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[2] % 2:  # odd sizes: pad so both halves have ceil(H/2) rows
            shifted = nn.functional.pad(shifted, (0, 1, 0, 1))
        return self.bn(torch.cat([self._halve(self.conv_1, x), self._halve(self.conv_2, shifted)], dim=1))

    def _halve(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and x.device.type == "cpu" and not torch.compiler.is_compiling():
            return nn.functional.conv2d(x[:, :, ::2, ::2], conv.weight, conv.bias)
        return conv(x)


OPS.register("none")(lambda C, stride, affine: Zero(stride))
OPS.register("avg_pool_3x3")(
    lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
)
OPS.register("max_pool_3x3")(lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
OPS.register("skip_connect")(lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine))
OPS.register("sep_conv_3x3")(lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine))
OPS.register("sep_conv_5x5")(lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine))
OPS.register("sep_conv_7x7")(lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine))
OPS.register("dil_conv_3x3")(lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine))
OPS.register("dil_conv_5x5")(lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine))
OPS.register("conv_7x1_1x7")(
    lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        BatchNorm2d(C, affine=affine),
    )
)
