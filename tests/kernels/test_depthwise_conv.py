"""The native depthwise-convolution backward against torch's, and DepthwiseConv2d in the ops that use it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hwnas.kernels import backend
from hwnas.kernels.depthwise_conv import DepthwiseConv2d, depthwise_conv2d, depthwise_conv2d_backward_reference
from hwnas.ops import OPS, MBConv
from hwnas.ops.depthwise import DepthwiseConv2d as DepthwiseConv2dModule

# (batch, channels, H, W, (kH, kW), stride, padding, dilation): DARTS's and MBConv's filters, odd and
# non-square sizes, batch 1, padding wider than the reach, stride above the filter
SHAPES = [
    (2, 4, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1)),
    (3, 5, 13, 11, (5, 5), (1, 1), (4, 4), (2, 2)),  # dil_conv_5x5, odd channels and sizes
    (1, 7, 9, 10, (3, 3), (2, 2), (2, 2), (2, 2)),  # dil_conv_3x3 on a reduction edge, batch 1
    (2, 16, 15, 15, (7, 7), (2, 2), (3, 3), (1, 1)),  # MBConv k7 stride 2
    (2, 3, 7, 12, (3, 5), (2, 1), (0, 3), (1, 1)),  # non-square filter, stride and padding
    (17, 2, 5, 5, (5, 5), (3, 3), (1, 2), (1, 1)),  # more images than the fixed weight-gradient chunks
    (2, 6, 4, 4, (3, 3), (1, 1), (3, 3), (2, 1)),  # padding beyond the filter's reach: zero rows in grad
]


def _case(shape, dtype=torch.float32, channels_last=False, seed=0):
    batch, c, h, w, kernel, stride, padding, dilation = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, *kernel, generator=gen, dtype=dtype)
    out = F.conv2d(x, weight, None, stride, padding, dilation, c)
    grad = torch.randn(out.shape, generator=gen, dtype=dtype)
    return grad, x, weight, stride, padding, dilation


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_torch(native_ops, shape, channels_last):
    grad, x, weight, stride, padding, dilation = _case(shape, channels_last=channels_last)
    got_x, got_w = native_ops.depthwise_conv2d_backward(grad, x, weight, stride, padding, dilation, [True, True])
    exact = depthwise_conv2d_backward_reference(grad.double(), x.double(), weight.double(), stride, padding, dilation)
    ref = depthwise_conv2d_backward_reference(grad, x, weight, stride, padding, dilation)
    for got, torch_f32, f64 in zip((got_x, got_w), ref, exact):
        assert got.dtype == torch.float32 and got.shape == f64.shape
        # as close to the float64 truth as torch's own float32 result is (and within float32 rounding)
        err, torch_err = (got.double() - f64).abs().max(), (torch_f32.double() - f64).abs().max()
        assert err <= max(4 * torch_err, 1e-5 * f64.abs().max()), (err, torch_err)
    assert got_x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_backward_non_contiguous_and_masked(native_ops):
    node = torch.randn(3, 12, 10, 9)
    x = node[:, 2:7].transpose(2, 3)  # a channel slice of a node, then transposed: neither layout
    weight = torch.randn(5, 1, 3, 3)
    grad = torch.randn(3, 5, 9, 10).transpose(2, 3).contiguous().transpose(2, 3)
    geometry = ((1, 1), (2, 2), (2, 2))
    ref_x, ref_w = depthwise_conv2d_backward_reference(grad, x, weight, *geometry)
    only_x = native_ops.depthwise_conv2d_backward(grad, x, weight, *geometry, [True, False])
    only_w = native_ops.depthwise_conv2d_backward(grad, x, weight, *geometry, [False, True])
    assert only_x[1] is None and only_w[0] is None
    torch.testing.assert_close(only_x[0], ref_x)
    torch.testing.assert_close(only_w[1], ref_w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backward_low_precision_accumulates_in_float(native_ops, dtype):
    grad, x, weight, *geometry = _case(SHAPES[1], dtype=dtype, channels_last=True)
    got = native_ops.depthwise_conv2d_backward(grad, x, weight, *geometry, [True, True])
    exact = depthwise_conv2d_backward_reference(grad.double(), x.double(), weight.double(), *geometry)
    for g, e in zip(got, exact):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e, rtol=2e-2, atol=2e-2 * e.abs().max().item())


def test_same_bits_on_any_thread_count(native_ops):
    grad, x, weight, *geometry = _case((32, 8, 16, 16, (5, 5), (1, 1), (4, 4), (2, 2)), channels_last=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(native_ops.depthwise_conv2d_backward(grad, x, weight, *geometry, [True, True]))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_gradcheck_float64(native_ops, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "native")
    _, x, weight, stride, padding, dilation = _case(SHAPES[2], dtype=torch.float64)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: DepthwiseConv2d.apply(a, b, stride, padding, dilation), (x, weight))


def test_checks_inputs(native_ops):
    x, grad = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    geometry = ((1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match=r"weight must be \(C, 1, kH, kW\)"):
        native_ops.depthwise_conv2d_backward(grad, x, torch.randn(4, 2, 3, 3), *geometry, [True, True])
    weight, both = torch.randn(4, 1, 3, 3), [True, True]
    with pytest.raises(RuntimeError, match="grad's spatial size does not match"):
        native_ops.depthwise_conv2d_backward(torch.randn(2, 4, 7, 8), x, weight, *geometry, both)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        native_ops.depthwise_conv2d_backward(grad.double(), x, weight, *geometry, both)


def _grad_fn_name(y: torch.Tensor) -> str:
    return type(y.grad_fn).__name__


def test_entry_point_picks_native_only_where_it_runs(native_ops, monkeypatch):
    x, weight = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(3, 1, 3, 3, requires_grad=True)
    geometry = ((1, 1), (2, 2), (2, 2))
    monkeypatch.setenv(backend.ENV_VAR, "auto")
    assert _grad_fn_name(depthwise_conv2d(x, weight, *geometry)) == "DepthwiseConv2dBackward"
    with torch.no_grad():  # inference: torch's convolution, nothing saved
        assert depthwise_conv2d(x, weight, *geometry).grad_fn is None
    assert _grad_fn_name(depthwise_conv2d(x.detach(), weight.detach(), *geometry)) == "NoneType"
    undilated_3x3 = ((1, 1), (1, 1), (1, 1))  # oneDNN's own kernel is as fast there
    assert _grad_fn_name(depthwise_conv2d(x, weight, *undilated_3x3)) == "ConvolutionBackward0"
    assert _grad_fn_name(depthwise_conv2d(x, torch.randn(3, 1, 5, 5), *undilated_3x3)) == "DepthwiseConv2dBackward"
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    assert _grad_fn_name(depthwise_conv2d(x, weight, *geometry)) == "ConvolutionBackward0"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["sep_conv_5x5", "dil_conv_3x3", "mbconv_k7_e3"])
def test_ops_same_gradients_native_and_reference(native_ops, monkeypatch, name, channels_last):
    """The ops built on DepthwiseConv2d: same output and parameter gradients as torch's convolution gives."""
    torch.manual_seed(0)
    op = MBConv(6, 6, 7, 2, 3) if name.startswith("mbconv") else OPS.get(name)(6, 2, True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    op = op.to(memory_format=fmt)
    assert any(isinstance(m, DepthwiseConv2dModule) for m in op.modules())
    x = torch.randn(3, 6, 11, 11).contiguous(memory_format=fmt)
    results = {}
    for kernels in ("reference", "native"):
        monkeypatch.setenv(backend.ENV_VAR, kernels)
        op.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = op(xi)
        y.square().sum().backward()
        results[kernels] = [y, xi.grad] + [p.grad for p in op.parameters()]
    for got, ref in zip(results["native"], results["reference"]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_module_keeps_nn_conv2d_state_dict():
    conv = DepthwiseConv2dModule(5, 3, 2, 1, 1)
    plain = torch.nn.Conv2d(5, 5, 3, 2, 1, groups=5, bias=False)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 5, 9, 9)
    torch.testing.assert_close(conv(x), plain(x))


def test_autocast_convolves_in_its_type_and_double_backward_is_torchs(native_ops, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "native")
    x, weight = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(3, 1, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv2d(x, weight, (1, 1), (2, 2), (2, 2))
    assert y.dtype == torch.bfloat16 and _grad_fn_name(y) == "DepthwiseConv2dBackward"
    y.float().sum().backward()
    assert x.grad.dtype == weight.grad.dtype == torch.float32
    # create_graph: the gradient is itself differentiable, through torch's convolution backward
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    for fn in (lambda a, b: DepthwiseConv2d.apply(a, b, (1, 1), (2, 2), (2, 2)), None):
        conv = fn or (lambda a, b: F.conv2d(a, b, None, 1, 2, 2, 3))
        (gx,) = torch.autograd.grad(conv(x64, w64).square().sum(), x64, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w64)
        if fn is not None:
            native_gw = gw
    torch.testing.assert_close(native_gw, gw)


def test_benchmark_times_the_darts_filters_a_search_runs():
    """benchmarks/depthwise_conv.py's DARTS rows are the depthwise filters of its supernet (C=16, 8 cells, 32x32),
    whole and PC-DARTS's quarter of the channels: it timed reduction edges at 64 pixels no search runs, and none at
    PC-DARTS's channels, and its totals summed those."""
    from hwnas.ops.darts import DARTS_PRIMITIVES
    from hwnas.spaces.darts import DartsSupernet
    from hwnas.supernet.mixed import PartialChannel, WeightedSum
    from tests.latency.helpers import load_benchmark

    names = {(3, 1): "sep_conv_3x3", (5, 1): "sep_conv_5x5", (3, 2): "dil_conv_3x3", (5, 2): "dil_conv_5x5"}
    seen = set()

    def record(module, inputs, output):
        (k, _), (d, _), (s, _) = module.kernel_size, module.dilation, module.stride
        seen.add((names[k, d], module.in_channels, inputs[0].shape[-1], k, s, d))

    for k, mixing in ((1, WeightedSum()), (4, PartialChannel())):
        torch.manual_seed(0)
        net = DartsSupernet(16, 10, 8, 3, DARTS_PRIMITIVES, partial_channels=k, edge_normalization=k > 1)
        net.set_mixing(mixing)
        for m in net.modules():
            if isinstance(m, DepthwiseConv2dModule):
                m.register_forward_hook(record)
        with torch.no_grad():
            net(torch.randn(2, 3, 32, 32))
    rows = {row for row in load_benchmark("depthwise_conv").configs() if not row[0].startswith("mbconv")}
    assert rows == seen
