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
