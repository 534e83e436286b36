import pytest
import torch

from hwnas.ops import DARTS_PRIMITIVES, MOBILE_OPS, MOBILE_PRIMITIVES, OPS, OpConfig
from hwnas.ops.darts import FactorizedReduce


@pytest.mark.parametrize("name", DARTS_PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7, 1])
def test_darts_op_shapes(name, stride, hw):
    op = OPS.get(name)(6, stride, False)
    y = op(torch.randn(2, 6, hw, hw))
    expected = hw if stride == 1 else (hw + 1) // 2
    assert y.shape == (2, 6, expected, expected)


def test_none_is_zero_and_pool_excludes_padding():
    x = torch.rand(1, 3, 5, 5) + 1
    assert OPS.get("none")(3, 1, False)(x).abs().sum() == 0
    avg = OPS.get("avg_pool_3x3")(3, 1, False)(x)
    # the corner averages only its 4 real neighbours (count_include_pad=False)
    assert torch.allclose(avg[0, 0, 0, 0], x[0, 0, :2, :2].mean())


def test_skip_connect_is_identity_or_factorized_reduce():
    assert isinstance(OPS.get("skip_connect")(4, 1, True), torch.nn.Identity)
    assert isinstance(OPS.get("skip_connect")(4, 2, True), FactorizedReduce)


def test_sep_conv_structure_is_relu_dw_pw_bn_twice():
    op = OPS.get("sep_conv_3x3")(4, 1, True)
    layers = [type(m).__name__ for m in op.modules() if not list(m.children())]
    assert layers == ["ReLU", "Conv2d", "Conv2d", "BatchNorm2d"] * 2
    bn_affine = OPS.get("sep_conv_3x3")(4, 1, False)[0][3]
    assert not bn_affine.affine


@pytest.mark.parametrize("name", MOBILE_PRIMITIVES[:-1])
@pytest.mark.parametrize("stride,c_in,c_out", [(1, 16, 16), (2, 16, 24), (1, 16, 24)])
def test_mbconv_shapes_and_shortcut(name, stride, c_in, c_out):
    block = MOBILE_OPS.get(name)(c_in, c_out, stride)
    y = block(torch.randn(1, c_in, 9, 9))
    assert y.shape == (1, c_out, (9 + stride - 1) // stride, (9 + stride - 1) // stride)
    assert block.identity == (stride == 1 and c_in == c_out)


def test_opconfig_key_round_trip():
    key = "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0"
    cfg = OpConfig.from_key(key)
    assert cfg.key() == key and cfg.attr("kernel") == 5 and cfg.input_shape == (112, 112, 16)
    assert OpConfig.from_key("Logits-input:7x7x1280-output:1000").output_shape == (1000,)
