"""A search step on a small DartsSupernet: fused mixing gives the unfused α, β, weight gradients, BN stats."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hwnas.ops.darts import DARTS_PRIMITIVES
from hwnas.spaces.darts import DartsSupernet
from hwnas.supernet.mixed import PartialChannel, WeightedSum


def step(net, x, y):
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize(
    ("mixing", "partial_channels", "hw"),
    [(WeightedSum, 1, 8), (PartialChannel, 4, 16)],
    ids=["darts", "pc_darts"],
)
def test_fused_step_matches_unfused(kernels, mixing, partial_channels, hw):
    torch.manual_seed(0)
    pc = partial_channels > 1
    net = DartsSupernet(8, 5, 3, 3, DARTS_PRIMITIVES, partial_channels=partial_channels, edge_normalization=pc)
    net = net.to(kernels.device, torch.float64)
    fused = copy.deepcopy(net)
    net.set_mixing(mixing(fused=False))
    fused.set_mixing(mixing(fused=True))
    x = torch.randn(2, 3, hw, hw, dtype=torch.float64, device=kernels.device)
    y = torch.tensor([1, 4], device=kernels.device)
    torch.testing.assert_close(step(fused, x, y), step(net, x, y))
    assert len(net.arch_parameters()) == (4 if pc else 2)
    for (name, p_fused), p in zip(fused.named_parameters(), net.parameters()):
        assert (p_fused.grad is None) == (p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p_fused.grad, p.grad, rtol=1e-7, atol=1e-10, msg=name)
    for (name, b_fused), b in zip(fused.named_buffers(), net.buffers()):
        torch.testing.assert_close(b_fused, b, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    ("mixing", "partial_channels", "most"), [(WeightedSum, 1, 0.15), (PartialChannel, 4, 0.4)], ids=["darts", "pc"]
)
def test_fused_mixing_saves_a_fraction_of_the_unfused_bytes(mixing, partial_channels, most):
    """The point of the fused op: the supernet keeps one buffer per edge for backward, not every candidate's
    activations (here ~6% of the unfused bytes for DARTS, ~27% for PC-DARTS, whose bypass and β stay)."""
    from hwnas.memory import saved_tensor_bytes

    torch.manual_seed(0)
    pc = partial_channels > 1
    net = DartsSupernet(8, 5, 3, 3, DARTS_PRIMITIVES, partial_channels=partial_channels, edge_normalization=pc)
    x = torch.randn(2, 3, 16, 16)  # (B, C, H, W)
    saved = {}
    for fused in (False, True):
        net.set_mixing(mixing(fused=fused))
        saved[fused] = saved_tensor_bytes(lambda: net(x).sum(), list(net.parameters()))
    assert saved[True] < most * saved[False]


def test_fused_under_functional_call(kernels):
    """DARTS second order: L_val(w', α) through torch.func.functional_call, gradients in α and in w'."""
    torch.manual_seed(0)
    net = DartsSupernet(4, 5, 3, 3, DARTS_PRIMITIVES).to(kernels.device, torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=kernels.device)
    y = torch.tensor([0, 3], device=kernels.device)
    names, weights = zip(*net.named_weights())
    results = []
    for fused in (False, True):
        net.set_mixing(WeightedSum(fused=fused))
        w_prime = [(0.9 * w).detach().requires_grad_() for w in weights]
        loss = F.cross_entropy(torch.func.functional_call(net, dict(zip(names, w_prime)), (x,)), y)
        results.append(torch.autograd.grad(loss, [*net.arch_parameters(), *w_prime], allow_unused=True))
    for name, g_fused, g in zip(["alpha_normal", "alpha_reduce", *names], results[1], results[0]):
        assert (g_fused is None) == (g is None), name
        if g is not None:
            torch.testing.assert_close(g_fused, g, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize(("mixing", "partial_channels"), [(WeightedSum, 1), (PartialChannel, 4)], ids=["darts", "pc"])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_channels_last_step_stays_channels_last(kernels, mixing, partial_channels, fused):
    """CPU searches run NHWC (hwnas.device.memory_format): every cell's output stays NHWC, as do the gradients
    of the network input, and the step equals the NCHW one."""
    from hwnas.spaces.darts import SearchCell

    torch.manual_seed(0)
    pc = partial_channels > 1
    net = DartsSupernet(8, 5, 3, 3, DARTS_PRIMITIVES, partial_channels=partial_channels, edge_normalization=pc)
    net = net.to(kernels.device, torch.float64)
    net.set_mixing(mixing(fused=fused))
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    layouts = []
    for cell in (m for m in nhwc.modules() if isinstance(m, SearchCell)):
        cell.register_forward_hook(
            lambda m, i, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
        )
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=kernels.device)
    x_nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = torch.tensor([1, 4], device=kernels.device)
    torch.testing.assert_close(step(nhwc, x_nhwc, y), step(net, x.requires_grad_(), y))
    assert layouts and all(layouts)
    assert x_nhwc.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x_nhwc.grad, x.grad, rtol=1e-7, atol=1e-10)
    for (name, p_nhwc), p in zip(nhwc.named_parameters(), net.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p_nhwc.grad, p.grad, rtol=1e-7, atol=1e-10, msg=name)
