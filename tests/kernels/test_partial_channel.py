"""partial_channel_shuffle against channel_shuffle(cat([mixed, bypass]), k), and bypass_max_pool against
nn.MaxPool2d: value and gradients."""

from __future__ import annotations

import pytest
import torch

from hwnas.kernels.partial_channel import bypass_max_pool, partial_channel_shuffle, partial_channel_shuffle_reference
from hwnas.memory import saved_tensor_bytes


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
    mixed = torch.randn(2, 3, 4, 5, device=kernels.device).transpose(2, 3).requires_grad_()
    bypass = torch.randn(2, 9, 4, 5, device=kernels.device).transpose(2, 3).requires_grad_()
    g = torch.randn(2, 12, 5, 4, device=kernels.device)
    outs = []
    for fn in (partial_channel_shuffle_reference, partial_channel_shuffle):
        y = fn(mixed, bypass, 4)
        outs.append((y, *torch.autograd.grad(y, [mixed, bypass], g)))
    for got, ref in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_gradcheck(kernels):
    mixed = torch.randn(2, 2, 3, 3, dtype=torch.float64, device=kernels.device, requires_grad=True)
    bypass = torch.randn(2, 6, 3, 3, dtype=torch.float64, device=kernels.device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: partial_channel_shuffle(a, b, 4), (mixed, bypass))


@pytest.mark.parametrize(("batch", "m", "k", "hw"), [(1, 2, 4, 3), (2, 3, 4, 5), (3, 5, 3, 7)])
def test_channels_last_stays_channels_last(kernels, batch, m, k, hw):
    """CPU searches run NHWC: the shuffle and its gradients keep that layout (an NCHW result sent every later
    layer of the PC-DARTS supernet down oneDNN's slow NCHW kernels), with the values of the NCHW reference."""
    nhwc = torch.channels_last
    dev = kernels.device
    node = torch.randn(batch, k * m, hw, hw, device=dev).contiguous(memory_format=nhwc).requires_grad_()
    g = torch.randn(batch, k * m, hw, hw, device=dev).contiguous(memory_format=nhwc)
    plain = node.detach().contiguous().requires_grad_()
    ref = partial_channel_shuffle_reference(2 * plain[:, :m], plain[:, m:], k)
    (ref_grad,) = torch.autograd.grad(ref, plain, g.contiguous())
    for fn in (partial_channel_shuffle_reference, partial_channel_shuffle):
        part, bypass = node.split([m, (k - 1) * m], dim=1)  # channel slices of an NHWC node, as PartialChannel
        y = fn(2 * part, bypass, k)  # (the mixed op's output)
        (grad,) = torch.autograd.grad(y, node, g)
        assert y.is_contiguous(memory_format=nhwc) and grad.is_contiguous(memory_format=nhwc), fn.__name__
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        partial_channel_shuffle(torch.randn(1, 2, 3, 3), torch.randn(1, 5, 3, 3), 4)


@pytest.mark.parametrize(
    ("batch", "c", "h", "w", "pool"),
    [
        (1, 1, 2, 2, torch.nn.MaxPool2d(2, 2)),
        (2, 12, 7, 9, torch.nn.MaxPool2d(2, 2)),
        (3, 5, 8, 8, torch.nn.MaxPool2d(3, 3)),
        (2, 4, 7, 6, torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)),
    ],
)
def test_bypass_max_pool_matches_max_pool2d(batch, c, h, w, pool):
    node = torch.randn(batch, c + 3, h, w, requires_grad=True)
    bypass = node[:, 3:]  # PC-DARTS pools a channel slice of the node state: a strided view
    g = torch.randn(pool(bypass).shape)
    outs = []
    for fn in (pool, lambda t: bypass_max_pool(t, pool)):
        y = fn(bypass)
        outs.append((y, *torch.autograd.grad(y, node, g)))
    for got, ref in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_bypass_max_pool_gradcheck_and_saves_no_indices():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    pool = torch.nn.MaxPool2d(2, 2)
    assert torch.autograd.gradcheck(lambda t: bypass_max_pool(t, pool), (x,))
    node = torch.randn(4, 16, 32, 32, requires_grad=True)
    offsets = 4 * 12 * 16 * 16  # one byte per output
    assert saved_tensor_bytes(lambda: bypass_max_pool(node[:, 4:], pool).sum()) == node.numel() * 4 + offsets
    assert saved_tensor_bytes(lambda: pool(node[:, 4:]).sum()) == node.numel() * 4 + 8 * offsets  # x, int64 indices
    with pytest.raises(ValueError, match="nn.MaxPool2d returning no indices"):
        bypass_max_pool(node, torch.nn.MaxPool2d(2, 2, return_indices=True))
