"""Expected latency of a supernet's architecture distribution, and the latency of one architecture, from a
target's lookup table (ProxylessNAS, Cai et al. ICLR 2019, Eq. 4: E[LAT] = Σ_blocks Σ_ops p_op · LAT(op)),
through the table's per-network correction: E[a · Σ + b] = a · E[Σ] + b, still linear in the path probabilities
(identity where the table has no correction).

Latency is evaluated at the table's resolution whatever the training resolution. Keys the table lacks come
from the predictor fitted on it; a warning names them once. `zero` (a skipped block) costs nothing.
"""

from __future__ import annotations

import torch

from hwnas.latency.predictor import estimate
from hwnas.latency.table import LatencyTable
from hwnas.supernet.base import Supernet


class LatencyModel:
    """Per-candidate latencies of every edge of a `cfg`-shaped network plus its fixed layers, for one table, summed
    onto `supernet`'s α rows: `cfg` may shape the network to deploy rather than the supernet (on the DARTS space,
    `SearchConfig.latency_network()`: more cells and channels, sharing the searched cells' α)."""

    def __init__(self, space, cfg, table: LatencyTable, supernet: Supernet):
        self.table = table
        self.input_size = table.metadata.input_size
        edge_configs = space.edge_op_configs(cfg, self.input_size)
        fixed = space.fixed_op_configs(cfg, self.input_size)
        wanted = list(dict.fromkeys([c for edge in edge_configs for c in edge if c is not None] + fixed))
        estimates = {op.key(): (ms, measured) for op, ms, measured in estimate([table], wanted)}
        self.predicted_keys = sorted(k for k, (_ms, measured) in estimates.items() if not measured)
        self.fixed_ms = sum(estimates[op.key()][0] for op in fixed)
        self.edge_ms = torch.tensor(
            [[0.0 if c is None else estimates[c.key()][0] for c in edge] for edge in edge_configs],
            dtype=torch.float64,
        )  # (edges, candidates)
        self.group_ms = supernet.group_costs(self.edge_ms, space.edge_rows(cfg))

    def expected_ms(self, supernet: Supernet) -> torch.Tensor:
        """E[LAT] in ms, differentiable in α: the table's network estimate of E[Σ]."""
        return self.table.network_ms(supernet.expected_cost(self.group_ms) + self.fixed_ms)

    def decision_ms(self, decisions) -> float:
        """The table's network estimate of the architecture these decisions make."""
        sum_ms = self.fixed_ms + sum(float(self.group_ms[g][row, k]) for g, row, k in decisions)
        return float(self.table.network_ms(sum_ms))

    def architecture_ms(self, supernet: Supernet, genotype) -> float:
        """LAT of one derived architecture: the table's network estimate from the sum over its layers."""
        return self.decision_ms(supernet.decisions(genotype))

    def min_ms(self, supernet: Supernet) -> float:
        """The fastest architecture the space derives (`Supernet.extreme_cost`; a > 0, so the correction keeps the
        order)."""
        return float(self.table.network_ms(self.fixed_ms + supernet.extreme_cost(self.group_ms, slowest=False)))

    def max_ms(self, supernet: Supernet) -> float:
        return float(self.table.network_ms(self.fixed_ms + supernet.extreme_cost(self.group_ms, slowest=True)))

    def repair(self, supernet: Supernet, genotype, budget_ms: float, floor: float = 0.9):
        """Greedy budget repair of a derived architecture into [floor·T, T] (when the space allows it).

        While over T: apply the single change (`Supernet.alternatives`: another op, or on DARTS cells another
        input of the node with its op) that loses the least α-probability per ms saved. While under floor·T: apply
        the change that loses the least α-probability per ms added without exceeding T. A
        budget above the space's slowest architecture constrains nothing (e.g. `--latency 80s` for 80 ms): the
        architecture is left as α chose it rather than pushed towards the slowest one.
        Returns the repaired genotype and the changes made (for the log).
        """
        if budget_ms > self.max_ms(supernet):
            return genotype, []
        probs = {g: p.detach().double() for g, p in supernet.probabilities().items()}
        decisions = supernet.decisions(genotype)
        derived = list(decisions)
        correction = self.table.metadata.network_correction
        slope = correction.a if correction is not None else 1.0  # network ms per summed ms

        def total() -> float:
            return self.decision_ms(decisions)

        def added_ms(group: str, row: int, k: int, to_row: int, alt: int) -> float:
            """Network ms added (> 0) or saved (< 0) by taking candidate `alt` of `to_row` for `k` of `row`."""
            return slope * float(self.group_ms[group][to_row, alt] - self.group_ms[group][row, k])

        def best_move(direction: int):
            best = None
            for i, (group, row, k) in enumerate(decisions):
                p = probs[group]
                for to_row, alt in supernet.alternatives(decisions, i):
                    delta = added_ms(group, row, k, to_row, alt)
                    if delta * direction <= 0 or (direction > 0 and total() + delta > budget_ms):
                        continue
                    score = float(p[row, k] - p[to_row, alt]) / abs(delta)
                    if best is None or score < best[0]:
                        best = (score, i, to_row, alt)
            return best

        for direction, needed in ((-1, lambda: total() > budget_ms), (1, lambda: total() < floor * budget_ms)):
            while needed():
                move = best_move(direction)
                if move is None:  # no replacement left in this direction: the budget is out of the space's range
                    break
                _score, i, to_row, alt = move
                decisions[i] = (decisions[i][0], to_row, alt)
        # the net changes, one per decision that differs from the derived one: the greedy steps may pass through
        # intermediate choices (k7_e3 -> k5_e6 -> k7_e6 is the one change k7_e3 -> k7_e6)
        changes = []
        for (group, row, k), (_group, to_row, alt) in zip(derived, decisions):
            if (row, k) != (to_row, alt):
                change = {"group": group, "row": row, "from": k, "to": alt,
                          "delta_ms": added_ms(group, row, k, to_row, alt)}  # fmt: skip
                changes.append(change if to_row == row else {**change, "to_row": to_row})
        return supernet.with_decisions(genotype, decisions), changes
