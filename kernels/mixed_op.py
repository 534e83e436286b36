"""The fused mixed op: y = Σ_k w_k · o_k(x) (DARTS, Liu et al. 2019, Eq. 2) without keeping N op outputs.

The naive supernet keeps every candidate's activations for backward. Here the forward runs the candidates one
at a time under no_grad, accumulating w_k · o_k(x) into one buffer, and saves only x (and the op parameters).
The backward recomputes one candidate at a time with grad enabled, as torch.utils.checkpoint does (same
RNG stream, autocast's types, BatchNorm running statistics untouched), takes ∂L/∂w_k = ⟨g, o_k(x)⟩ and
backpropagates w_k · g through o_k. Peak memory holds one candidate's activations instead of N. The recomputation
keeps no graph of its own gradients, so a double backward (create_graph, an exact Hessian-vector product) is
refused.

The parameter-free candidates (identity, average and max pooling) are not recomputed: their backward has a
closed form (closed_form.py) that also gives their weight gradient without their output.

Top to bottom: reference, Triton kernels, launchers, dispatch, autograd.Function, entry point.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch._prims_common import suggest_memory_format
from torch.nn.modules.batchnorm import _BatchNorm

from hwnas.supernet.mixed import weighted_sum_reference

from . import backend
from .backend import jit, tl, triton
from .closed_form import ClosedForm, closed_form

__all__ = ["fused_mixed_op", "weighted_sum_reference", "weighted_accumulate", "dot"]

# ------------------------------------------------------------------------------------------------------------
# Reference: the two reductions the fused op is made of, in plain PyTorch
# ------------------------------------------------------------------------------------------------------------


def weighted_accumulate_reference(out: torch.Tensor, y: torch.Tensor, w: float, overwrite: bool) -> torch.Tensor:
    """out = w·y (overwrite) or out + w·y, in place."""
    return torch.mul(y, w, out=out) if overwrite else out.add_(y, alpha=w)


def dot_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ over all elements, a 0-dim tensor."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


# ------------------------------------------------------------------------------------------------------------
# Triton kernels (CUDA tensors)
# ------------------------------------------------------------------------------------------------------------

_BLOCK = 4096
# Under $HWNAS_KERNELS=auto, smaller tensors go to torch: on an H200 (benchmarks/results/kernel_bandwidth.json)
# the Triton accumulate and dot ran at half the speed of torch's at 2^20 elements, level with it from 2^24.
TRITON_MIN_NUMEL = 1 << 24


@jit
def _weighted_accumulate_kernel(out_ptr, y_ptr, w_hi, w_lo, n, OVERWRITE: tl.constexpr, BLOCK: tl.constexpr):
    """out = w·y (+ out) over one block: one candidate's term of Eq. (2), accumulated in fp32 or wider.

    Triton passes a Python float as an fp32 scalar, so w arrives as w_hi + w_lo (both fp32): exact to about
    48 bits, which float64 tensors need (finite differences through an fp32-rounded w are off by ~1%)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask)
    acc = w_hi * y + w_lo * y
    if not OVERWRITE:
        acc += tl.load(out_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _dot_kernel(a_ptr, b_ptr, partial_ptr, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One block's share of ⟨a, b⟩, the weight gradient ⟨g, o_k(x)⟩; the launcher sums the partials."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(partial_ptr + pid, tl.sum(a * b, axis=0))


def weighted_accumulate_triton(out: torch.Tensor, y: torch.Tensor, w: float, overwrite: bool) -> torch.Tensor:
    n = y.numel()
    w_hi = float(np.float32(w))
    w_lo = float(np.float32(w - w_hi))
    grid = (triton.cdiv(n, _BLOCK),)
    _weighted_accumulate_kernel[grid](out, y, w_hi, w_lo, n, OVERWRITE=overwrite, BLOCK=_BLOCK)
    return out


def dot_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = a.numel()
    wide = a.dtype == torch.float64
    partial = torch.empty(triton.cdiv(n, _BLOCK), dtype=torch.float64 if wide else torch.float32, device=a.device)
    _dot_kernel[(partial.numel(),)](a, b, partial, n, ACC=tl.float64 if wide else tl.float32, BLOCK=_BLOCK)
    return partial.sum().to(a.dtype)


# ------------------------------------------------------------------------------------------------------------
# Dispatch: Triton on CUDA, the native library where built, the reference otherwise (and for strided tensors)
# ------------------------------------------------------------------------------------------------------------


def _same_dense_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the flat kernels may read `a` and `b` element by element alike: one dtype, the same strides, and
    contiguous in memory (NCHW, or NHWC as the CPU runs searches: hwnas.device.Placement)."""
    if a.dtype != b.dtype or a.stride() != b.stride():
        return False
    return a.is_contiguous() or (a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last))


def weighted_accumulate(out: torch.Tensor | None, y: torch.Tensor, w: float) -> torch.Tensor:
    """out + w·y in place, or a new w·y (in y's memory format) when `out` is None."""
    overwrite = out is None
    if overwrite:
        out = torch.empty_like(y, memory_format=torch.preserve_format)
    kind = backend.kernel_backend(y.device, y.numel(), TRITON_MIN_NUMEL)
    if kind == "reference" or not _same_dense_layout(out, y):
        return weighted_accumulate_reference(out, y, w, overwrite)
    if kind == "triton":
        return weighted_accumulate_triton(out, y, w, overwrite)
    return torch.ops.hwnas.weighted_accumulate_(out, y, w, overwrite)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ as a 0-dim tensor of a's dtype."""
    kind = backend.kernel_backend(a.device, a.numel(), TRITON_MIN_NUMEL)
    if kind == "reference" or not _same_dense_layout(a, b):
        return dot_reference(a, b)
    return dot_triton(a, b) if kind == "triton" else torch.ops.hwnas.dot(a, b)


# ------------------------------------------------------------------------------------------------------------
# autograd.Function
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OpLayout:
    """Where one candidate op keeps its parameters, buffers and BatchNorms, walked once per op module: walking
    them on every call (named_parameters, modules) cost ~3% of a PC-DARTS step. Modules are held by weak
    reference, so that the cache (keyed weakly by the op) never keeps an op alive."""

    params: tuple[tuple[str, weakref.ref, str], ...]  # (qualified name, owning module, attribute)
    buffers: tuple[tuple[str, weakref.ref, str], ...]
    norms: tuple[weakref.ref, ...]  # the op's BatchNorms

    @classmethod
    def of(cls, op: nn.Module) -> _OpLayout:
        layout = _LAYOUTS.get(op)
        if layout is None:
            owners = {name: weakref.ref(m) for name, m in op.named_modules()}

            def slots(named) -> tuple[tuple[str, weakref.ref, str], ...]:
                return tuple((name, owners[name.rpartition(".")[0]], name.rpartition(".")[2]) for name, _ in named)

            norms = tuple(weakref.ref(m) for m in op.modules() if isinstance(m, _BatchNorm))
            layout = _LAYOUTS[op] = cls(slots(op.named_parameters()), slots(op.named_buffers()), norms)
        return layout

    def parameters(self) -> dict[str, torch.Tensor]:
        """The op's parameters as they are now (a running functional_call's substitutes included)."""
        return {name: owner()._parameters[attr] for name, owner, attr in self.params}

    def buffer_values(self) -> dict[str, torch.Tensor]:
        return {name: owner()._buffers[attr] for name, owner, attr in self.buffers}

    def batch_norms(self) -> list[_BatchNorm]:
        return [norm() for norm in self.norms]


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _OpLayout] = weakref.WeakKeyDictionary()


@dataclass
class _Plan:
    """The non-tensor side of one call, captured when it is made (so functional_call's substitutes count)."""

    ops: nn.ModuleList
    active: list[int]  # candidates that contribute (the others are zero ops)
    live: list[int]  # active candidates with a non-zero weight: run in forward, recomputed in backward
    closed: dict[int, ClosedForm]  # live parameter-free candidates: backward in closed form, not recomputed
    w: list[float]  # the weights as Python floats (one host read per edge)
    layouts: dict[int, _OpLayout]  # per active op
    params: dict[int, dict[str, torch.Tensor]]  # per active op, the parameters it ran with
    buffers: dict[int, dict[str, torch.Tensor]]  # per active op, its buffers (BatchNorm statistics)

    def run(self, k: int, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """o_k(x) with the given parameters and copies of its buffers: running statistics stay as they are."""
        state = {**params, **{name: b.clone() for name, b in self.buffers[k].items()}}
        return torch.func.functional_call(self.ops[k], state, (x,))

    def own_parameters(self, k: int) -> list[torch.Tensor] | None:
        """Op k's parameters if they are still those it ran with (not so once a functional_call has ended)."""
        now, then = self.layouts[k].parameters(), self.params[k]
        return list(now.values()) if all(now[name] is p for name, p in then.items()) else None


@contextlib.contextmanager
def _running_stats_frozen(norms: list[_BatchNorm]):
    """Batch statistics as in training, running statistics left untouched (num_batches_tracked included)."""
    tracking = [m for m in norms if m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def _rng_state(device: torch.device):
    device_state = None if device.type == "cpu" else torch.get_device_module(device.type).get_rng_state(device)
    return torch.get_rng_state(), device_state


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if dense, else a dense copy in its layout. PC-DARTS hands the op a channel slice of a node; one
    copy per pass, made here, replaces the copies each candidate's pooling, convolution and ⟨g, o_k(x)⟩ made of it
    (4–6% of a pc_fused step in NHWC at batch 16 and 64, paired in one process)."""
    return x.contiguous(memory_format=suggest_memory_format(x))


def _as(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """g in the type of `like` (under autocast, the candidates' outputs differ in type from the sum's)."""
    return g if g.dtype == like.dtype else g.to(like.dtype)


class FusedMixedOp(torch.autograd.Function):
    """Σ_k w_k o_k(x), saving x (as given: a channel slice stays a view of its node), the live ops' parameters
    and the max pools' window positions. Inputs: x, weights, plan, *live op params."""

    @staticmethod
    def forward(ctx, x, weights, plan: _Plan, *params):
        ctx.plan, ctx.weights_dtype, ctx.n_params = plan, weights.dtype, len(params)
        ctx.rng = _rng_state(x.device)
        device = x.device.type  # the recomputation replays autocast's choice of types, as torch.utils.checkpoint
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        x_dense = _dense(x)
        out, extras = None, []  # per closed-form candidate, in live order: what its backward needs (or None)
        for k in plan.live:
            if k in plan.closed:
                y, extra = plan.closed[k].forward(plan.ops[k], x_dense)
                extras.append(extra)
            else:
                y = plan.ops[k](x_dense)
            if out is not None and out.dtype != y.dtype:  # under autocast: the sum takes the widest, as Σ w_k·o_k(x)
                out = out.to(torch.promote_types(out.dtype, y.dtype))
            out = weighted_accumulate(out, y, plan.w[k])
        ctx.save_for_backward(x, *params, *extras)
        ctx.out_format = suggest_memory_format(out)  # the candidates' outputs' layout, which g is read alike in
        return out

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():  # create_graph=True: the recomputation below keeps no graph to differentiate
            raise RuntimeError(
                "the fused mixed op has no double backward (create_graph=True); use the unfused op for exact "
                "Hessian-vector products (DARTS second order takes finite differences, Eq. 8, and needs none)"
            )
        plan: _Plan = ctx.plan
        x, *saved = ctx.saved_tensors
        x = _dense(x)
        params = saved[: ctx.n_params]
        extras = dict(zip((k for k in plan.live if k in plan.closed), saved[ctx.n_params :]))
        need_x, need_w = ctx.needs_input_grad[:2]
        need_p = ctx.needs_input_grad[3:]
        g = g.contiguous(memory_format=ctx.out_format)
        x_in = x.detach().requires_grad_(need_x)
        grad_x, param_grads = None, [None] * len(params)
        grad_w = torch.zeros(len(plan.w), dtype=ctx.weights_dtype, device=g.device) if need_w else None
        cpu_state, device_state = ctx.rng
        devices = [] if device_state is None else [x.device]
        autocast_enabled, autocast_dtype = ctx.autocast
        with (
            torch.random.fork_rng(devices=devices, device_type=x.device.type),
            torch.autocast(x.device.type, autocast_dtype, enabled=autocast_enabled),
        ):
            torch.set_rng_state(cpu_state)
            if device_state is not None:
                torch.get_device_module(x.device.type).set_rng_state(device_state, x.device)
            start = 0
            for k in plan.live:  # forward order, so random ops replay the same draws
                if k in plan.closed:
                    if need_x or need_w:
                        vjp = plan.closed[k].vjp(plan.ops[k], _as(g, x), x, extras[k])  # Jᵀg
                        if need_w:
                            grad_w[k] = dot(vjp, x)  # ⟨g, J·x⟩
                        if need_x:
                            grad_x = weighted_accumulate(grad_x, vjp, plan.w[k])
                    continue
                names = list(plan.params[k])
                needs = need_p[start : start + len(names)]
                own = plan.own_parameters(k)
                if own is not None:  # call the op itself: functional_call's swaps and copies cost ~2% of a step
                    leaves = [p if n else p.detach() for p, n in zip(own, needs)]
                    with torch.enable_grad(), _running_stats_frozen(plan.layouts[k].batch_norms()):
                        y = plan.ops[k](x_in)
                else:
                    leaves = [p.detach().requires_grad_(n) for p, n in zip(params[start : start + len(names)], needs)]
                    with torch.enable_grad():
                        y = plan.run(k, x_in, dict(zip(names, leaves)))
                g_k = _as(g, y)  # the sum's backward hands each term g in its type
                if need_w:
                    grad_w[k] = dot(g_k, y)
                targets = ([x_in] if need_x else []) + [p for p in leaves if p.requires_grad]
                if targets and y.requires_grad:
                    grads = list(torch.autograd.grad(y, targets, g_k, allow_unused=True))
                    gx = grads.pop(0) if need_x else None
                    if gx is not None:
                        grad_x = weighted_accumulate(grad_x, gx, plan.w[k])
                    for i, need in enumerate(needs):
                        gp = grads.pop(0) if need else None
                        param_grads[start + i] = None if gp is None else gp.mul_(plan.w[k])
                start += len(names)
            if need_w:  # zero-weight candidates: not run in forward, but ∂L/∂w_k = ⟨g, o_k(x)⟩ all the same
                for k in (k for k in plan.active if k not in plan.live):
                    with torch.no_grad():
                        y = plan.run(k, x, plan.params[k])
                        grad_w[k] = dot(_as(g, y), y)
        return grad_x, grad_w, None, *param_grads


def fused_mixed_op(x: torch.Tensor, weights: torch.Tensor, ops: nn.ModuleList, active: list[int]) -> torch.Tensor:
    """Σ_{k ∈ active} weights[k] · ops[k](x), equal to `weighted_sum_reference` in value and every gradient.

    x: (B, C, H, W), any strides; weights: (N,), differentiable; candidates with weight exactly 0 are skipped
    (their weight still gets ⟨g, o_k(x)⟩, their running statistics are not updated).
    """
    w = weights.detach().to("cpu", torch.float64).tolist()
    live = [k for k in active if w[k] != 0.0] or list(active[:1])
    layouts = {k: _OpLayout.of(ops[k]) for k in active}
    plan = _Plan(
        ops,
        list(active),
        live,
        {k: d for k in live if (d := closed_form(ops[k])) is not None},
        w,
        layouts,
        params={k: layout.parameters() for k, layout in layouts.items()},
        buffers={k: layout.buffer_values() for k, layout in layouts.items()},
    )
    return FusedMixedOp.apply(x, weights, plan, *(p for k in live for p in plan.params[k].values()))
