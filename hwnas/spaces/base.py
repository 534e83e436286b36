"""The search-space interface and the genotype type every space's architecture description derives from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig
from hwnas.registry import Registry
from hwnas.supernet.base import Supernet


class Genotype:
    """A discrete architecture. Subclasses are frozen dataclasses with `space` naming their search space."""

    space: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        from hwnas.run import write_json_atomic

        write_json_atomic(path, self.to_json())


class SearchSpace:
    """One search space: its supernet, its derived networks, its genotypes and the op shapes it presents."""

    name: ClassVar[str]
    primitives: ClassVar[tuple[str, ...]]
    table_classes: ClassVar[int]  # classes of the classifier the space's latency tables are keyed with

    def build_supernet(self, cfg, in_channels: int, num_classes: int, **options: Any) -> Supernet:
        raise NotImplementedError

    def build_network(self, genotype: Genotype, cfg, in_channels: int, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def genotype_from_json(self, data: dict[str, Any]) -> Genotype:
        raise NotImplementedError

    def published_genotypes(self) -> dict[str, Genotype]:
        return {}

    def edge_op_configs(self, cfg, input_size: int) -> list[list[OpConfig]]:
        """Per supernet edge (in `Supernet.edges()` order), the OpConfig of each candidate at `input_size`."""
        raise NotImplementedError

    def edge_rows(self, cfg) -> list[tuple[str, int]]:
        """(α group, row) of each edge of a `cfg`-shaped network, in `edge_op_configs` order (`Supernet.edge_rows`
        of its supernet): a latency term may price a network of another shape than the supernet searched."""
        raise NotImplementedError

    def fixed_op_configs(self, cfg, input_size: int) -> list[OpConfig]:
        """The layers every architecture of the space has (stem, head), at `input_size`."""
        raise NotImplementedError

    def network_op_configs(
        self, genotype: Genotype, cfg, input_size: int, in_channels: int = 3, num_classes: int | None = None
    ) -> list[OpConfig]:
        """The table-keyed layers of the network `build_network(genotype, cfg, ...)` builds, in order: what its
        table estimate sums (`num_classes` None: the tables' `table_classes`)."""
        raise NotImplementedError

    def check_primitives(self, primitives: tuple[str, ...] | None) -> tuple[str, ...]:
        if primitives is None:
            return self.primitives
        unknown = [p for p in primitives if p not in self.primitives]
        if unknown:
            raise HwnasError(f"unknown op {unknown[0]!r} for space {self.name!r}; known: {', '.join(self.primitives)}")
        return tuple(primitives)

    def check_search(self, cfg, partial_channels: int = 1) -> None:
        """What a search over this space needs of `cfg` beyond `SearchConfig.validate` (before anything runs), with
        the strategy's `partial_channels` (PC-DARTS's K: the channels it splits must divide by it)."""
        self.check_primitives(cfg.primitives)


SPACES: Registry[type[SearchSpace]] = Registry("search space")


def get_space(name: str) -> SearchSpace:
    return SPACES.get(name)()


def load_genotype(spec: str, space: str | None = None) -> Genotype:
    """A published genotype by name (e.g. ``DARTS_V2``) or a genotype JSON file written by `hwnas search`."""
    for space_name in SPACES.names():
        published = get_space(space_name).published_genotypes()
        if spec in published:
            genotype = published[spec]
            break
    else:
        path = Path(spec)
        if not path.is_file():
            known = [n for s in SPACES.names() for n in get_space(s).published_genotypes()]
            raise HwnasError(f"genotype {spec!r} is neither a file nor a published genotype ({', '.join(known)})")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HwnasError(f"malformed genotype file {spec}: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("space"), str):
            raise HwnasError(f"malformed genotype file {spec}: expected a JSON object with a 'space' field")
        genotype = SPACES.get(data["space"])().genotype_from_json(data)
    if space is not None and genotype.space != space:
        raise HwnasError(f"genotype {spec!r} is for space {genotype.space!r}, not {space!r}")
    return genotype
