"""fused_mixed_op against weighted_sum_reference: value, every gradient, BatchNorm statistics, RNG replay."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hwnas.kernels.mixed_op import (
    dot,
    fused_mixed_op,
    weighted_accumulate,
    weighted_accumulate_reference,
)
from hwnas.ops.darts import DARTS_PRIMITIVES, OPS
from hwnas.supernet.mixed import weighted_sum_reference

ALL = list(range(1, len(DARTS_PRIMITIVES)))  # every candidate but "none"


def make_ops(c: int, stride: int, dtype=torch.float32, device="cpu") -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(OPS.get(p)(c, stride, False) for p in DARTS_PRIMITIVES).to(device, dtype)


def run(fn, ops, x, weights, active):
    """One forward + backward with a fixed upstream gradient; returns the output and every gradient."""
    x = x.detach().requires_grad_()  # keeps x's strides
    weights = weights.detach().requires_grad_()
    torch.manual_seed(1)
    y = fn(x, weights, ops, active)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2)).to(y.device)
    (y * g).sum().backward()
    grads = [p.grad for p in ops.parameters()]
    return y.detach(), x.grad, weights.grad, grads, [b.clone() for b in ops.buffers()]


def assert_same(ref, got, rtol=1e-4, atol=1e-5, buffers=True):
    y0, gx0, gw0, gp0, b0 = ref
    y1, gx1, gw1, gp1, b1 = got
    torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx1, gx0, rtol=rtol, atol=atol)
    torch.testing.assert_close(gw1, gw0, rtol=rtol, atol=atol)
    for p1, p0 in zip(gp1, gp0):  # None: the op did not run (or had weight 0, where the reference gives zeros)
        if p0 is not None or p1 is not None:
            zeros = torch.zeros_like(p0 if p0 is not None else p1)
            torch.testing.assert_close(
                p1 if p1 is not None else zeros, p0 if p0 is not None else zeros, rtol=rtol, atol=atol
            )
    if buffers:
        for s1, s0 in zip(b1, b0):
            torch.testing.assert_close(s1, s0, rtol=rtol, atol=atol)


def compare(ops, x, weights, active, **kwargs):
    ref = run(weighted_sum_reference, copy.deepcopy(ops), x, weights, active)
    got = run(fused_mixed_op, copy.deepcopy(ops), x, weights, active)
    assert_same(ref, got, **kwargs)


def row_weights(n: int, seed: int = 3, device="cpu") -> torch.Tensor:
    alpha = torch.randn(4, n, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(alpha, dim=-1)[1].to(device)  # a row of the per-edge weights, as the cells pass it


@pytest.mark.parametrize(
    ("batch", "c", "hw", "stride", "layout", "active"),
    [
        (1, 3, 7, 1, "contiguous", ALL),
        (2, 5, 8, 1, "channel_slice", ALL),
        (3, 4, 9, 1, "transposed", [1, 4, 6]),
        (2, 6, 8, 2, "channel_slice", ALL),
        (1, 4, 9, 2, "contiguous", [2, 3, 5]),
        (2, 5, 7, 1, "channels_last", ALL),  # how CPU searches run (hwnas.device.memory_format)
        (3, 6, 9, 2, "channels_last_slice", ALL),
    ],
)
def test_matches_reference(kernels, batch, c, hw, stride, layout, active):
    ops = make_ops(c, stride, device=kernels.device)
    base = torch.randn(batch, c + 3, hw, hw, device=kernels.device)
    if layout.startswith("channels_last"):
        ops, base = ops.to(memory_format=torch.channels_last), base.contiguous(memory_format=torch.channels_last)
    x = {
        "contiguous": base[:, :c].contiguous(),
        "channel_slice": base[:, 3:],  # the PC-DARTS case: a strided view of a node
        "transposed": base[:, :c].transpose(2, 3),
        "channels_last": base[:, :c].contiguous(memory_format=torch.channels_last),
        "channels_last_slice": base[:, 3:],
    }[layout]
    compare(ops, x, row_weights(len(DARTS_PRIMITIVES), device=kernels.device), active)


class _RecordsLayout(nn.Module):
    """A parametrised candidate that notes whether each input it runs on is dense NHWC."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        self.dense = []

    def forward(self, x):
        self.dense.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.conv(x)


