"""ProxylessNAS binary gates (Cai, Zhu, Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and
Hardware", ICLR 2019, Sec. 3.2).

Weight step: one path per edge sampled from softmax(α); only it runs, so memory is one path's. Arch step: two
paths sampled per edge (its one path where a single candidate is allowed), binary-gate gradients through them
(`SampledPaths(2)`), then their α are shifted by a common offset so that the unsampled paths keep their probability
(Sec. 3.2.1, "rescale").
"""

from __future__ import annotations

import torch

from hwnas.strategies.base import STRATEGIES, Strategy
from hwnas.supernet.mixed import SampledPaths


@STRATEGIES.register("proxyless")
class Proxyless(Strategy):
    name = "proxyless"

    def prepare(self, supernet) -> None:
        super().prepare(supernet)
        # ProxylessNAS's α optimiser, as in its reference code: Adam without momentum or weight decay, so that a path
        # outside this step's sampled pair (binary-gate gradient zero) keeps its α, and the rescale its probability
        self.a_opt = torch.optim.Adam(supernet.arch_parameters(), self.cfg.arch_lr, betas=(0.0, self.cfg.a_betas[1]))

    def mixing(self):
        self.one_path = SampledPaths(1, generator=self.generator)
        self.two_paths = SampledPaths(2, generator=self.generator)
        return self.one_path

    def arch_step(self, train_batch, val_batch):
        alphas = self.supernet.alpha_parameters()  # the parameters themselves: the rescale writes into them
        before = {g: a.detach().clone() for g, a in alphas.items()}
        self.supernet.set_mixing(self.two_paths)
        try:
            metrics = super().arch_step(train_batch, val_batch)
        finally:
            self.supernet.set_mixing(self.one_path)
        with torch.no_grad():
            for group, alpha in alphas.items():
                # an edge that ran one path, its only candidate, as the pair (k, k): its α is left as it was
                paths = self.supernet.last_paths[group].active
                pairs = torch.tensor([(p * 2)[:2] for p in paths], device=alpha.device)  # (E, 2)
                old = before[group].gather(1, pairs)
                new = alpha.gather(1, pairs)
                offset = torch.logsumexp(old, dim=1, keepdim=True) - torch.logsumexp(new, dim=1, keepdim=True)
                alpha.scatter_(1, pairs, new + offset)
        return metrics
