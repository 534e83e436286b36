"""The mobile MBConv chain space of ProxylessNAS (Cai, Zhu, Han, ICLR 2019) on MobileNetV2's backbone.

Exactly the space of the published Pixel 1 latency table (shapes in `hwnas.latency.catalogue`): stem conv 3x3 s2
→ 32, a fixed MBConv1 k3 → 16, 21 searchable blocks in stages of widths 24, 40, 80, 96, 192, 320, a 1x1 conv →
1280, global pool, classifier. Each block chooses MBConv k{3,5,7} × e{3,6}, or `zero` (skip) where it is not the
first of its stage. The supernet is resolution-agnostic: it trains at any input size, while latency is always
evaluated at the target table's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from hwnas.config import fits_json_type, width_mult_check
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import (
    MOBILE_FIRST_BLOCK_CHANNELS,
    MOBILE_LAST_CHANNELS,
    MOBILE_STEM_CHANNELS,
    MobileBlock,
    make_divisible,
    mobile_blocks,
    mobile_fixed_op_configs,
)
from hwnas.ops.mbconv import MOBILE_OPS, MOBILE_PRIMITIVES, MBConv, conv_bn_relu6, parse_mbconv
from hwnas.ops.opconfig import OpConfig
from hwnas.spaces.base import SPACES, Genotype, SearchSpace
from hwnas.supernet.base import Supernet
from hwnas.supernet.mixed import MixedOp

_REFERENCE_SIZE = 224  # block shapes are enumerated at this size; only channels and strides matter for building


@dataclass(frozen=True)
class MobileGenotype(Genotype):
    """One op name per searchable block (21 of them), `zero` for a skipped block."""

    blocks: tuple[str, ...]
    width_mult: float = 1.0
    space: ClassVar[str] = "mobile"

    def to_json(self) -> dict[str, Any]:
        return {"space": self.space, "blocks": list(self.blocks), "width_mult": self.width_mult}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MobileGenotype:
        blocks, width_mult = data.get("blocks"), data.get("width_mult", 1.0)
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise HwnasError("malformed mobile genotype: 'blocks' must be a list of op names")
        if not fits_json_type(width_mult, float):
            raise HwnasError(f"malformed mobile genotype: 'width_mult' must be a number, got {width_mult!r}")
        genotype = cls(tuple(blocks), float(width_mult))
        genotype.validate()
        return genotype

    def validate(self) -> None:
        ok, message = width_mult_check(self.width_mult)
        if not ok:
            raise HwnasError(f"malformed mobile genotype: {message}")
        blocks = mobile_blocks(_REFERENCE_SIZE, self.width_mult)
        if len(self.blocks) != len(blocks):
            raise HwnasError(f"malformed mobile genotype: {len(self.blocks)} blocks, the space has {len(blocks)}")
        for block, op in zip(blocks, self.blocks):
            if op not in MOBILE_PRIMITIVES:
                raise HwnasError(f"malformed mobile genotype: unknown op {op!r}; known: {', '.join(MOBILE_PRIMITIVES)}")
            if op == "zero" and block.first:
                raise HwnasError(f"malformed mobile genotype: block {block.index} of stage {block.stage} "
                                 "is its stage's first and cannot be zero")  # fmt: skip

    def describe(self) -> str:
        """Compact form, e.g. ``k3e6 k5e3 - k7e6 …`` (`-` = skipped)."""
        return " ".join("-" if b == "zero" else "k{}e{}".format(*parse_mbconv(b)) for b in self.blocks)


def _stem_and_first(in_channels: int, width_mult: float) -> tuple[nn.Sequential, MBConv, int]:
    c_stem = make_divisible(MOBILE_STEM_CHANNELS * width_mult)
    c_first = make_divisible(MOBILE_FIRST_BLOCK_CHANNELS * width_mult)
    return conv_bn_relu6(in_channels, c_stem, 3, 2), MBConv(c_stem, c_first, 3, 1, 1), c_first


def _head(c_in: int, width_mult: float, num_classes: int) -> tuple[nn.Sequential, nn.Linear]:
    c_last = make_divisible(MOBILE_LAST_CHANNELS * width_mult) if width_mult > 1.0 else MOBILE_LAST_CHANNELS
    return conv_bn_relu6(c_in, c_last, 1, 1), nn.Linear(c_last, num_classes)


def block_partial_channels(block: MobileBlock, k: int) -> int:
    """The K a block's candidates split its channels by: `k` on an identity block, whose channels it must divide;
    1 on a stage's first block (see `MixedBlock`)."""
    if not block.identity:
        return 1
    if block.c_in % k:
        raise HwnasError(f"block {block.index} has {block.c_in} channels, not divisible by pc-k {k}")
    return k