def test_candidates_run_on_a_dense_copy_of_a_channel_slice():
    """PC-DARTS hands the mixed op a channel slice of an NHWC node: the candidates get one dense copy per pass
    (forward and recomputation) instead of each op copying or striding through it; gradients as the reference."""
    torch.manual_seed(0)
    ops = nn.ModuleList([_RecordsLayout(3), nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Identity()])
    node = torch.randn(2, 12, 6, 5).contiguous(memory_format=torch.channels_last)
    x = node[:, :3]  # (B, C/K, H, W), strided
    assert not x.is_contiguous(memory_format=torch.channels_last)
    compare(ops, x, row_weights(3), [0, 1, 2], buffers=False)
    fused = copy.deepcopy(ops)
    run(fused_mixed_op, fused, x, row_weights(3), [0, 1, 2])
    assert fused[0].dense == [True, True]  # forward, recomputation


def test_zero_weights_skipped_but_weight_gradient_exact(kernels):
    dev = kernels.device
    ops = make_ops(4, 1, device=dev)
    weights = row_weights(len(DARTS_PRIMITIVES), device=dev).clone()
    weights[[2, 4]] = 0.0  # exactly zero: not run in forward, no backprop through them
    compare(ops, torch.randn(2, 4, 6, 6, device=dev), weights, ALL, buffers=False)  # their BN stats stay
    weights[1:] = 0.0  # every active candidate zero: output zeros of the right shape
    compare(ops, torch.randn(2, 4, 6, 6, device=dev), weights, ALL, buffers=False)


def test_bn_running_stats_updated_once():
    ops = make_ops(4, 1)
    fused_ops = copy.deepcopy(ops)
    x = torch.randn(2, 4, 6, 6)
    run(weighted_sum_reference, ops, x, row_weights(8), ALL)
    run(fused_mixed_op, fused_ops, x, row_weights(8), ALL)
    tracked = [b for n, b in fused_ops.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(int(b) == 1 for b in tracked)
    for b1, b0 in zip(fused_ops.buffers(), ops.buffers()):
        torch.testing.assert_close(b1, b0)


def test_dropout_masks_replayed(kernels):
    torch.manual_seed(0)
    ops = nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Dropout(0.5)),
            nn.Sequential(nn.Dropout(0.3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)),
            nn.Identity(),
        ]
    ).to(kernels.device)
    x, weights = torch.randn(2, 3, 5, 5), torch.softmax(torch.randn(3), 0)
    compare(ops, x.to(kernels.device), weights.to(kernels.device), [0, 1, 2])


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(3, 1, 1),
        nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d(2, 2),
        nn.MaxPool2d((3, 2), (2, 1), (1, 0), dilation=(1, 2), ceil_mode=True),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.AvgPool2d(3, 2, 1),
        nn.AvgPool2d(2, ceil_mode=True, divisor_override=3),
    ],
    ids=repr,
)
@pytest.mark.parametrize("layout", ["contiguous", "channel_slice"])
def test_pools_backward_in_closed_form(kernels, pool, layout):
    """Pools are not recomputed: Jᵀg is their input gradient and ⟨Jᵀg, x⟩ their weight gradient. Integer inputs
    tie within windows: max pooling must route the gradient to max_pool2d's own argmax."""
    dev = kernels.device
    ops = nn.ModuleList([pool, nn.Identity(), nn.Sequential(copy.deepcopy(pool), nn.BatchNorm2d(5))]).to(dev)
    base = torch.randint(-3, 4, (2, 8, 9, 7), generator=torch.Generator().manual_seed(0)).float().to(dev)
    x = base[:, 3:] if layout == "channel_slice" else base[:, 3:].contiguous()
    same_shape = pool(x).shape == x.shape
    active = [0, 1, 2] if same_shape else [0, 2]  # the identity fits stride-1 pools only
    compare(ops, x, row_weights(3, device=dev), active)


