"""partial_channel_shuffle against channel_shuffle(cat([mixed, bypass]), k): value and gradients."""

from __future__ import annotations

import pytest
import torch

from hwnas.kernels.partial_channel import partial_channel_shuffle, partial_channel_shuffle_reference


@pytest.mark.parametrize(
    ("batch", "m", "k", "hw", "strided"),
    [(1, 1, 2, 3, False), (2, 3, 4, 5, True), (3, 5, 3, 7, True), (2, 4, 4, 8, False)],
)
def test_matches_reference(kernels, batch, m, k, hw, strided):
    dev = kernels.device
    mixed = torch.randn(batch, m, hw, hw, device=dev, requires_grad=True)
    node = torch.randn(batch, k * m, hw, hw, device=dev, requires_grad=True)
    bypass = node[:, m:] if strided else node[:, m:].detach().clone().requires_grad_()  # PC-DARTS: a view of x
    g = torch.randn(batch, k * m, hw, hw, device=dev)
    outs = []
    for fn in (partial_channel_shuffle_reference, partial_channel_shuffle):
        y = fn(mixed, bypass, k)
        grads = torch.autograd.grad(y, [mixed, node if strided else bypass], g)
        outs.append((y, *grads))
    for got, ref in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)  # a permutation: exact


def test_transposed_inputs(kernels):
    mixed = torch.randn(2, 3, 4, 5, device=kernels.device).transpose(2, 3)
    bypass = torch.randn(2, 9, 4, 5, device=kernels.device).transpose(2, 3)
    assert torch.equal(partial_channel_shuffle(mixed, bypass, 4), partial_channel_shuffle_reference(mixed, bypass, 4))


def test_gradcheck(kernels):
    mixed = torch.randn(2, 2, 3, 3, dtype=torch.float64, device=kernels.device, requires_grad=True)
    bypass = torch.randn(2, 6, 3, 3, dtype=torch.float64, device=kernels.device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: partial_channel_shuffle(a, b, 4), (mixed, bypass))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        partial_channel_shuffle(torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 3), 4)
