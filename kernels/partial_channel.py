"""PC-DARTS partial-channel output (Xu et al. 2020, Eq. 2): channel_shuffle(cat([mixed, bypass]), K) at once.

With m = C/K mixed channels, output channel j·K + i holds mixed[:, j] for i = 0 and bypass[:, (i-1)·m + j]
otherwise. The reference builds the concatenation and then shuffles it (two full copies, and a third in
backward); the kernels read both inputs in place, strided views included, and write each channel straight to
its shuffled position. The backward is the same permutation read the other way.

On reduction edges the bypass is max-pooled (2x2, stride 2). `bypass_max_pool` pools it without keeping
nn.MaxPool2d's int64 indices (twice the bytes of its float32 output): it saves its input, a view of the node
state the mixed op saves anyway, and each maximum's offset in its window (one byte, closed_form.MaxPool).

Top to bottom: reference, Triton kernel, launchers, autograd.Functions, entry points.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._prims_common import suggest_memory_format
from torch.autograd.function import once_differentiable

from hwnas.supernet.mixed import channel_shuffle

from . import backend
from .backend import jit, tl, triton
from .closed_form import MAX_POOL

__all__ = ["bypass_max_pool", "partial_channel_shuffle", "partial_channel_shuffle_reference"]

# ------------------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------------------


def partial_channel_shuffle_reference(mixed: torch.Tensor, bypass: torch.Tensor, k: int) -> torch.Tensor:
    """(B, m, H, W), (B, (K-1)·m, H, W) -> (B, K·m, H, W), as the PC-DARTS reference code writes it."""
    return channel_shuffle(torch.cat([mixed, bypass], dim=1), k)


def partial_channel_unshuffle_reference(grad: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse permutation (a shuffle with C/K groups), split into the mixed and bypass gradients."""
    m = grad.shape[1] // k
    whole = channel_shuffle(grad.contiguous(memory_format=suggest_memory_format(grad)), m)
    return whole[:, :m], whole[:, m:]


# ------------------------------------------------------------------------------------------------------------
# Triton kernel (CUDA tensors)
# ------------------------------------------------------------------------------------------------------------

_BLOCK = 1024
# Under $HWNAS_KERNELS=auto, smaller tensors go to the reference: on an H200 the Triton shuffle took 1.6x the
# reference's time at 2^20 elements and 0.26x at 2^24 (benchmarks/results/kernel_bandwidth.json).
TRITON_MIN_NUMEL = 1 << 22


