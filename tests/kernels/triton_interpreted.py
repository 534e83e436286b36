"""Triton kernels on CPU tensors through the interpreter; run only by test_triton.py (TRITON_INTERPRET=1)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from hwnas.kernels import backend, mixed_op, partial_channel
from hwnas.supernet.mixed import weighted_sum_reference

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)


@pytest.mark.parametrize("n", [1, 5000])  # 5000: two blocks, the second partial
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_and_dot(n, dtype):
    y, out = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    for overwrite in (False, True):
        got = mixed_op.weighted_accumulate_triton(out.clone(), y, 0.3, overwrite)
        torch.testing.assert_close(got, mixed_op.weighted_accumulate_reference(out.clone(), y, 0.3, overwrite))
    torch.testing.assert_close(mixed_op.dot_triton(y, out), mixed_op.dot_reference(y, out), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("m", "k", "h", "w"), [(1, 2, 1, 1), (3, 4, 5, 7), (2, 3, 33, 33)])  # 33x33 > one block
def test_shuffle(m, k, h, w):
    node = torch.randn(2, k * m, w, h)
    mixed, bypass = node[:, :m].transpose(2, 3), node[:, m:].transpose(2, 3)  # strided views
    out = partial_channel.partial_channel_shuffle_triton(mixed, bypass, k)
    assert torch.equal(out, partial_channel.partial_channel_shuffle_reference(mixed, bypass, k))
    got = partial_channel.partial_channel_unshuffle_triton(out, k)
    for g, r in zip(got, partial_channel.partial_channel_unshuffle_reference(out, k)):
        assert torch.equal(g, r)


def test_shuffle_channels_last():
    """NHWC in, NHWC out (CPU searches run channels_last), the values of the reference."""
    node = torch.randn(2, 12, 5, 7).contiguous(memory_format=torch.channels_last)
    mixed, bypass = node[:, :3], node[:, 3:]
    out = partial_channel.partial_channel_shuffle_triton(mixed, bypass, 4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, partial_channel.partial_channel_shuffle_reference(mixed, bypass, 4))
    parts = partial_channel.partial_channel_unshuffle_triton(out, 4)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in parts)
    assert torch.equal(parts[0], mixed) and torch.equal(parts[1], bypass)


def test_fused_mixed_op_and_shuffle_dispatching_to_triton(monkeypatch):
    monkeypatch.setattr(backend, "kernel_backend", lambda device, *size: "triton")
    torch.manual_seed(0)
    ops = torch.nn.ModuleList(
        [
            torch.nn.Conv2d(2, 2, 3, padding=1),
            torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(2)),
            torch.nn.Identity(),
        ]
    )
    x = torch.randn(2, 8, 4, 4)
    w = torch.softmax(torch.randn(3), 0)
    grads = []
    for fn, shuffle in (
        (weighted_sum_reference, partial_channel.partial_channel_shuffle_reference),
        (mixed_op.fused_mixed_op, partial_channel.partial_channel_shuffle),
    ):
        edge, xi, wi = copy.deepcopy(ops), x.clone().requires_grad_(), w.clone().requires_grad_()
        y = shuffle(fn(xi[:, :2], wi, edge, [0, 1, 2]), xi[:, 2:], 4)
        y.square().sum().backward()
        grads.append([y.detach(), xi.grad, wi.grad, *(p.grad for p in edge.parameters())])
    for got, ref in zip(*grads[::-1]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
