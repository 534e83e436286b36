import pytest

from hwnas.config import DataConfig, SearchConfig
from hwnas.latency.catalogue import mobile_op_configs
from tests.latency.helpers import make_table

WIDTH = 0.35  # a thin mobile supernet: quick on 2 cores, same structure as the full one
SIZE = 32  # latency resolution of the synthetic table


def mobile_config(**changes) -> SearchConfig:
    base = SearchConfig(space="mobile", data=DataConfig(dataset="fake", image_size=16), epochs=2, batch_size=16,
                        width_mult=WIDTH, latency_input_size=SIZE)  # fmt: skip
    return base.replace(**changes)


@pytest.fixture
def synthetic_table(tmp_path):
    """A mobile table at 32x32, width 0.35, latencies proportional to MACs; saved so targets can name its path."""
    table = make_table(mobile_op_configs(SIZE, WIDTH), target="synthetic", space="mobile", input_size=SIZE)
    table.save(tmp_path / "synthetic_mobile_32.json")
    return table