class MixedBlock(nn.Module):
    """y = x + Σ_k w_k · body_k(x) when the block has an identity shortcut, else Σ_k w_k · body_k(x).

    With PC-DARTS's K > 1 (Xu et al. 2020, Eq. 2), an identity block's candidates see C/K of its channels and the
    rest bypass them (channel shuffle after); a block that changes width or resolution (each stage's first) has
    no channels to bypass with, and its candidates see all of them."""

    def __init__(self, block: MobileBlock, primitives: tuple[str, ...], partial_channels: int = 1):
        super().__init__()
        self.identity = block.identity
        k = block_partial_channels(block, partial_channels)
        ops = [MOBILE_OPS.get(p)(block.c_in // k, block.c_out // k, block.stride, False) for p in primitives]
        self.mixed = MixedOp(list(primitives), ops, block.stride, k)

    def forward(self, x, weights, active):
        y = self.mixed(x, weights, active)
        return x + y if self.identity else y


class MobileSupernet(Supernet):
    def __init__(self, num_classes: int, in_channels: int, primitives: tuple[str, ...], width_mult: float = 1.0,
                 partial_channels: int = 1):  # fmt: skip
        super().__init__()
        self.primitives, self.width_mult = tuple(primitives), width_mult
        self.stem, self.first, _ = _stem_and_first(in_channels, width_mult)
        self.block_shapes = mobile_blocks(_REFERENCE_SIZE, width_mult)
        self.blocks = nn.ModuleList(MixedBlock(b, self.primitives, partial_channels) for b in self.block_shapes)
        self.feature_mix, self.classifier = _head(self.block_shapes[-1].c_out, width_mult, num_classes)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.blocks), len(self.primitives)))
        allowed = torch.ones(len(self.blocks), len(self.primitives), dtype=torch.bool)
        if "zero" in self.primitives:
            zero = self.primitives.index("zero")
            for i, b in enumerate(self.block_shapes):
                allowed[i, zero] = not b.first
        self.register_buffer("allowed_mask", allowed, persistent=False)

    def _arch_parameter_list(self):
        return [self.alpha]

    def alpha_groups(self) -> dict[str, torch.Tensor]:
        """α with `zero` masked out (−inf) on each stage's first block, where it is not a candidate."""
        return {"blocks": self.alpha.masked_fill(~self.allowed_mask, float("-inf"))}

    def alpha_parameters(self) -> dict[str, nn.Parameter]:
        return {"blocks": self.alpha}

    def group_edges(self, group: str) -> list[MixedOp]:
        return [b.mixed for b in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, classes)
        paths = self.path_weights("blocks")
        x = self.first(self.stem(x))
        for i, block in enumerate(self.blocks):
            x = block(x, paths.weights[i], paths.active[i])
        x = self.feature_mix(x)
        return self.classifier(x.mean(dim=(2, 3)))

    def edge_rows(self) -> list[tuple[str, int]]:
        return [("blocks", i) for i in range(len(self.blocks))]

    def decisions(self, genotype: MobileGenotype) -> list[tuple[str, int, int]]:
        return [("blocks", i, self.primitives.index(op)) for i, op in enumerate(genotype.blocks)]

    def with_decisions(self, genotype: MobileGenotype, decisions) -> MobileGenotype:
        return MobileGenotype(tuple(self.primitives[k] for _g, _row, k in decisions), genotype.width_mult)

    def allowed(self, group: str, row: int) -> list[int]:
        return [k for k in range(len(self.primitives)) if bool(self.allowed_mask[row, k])]

    def sample(self, generator: torch.Generator) -> MobileGenotype:
        choices = []
        for row in range(len(self.blocks)):
            allowed = self.allowed("blocks", row)
            choices.append(self.primitives[allowed[int(torch.randint(len(allowed), (1,), generator=generator))]])
        return MobileGenotype(tuple(choices), self.width_mult)

    def derive(self) -> MobileGenotype:
        """argmax per block (ProxylessNAS Sec. 3.2: the path with the highest probability)."""
        probs = self.probabilities()["blocks"].detach()
        return MobileGenotype(tuple(self.primitives[k] for k in probs.argmax(dim=1).tolist()), self.width_mult)


