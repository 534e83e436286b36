import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwnas.config import DataConfig, SearchConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_search_config(**changes) -> SearchConfig:
    """A supernet small enough for a search epoch in a second or two on fake 8x8 data."""
    base = SearchConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                        layers=3)  # fmt: skip
    return base.replace(**changes)


def tiny_train_config(**changes) -> TrainConfig:
    base = TrainConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                       layers=3)  # fmt: skip
    return base.replace(**changes)


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m hwnas ARGS` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "hwnas", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.fixture
def cli():
    return run_cli
