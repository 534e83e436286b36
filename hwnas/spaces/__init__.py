"""Search spaces, registered by name; importing this package registers the built-in ones."""

from hwnas.spaces import darts, mobile  # noqa: F401  (register the built-in spaces)
from hwnas.spaces.base import SPACES, Genotype, SearchSpace, get_space, load_genotype

__all__ = ["SPACES", "Genotype", "SearchSpace", "get_space", "load_genotype"]
