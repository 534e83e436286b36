import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwnas.config import DataConfig, SearchConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# One intra-op thread: the test tensors are tiny, and two OpenMP threads on a busy 2-core machine spin-wait
# each other into 10-50x slower steps (measured on the mobile supernet: 0.3 s vs 3-20 s per step).
torch.set_num_threads(1)


def tiny_search_config(**changes) -> SearchConfig:
    """A supernet small enough for a search epoch in a second or two on fake 8x8 data; on the CPU even where there
    is a GPU, since tests compare runs exactly (tests/test_device.py runs on CUDA)."""
    base = SearchConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                        layers=3, device="cpu")  # fmt: skip
    return base.replace(**changes)


def tiny_train_config(**changes) -> TrainConfig:
    base = TrainConfig(data=DataConfig(dataset="fake", image_size=8), epochs=2, batch_size=16, init_channels=4,
                       layers=3, device="cpu")  # fmt: skip
    return base.replace(**changes)


def run_cli(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m hwnas ARGS` in a subprocess, as a user would run it."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run([sys.executable, "-m", "hwnas", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.fixture
def cli():
    return run_cli
