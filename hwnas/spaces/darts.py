"""The DARTS CNN cell space (Liu, Simonyan, Yang, ICLR 2019, Sec. 2.1 and 3).

A cell is a DAG of 2 input nodes (the two previous cells' outputs) and `steps` intermediate nodes; node j sums
one mixed op per predecessor; the cell outputs the concatenation of the last `multiplier` intermediate nodes.
Reduction cells (stride 2 on the edges from the input nodes) sit at 1/3 and 2/3 of the depth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.config import STEMS, fits_json_type
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import conv_out
from hwnas.ops.darts import DARTS_PRIMITIVES, OPS, FactorizedReduce, ReLUConvBN
from hwnas.ops.opconfig import OpConfig
from hwnas.spaces.base import SPACES, Genotype, SearchSpace
from hwnas.supernet.base import Supernet
from hwnas.supernet.mixed import MixedOp

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Genotype
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DartsGenotype(Genotype):
    """Per cell type, a list of (op, input node) pairs, two per intermediate node, and the concatenated nodes.

    Node indices: 0 and 1 are the cell inputs, 2.. the intermediate nodes (the paper's and reference code's
    convention, so published genotypes read as printed).
    """

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]
    space: ClassVar[str] = "darts"

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DartsGenotype:
        def edges(name: str) -> tuple[tuple[str, int], ...]:
            value = data.get(name)
            if not isinstance(value, list) or not all(
                isinstance(e, list) and fits_json_type(tuple(e), tuple[str, int]) for e in value
            ):
                raise HwnasError(f"malformed DARTS genotype: {name!r} must be a list of [op, input node] pairs")
            return tuple((op, src) for op, src in value)

        def concat(name: str) -> tuple[int, ...]:
            value = data.get(name)
            if not isinstance(value, list) or not fits_json_type(tuple(value), tuple[int, ...]):
                raise HwnasError(f"malformed DARTS genotype: {name!r} must be a list of node indices")
            return tuple(value)

        genotype = cls(edges("normal"), concat("normal_concat"), edges("reduce"), concat("reduce_concat"))
        genotype.validate()
        return genotype

    def validate(self) -> None:
        for name, edges, concat in (
            ("normal", self.normal, self.normal_concat),
            ("reduce", self.reduce, self.reduce_concat),
        ):
            if not edges or len(edges) % 2:
                raise HwnasError(f"malformed DARTS genotype: {name} needs two edges per node, got {len(edges)}")
            steps = len(edges) // 2
            for k, (op, src) in enumerate(edges):
                if op not in OPS:
                    raise HwnasError(f"malformed DARTS genotype: unknown op {op!r} in {name} cell")
                if not 0 <= src < 2 + k // 2:
                    raise HwnasError(f"malformed DARTS genotype: edge {k} of {name} reads node {src}")
            if not concat or any(not 2 <= i < 2 + steps for i in concat) or len(set(concat)) < len(concat):
                raise HwnasError(f"malformed DARTS genotype: {name}_concat {list(concat)} out of range or repeated")


DARTS_V1 = DartsGenotype(
    normal=(
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip
DARTS_V2 = DartsGenotype(
    normal=(
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip
PC_DARTS = DartsGenotype(
    normal=(
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
        ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
    ),
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip
# PC-DARTS searched directly on ImageNet (Xu et al. 2020, Table 3: 5.3M parameters, 597M MACs at C=48, 14 cells)
PC_DARTS_IMAGENET = DartsGenotype(
    normal=(
        ("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
        ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3),
    ),
    reduce_concat=(2, 3, 4, 5),
)  # fmt: skip


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Cells at 1/3 and 2/3 of the depth reduce (DARTS, Sec. 3.1)."""
    return tuple(sorted({layers // 3, 2 * layers // 3})) if layers >= 3 else ()


def cell_edge_rows(reductions: list[bool], steps: int) -> list[tuple[str, int]]:
    """(α group, row) of every edge of cells that do or do not reduce, cell by cell, in α row order."""
    n_edges = len(edge_inputs(steps))
    return [("reduce" if reduction else "normal", r) for reduction in reductions for r in range(n_edges)]


def edge_inputs(steps: int) -> list[tuple[int, int]]:
    """(node, input node) for every edge of a search cell, in α row order."""
    return [(2 + i, j) for i in range(steps) for j in range(2 + i)]


# --------------------------------------------------------------------------------------------------------------
# Search supernet
# --------------------------------------------------------------------------------------------------------------


class SearchCell(nn.Module):
    def __init__(self, steps, multiplier, c_pp, c_p, c, reduction, reduction_prev, primitives, partial_channels):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.preprocess0 = (
            FactorizedReduce(c_pp, c, affine=False) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, False)
        )
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        c_op = c // partial_channels
        self.edges = nn.ModuleList()
        for _node, j in edge_inputs(steps):
            stride = 2 if reduction and j < 2 else 1
            ops = [OPS.get(p)(c_op, stride, False) for p in primitives]
            self.edges.append(MixedOp(list(primitives), ops, stride, partial_channels))

    def forward(self, s0, s1, paths, edge_scale):  # s0, s1: (B, C_in, H, W) -> (B, multiplier * C, H', W')
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(
                edge_scale[offset + j] * self.edges[offset + j](h, paths.weights[offset + j], paths.active[offset + j])
                for j, h in enumerate(states)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


# --------------------------------------------------------------------------------------------------------------
# Stems: what comes before the first cell
# --------------------------------------------------------------------------------------------------------------


def _keep_two(strength: torch.Tensor) -> torch.Tensor:
    """w_j = min(1, t·s_j) with Σ_j w_j = 2 (every s_j > 0 at 1 where fewer than three are): the probability that
    a node keeps input j, proportional to its strength but at most 1. At most one input is capped, so t is
    (2 - m) / Σ of the other strengths for m = 0 or 1 capped, the largest; differentiable in the strengths."""
    if int((strength.detach() > 0).sum()) <= 2:
        return (strength > 0).to(strength)
    top = int(strength.detach().argmax())
    t = 2 / strength.sum()
    if float(t.detach() * strength[top].detach()) <= 1:
        return t * strength
    rest = torch.ones_like(strength, dtype=torch.bool)
    rest[top] = False
    weights = strength / strength[rest].sum()  # the one capped input aside, the other one is shared by the rest
    return torch.where(rest, weights, torch.ones_like(strength))


def add_stem(net: nn.Module, stem: str, in_channels: int, c: int, stem_multiplier: int) -> tuple[int, int, bool]:
    """Give `net` the `stem` (`net.stem`, or `net.stem0` and `net.stem1`, as the DARTS code names them).

    "cifar": one 3x3 convolution at full resolution, both cell inputs its output (the DARTS code's NetworkCIFAR).
    "imagenet": three stride-2 3x3 convolutions, 224 -> 28 before the first cell, whose inputs are the outputs of
    the last two (its NetworkImageNet: the ImageNet "mobile setting" of DARTS Sec. 3.3 and PC-DARTS Sec. 4.3).
    Returns the channels of the first cell's two inputs and whether the first is at twice the second's
    resolution (so that the cell reduces it, as after a reduction cell)."""
    if stem == "cifar":
        c_stem = stem_multiplier * c
        net.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        return c_stem, c_stem, False
    if stem != "imagenet":
        raise HwnasError(f"unknown stem {stem!r} (choose from {', '.join(STEMS)})")
    net.stem0 = nn.Sequential(
        nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2),
        nn.ReLU(inplace=False),
        nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c),
    )  # fmt: skip
    net.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                              nn.BatchNorm2d(c))  # fmt: skip
    return c, c, True


