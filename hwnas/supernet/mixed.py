"""MixedOp and the ways an edge combines its candidates.

A supernet edge holds N candidate ops. A `Mixing` decides, once per forward, the per-edge weights from the
architecture logits α and which candidates are computed at all, then how one edge combines them:

- `WeightedSum`      DARTS, Eq. (2) of Liu et al. 2019: y = Σ_k softmax(α)_k · o_k(x)
- `PartialChannel`   PC-DARTS, Eq. (2) of Xu et al. 2020: 1/K of the channels through the weighted sum, the rest
                     bypass it, then channel shuffle
- `GumbelHard`       GDAS, Eq. (5)-(7) of Dong & Yang 2019: one sampled op, straight-through Gumbel-softmax
- `SampledPaths`     ProxylessNAS, Sec. 3.2 of Cai et al. 2019: one (weight step) or two (arch step) sampled paths
                     behind binary gates

Strategies install a Mixing on the supernet; the supernet and its cells never know which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PathWeights:
    """What a Mixing decided for one group of edges (e.g. all normal-cell edges) in one forward."""

    weights: torch.Tensor  # (E, N) op weights, differentiable in α
    active: list[list[int]]  # per edge, the candidate indices to compute (the others contribute nothing)


class MixedOp(nn.Module):
    """One supernet edge: N candidate ops over the same input and output shape."""

    def __init__(self, names: list[str], ops: list[nn.Module], stride: int = 1, partial_channels: int = 1):
        super().__init__()
        self.names = list(names)
        self.ops = nn.ModuleList(ops)
        self.stride = stride
        self.partial_channels = partial_channels  # K of PC-DARTS: the ops see C/K channels
        self.zero_ops = frozenset(i for i, n in enumerate(names) if n in ("none", "zero"))  # output is 0
        self.bypass_pool = nn.MaxPool2d(2, 2) if partial_channels > 1 and stride == 2 else None
        self.mixing: Mixing = WeightedSum()

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: list[int]) -> torch.Tensor:
        return self.mixing.mix(self, x, weights, active)


def weighted_sum_reference(x: torch.Tensor, weights: torch.Tensor, ops, active: list[int]) -> torch.Tensor:
    """Σ_k w_k · o_k(x) over the active ops, keeping every op's activations for backward (the naive supernet)."""
    return sum(weights[k] * ops[k](x) for k in active)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) with channels [g0 | g1 | ...] -> interleaved, as in ShuffleNet and PC-DARTS, in x's layout
    (NHWC stays NHWC: an NCHW result would send the rest of a CPU search down oneDNN's slow NCHW kernels)."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        pixels = x.permute(0, 2, 3, 1)  # (B, H, W, C), dense
        shuffled = pixels.reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return shuffled.permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Mixing:
    """Default behaviour: softmax weights, every non-zero candidate computed, a plain weighted sum."""

    name = "weighted_sum"

    def __init__(self, fused: bool = False):
        self.fused = fused  # use hwnas.kernels' recomputing mixed op instead of keeping N activations

    def path_weights(self, alpha: torch.Tensor, zero_ops: list[frozenset[int]]) -> PathWeights:
        weights = F.softmax(alpha, dim=-1)  # (E, N)
        active = [[k for k in range(alpha.shape[1]) if k not in zero_ops[e]] for e in range(alpha.shape[0])]
        return PathWeights(weights, active)

    def combine(self, edge: MixedOp, x: torch.Tensor, weights: torch.Tensor, active: list[int]) -> torch.Tensor:
        if self.fused and len(active) > 1:
            from hwnas.kernels.mixed_op import fused_mixed_op

            return fused_mixed_op(x, weights, edge.ops, active)
        if not active:  # every candidate is zero: the edge contributes zeros of the output shape
            return edge.ops[next(iter(edge.zero_ops))](x)
        return weighted_sum_reference(x, weights, edge.ops, active)

    def mix(self, edge: MixedOp, x: torch.Tensor, weights: torch.Tensor, active: list[int]) -> torch.Tensor:
        return self.combine(edge, x, weights, active)


class WeightedSum(Mixing):
    name = "weighted_sum"


class PartialChannel(Mixing):
    """PC-DARTS: only C/K channels pass through the mixed op; the rest bypass it (max-pooled at stride 2)."""

    name = "partial_channel"

    def mix(self, edge: MixedOp, x: torch.Tensor, weights: torch.Tensor, active: list[int]) -> torch.Tensor:
        k = edge.partial_channels
        if k == 1:  # an edge whose candidates see every channel (e.g. a mobile block that changes shape)
            return self.combine(edge, x, weights, active)
        c_part = x.shape[1] // k
        # split, not two slices: its backward concatenates the two gradients in their layout (NHWC on the CPU),
        # where each slice's would write into fresh NCHW zeros
        part, bypass = x.split([c_part, x.shape[1] - c_part], dim=1)  # (B, C/K, H, W), (B, C - C/K, H, W)
        mixed = self.combine(edge, part, weights, active)  # (B, C/K, H', W')
        if self.fused:
            from hwnas.kernels.partial_channel import bypass_max_pool, partial_channel_shuffle

            if edge.bypass_pool is not None:
                bypass = bypass_max_pool(bypass, edge.bypass_pool)  # (B, C - C/K, H/2, W/2)
            return partial_channel_shuffle(mixed, bypass, k)
        if edge.bypass_pool is not None:
            bypass = edge.bypass_pool(bypass)
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), k)


