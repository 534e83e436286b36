"""What gets exported: shapes and weights from run directories, weights files and flags."""

import json

import torch

from hwnas.config import DataConfig, TrainConfig
from hwnas.export import build_network, resolve_spec
from hwnas.spaces import get_space, load_genotype


def test_search_run_gives_genotype_and_dataset(tmp_path):
    run = tmp_path / "search"
    run.mkdir()
    config = {"space": "darts", "stem": "imagenet", "data": DataConfig(dataset="fake", image_size=16).to_json()}
    (run / "config.json").write_text(json.dumps({"kind": "search", "config": config}))
    load_genotype("PC_DARTS").save(run / "genotype.json")
    spec = resolve_spec(run=str(run), shape={"init_channels": 4, "layers": 3})
    assert spec.genotype == load_genotype("PC_DARTS") and spec.weights is None and spec.dataset_known
    assert (spec.in_channels, spec.num_classes, spec.input_size) == (3, 4, 16)  # the fake dataset's
    assert (spec.cfg.init_channels, spec.cfg.layers, spec.cfg.stem) == (4, 3, "imagenet")  # the searched stem
    assert resolve_spec(run=str(run), shape={"stem": "cifar"}).cfg.stem == "cifar"  # unless --stem says otherwise


def test_weights_file_carries_shape_and_the_auxiliary_head_is_dropped(tmp_path):
    cfg = TrainConfig(init_channels=4, layers=3, auxiliary_weight=0.4, stem="imagenet")
    genotype = load_genotype("DARTS_V2")
    trained = get_space("darts").build_network(genotype, cfg, 2, 7)
    assert any(k.startswith("auxiliary_head.") for k in trained.state_dict())
    torch.save({"genotype": genotype.to_json(), "config": cfg.to_json(), "in_channels": 2, "num_classes": 7,
                "state_dict": trained.state_dict()}, tmp_path / "model.pt")  # fmt: skip
    spec = resolve_spec(genotype="DARTS_V2", weights=str(tmp_path / "model.pt"), input_size=12)
    assert (spec.in_channels, spec.num_classes, spec.input_size) == (2, 7, 12)
    assert spec.dataset_known  # the training config in the weights file names its dataset
    network = build_network(spec)
    x = torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        assert torch.equal(network(x), trained.eval()(x))
