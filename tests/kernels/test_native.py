"""The native library (built by CMakeLists.txt) against the PyTorch references, op by op."""

from __future__ import annotations

import pytest
import torch

from hwnas.kernels import backend
from hwnas.kernels.mixed_op import dot_reference, weighted_accumulate_reference
from hwnas.kernels.partial_channel import (
    partial_channel_shuffle_reference,
    partial_channel_unshuffle_reference,
)
from tests.kernels.conftest import needs_cuda


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=needs_cuda)])
def device(request, native_ops):
    """Each device the library has kernels for: the CPU always, CUDA where nvcc built them."""
    if request.param == "cuda" and not backend._native_for("cuda"):
        pytest.skip("the native library was built without CUDA kernels (no nvcc)")
    return torch.device(request.param)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 1000, 70_001])  # 70_001: above the OpenMP threshold
def test_weighted_accumulate_and_dot(native_ops, device, dtype, n):
    y, out = torch.randn(n).to(device, dtype), torch.randn(n).to(device, dtype)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    for overwrite in (False, True):
        got = native_ops.weighted_accumulate_(out.clone(), y, 0.7, overwrite)
        torch.testing.assert_close(got, weighted_accumulate_reference(out.clone(), y, 0.7, overwrite), **tol)
    ref = dot_reference(y.double(), out.double()).to(dtype)
    torch.testing.assert_close(native_ops.dot(y, out), ref, rtol=1e-5 if dtype != torch.bfloat16 else 1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8])
def test_shuffle_any_dtype_any_strides(native_ops, device, dtype):
    node = (100 * torch.randn(3, 20, 6, 7)).to(device, dtype)
    mixed, bypass = node[:, :5].transpose(2, 3), node[:, 5:].transpose(2, 3)  # strided views, odd sizes
    out = native_ops.partial_channel_shuffle(mixed, bypass, 4)
    assert torch.equal(out, partial_channel_shuffle_reference(mixed, bypass, 4))
    for got, ref in zip(native_ops.partial_channel_unshuffle(out, 4), partial_channel_unshuffle_reference(out, 4)):
        assert torch.equal(got, ref)
    strided_grad = torch.randn(3, 7, 20, 6).to(device, dtype).transpose(1, 2)
    for got, ref in zip(
        native_ops.partial_channel_unshuffle(strided_grad, 4),
        partial_channel_unshuffle_reference(strided_grad, 4),
    ):
        assert torch.equal(got, ref)


def test_checks_inputs(native_ops, device):
    with pytest.raises(RuntimeError, match=r"weighted_accumulate_: shapes differ, \[3\] vs \[4\]"):
        native_ops.weighted_accumulate_(torch.zeros(3, device=device), torch.zeros(4, device=device), 1.0, False)
    with pytest.raises(RuntimeError, match="dense tensors of one memory layout"):
        native_ops.dot(torch.zeros(4, 2, device=device).t(), torch.zeros(2, 4, device=device))
    with pytest.raises(RuntimeError, match="dense tensors of one memory layout"):
        native_ops.dot(torch.zeros(4, 6, device=device)[:, :3], torch.zeros(4, 6, device=device)[:, :3])


def test_channels_last_pairs(native_ops, device):
    """NHWC tensors (searches on the CPU run channels_last) are read flat like NCHW ones."""
    y, out = (torch.randn(2, 5, 3, 7).to(device).contiguous(memory_format=torch.channels_last) for _ in range(2))
    got = native_ops.weighted_accumulate_(out.clone(), y, 0.7, False)
    torch.testing.assert_close(got, out + 0.7 * y)
    torch.testing.assert_close(native_ops.dot(y, out), (y * out).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8])
def test_shuffle_channels_last(native_ops, device, dtype):
    """NHWC inputs take the pixel-by-pixel path and give NHWC outputs, equal to the reference's."""
    nhwc = torch.channels_last
    node = (100 * torch.randn(3, 20, 6, 7)).to(device, dtype).contiguous(memory_format=nhwc)
    mixed, bypass = node[:, :5], node[:, 5:]  # channel slices: channel stride 1, odd sizes
    out = native_ops.partial_channel_shuffle(mixed, bypass, 4)
    assert out.is_contiguous(memory_format=nhwc)
    assert torch.equal(out, partial_channel_shuffle_reference(mixed, bypass, 4))
    parts = native_ops.partial_channel_unshuffle(out, 4)
    assert all(p.is_contiguous(memory_format=nhwc) for p in parts)
    assert torch.equal(parts[0], mixed) and torch.equal(parts[1], bypass)