class GumbelHard(Mixing):
    """GDAS: h = one_hot(argmax(log p + g)) - p̃.detach() + p̃, p̃ = softmax((log p + g)/τ); only argmax runs."""

    name = "gumbel_hard"

    def __init__(self, tau: float = 10.0, generator: torch.Generator | None = None):
        super().__init__(fused=False)
        self.tau = tau
        self.generator = generator

    def path_weights(self, alpha: torch.Tensor, zero_ops: list[frozenset[int]]) -> PathWeights:
        log_p = F.log_softmax(alpha, dim=-1)
        uniform = torch.rand(alpha.shape, generator=self.generator).to(alpha.device)
        neg_log_u = (-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20)  # Exp(1) samples, > 0
        gumbel = -torch.log(neg_log_u)
        soft = F.softmax((log_p + gumbel) / self.tau, dim=-1)
        index = soft.argmax(dim=-1)
        hard = F.one_hot(index, alpha.shape[1]).to(soft.dtype) - soft.detach() + soft
        return PathWeights(hard, [[i] for i in index.tolist()])  # one device-to-host copy, not one per edge

    def combine(self, edge, x, weights, active):
        (k,) = active
        return weights[k] * edge.ops[k](x)


class SampledPaths(Mixing):
    """ProxylessNAS binary gates (Cai et al. 2019, Sec. 3.2.1).

    `paths=1` (weight step): one path per edge sampled from softmax(α); only it runs, so the step keeps one
    path's activations. `paths=2` (arch step): two distinct paths sampled, gates g = one-hot of one of them drawn
    from the renormalised pair; g - p.detach() + p passes ∂L/∂g_k = <∂L/∂y, o_k(x)> through the softmax of the
    pair, which is the binary-gate gradient of Eq. (4) restricted to the sampled paths. Masked candidates (α = −inf,
    probability 0) are never sampled; an edge with a single candidate left has no pair to compare, so it runs that
    path behind gate 1 and its α gets no binary-gate gradient (the paper's two paths are two of the edge's choices).
    """

    name = "sampled_paths"

    def __init__(self, paths: int = 1, generator: torch.Generator | None = None):
        super().__init__(fused=False)
        self.paths = paths
        self.generator = generator

    def path_weights(self, alpha: torch.Tensor, zero_ops: list[frozenset[int]]) -> PathWeights:
        probs = F.softmax(alpha.detach(), dim=-1).cpu()
        if self.paths == 1:
            sampled = torch.multinomial(probs, 1, generator=self.generator)  # (E, 1)
            weights = F.one_hot(sampled[:, 0], alpha.shape[1]).to(alpha)
            return PathWeights(weights, sampled.tolist())
        single = probs.argmax(dim=1)  # the one path of an edge that has no other candidate
        two = (probs > 0).sum(dim=1) >= 2  # (E,), the edges with a pair to sample
        # that path's gate: its softmax probability, exactly 1 (and of zero gradient) beside masked candidates, yet
        # in α's graph, so that an α step on a space with no choice left backpropagates (zeros) as DARTS's does
        only = F.one_hot(single, alpha.shape[1]).to(alpha) * (~two).to(alpha).unsqueeze(1)
        weights = F.softmax(alpha, dim=-1) * only
        active = [[k] for k in single.tolist()]
        rows = two.nonzero()[:, 0]
        if len(rows):
            pair = torch.multinomial(probs[rows], 2, replacement=False, generator=self.generator)  # (R, 2)
            rows, pair = rows.to(alpha.device), pair.to(alpha.device)
            pair_probs = F.softmax(alpha[rows].gather(1, pair), dim=-1)  # (R, 2), differentiable in α
            chosen = torch.multinomial(pair_probs.detach().cpu(), 1, generator=self.generator).to(alpha.device)
            gates = F.one_hot(chosen[:, 0], 2).to(alpha) - pair_probs.detach() + pair_probs
            weights = weights.index_put((rows.unsqueeze(1), pair), gates)
            for row, sampled_pair in zip(rows.tolist(), pair.tolist()):
                active[row] = sampled_pair
        return PathWeights(weights, active)

    def combine(self, edge, x, weights, active):
        return sum(weights[k] * edge.ops[k](x) for k in active)
