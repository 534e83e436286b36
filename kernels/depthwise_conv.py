"""Depthwise 2-D convolution (groups = channels, one filter per channel) with its CPU backward in the native
library: torch.ops.hwnas.depthwise_conv2d_backward (`native/hwnas_depthwise.cpp`).

The forward is torch's own convolution. Its backward on the CPU is oneDNN's, which is slow for depthwise
filters that are dilated or wider than 3×3: DARTS's dil_conv_5x5 on (16, 16, 32, 32) took 16–30 ms against
0.6 ms forward, and the depthwise backwards were 44% of a DARTS supernet step in NHWC. The native kernel
computes the same two sums (`benchmarks/depthwise_conv.py` compares them). It runs where the library is built
with it and `$HWNAS_KERNELS` is not `reference`, for tensors that need a gradient, on filters that are dilated
or wider than 3×3: on undilated 3×3 ones (sep_conv_3x3, MBConv k3) oneDNN has a tuned kernel, against which
the native one ran at 0.44–3.1× the speed in that benchmark. Exports, traces and `torch.compile` see a plain
convolution.

Top to bottom: reference, autograd.Function, entry point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backend

__all__ = ["depthwise_conv2d", "depthwise_conv2d_backward_reference"]

OP = "depthwise_conv2d_backward"
Pair = tuple[int, int]


def depthwise_conv2d_backward_reference(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    output_mask: tuple[bool, bool] = (True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂L/∂x, ∂L/∂weight) of F.conv2d(x, weight, None, stride, padding, dilation, groups=C), as torch computes
    them; x (B, C, H, W), weight (C, 1, kH, kW), grad (B, C, H_out, W_out)."""
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, dilation, False, (0, 0), x.shape[1], (*output_mask, False)
    )
    return grad_x, grad_w


class DepthwiseConv2d(torch.autograd.Function):
    """F.conv2d with groups = C; saves x and weight, as torch's convolution does."""

    @staticmethod
    def forward(ctx, x, weight, stride: Pair, padding: Pair, dilation: Pair):
        ctx.geometry = (stride, padding, dilation)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        mask = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph (an exact Hessian-vector product): torch's, itself differentiable
            grad_x, grad_w = depthwise_conv2d_backward_reference(g, x, weight, *ctx.geometry, mask)
        else:
            grad_x, grad_w = getattr(torch.ops.hwnas, OP)(g, x, weight, *ctx.geometry, list(mask))
        return grad_x, grad_w, None, None, None


def _native_backward(x: torch.Tensor, weight: torch.Tensor, dilation: Pair) -> bool:
    return (
        torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and (max(dilation) > 1 or max(weight.shape[2:]) > 3)  # undilated 3x3: oneDNN's tuned kernel is as fast
        and x.dim() == 4
        and x.dtype.is_floating_point
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
        and backend.native_op(OP, x.device)
    )


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair, dilation: Pair):
    """F.conv2d(x, weight, None, stride, padding, dilation, groups=C) for x (B, C, H, W) and weight (C, 1, kH,
    kW), with the native backward where it runs (see the module docstring)."""
    if not _native_backward(x, weight, dilation):
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])
    device = x.device.type
    if torch.is_autocast_enabled(device):  # convolve in autocast's type, as F.conv2d would; weights stay fp32
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return DepthwiseConv2d.apply(x, weight, stride, padding, dilation)
