"""GDAS (Dong & Yang, "Searching for a Robust Neural Architecture in Four GPU Hours", CVPR 2019).

Each forward samples one op per edge by hard Gumbel-softmax with straight-through gradients (Eq. 5-7), so
only one path runs; the temperature τ anneals linearly from `tau_max` to `tau_min` over the epochs.
"""

from __future__ import annotations

from hwnas.strategies.base import STRATEGIES, Strategy
from hwnas.supernet.mixed import GumbelHard


@STRATEGIES.register("gdas")
class Gdas(Strategy):
    name = "gdas"

    def mixing(self):
        self.gumbel = GumbelHard(self.cfg.tau_max, generator=self.generator)
        return self.gumbel

    def temperature(self, epoch: int) -> float:
        cfg = self.cfg
        if cfg.epochs == 1:
            return cfg.tau_max
        return cfg.tau_max - (cfg.tau_max - cfg.tau_min) * epoch / (cfg.epochs - 1)

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self.gumbel.tau = self.temperature(epoch)

    def epoch_metrics(self):
        return {**super().epoch_metrics(), "tau": self.gumbel.tau}
