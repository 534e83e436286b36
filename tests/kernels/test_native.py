"""The native library (built by CMakeLists.txt) against the PyTorch references, op by op."""

from __future__ import annotations

import pytest
import torch

from hwnas.kernels.mixed_op import dot_reference, weighted_accumulate_reference
from hwnas.kernels.partial_channel import (
    partial_channel_shuffle_reference,
    partial_channel_unshuffle_reference,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 1000, 70_001])  # 70_001: above the OpenMP threshold
def test_weighted_accumulate_and_dot(native_ops, dtype, n):
    y, out = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    for overwrite in (False, True):
        got = native_ops.weighted_accumulate_(out.clone(), y, 0.7, overwrite)
        torch.testing.assert_close(got, weighted_accumulate_reference(out.clone(), y, 0.7, overwrite), **tol)
    ref = dot_reference(y.double(), out.double()).to(dtype)
    torch.testing.assert_close(native_ops.dot(y, out), ref, rtol=1e-5 if dtype != torch.bfloat16 else 1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8])
def test_shuffle_any_dtype_any_strides(native_ops, dtype):
    node = (100 * torch.randn(3, 20, 6, 7)).to(dtype)
    mixed, bypass = node[:, :5].transpose(2, 3), node[:, 5:].transpose(2, 3)  # strided views, odd sizes
    out = native_ops.partial_channel_shuffle(mixed, bypass, 4)
    assert torch.equal(out, partial_channel_shuffle_reference(mixed, bypass, 4))
    for got, ref in zip(native_ops.partial_channel_unshuffle(out, 4), partial_channel_unshuffle_reference(out, 4)):
        assert torch.equal(got, ref)
    strided_grad = torch.randn(3, 7, 20, 6).to(dtype).transpose(1, 2)
    for got, ref in zip(
        native_ops.partial_channel_unshuffle(strided_grad, 4),
        partial_channel_unshuffle_reference(strided_grad, 4),
    ):
        assert torch.equal(got, ref)


def test_checks_inputs(native_ops):
    with pytest.raises(RuntimeError, match="shapes differ"):
        native_ops.weighted_accumulate_(torch.zeros(3), torch.zeros(4), 1.0, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        native_ops.dot(torch.zeros(4, 2).t(), torch.zeros(2, 4))
