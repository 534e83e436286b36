"""The distinct op configurations a search space needs at one input size: what a latency table must hold.

The mobile space is the ProxylessNAS chain (Cai, Zhu, Han, ICLR 2019, Sec. 4 and App.), defined here once as a
list of blocks so the space itself can reuse the shapes: stem ``Conv`` 3x3 s2 3→32, a fixed MBConv1 k3 32→16,
searchable stages of widths 24, 40, 80, 96, 192, 320 (depths 4, 4, 4, 4, 4, 1; first strides 2, 2, 2, 1, 2, 1)
with candidates MBConv k{3,5,7} × e{3,6} and `zero` on every non-first block, ``Conv_1`` 1x1 →1280 and
``Logits`` (global average pool + fully connected). Channel counts scale with MobileNetV2's
``make_divisible(c * width_mult, 8)`` (Sandler et al., CVPR 2018), the rule the ProxylessNAS code uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwnas.errors import HwnasError
from hwnas.ops.mbconv import MOBILE_PRIMITIVES, parse_mbconv
from hwnas.ops.opconfig import OpConfig

MOBILE_STEM_CHANNELS = 32
MOBILE_FIRST_BLOCK_CHANNELS = 16
MOBILE_STAGES = (
    (24, 4, 2),
    (40, 4, 2),
    (80, 4, 2),
    (96, 4, 1),
    (192, 4, 2),
    (320, 1, 1),
)  # width, depth, stride
MOBILE_LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below `divisor` nor more than 10% under `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_out(hw: int, stride: int) -> int:
    """Spatial size after a 'same'-padded (k // 2) convolution: ceil(hw / stride)."""
    return (hw + stride - 1) // stride


@dataclass(frozen=True)
class MobileBlock:
    """One searchable block of the mobile chain. Non-first blocks keep their shape and may be skipped."""

    stage: int
    index: int  # position inside the stage
    c_in: int
    c_out: int
    stride: int
    hw_in: int

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def hw_out(self) -> int:
        return conv_out(self.hw_in, self.stride)

    @property
    def identity(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out

    def op_config(self, kernel: int, expand: int) -> OpConfig:
        return mbconv_op_config(self.hw_in, self.c_in, self.c_out, kernel, self.stride, expand, self.identity)


def mbconv_op_config(hw_in, c_in, c_out, kernel, stride, expand, identity) -> OpConfig:
    """``expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:5-stride:2-idskip:0``."""
    hw_out = conv_out(hw_in, stride)
    attrs = (("expand", expand), ("kernel", kernel), ("stride", stride), ("idskip", int(identity)))
    return OpConfig("expanded_conv", (hw_in, hw_in, c_in), (hw_out, hw_out, c_out), attrs)


def mobile_blocks(input_size: int = 224, width_mult: float = 1.0) -> list[MobileBlock]:
    """The searchable blocks, in order, with their shapes at `input_size`."""
    if input_size < 32:
        raise HwnasError(f"the mobile space needs an input size of at least 32, got {input_size}")
    if width_mult <= 0:
        raise HwnasError(f"width multiplier must be positive, got {width_mult}")
    hw = conv_out(input_size, 2)  # after the stride-2 stem; the first MBConv1 keeps the size
    c_in = make_divisible(MOBILE_FIRST_BLOCK_CHANNELS * width_mult)
    blocks = []
    for stage, (width, depth, first_stride) in enumerate(MOBILE_STAGES):
        c_out = make_divisible(width * width_mult)
        for index in range(depth):
            stride = first_stride if index == 0 else 1
            blocks.append(MobileBlock(stage, index, c_in, c_out, stride, hw))
            hw, c_in = conv_out(hw, stride), c_out
    return blocks


def mobile_fixed_op_configs(input_size: int = 224, width_mult: float = 1.0, num_classes: int = 1000):
    """Stem ``Conv``, the fixed MBConv1 k3, ``Conv_1`` and ``Logits``: the layers every mobile network has."""
    blocks = mobile_blocks(input_size, width_mult)
    hw = conv_out(input_size, 2)
    c_stem = make_divisible(MOBILE_STEM_CHANNELS * width_mult)
    c_first = make_divisible(MOBILE_FIRST_BLOCK_CHANNELS * width_mult)
    c_last = make_divisible(MOBILE_LAST_CHANNELS * width_mult) if width_mult > 1.0 else MOBILE_LAST_CHANNELS
    hw_end, c_end = blocks[-1].hw_out, blocks[-1].c_out
    return [
        OpConfig("Conv", (input_size, input_size, 3), (hw, hw, c_stem)),
        mbconv_op_config(hw, c_stem, c_first, 3, 1, 1, False),
        OpConfig("Conv_1", (hw_end, hw_end, c_end), (hw_end, hw_end, c_last)),
        OpConfig("Logits", (hw_end, hw_end, c_last), (num_classes,)),
    ]


def mobile_op_configs(
    input_size: int = 224,
    width_mult: float = 1.0,
    primitives: tuple[str, ...] = MOBILE_PRIMITIVES,
    num_classes: int = 1000,
) -> list[OpConfig]:
    """Every distinct OpConfig of the mobile space: fixed layers, then each block's MBConv candidates."""
    unknown = [p for p in primitives if p not in MOBILE_PRIMITIVES]
    if unknown:
        raise HwnasError(f"unknown op {unknown[0]!r} for space 'mobile'; known: {', '.join(MOBILE_PRIMITIVES)}")
    candidates = [parse_mbconv(p) for p in primitives if p != "zero"]
    configs = mobile_fixed_op_configs(input_size, width_mult, num_classes)
    for block in mobile_blocks(input_size, width_mult):
        configs += [block.op_config(kernel, expand) for kernel, expand in candidates]
    return _distinct(configs)


def space_op_configs(space: str, input_size: int, cfg=None) -> list[OpConfig]:
    """The distinct OpConfigs of `space` at `input_size` for the network shape in `cfg` (a SearchConfig).

    Mobile: `mobile_op_configs` (width_mult, primitives from cfg). Any other registered space: its
    `edge_op_configs` and `fixed_op_configs`.
    """
    from hwnas.config import SearchConfig
    from hwnas.spaces import get_space

    cfg = cfg if cfg is not None else SearchConfig(space=space)
    if space == "mobile":
        return mobile_op_configs(input_size, cfg.width_mult, cfg.primitives or MOBILE_PRIMITIVES)
    search_space = get_space(space)
    edges = search_space.edge_op_configs(cfg, input_size)
    return _distinct(search_space.fixed_op_configs(cfg, input_size) + [op for edge in edges for op in edge])


def _distinct(configs: list[OpConfig]) -> list[OpConfig]:
    return list(dict.fromkeys(configs))


def mobile_network_op_configs(
    choices: list[str] | tuple[str, ...],
    input_size: int = 224,
    width_mult: float = 1.0,
    num_classes: int = 1000,
) -> list[OpConfig]:
    """The layers of one derived mobile network, in order: `choices` names each searchable block's primitive
    (``zero`` skips a non-first block). Its table latency is the sum over these (ProxylessNAS, Eq. 4)."""
    blocks = mobile_blocks(input_size, width_mult)
    if len(choices) != len(blocks):
        raise HwnasError(f"a mobile network needs {len(blocks)} block choices, got {len(choices)}")
    stem, first, head, logits = mobile_fixed_op_configs(input_size, width_mult, num_classes)
    layers = [stem, first]
    for block, choice in zip(blocks, choices):
        if choice == "zero":
            if block.first:
                raise HwnasError(f"block {block.index} of stage {block.stage} is a stage's first and cannot be zero")
            continue
        if choice not in MOBILE_PRIMITIVES:
            raise HwnasError(f"unknown op {choice!r} for space 'mobile'; known: {', '.join(MOBILE_PRIMITIVES)}")
        layers.append(block.op_config(*parse_mbconv(choice)))
    return layers + [head, logits]
