"""PC-DARTS (Xu et al., "Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020).

Partial channel connections (Eq. 2: 1/K of the channels through the mixed op, channel shuffle after) and edge
normalisation (Eq. 4: node inputs weighted by softmax(β), derivation by softmax(α)·softmax(β)).
"""

from __future__ import annotations

from hwnas.strategies.base import STRATEGIES
from hwnas.strategies.darts import Darts
from hwnas.supernet.mixed import PartialChannel


@STRATEGIES.register("pcdarts")
class PCDarts(Darts):
    name = "pcdarts"

    def supernet_options(self):
        return {"partial_channels": self.cfg.pc_k, "edge_normalization": True}

    def mixing(self):
        return PartialChannel(fused=self.cfg.fused)