def test_max_pool_saves_window_positions_not_indices():
    """A max-pool candidate costs one byte per output for backward, not max_pool2d's eight (int64 indices)."""
    ops = nn.ModuleList([nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1), nn.Identity()])
    x = torch.randn(2, 5, 9, 7, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_mixed_op(x, row_weights(3).requires_grad_(), ops, [0, 1, 2])
    assert sorted(t.dtype for t in saved if t.data_ptr() != x.data_ptr()) == [torch.uint8]
    assert [t.shape for t in saved if t.dtype == torch.uint8] == [x.shape]


@pytest.mark.parametrize(
    ("pool", "width", "offsets"),
    [
        (nn.MaxPool2d(3, 1, 1), 126, torch.uint8),  # window span 2·126 + 2 = 254
        (nn.MaxPool2d(3, 1, 1), 127, torch.int16),  # span 256: one past a byte
        (nn.MaxPool2d(3, 2, 1), 161, torch.int16),  # a DARTS reduction at 160+ px
        (nn.MaxPool2d(3, 1, 1, dilation=(2, 1)), 8193, torch.int32),  # span 4·8193 + 2 > 32767
    ],
    ids=["uint8", "int16_at_127", "int16", "int32"],
)
def test_max_pool_offsets_widen_with_the_input(pool, width, offsets):
    """Window offsets that pass a byte (or 16 bits) are kept in a wider integer, and the gradients stay
    max_pool2d's."""
    ops = nn.ModuleList([pool, nn.Identity()])
    x = torch.randn(1, 2, 5, width)
    active = [0, 1] if pool(x).shape == x.shape else [0]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_mixed_op(x.detach().requires_grad_(), row_weights(2).requires_grad_(), ops, active)
    assert [t.dtype for t in saved if not t.is_floating_point()] == [offsets]
    compare(ops, x, row_weights(2), active)


class Edge(nn.Module):
    def __init__(self, ops: nn.ModuleList, fn):
        super().__init__()
        self.ops, self.fn = ops, fn

    def forward(self, x, weights):
        return self.fn(x, weights, self.ops, ALL)


def test_functional_call_uses_substituted_parameters():
    """DARTS second order runs the supernet on w' = w - ξ∇w through torch.func.functional_call."""
    ops = make_ops(4, 1)
    x, weights = torch.randn(2, 4, 6, 6), row_weights(8)
    results = []
    for fn in (weighted_sum_reference, fused_mixed_op):
        edge = Edge(copy.deepcopy(ops), fn)
        subs = {n: (1.5 * p.detach()).requires_grad_() for n, p in edge.named_parameters()}
        y = torch.func.functional_call(edge, subs, (x, weights))
        assert not torch.allclose(y, edge(x, weights))  # the substitutes really ran
        grads = torch.autograd.grad(y.square().sum(), list(subs.values()))
        assert all(p.grad is None for p in edge.parameters())
        results.append((y.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for g1, g0 in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("stride", "c"), [(1, 2), (2, 2)])
def test_gradcheck(kernels, stride, c):
    dev = kernels.device
    edge = Edge(make_ops(c, stride, torch.float64, dev), fused_mixed_op)
    names, params = zip(*[(n, p.detach().clone().requires_grad_()) for n, p in edge.named_parameters()])
    x = torch.randn(2, c, 4, 4, dtype=torch.float64, device=dev, requires_grad=True)
    weights = torch.softmax(torch.randn(8, dtype=torch.float64, device=dev), 0).requires_grad_()

    def fn(x, weights, *params):
        return torch.func.functional_call(edge, dict(zip(names, params)), (x, weights))

    assert torch.autograd.gradcheck(fn, (x, weights, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("n", [1, 7, 40_001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_and_dot(kernels, n, dtype):
    y = torch.randn(n, dtype=dtype, device=kernels.device)
    out = torch.randn(n, dtype=dtype, device=kernels.device)
    torch.testing.assert_close(
        weighted_accumulate(out.clone(), y, 0.3), weighted_accumulate_reference(out, y, 0.3, False)
    )
    torch.testing.assert_close(weighted_accumulate(None, y, -1.5), -1.5 * y)
    strided = torch.randn(2 * n, dtype=dtype, device=kernels.device)[::2]
    exact = (y.double() * strided.double()).sum()
    # a summation's rounding error is at most ~log2(n) ulps of Σ|a_i·b_i| (pairwise or blocked sums)
    bound = (math.log2(n) + 2) * torch.finfo(dtype).eps * (y.double() * strided.double()).abs().sum()
    assert abs(float(dot(y, strided)) - float(exact)) <= float(bound)
    torch.testing.assert_close(dot(y, out), (y * out).sum(), rtol=1e-5, atol=1e-4)


def test_accumulate_and_dot_channels_last(kernels):
    """NHWC operands (CPU searches run channels_last) take the kernels and keep their layout; mixed layouts
    fall back to the reference."""
    y, out = (torch.randn(2, 5, 3, 7, device=kernels.device).contiguous(memory_format=torch.channels_last)
              for _ in range(2))  # fmt: skip
    fresh = weighted_accumulate(None, y, 0.3)
    assert fresh.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fresh, 0.3 * y)
    torch.testing.assert_close(weighted_accumulate(out.clone(), y, 0.3), out + 0.3 * y)
    torch.testing.assert_close(weighted_accumulate(out.contiguous(), y, 0.3), out + 0.3 * y)
    torch.testing.assert_close(dot(y, out), (y * out).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dot(y, out.contiguous()), (y * out).sum(), rtol=1e-5, atol=1e-5)


def test_accumulate_keeps_a_float64_weight(kernels):
    """w = 0.1 is no fp32 number: a float64 accumulate must not round it to one (Triton's float arguments are
    fp32; finite differences through a rounded w are off by ~1%, which gradcheck caught on a GPU)."""
    y = torch.ones(3, dtype=torch.float64, device=kernels.device)
    assert (weighted_accumulate(None, y, 0.1) - 0.1).abs().max() < 1e-15
    assert (weighted_accumulate(torch.ones_like(y), y, 0.1) - 1.1).abs().max() < 1e-15


def test_autocast_replayed_in_the_recomputation():
    """Under bf16 autocast (a mixed-precision search), the fused op recomputes its candidates in the types their
    forward ran in: its output and every gradient are as close to an fp32 run as the unfused op's are."""
    ops, x, weights = make_ops(5, 1), torch.randn(2, 5, 7, 7), row_weights(8)

    def under_autocast(fn):
        def autocast_fn(*args):
            with torch.autocast("cpu", torch.bfloat16):
                return fn(*args)

        return autocast_fn

    exact = run(weighted_sum_reference, copy.deepcopy(ops), x, weights, ALL)
    unfused = run(under_autocast(weighted_sum_reference), copy.deepcopy(ops), x, weights, ALL)
    fused = run(under_autocast(fused_mixed_op), copy.deepcopy(ops), x, weights, ALL)
    assert fused[0].dtype == unfused[0].dtype

    def close_as_unfused(e, u, f):  # bf16 keeps ~3 digits: errors differ by the order of rounding, not more
        unfused_error, fused_error = (float((t.float() - e).abs().max()) for t in (u, f))
        return fused_error <= 3 * unfused_error + 1e-2 * float(e.abs().max())

    assert all(close_as_unfused(e, u, f) for e, u, f in zip(exact[:3], unfused[:3], fused[:3]))
    assert all(close_as_unfused(e, u, f) for e, u, f in zip(exact[3], unfused[3], fused[3]))


def test_double_backward_is_refused():
    """The recomputation keeps no graph of its own gradients: create_graph gets a clear error, not silently none."""
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    weights = row_weights(8).requires_grad_()
    y = fused_mixed_op(x, weights, make_ops(4, 1), ALL)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)
