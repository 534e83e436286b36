"""Parameter-free ops whose backward needs no recomputation: identity, average pooling, max pooling.

Each is linear in x for its windows' argmax pattern, y = J·x. Its input gradient Jᵀg needs at most x and, for
max pooling, where each window's maximum was; and ⟨g, y⟩ = ⟨g, J·x⟩ = ⟨Jᵀg, x⟩, so the fused mixed op gets
such a candidate's weight gradient (DARTS, Liu et al. 2019, Eq. 2: ∂L/∂w_k = ⟨g, o_k(x)⟩) without running it
again. Max pooling keeps each output's argmax as an offset in its window, one byte at the sizes of a DARTS
search instead of max_pool2d's eight (int64 indices); PC-DARTS's bypass pooling uses it too.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["ClosedForm", "closed_form", "MAX_POOL"]


class ClosedForm(abc.ABC):
    """A parameter-free op y = J·x. `forward` returns y and what the backward needs besides x (or None);
    `vjp` returns Jᵀg."""

    def forward(self, op: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return op(x), None

    @abc.abstractmethod
    def vjp(self, op: nn.Module, g: torch.Tensor, x: torch.Tensor, saved: torch.Tensor | None) -> torch.Tensor: ...


class Identity(ClosedForm):
    def vjp(self, op, g, x, saved):
        return g


class AvgPool(ClosedForm):
    def vjp(self, op: nn.AvgPool2d, g, x, saved):
        kernel, stride, padding = _pair(op.kernel_size), _pair(op.stride), _pair(op.padding)
        return torch.ops.aten.avg_pool2d_backward(
            g, x, kernel, stride, padding, op.ceil_mode, op.count_include_pad, op.divisor_override
        )


class MaxPool(ClosedForm):
    """Keeps, per output, the flat offset of its maximum from its window's first element in x's (H, W) plane,
    in the narrowest integer type that holds the window's span, (k_h-1)·d_h·W + (k_w-1)·d_w: one byte for a 3×3
    window on inputs up to 126 wide. The backward rebuilds the indices for max_pool2d's own backward: the same
    argmax, ties and NaNs included."""

    def forward(self, op: nn.MaxPool2d, x):
        y, indices = F.max_pool2d(x, op.kernel_size, op.stride, op.padding, op.dilation, op.ceil_mode, True)
        kernel, dilation, width = _pair(op.kernel_size), _pair(op.dilation), x.shape[-1]
        span = (kernel[0] - 1) * dilation[0] * width + (kernel[1] - 1) * dilation[1]
        narrowest = next(t for t in (torch.uint8, torch.int16, torch.int32, torch.int64) if span <= torch.iinfo(t).max)
        return y, (indices - self._window_starts(op, x, y)).to(narrowest)

    def vjp(self, op: nn.MaxPool2d, g, x, offsets):
        indices = offsets.long() + self._window_starts(op, x, g)
        kernel, stride, padding = _pair(op.kernel_size), _pair(op.stride), _pair(op.padding)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            g, x, kernel, stride, padding, _pair(op.dilation), op.ceil_mode, indices
        )

    @staticmethod
    def _window_starts(op: nn.MaxPool2d, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(H_out, W_out): each output's window's first element as a flat index into x's plane (padding counts
        as rows and columns outside it, so a window's maximum is never before it)."""
        stride, padding = _pair(op.stride), _pair(op.padding)
        rows = torch.arange(y.shape[-2], device=x.device)[:, None] * stride[0] - padding[0]
        cols = torch.arange(y.shape[-1], device=x.device) * stride[1] - padding[1]
        return rows * x.shape[-1] + cols


IDENTITY, AVG_POOL, MAX_POOL = Identity(), AvgPool(), MaxPool()


def closed_form(op: nn.Module) -> ClosedForm | None:
    """The closed-form handler of a parameter-free op, None for any other op (and for one with hooks, which
    must see it run)."""
    hooked = op._forward_hooks or op._forward_pre_hooks or op._backward_hooks or op._backward_pre_hooks
    global_hooks = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    if hooked or global_hooks:
        return None
    if type(op) is nn.Identity:
        return IDENTITY
    if type(op) is nn.AvgPool2d:
        return AVG_POOL
    if type(op) is nn.MaxPool2d and not op.return_indices:
        return MAX_POOL
    return None
