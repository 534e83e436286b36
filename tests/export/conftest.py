"""A tiny trained DARTS run (fake 16x16 data, 1 epoch) shared by the export tests."""

import importlib.util

import pytest

from hwnas.config import DataConfig
from hwnas.run import RunDir
from hwnas.train import run_train
from tests.conftest import tiny_train_config

SIZE = 16
# TFLite export converts with litert-torch and checks with the LiteRT interpreter: both in the export extra
needs_litert = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert")),
    reason="needs litert-torch and ai-edge-litert (the export extra)",
)


@pytest.fixture(scope="session")
def train_run(tmp_path_factory):
    cfg = tiny_train_config(data=DataConfig(dataset="fake", image_size=SIZE), epochs=1, drop_path_prob=0.0)
    path = tmp_path_factory.mktemp("export") / "train"
    run_train(cfg, RunDir.create(path, "train", cfg.to_json()), progress=False)
    return path
