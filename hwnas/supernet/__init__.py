"""Supernets and how their edges mix candidates; each space builds its own supernet on this interface."""

from hwnas.supernet.base import Supernet
from hwnas.supernet.mixed import (
    GumbelHard,
    MixedOp,
    Mixing,
    PartialChannel,
    PathWeights,
    SampledPaths,
    WeightedSum,
    channel_shuffle,
    weighted_sum_reference,
)

__all__ = [
    "GumbelHard",
    "MixedOp",
    "Mixing",
    "PartialChannel",
    "PathWeights",
    "SampledPaths",
    "Supernet",
    "WeightedSum",
    "channel_shuffle",
    "weighted_sum_reference",
]
