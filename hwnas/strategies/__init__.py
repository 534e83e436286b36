"""Search strategies over the one supernet interface, registered by name."""

from hwnas.strategies import darts, gdas, pcdarts, proxyless, random  # noqa: F401  (register the built-ins)
from hwnas.strategies.base import STRATEGIES, Strategy

__all__ = ["STRATEGIES", "Strategy"]
