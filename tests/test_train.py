"""`hwnas train` network shape: --width-mult applies to mobile genotypes, whose width lives in the genotype."""

import torch

from hwnas.run import RunDir
from hwnas.train import build_model, count_parameters, run_train
from tests.conftest import tiny_train_config


def test_width_mult_shapes_mobile_genotypes():
    cfg = tiny_train_config(genotype="PROXYLESS_MOBILE", width_mult=0.25)
    genotype, model = build_model(cfg, 3, 10)
    kept, full = build_model(cfg.replace(width_mult=None), 3, 10)
    assert genotype.width_mult == 0.25 and kept.width_mult == 1.0  # None keeps the genotype's own width
    assert count_parameters(model) < count_parameters(full) / 4


def test_trained_weights_record_the_width(tmp_path):
    cfg = tiny_train_config(genotype="PROXYLESS_MOBILE", width_mult=0.25, epochs=1)
    run_train(cfg, RunDir.create(tmp_path / "run", "train", cfg.to_json()), progress=False)
    record = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert record["genotype"]["width_mult"] == 0.25 and record["config"]["width_mult"] == 0.25
