"""Enumerating the op configurations a space needs."""

import pytest
import yaml

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import (
    make_divisible,
    mobile_blocks,
    mobile_network_op_configs,
    mobile_op_configs,
    space_op_configs,
)
from hwnas.latency.table import LatencyTable
from hwnas.spaces import get_space
from tests.latency.helpers import SHARED_DATA, SHIPPED

PIXEL1_YAML = SHARED_DATA / "proxylessnas" / "mobile_trim.yaml"
# the published table also times the fixed first MBConv1 at kernels 5 and 7, which the space never uses
# (ProxylessNAS fixes that block to 3x3 MBConv1)
PIXEL1_UNUSED = {
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:5-stride:1-idskip:0",
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:7-stride:1-idskip:0",
}


def test_mobile_224_matches_the_pixel1_table():
    keys = {op.key() for op in mobile_op_configs(224)}
    table = LatencyTable.load(SHIPPED / "mobile_mobile_224.json")
    assert len(keys) == 70
    assert set(table.entries) - keys == PIXEL1_UNUSED
    assert keys <= set(table.entries)


@pytest.mark.skipif(not PIXEL1_YAML.is_file(), reason=f"no {PIXEL1_YAML} (the shared latency data)")
def test_mobile_224_matches_the_published_yaml():
    published = set(yaml.safe_load(PIXEL1_YAML.read_text()))
    assert published - {op.key() for op in mobile_op_configs(224)} == PIXEL1_UNUSED


def test_mobile_blocks():
    blocks = mobile_blocks(224)
    assert len(blocks) == 21
    assert [b.c_out for b in blocks if b.first] == [24, 40, 80, 96, 192, 320]
    assert [b.stride for b in blocks if b.first] == [2, 2, 2, 1, 2, 1]
    assert all(b.stride == 1 and b.identity for b in blocks if not b.first)
    assert (blocks[0].c_in, blocks[0].hw_in, blocks[-1].hw_out) == (16, 112, 7)
    for prev, block in zip(blocks, blocks[1:]):
        assert (block.c_in, block.hw_in) == (prev.c_out, prev.hw_out)


def test_width_multiplier_and_make_divisible():
    assert [make_divisible(v) for v in (24 * 0.5, 40 * 0.35, 320 * 1.3, 3.0)] == [16, 16, 416, 8]
    configs = mobile_op_configs(160, width_mult=0.75)
    assert all(op.input_shape[-1] % 8 == 0 for op in configs if op.kind != "Conv")
    keys = [op.key() for op in configs]
    assert "Conv-input:160x160x3-output:80x80x24" in keys
    assert "Conv_1-input:5x5x240-output:5x5x1280" in keys  # 1280 is not shrunk below width 1
    assert mobile_op_configs(224, width_mult=1.4)[2].output_shape == (7, 7, 1792)


def test_mobile_primitive_subset_and_errors():
    configs = mobile_op_configs(224, primitives=("mbconv_k3_e3", "zero"))
    assert len(configs) == 4 + 11  # distinct shapes: one per first block, one per stage for the rest
    with pytest.raises(HwnasError, match="unknown op 'mbconv_k9_e3'"):
        mobile_op_configs(224, primitives=("mbconv_k9_e3",))
    with pytest.raises(HwnasError, match="at least 32"):
        mobile_op_configs(16)


@pytest.mark.parametrize("cfg", [SearchConfig(), SearchConfig(init_channels=16, layers=8)])
def test_darts_is_edges_plus_fixed(cfg):
    space = get_space("darts")
    expected = {op for edge in space.edge_op_configs(cfg, 32) for op in edge} | set(space.fixed_op_configs(cfg, 32))
    configs = space_op_configs("darts", 32, cfg)
    assert set(configs) == expected and len(configs) == len(expected)
    assert configs[0].kind == "Conv"


def test_space_op_configs_mobile_uses_cfg():
    cfg = SearchConfig(space="mobile", width_mult=0.5, primitives=("mbconv_k5_e6",))
    assert space_op_configs("mobile", 128, cfg) == mobile_op_configs(128, 0.5, ("mbconv_k5_e6",))
    with pytest.raises(HwnasError, match="unknown search space"):
        space_op_configs("nasbench", 32)


def test_mobile_network_op_configs():
    choices = ["mbconv_k3_e3"] * 21
    choices[1] = "zero"
    layers = mobile_network_op_configs(choices)
    assert len(layers) == 4 + 20 and [op.kind for op in layers[:2]] == ["Conv", "expanded_conv"]
    assert [op.kind for op in layers[-2:]] == ["Conv_1", "Logits"]
    assert set(layers) <= set(mobile_op_configs(224))
    with pytest.raises(HwnasError, match="cannot be zero"):
        mobile_network_op_configs(["zero"] + choices[1:])
    with pytest.raises(HwnasError, match="needs 21 block choices"):
        mobile_network_op_configs(choices[:3])