class MobileNetwork(nn.Module):
    """A derived mobile network: the chosen MBConv per block, skipped blocks left out."""

    def __init__(self, genotype: MobileGenotype, num_classes: int, in_channels: int = 3):
        super().__init__()
        genotype.validate()
        self.stem, self.first, _ = _stem_and_first(in_channels, genotype.width_mult)
        shapes = mobile_blocks(_REFERENCE_SIZE, genotype.width_mult)
        self.blocks = nn.Sequential(*[
            MOBILE_OPS.get(op)(b.c_in, b.c_out, b.stride) for b, op in zip(shapes, genotype.blocks) if op != "zero"
        ])  # fmt: skip
        self.feature_mix, self.classifier = _head(shapes[-1].c_out, genotype.width_mult, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix(self.blocks(self.first(self.stem(x))))
        return self.classifier(x.mean(dim=(2, 3)))


@SPACES.register("mobile")
class MobileSpace(SearchSpace):
    name = "mobile"
    primitives = MOBILE_PRIMITIVES
    table_classes = 1000  # ImageNet, as the published ProxylessNAS table

    def check_primitives(self, primitives):
        primitives = super().check_primitives(primitives)
        if not any(p != "zero" for p in primitives):
            raise HwnasError("the mobile space needs at least one MBConv primitive")
        return primitives

    def check_search(self, cfg, partial_channels: int = 1) -> None:
        super().check_search(cfg, partial_channels)
        for block in mobile_blocks(_REFERENCE_SIZE, cfg.width_mult):
            block_partial_channels(block, partial_channels)

    def build_supernet(self, cfg, in_channels: int, num_classes: int, partial_channels: int = 1,
                       edge_normalization: bool = False) -> MobileSupernet:  # fmt: skip
        """`edge_normalization` (PC-DARTS's β over a node's input edges) has nothing to weigh in a chain, whose
        blocks have one input each: PC-DARTS here is partial channels alone."""
        primitives = self.check_primitives(cfg.primitives)
        return MobileSupernet(num_classes, in_channels, primitives, cfg.width_mult, partial_channels)

    def build_network(self, genotype, cfg, in_channels: int, num_classes: int) -> MobileNetwork:
        if not isinstance(genotype, MobileGenotype):
            raise HwnasError(f"genotype for space {genotype.space!r} does not fit space 'mobile'")
        return MobileNetwork(genotype, num_classes, in_channels)

    def genotype_from_json(self, data: dict[str, Any]) -> MobileGenotype:
        return MobileGenotype.from_json(data)

    def published_genotypes(self) -> dict[str, MobileGenotype]:
        return {"PROXYLESS_MOBILE": PROXYLESS_MOBILE}

    def edge_rows(self, cfg) -> list[tuple[str, int]]:
        return [("blocks", i) for i in range(len(mobile_blocks(width_mult=cfg.width_mult)))]

    def edge_op_configs(self, cfg, input_size: int) -> list[list[OpConfig | None]]:
        """Per block, each candidate's OpConfig; None for `zero` (it costs nothing)."""
        primitives = self.check_primitives(cfg.primitives)
        return [
            [None if p == "zero" else block.op_config(*parse_mbconv(p)) for p in primitives]
            for block in mobile_blocks(input_size, cfg.width_mult)
        ]

    def fixed_op_configs(self, cfg, input_size: int) -> list[OpConfig]:
        return mobile_fixed_op_configs(input_size, cfg.width_mult, self.table_classes)

    def network_op_configs(
        self, genotype: MobileGenotype, cfg, input_size: int, in_channels: int = 3, num_classes: int | None = None
    ) -> list[OpConfig]:
        """Stem, fixed MBConv1, the chosen MBConvs, head (the network's width is its genotype's; the stem is
        keyed with 3 input channels, as the tables are)."""
        from hwnas.latency.catalogue import mobile_network_op_configs

        classes = num_classes if num_classes is not None else self.table_classes
        return mobile_network_op_configs(genotype.blocks, input_size, genotype.width_mult, classes)

    def plot_genotype(self, genotype: MobileGenotype, path: str | Path) -> Path:
        from hwnas.plots import plot_mobile_genotype

        return plot_mobile_genotype(genotype, path)


# The architecture ProxylessNAS found for the Pixel 1 (Cai et al. 2019, Fig. 4, "ProxylessNAS (mobile)").
PROXYLESS_MOBILE = MobileGenotype((
    "mbconv_k5_e3", "mbconv_k3_e3", "zero", "zero",
    "mbconv_k7_e3", "mbconv_k3_e3", "mbconv_k5_e3", "mbconv_k5_e3",
    "mbconv_k7_e6", "mbconv_k5_e3", "mbconv_k5_e3", "mbconv_k5_e3",
    "mbconv_k5_e6", "mbconv_k5_e3", "mbconv_k5_e3", "mbconv_k5_e3",
    "mbconv_k7_e6", "mbconv_k7_e6", "mbconv_k7_e3", "mbconv_k7_e3",
    "mbconv_k7_e6",
))  # fmt: skip
