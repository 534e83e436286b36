"""Analytic op costs agree with PyTorch's FLOP counter on the modules the profilers build."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwnas.errors import HwnasError
from hwnas.latency.catalogue import mobile_op_configs, space_op_configs
from hwnas.latency.features import cost_matrix, op_cost
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers.build import build_op, input_shape

OPS = mobile_op_configs(32, primitives=("mbconv_k3_e3", "mbconv_k7_e6")) + space_op_configs("darts", 8)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.key())
def test_macs_and_params_match_the_module(op):
    module = build_op(op)
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(input_shape(op)))
    cost = op_cost(op)
    assert cost.macs == counter.get_total_flops() / 2
    weights = sum(p.numel() for p in module.parameters() if p.dim() > 1) + (
        op.output_shape[-1] if op.kind == "Logits" else 0
    )
    assert cost.params == weights


def test_once_for_all_keys_and_matrix_shapes():
    ofa = OpConfig.from_key(
        "expanded_conv-input:14x14x96-output:14x14x136-expand:288-kernel:5-stride:1-idskip:0-se:1-hs:1"
    )
    assert op_cost(ofa).terms["dw_macs_k5"] == 14 * 14 * 288 * 25
    terms, raw = cost_matrix([ofa, OpConfig.from_key("AvgPool2D-input:7x7x1152-output:1x1x1152")])
    assert terms.shape[0] == raw.shape[0] == 2
    with pytest.raises(HwnasError, match="no cost model"):
        op_cost(OpConfig.from_key("transformer-input:8x8x8-output:8x8x8"))
    for key in ("Conv-input:224x160x3-output:112x80x32", "Conv_1-input:7x7x320-output:7x5x1280"):
        with pytest.raises(HwnasError, match=r"takes square feature maps, got (224x160|7x5)$"):
            op_cost(OpConfig.from_key(key))


def test_dense_convs_are_matrix_multiplies_over_an_im2col_buffer():
    stem = op_cost(OpConfig.from_key("Conv-input:224x224x3-output:112x112x32"))
    macs = 112 * 112 * 32 * 3 * 9
    assert stem.terms["gemm_macs"] == stem.terms["dense_macs"] == stem.macs == macs
    assert stem.terms["gemm_bytes"] == 4 * (112 * 112 * 3 * 9 + 112 * 112 * 32)  # im2col buffer + output
    key = "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:7-stride:2-idskip:0"
    block = op_cost(OpConfig.from_key(key))
    assert block.terms["dense_macs"] == 0 and block.terms["dw_macs_k7"] == 28 * 28 * 72 * 49
    assert block.terms["gemm_macs"] == 56 * 56 * 24 * 72 + 28 * 28 * 72 * 40  # expand and project 1x1 convs