@jit
def _shuffle_kernel(
    whole_ptr, mixed_ptr, bypass_ptr, C, m, K, W, HW,
    ws_b, ws_c, ws_h, ws_w, ms_b, ms_c, ms_h, ms_w, bs_b, bs_c, bs_h, bs_w,
    TO_WHOLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One block of a (batch, channel) plane: whole[b, j·K + i] <-> mixed[b, j] or bypass[b, (i-1)·m + j]."""
    plane = tl.program_id(0)
    b = plane // C
    o = plane % C
    j = o // K
    i = o % K
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    h = offs // W
    w = offs % W
    whole = whole_ptr + b * ws_b + o * ws_c + h * ws_h + w * ws_w
    if i == 0:
        part = mixed_ptr + b * ms_b + j * ms_c + h * ms_h + w * ms_w
    else:
        part = bypass_ptr + b * bs_b + ((i - 1) * m + j) * bs_c + h * bs_h + w * bs_w
    if TO_WHOLE:
        tl.store(whole, tl.load(part, mask=mask), mask=mask)
    else:
        tl.store(part, tl.load(whole, mask=mask), mask=mask)


def _launch_shuffle(whole: torch.Tensor, mixed: torch.Tensor, bypass: torch.Tensor, k: int, to_whole: bool) -> None:
    b, c, h, w = whole.shape
    grid = (b * c, triton.cdiv(h * w, _BLOCK))
    _shuffle_kernel[grid](
        whole, mixed, bypass, c, mixed.shape[1], k, w, h * w,
        *whole.stride(), *mixed.stride(), *bypass.stride(),
        TO_WHOLE=to_whole, BLOCK=_BLOCK,
    )  # fmt: skip


def partial_channel_shuffle_triton(mixed: torch.Tensor, bypass: torch.Tensor, k: int) -> torch.Tensor:
    b, m, h, w = mixed.shape
    out = torch.empty(
        b, k * m, h, w, dtype=mixed.dtype, device=mixed.device, memory_format=suggest_memory_format(mixed)
    )
    _launch_shuffle(out, mixed, bypass, k, to_whole=True)
    return out


def partial_channel_unshuffle_triton(grad: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = grad.shape
    layout = {"dtype": grad.dtype, "device": grad.device, "memory_format": suggest_memory_format(grad)}
    mixed = torch.empty(b, c // k, h, w, **layout)
    bypass = torch.empty(b, c - c // k, h, w, **layout)
    _launch_shuffle(grad, mixed, bypass, k, to_whole=False)
    return mixed, bypass


# ------------------------------------------------------------------------------------------------------------
# autograd.Function
# ------------------------------------------------------------------------------------------------------------


class PartialChannelShuffle(torch.autograd.Function):
    """Saves nothing: the backward is a fixed channel permutation of the incoming gradient."""

    @staticmethod
    def forward(ctx, mixed, bypass, k):
        ctx.k = k
        kind = backend.kernel_backend(mixed.device, mixed.numel() * k, TRITON_MIN_NUMEL)
        if kind == "triton":
            return partial_channel_shuffle_triton(mixed, bypass, k)
        if kind == "native":
            return torch.ops.hwnas.partial_channel_shuffle(mixed, bypass, k)
        return partial_channel_shuffle_reference(mixed, bypass, k)

    @staticmethod
    def backward(ctx, grad):
        kind = backend.kernel_backend(grad.device, grad.numel(), TRITON_MIN_NUMEL)
        if kind == "triton":
            grad_mixed, grad_bypass = partial_channel_unshuffle_triton(grad, ctx.k)
        elif kind == "native":
            grad_mixed, grad_bypass = torch.ops.hwnas.partial_channel_unshuffle(grad, ctx.k)
        else:
            grad_mixed, grad_bypass = partial_channel_unshuffle_reference(grad, ctx.k)
        return grad_mixed, grad_bypass, None


class OffsetMaxPool(torch.autograd.Function):
    """pool(x) for an nn.MaxPool2d, saving x (already kept elsewhere) and window offsets, not int64 indices."""

    @staticmethod
    def forward(ctx, x, pool: nn.MaxPool2d):
        ctx.pool = pool
        y, offsets = MAX_POOL.forward(pool, x)
        ctx.save_for_backward(x, offsets)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, offsets = ctx.saved_tensors
        return MAX_POOL.vjp(ctx.pool, grad, x, offsets), None


def bypass_max_pool(bypass: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """pool(bypass), equal in value and gradient."""
    if not isinstance(pool, nn.MaxPool2d) or pool.return_indices:
        raise ValueError(f"bypass_max_pool: an nn.MaxPool2d returning no indices expected, got {pool}")
    return OffsetMaxPool.apply(bypass, pool)


def partial_channel_shuffle(mixed: torch.Tensor, bypass: torch.Tensor, k: int) -> torch.Tensor:
    """channel_shuffle(torch.cat([mixed, bypass], 1), k) without building the concatenation, in mixed's layout
    (NCHW or NHWC; its gradients in the incoming gradient's).

    mixed: (B, m, H, W), the mixed op's output on the first C/K channels; bypass: (B, (K-1)·m, H, W).
    """
    if mixed.dim() != 4 or bypass.dim() != 4:
        raise ValueError(f"partial_channel_shuffle: 4-d tensors expected, got {mixed.dim()}-d and {bypass.dim()}-d")
    b, m, h, w = mixed.shape
    if bypass.shape != (b, (k - 1) * m, h, w) or bypass.dtype != mixed.dtype or bypass.device != mixed.device:
        raise ValueError(
            f"partial_channel_shuffle: bypass {tuple(bypass.shape)} {bypass.dtype} does not fit mixed "
            f"{tuple(mixed.shape)} {mixed.dtype} with k={k}"
        )
    return PartialChannelShuffle.apply(mixed, bypass, k)