def stem_states(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first cell's two inputs: (B, C_in, H, W) -> the stem's outputs."""
    if hasattr(net, "stem0"):
        s0 = net.stem0(x)
        return s0, net.stem1(s0)
    s = net.stem(x)
    return s, s


def stem_op_configs(stem: str, input_size: int, in_channels: int, c: int, stem_multiplier: int) -> list[OpConfig]:
    """The stem's convolutions as ``Conv`` table entries (stride read from the shapes)."""
    if stem == "cifar":
        shape = (input_size, input_size)
        return [OpConfig("Conv", (*shape, in_channels), (*shape, stem_multiplier * c))]
    configs, hw, channels = [], input_size, in_channels
    for c_out in (c // 2, c, c):
        configs.append(OpConfig("Conv", (hw, hw, channels), (conv_out(hw, 2), conv_out(hw, 2), c_out)))
        hw, channels = conv_out(hw, 2), c_out
    return configs


def warn_about_stem(stem: str, image_size: int) -> None:
    """A warning where the stem does not suit the images (the DARTS code: CIFAR stem at 32, ImageNet's at 224)."""
    if stem == "cifar" and image_size >= 128:
        log.warning("the cifar stem runs the first cells at the full %dx%d resolution (slow, memory-hungry): "
                    "--stem imagenet reduces the images 8x first, as DARTS's ImageNet network does",
                    image_size, image_size)  # fmt: skip
    elif stem == "imagenet" and image_size < 64:
        size = stem_output_size(stem, image_size)
        log.warning("the imagenet stem reduces %dx%d images to %dx%d before the first cell: --stem cifar keeps "
                    "their resolution", image_size, image_size, size, size)  # fmt: skip


def stem_output_size(stem: str, input_size: int) -> int:
    """The resolution of the first cell's input."""
    return input_size if stem == "cifar" else conv_out(conv_out(conv_out(input_size, 2), 2), 2)


def check_partial_channels(c: int, k: int) -> None:
    """PC-DARTS's K must divide the init channels, and so every cell's (their multiples)."""
    if c % k:
        raise HwnasError(f"init channels {c} are not divisible by pc-k {k}")


class DartsSupernet(Supernet):
    """The DARTS search network; `edge_normalization` adds PC-DARTS's β (Xu et al. 2020, Eq. 4)."""

    def __init__(self, c, num_classes, layers, in_channels, primitives, steps=4, multiplier=4,
                 stem_multiplier=3, partial_channels=1, edge_normalization=False, stem="cifar"):  # fmt: skip
        super().__init__()
        self.primitives, self.steps, self.multiplier = tuple(primitives), steps, multiplier
        check_partial_channels(c, partial_channels)
        c_pp, c_p, reduction_prev = add_stem(self, stem, in_channels, c, stem_multiplier)
        c_curr = c
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reduction_layers(layers)
            if reduction:
                c_curr *= 2
            if c_curr % partial_channels:
                raise HwnasError(f"cell channels {c_curr} are not divisible by pc-k {partial_channels}")
            cell = SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev, primitives,
                              partial_channels)  # fmt: skip
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        n_edges, n_ops = len(edge_inputs(steps)), len(primitives)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.edge_normalization = edge_normalization
        if edge_normalization:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))

    def _arch_parameter_list(self):
        params = [self.alpha_normal, self.alpha_reduce]
        return params + ([self.beta_normal, self.beta_reduce] if self.edge_normalization else [])

    def alpha_groups(self) -> dict[str, torch.Tensor]:
        return self.alpha_parameters()  # no masking: every candidate is allowed on every edge

    def alpha_parameters(self) -> dict[str, nn.Parameter]:
        return {"normal": self.alpha_normal, "reduce": self.alpha_reduce}

    def group_edges(self, group: str) -> list[MixedOp]:
        cells = [c for c in self.cells if c.reduction == (group == "reduce")]
        return list(cells[0].edges) if cells else []

    def edge_scales(self, group: str) -> torch.Tensor:
        """PC-DARTS edge normalisation: softmax of β over each node's incoming edges; all ones without it."""
        n_edges = len(edge_inputs(self.steps))
        if not self.edge_normalization:
            return self.alpha_normal.new_ones(n_edges)
        beta = self.beta_normal if group == "normal" else self.beta_reduce
        scales, offset = [], 0
        for i in range(self.steps):
            scales.append(F.softmax(beta[offset : offset + 2 + i], dim=-1))
            offset += 2 + i
        return torch.cat(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, classes)
        groups = {"reduce" if cell.reduction else "normal" for cell in self.cells}
        paths = {g: self.path_weights(g) for g in sorted(groups)}
        scales = {g: self.edge_scales(g) for g in sorted(groups)}
        s0, s1 = stem_states(self, x)
        for cell in self.cells:
            group = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, paths[group], scales[group])
        return self.classifier(self.global_pooling(s1).flatten(1))

    def probabilities(self) -> dict[str, torch.Tensor]:
        """softmax(α), times the normalised β of the edge under edge normalisation (PC-DARTS, Sec. 3.3)."""
        probs = super().probabilities()
        return {g: p * self.edge_scales(g)[:, None] for g, p in probs.items()}

    def edge_rows(self) -> list[tuple[str, int]]:
        return cell_edge_rows([c.reduction for c in self.cells], self.steps)

    def expected_cost(self, group_costs: dict[str, torch.Tensor]) -> torch.Tensor:
        """E[cost] of the derived cells: per node, the two edges kept out of its inputs.

        Node i keeps 2 of its incoming edges, chosen by strength s_j = Σ_{k≠none} p_jk (β's scale included under
        edge normalisation); a kept edge carries op k with probability p_jk / s_j (β cancels), and edge j is kept
        with probability w_j = min(1, t·s_j), t such that Σ_j w_j = 2 (`_keep_two`: 2·s_j / Σ s when no edge
        dominates, never above 1). Exact for one-hot α with two non-none inputs per node, whatever β.
        """
        probs = self.probabilities()
        keep = torch.tensor([p != "none" for p in self.primitives])
        total = 0.0
        for group, cost in group_costs.items():
            p = probs[group] * keep.to(probs[group])
            offset = 0
            for i in range(self.steps):
                rows = slice(offset, offset + 2 + i)
                strength = p[rows].sum(dim=1)  # (inputs,)
                op_cost = (p[rows] * cost[rows].to(p)).sum(dim=1) / strength.clamp_min(1e-12)
                total = total + (_keep_two(strength) * op_cost).sum()
                offset += 2 + i
        return total

    def extreme_cost(self, group_costs: dict[str, torch.Tensor], slowest: bool) -> float:
        """A derived cell keeps two inputs per node (DARTS Sec. 2.4): per node, the two edges whose cheapest
        (dearest) allowed op is the cheapest (dearest), with that op; the other edges cost nothing."""
        pick, total = (max if slowest else min), 0.0
        for group, cost in group_costs.items():
            offset = 0
            for i in range(self.steps):
                edges = sorted(
                    pick(float(cost[r, k]) for k in self.allowed(group, r)) for r in range(offset, offset + 2 + i)
                )
                total += sum(edges[-2:] if slowest else edges[:2])
                offset += 2 + i
        return total

    def decisions(self, genotype: DartsGenotype) -> list[tuple[str, int, int]]:
        rows = {edge: r for r, edge in enumerate(edge_inputs(self.steps))}
        return [
            (group, rows[(2 + k // 2, src)], self.primitives.index(op))
            for group, edges in (("normal", genotype.normal), ("reduce", genotype.reduce))
            for k, (op, src) in enumerate(edges)
        ]

    def with_decisions(self, genotype: DartsGenotype, decisions) -> DartsGenotype:
        """Each decision's row names its edge (node, input), so a decision may also move to another input."""
        edges = edge_inputs(self.steps)
        cells = {g: tuple((self.primitives[k], edges[row][1]) for g_, row, k in decisions if g_ == g)
                 for g in ("normal", "reduce")}  # fmt: skip
        return DartsGenotype(cells["normal"], genotype.normal_concat, cells["reduce"], genotype.reduce_concat)

    def alternatives(self, decisions, i: int) -> list[tuple[int, int]]:
        """Another op on the same edge, or any op on another input of the same node that the node does not keep
        yet: a derived node keeps two distinct inputs (DARTS Sec. 2.4), and a budget repair may trade one."""
        group, row, k = decisions[i]
        edges = edge_inputs(self.steps)
        node = edges[row][0]
        kept = {r for j, (g, r, _k) in enumerate(decisions) if g == group and j != i}
        rows = [r for r, (n, _src) in enumerate(edges) if n == node and r not in kept]
        return [(r, alt) for r in rows for alt in self.allowed(group, r) if (r, alt) != (row, k)]

    def allowed(self, group: str, row: int) -> list[int]:
        return [k for k, p in enumerate(self.primitives) if p != "none"]

    def sample(self, generator: torch.Generator) -> DartsGenotype:
        """Per node, 2 distinct random inputs, each with a random non-`none` op (random search, Li & Talwalkar)."""
        ops = [p for p in self.primitives if p != "none"]

        def cell():
            edges = []
            for i in range(self.steps):
                inputs = torch.randperm(2 + i, generator=generator)[:2].tolist()
                edges += [(ops[int(torch.randint(len(ops), (1,), generator=generator))], j) for j in sorted(inputs)]
            return tuple(edges)

        concat = tuple(range(2 + self.steps - self.multiplier, 2 + self.steps))
        return DartsGenotype(cell(), concat, cell(), concat)

    def derive(self) -> DartsGenotype:
        """Per node, the 2 strongest incoming edges by their best non-`none` weight, with that op (DARTS Sec. 2.4)."""
        probs = {g: p.detach().cpu() for g, p in self.probabilities().items()}
        cells = {g: _derive_cell(probs[g], self.primitives, self.steps) for g in probs}
        concat = tuple(range(2 + self.steps - self.multiplier, 2 + self.steps))
        return DartsGenotype(cells["normal"], concat, cells["reduce"], concat)


def _derive_cell(probs: torch.Tensor, primitives, steps: int) -> tuple[tuple[str, int], ...]:
    allowed = [k for k, p in enumerate(primitives) if p != "none"]
    genotype, offset = [], 0
    for i in range(steps):
        rows = probs[offset : offset + 2 + i]
        best = [(max(float(rows[j, k]) for k in allowed), j) for j in range(2 + i)]
        for _score, j in sorted(best, key=lambda t: (-t[0], t[1]))[:2]:
            k_best = max(allowed, key=lambda k: (float(rows[j, k]), -k))
            genotype.append((primitives[k_best], j))
        offset += 2 + i
    return tuple(genotype)


# --------------------------------------------------------------------------------------------------------------
# Derived network (the DARTS reference code's NetworkCIFAR and NetworkImageNet, by stem)
# --------------------------------------------------------------------------------------------------------------


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a path with probability drop_prob, rescaling the rest (FractalNet / DARTS)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: DartsGenotype, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.steps, self.concat, self.reduction = len(edges) // 2, concat, reduction
        self.inputs = [src for _op, src in edges]
        self.ops = nn.ModuleList(OPS.get(op)(c, 2 if reduction and src < 2 else 1, True) for op, src in edges)
        self.multiplier = len(concat)

    def forward(self, s0, s1, drop_prob: float):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            node = 0
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.inputs[k]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS/NASNet auxiliary classifier at 2/3 depth, pooling to 2x2 whatever the input size."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


NETWORK_STEM_MULTIPLIER = 3  # stem channels per init channel of a derived network (the DARTS code's)


class DartsNetwork(nn.Module):
    """A network of cells from a genotype; forward returns logits (and auxiliary logits when training with it)."""

    def __init__(self, genotype: DartsGenotype, c: int, num_classes: int, layers: int, in_channels: int = 3,
                 auxiliary: bool = False, stem: str = "cifar",
                 stem_multiplier: int = NETWORK_STEM_MULTIPLIER):  # fmt: skip
        super().__init__()
        self.drop_path_prob = 0.0
        c_pp, c_p, reduction_prev = add_stem(self, stem, in_channels, c, stem_multiplier)
        c_curr = c
        self.cells = nn.ModuleList()
        reductions = reduction_layers(layers)
        self.aux_position = 2 * layers // 3
        self.auxiliary_head = None
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = Cell(genotype, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if auxiliary and i == self.aux_position:
                self.auxiliary_head = AuxiliaryHead(c_p, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor):  # (B, C_in, H, W) -> (B, classes) [, (B, classes)]
        aux_logits = None
        s0, s1 = stem_states(self, x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux_logits) if aux_logits is not None else logits


# --------------------------------------------------------------------------------------------------------------
# The space
# --------------------------------------------------------------------------------------------------------------


@SPACES.register("darts")
class DartsSpace(SearchSpace):
    name = "darts"
    primitives = DARTS_PRIMITIVES
    table_classes = 10  # CIFAR-10

    def check_search(self, cfg, partial_channels: int = 1) -> None:
        check_partial_channels(cfg.init_channels, partial_channels)
        if len(self.check_primitives(cfg.primitives)) < 2:
            raise HwnasError("a search needs at least two primitives")
        if cfg.layers < 3:  # else no cell reduces and α_reduce, never trained, would still make the genotype
            raise HwnasError(f"a DARTS search needs --layers >= 3 (reduction cells sit at 1/3 and 2/3 of the depth), "
                             f"got {cfg.layers}")  # fmt: skip
        warn_about_stem(cfg.stem, cfg.data.image_size)

    def build_supernet(self, cfg, in_channels: int, num_classes: int, partial_channels: int = 1,
                       edge_normalization: bool = False) -> DartsSupernet:  # fmt: skip
        return DartsSupernet(
            cfg.init_channels, num_classes, cfg.layers, in_channels, self.check_primitives(cfg.primitives),
            cfg.steps, cfg.multiplier, cfg.stem_multiplier, partial_channels, edge_normalization, cfg.stem,
        )  # fmt: skip

    def build_network(self, genotype, cfg, in_channels: int, num_classes: int) -> DartsNetwork:
        if not isinstance(genotype, DartsGenotype):
            raise HwnasError(f"genotype for space {genotype.space!r} does not fit space 'darts'")
        auxiliary = getattr(cfg, "auxiliary_weight", 0.0) > 0
        return DartsNetwork(genotype, cfg.init_channels, num_classes, cfg.layers, in_channels, auxiliary, cfg.stem)

    def genotype_from_json(self, data: dict[str, Any]) -> DartsGenotype:
        return DartsGenotype.from_json(data)

    def published_genotypes(self) -> dict[str, DartsGenotype]:
        return {
            "DARTS_V1": DARTS_V1,
            "DARTS_V2": DARTS_V2,
            "PC_DARTS": PC_DARTS,
            "PC_DARTS_IMAGENET": PC_DARTS_IMAGENET,
        }

    def _cell_shapes(self, cfg, input_size: int):
        """(reduction, H of the cell input, C of the cell) for every cell of a `cfg`-shaped network."""
        hw, c, shapes = stem_output_size(cfg.stem, input_size), cfg.init_channels, []
        for i in range(cfg.layers):
            reduction = i in reduction_layers(cfg.layers)
            if reduction:
                c *= 2
            shapes.append((reduction, hw, c))
            if reduction:
                hw = conv_out(hw, 2)
        return shapes

    def edge_rows(self, cfg) -> list[tuple[str, int]]:
        reductions = reduction_layers(cfg.layers)
        return cell_edge_rows([i in reductions for i in range(cfg.layers)], cfg.steps)

    def edge_op_configs(self, cfg, input_size: int) -> list[list[OpConfig]]:
        primitives = self.check_primitives(cfg.primitives)
        # Supernet.edges() visits cells in order and each cell's edges in α row order
        configs = []
        for reduction, hw, c in self._cell_shapes(cfg, input_size):
            hw_out = conv_out(hw, 2) if reduction else hw
            for _node, j in edge_inputs(cfg.steps):
                stride = 2 if reduction and j < 2 else 1
                hw_in = hw if j < 2 else hw_out  # intermediate nodes are already at the cell's output size
                configs.append([darts_op_config(p, hw_in, hw_out, c, stride) for p in primitives])
        return configs

    def fixed_op_configs(self, cfg, input_size: int) -> list[OpConfig]:
        in_channels = getattr(cfg, "in_channels", 3)
        # the derived network's stem (NETWORK_STEM_MULTIPLIER, as network_op_configs), whatever the supernet's
        fixed = stem_op_configs(cfg.stem, input_size, in_channels, cfg.init_channels, NETWORK_STEM_MULTIPLIER)
        c_p = cfg.multiplier * self._cell_shapes(cfg, input_size)[-1][2]
        hw_last = stem_output_size(cfg.stem, input_size)
        for reduction, _hw, _c in self._cell_shapes(cfg, input_size):
            hw_last = conv_out(hw_last, 2) if reduction else hw_last
        fixed.append(OpConfig("Logits", (hw_last, hw_last, c_p), (self.table_classes,)))
        return fixed

    def network_op_configs(
        self, genotype: DartsGenotype, cfg, input_size: int, in_channels: int = 3, num_classes: int | None = None
    ) -> list[OpConfig]:
        """The stem's ``Conv``s, each cell's chosen ops, ``Logits`` of a `cfg`-shaped network (init_channels, layers).
        The cells' 1x1 preprocessing convolutions and concatenations have no entries and are left out, as in
        the search's latency term; a table's network correction accounts for them."""
        configs = stem_op_configs(cfg.stem, input_size, in_channels, cfg.init_channels, NETWORK_STEM_MULTIPLIER)
        hw_out, c_out = stem_output_size(cfg.stem, input_size), configs[-1].output_shape[-1]
        for reduction, hw, c in self._cell_shapes(cfg, input_size):
            edges, concat = (
                (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
            )
            hw_out = conv_out(hw, 2) if reduction else hw
            for op, src in edges:
                stride = 2 if reduction and src < 2 else 1
                configs.append(darts_op_config(op, hw if src < 2 else hw_out, hw_out, c, stride))
            c_out = len(concat) * c
        classes = num_classes if num_classes is not None else self.table_classes
        return configs + [OpConfig("Logits", (hw_out, hw_out, c_out), (classes,))]


def darts_op_config(op: str, hw_in: int, hw_out: int, c: int, stride: int) -> OpConfig:
    """``sep_conv_3x3-input:32x32x16-output:16x16x16-stride:2``."""
    return OpConfig(op, (hw_in, hw_in, c), (hw_out, hw_out, c), (("stride", stride),))
