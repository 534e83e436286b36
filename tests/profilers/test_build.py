"""OpConfig -> nn.Module: every kind the tables hold builds, mapping the key's input shape to its output."""

import pytest
import torch

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import mobile_op_configs, space_op_configs
from hwnas.ops.mbconv import MBConv
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers.build import build_op, input_shape


def expected_shape(op: OpConfig):
    if len(op.output_shape) == 1:
        return (1, op.output_shape[0])
    h, w, c = op.output_shape
    return (1, c, h, w)


@pytest.mark.parametrize(
    "op",
    mobile_op_configs(input_size=64, primitives=("mbconv_k3_e3", "mbconv_k7_e6"))
    + space_op_configs("darts", 9, SearchConfig(init_channels=4, layers=3, steps=2, multiplier=2)),
    ids=lambda op: op.key(),
)
def test_build_matches_key_shapes(op):
    module = build_op(op)
    assert not module.training
    with torch.no_grad():
        out = module(torch.randn(input_shape(op)))
    assert tuple(out.shape) == expected_shape(op)


def test_identity_shortcut_follows_idskip():
    key = "expanded_conv-input:8x8x16-output:8x8x16-expand:3-kernel:3-stride:1-idskip:{}"
    assert build_op(OpConfig.from_key(key.format(1))).identity
    block = build_op(OpConfig.from_key(key.format(0)))
    assert isinstance(block, MBConv) and not block.identity


def test_unbuildable_keys():
    with pytest.raises(HwnasError, match="se"):
        build_op(
            OpConfig.from_key(
                "expanded_conv-input:7x7x192-output:7x7x192-expand:576-kernel:3-stride:1-idskip:1-se:1-hs:1"
            )
        )
    with pytest.raises(HwnasError, match="cannot build op kind 'AvgPool2D'"):
        build_op(OpConfig.from_key("AvgPool2D-input:7x7x1152-output:1x1x1152"))
    with pytest.raises(HwnasError, match="keep the channel count"):
        build_op(OpConfig.from_key("sep_conv_3x3-input:8x8x4-output:8x8x8-stride:1"))
    with pytest.raises(HwnasError, match="HxWxC"):
        input_shape(OpConfig.from_key("Logits-input:1280-output:1000"))
    assert input_shape(OpConfig.from_key("Conv-input:32x32x3-output:16x16x8"), batch=4) == (4, 3, 32, 32)
