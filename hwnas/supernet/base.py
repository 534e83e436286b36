"""The supernet interface every search space meets; strategies drive it without knowing the space."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from hwnas.supernet.mixed import MixedOp, Mixing, PathWeights, WeightedSum


class Supernet(nn.Module):
    """An over-parameterised network whose edges are MixedOps, grouped by the α tensor that weights them.

    Subclasses define `alpha_groups()` (group name -> (E, N) logits, one row per edge of `group_edges(name)`),
    `forward`, and `derive()`. Every forward asks the installed Mixing for each group's PathWeights once and
    keeps them in `last_paths` (ProxylessNAS reads the sampled pairs from there).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mixing: Mixing = WeightedSum()
        self.last_paths: dict[str, PathWeights] = {}

    # -- structure ---------------------------------------------------------------------------------------------
    def edges(self) -> list[MixedOp]:
        return [m for m in self.modules() if isinstance(m, MixedOp)]

    def alpha_groups(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def group_edges(self, group: str) -> list[MixedOp]:
        raise NotImplementedError

    def alpha_parameters(self) -> dict[str, nn.Parameter]:
        """The parameter behind each α group, same shape, for strategies that edit α in place (a group itself
        may be a masked copy)."""
        raise NotImplementedError

    def arch_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self._arch_parameter_list()}
        return [p for p in self.parameters() if id(p) in ids]

    def _arch_parameter_list(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def architecture_fixed(self):
        """α (and β) without gradient meanwhile, as a weight step wants them: its forward then keeps no candidate
        outputs for ∂L/∂α (a fifth of the bytes a DARTS supernet saves) and its backward computes none."""
        return _without_gradient(self.arch_parameters())

    def weights_fixed(self):
        """The weights without gradient meanwhile, as an α step wants them: its forward then keeps no layer inputs
        for weight gradients (a quarter of the bytes a DARTS supernet saves) and its backward computes none."""
        return _without_gradient(self.weights())

    def weights(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self.arch_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in ids]

    # -- mixing ------------------------------------------------------------------------------------------------
    def set_mixing(self, mixing: Mixing) -> None:
        self.mixing = mixing
        for edge in self.edges():
            edge.mixing = mixing

    def path_weights(self, group: str) -> PathWeights:
        alpha = self.alpha_groups()[group]
        paths = self.mixing.path_weights(alpha, [e.zero_ops for e in self.group_edges(group)])
        self.last_paths[group] = paths
        return paths

    def probabilities(self) -> dict[str, torch.Tensor]:
        """softmax(α) per group, (E, N): the path probabilities that derivation and E[LAT] read."""
        return {g: torch.softmax(a, dim=-1) for g, a in self.alpha_groups().items()}

    def derive(self):
        raise NotImplementedError

    # -- costs (latency) ---------------------------------------------------------------------------------------
    def edge_rows(self) -> list[tuple[str, int]]:
        """(α group, row) of every edge in `edges()` order; edges sharing a row share its α."""
        raise NotImplementedError

    def group_costs(
        self, edge_costs: torch.Tensor, rows: list[tuple[str, int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per group, (rows, N): the summed cost of each candidate over all edges that share the α row, on the device
        of `edge_costs` (the CPU, where a latency table's costs are read one by one) whatever the supernet's.
        `rows`: the (group, row) of each of `edge_costs`, for a network of another shape than this supernet (more
        cells of the same α); None: this supernet's `edge_rows()`."""
        costs = {g: edge_costs.new_zeros(a.shape) for g, a in self.alpha_groups().items()}
        rows = self.edge_rows() if rows is None else rows
        if len(rows) != len(edge_costs):
            raise ValueError(f"{len(edge_costs)} edge costs for {len(rows)} edges")
        for (group, row), cost in zip(rows, edge_costs):
            costs[group][row] += cost
        return costs

    def expected_cost(self, group_costs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_rows Σ_k p_k · cost_k (ProxylessNAS, Eq. 4); differentiable in α."""
        probs = self.probabilities()
        return sum((probs[g] * c.to(probs[g])).sum() for g, c in group_costs.items())

    def decisions(self, genotype) -> list[tuple[str, int, int]]:
        """The (group, row, candidate) choices a genotype is made of."""
        raise NotImplementedError

    def with_decisions(self, genotype, decisions: list[tuple[str, int, int]]):
        """`genotype` with its choices replaced by `decisions` (same structure, other candidates)."""
        raise NotImplementedError

    def allowed(self, group: str, row: int) -> list[int]:
        """The candidates a decision at (group, row) may take."""
        raise NotImplementedError

    def alternatives(self, decisions: list[tuple[str, int, int]], i: int) -> list[tuple[int, int]]:
        """The (row, candidate) pairs decision `i` of an architecture's `decisions` may change to, one change
        leaving a valid architecture: here, another candidate of the same row."""
        group, row, k = decisions[i]
        return [(row, alt) for alt in self.allowed(group, row) if alt != k]

    def extreme_cost(self, group_costs: dict[str, torch.Tensor], slowest: bool) -> float:
        """The summed cost of the cheapest (or dearest) architecture the space derives: every α row takes its
        cheapest (dearest) allowed candidate."""
        pick = max if slowest else min
        return sum(
            pick(float(cost[row, k]) for k in self.allowed(group, row))
            for group, cost in group_costs.items()
            for row in range(cost.shape[0])
        )

    def sample(self, generator: torch.Generator):
        """A uniformly random architecture of the space."""
        raise NotImplementedError


@contextlib.contextmanager
def _without_gradient(params: list[nn.Parameter]):
    """`params` that require gradient made not to meanwhile (autograd then records nothing for them)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
