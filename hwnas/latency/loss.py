"""Latency terms of the architecture loss, over E[LAT] from `LatencyModel` and a budget T.

- additive        CE + λ · E[LAT] / T
- multiplicative  CE · (E[LAT] / T)^β  (MnasNet, Tan et al. CVPR 2019, Eq. 2, soft-constraint form)
- target          CE + λ · E[LAT] / T with λ adapted by dual ascent (the default): after every α step
                  λ ← λ + η · (LAT(argmax) / T* − 1), T* = 0.95 T, so λ grows while the current argmax
                  architecture is too slow and shrinks (below zero if need be) while it is too fast. The derived
                  architecture thereby settles near 0.95 T without tuning λ; the budget repair at derivation
                  (`LatencyModel.repair`) then moves it into [0.9 T, T] by the fewest, least probable changes.
"""

from __future__ import annotations

from typing import Any

import torch

from hwnas.errors import HwnasError
from hwnas.latency.expected import LatencyModel

TARGET_FRACTION = 0.95  # where the target mode aims inside [0.9 T, T]
# λ's step per α step. On the default mobile job (8 epochs, ~90 α steps) a step of 1 swung λ between -9 and 8 and
# the argmax latency between 31 and 157 ms (15 repairs at the end); 0.05 moved it steadily from 84 to 48 ms (5).
DUAL_STEP = 0.05


class LatencyObjective:
    def __init__(self, model: LatencyModel, budget_ms: float, mode: str = "target", lam: float = 0.1,
                 beta: float = 0.6, dual_step: float = DUAL_STEP):  # fmt: skip
        if mode not in ("target", "additive", "multiplicative"):
            raise HwnasError(f"unknown latency loss {mode!r}; known: target, additive, multiplicative")
        self.model, self.budget_ms, self.mode = model, budget_ms, mode
        self.lam, self.beta, self.dual_step = lam, beta, dual_step
        self.last_expected_ms = float("nan")

    def __call__(self, task_loss: torch.Tensor, supernet) -> torch.Tensor:
        expected = self.model.expected_ms(supernet)
        self.last_expected_ms = float(expected.detach())
        ratio = (expected / self.budget_ms).to(task_loss.dtype)
        if self.mode == "multiplicative":
            return task_loss * ratio**self.beta
        loss = task_loss + self.lam * ratio
        if self.mode == "target":
            argmax_ms = self.model.architecture_ms(supernet, supernet.derive())
            self.lam += self.dual_step * (argmax_ms / (TARGET_FRACTION * self.budget_ms) - 1.0)
        return loss

    def metrics(self, supernet) -> dict[str, float]:
        with torch.no_grad():
            expected = float(self.model.expected_ms(supernet))
        return {"expected_latency_ms": expected, "lambda": self.lam,
                "argmax_latency_ms": self.model.architecture_ms(supernet, supernet.derive())}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = state["lam"]
