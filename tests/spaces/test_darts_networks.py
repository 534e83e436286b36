"""DARTS networks as the reference code builds them: the CIFAR and ImageNet stems, parameter counts against the
reference code's, MACs, and the table-keyed layers of both stems against the modules they describe."""

import pytest
import torch
from torch import nn

from hwnas.complexity import count_macs, count_parameters
from hwnas.config import DataConfig, SearchConfig, TrainConfig
from hwnas.errors import HwnasError
from hwnas.spaces import get_space, load_genotype
from hwnas.spaces.darts import DARTS_V2, stem_output_size
from hwnas.train import build_model


def _network(genotype: str, stem: str, c: int, layers: int, classes: int, size: int = 32) -> nn.Module:
    cfg = TrainConfig(genotype=genotype, init_channels=c, layers=layers, stem=stem, auxiliary_weight=0.4,
                      data=DataConfig(dataset="fake", image_size=size))  # fmt: skip
    return build_model(cfg, 3, classes)[1]


@pytest.mark.parametrize(
    "genotype,stem,c,layers,classes,params",
    [
        ("DARTS_V2", "cifar", 36, 20, 10, 3_349_342),  # the DARTS code's train.py log; paper Table 1: 3.3M
        ("DARTS_V2", "imagenet", 48, 14, 1000, 4_718_752),  # its train_imagenet.py log; paper Table 2: 4.7M
    ],
)
def test_published_networks_have_the_reference_codes_parameter_count(genotype, stem, c, layers, classes, params):
    assert count_parameters(_network(genotype, stem, c, layers, classes)) == params


@pytest.mark.parametrize(
    "genotype,stem,c,layers,classes,millions",
    [
        ("PC_DARTS", "cifar", 36, 20, 10, 3.6),  # PC-DARTS paper, Table 1
        ("PC_DARTS_IMAGENET", "imagenet", 48, 14, 1000, 5.3),  # PC-DARTS paper, Table 3
        ("DARTS_V2", "imagenet", 48, 14, 1000, 4.7),  # DARTS paper, Table 2
    ],
)
def test_published_networks_have_the_papers_parameter_count(genotype, stem, c, layers, classes, millions):
    assert round(count_parameters(_network(genotype, stem, c, layers, classes)) / 1e6, 1) == millions


def test_search_supernet_has_the_reference_codes_parameter_count():
    """The DARTS code's train_search.py at C=16, 8 cells logs `param size = 1.930618MB` (α excluded)."""
    cfg = SearchConfig(init_channels=16, layers=8)
    net = get_space("darts").build_supernet(cfg, 3, 10)
    arch = {id(p) for p in net.arch_parameters()}
    assert sum(p.numel() for p in net.parameters() if id(p) not in arch) == 1_930_618


def test_imagenet_stem_runs_the_cells_at_an_eighth_of_the_input():
    net = _network("DARTS_V2", "imagenet", 8, 5, 7, size=224)
    seen = []
    net.cells[0].register_forward_pre_hook(lambda m, args: seen.extend(tuple(a.shape) for a in args[:2]))
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 224, 224))  # training: the auxiliary head at 2/3 depth too
    assert seen == [(2, 8, 56, 56), (2, 8, 28, 28)]  # s0 at twice s1's resolution: the first cell reduces it
    assert logits.shape == aux.shape == (2, 7)
    assert stem_output_size("imagenet", 224) == 28 and stem_output_size("imagenet", 225) == 29
    assert stem_output_size("cifar", 32) == 32


@pytest.mark.parametrize("stem,size", [("cifar", 16), ("imagenet", 64), ("imagenet", 57)])
def test_network_op_configs_describe_the_modules(stem, size):
    """The stem's convolutions and every cell op, in order and with the shapes the network runs them at."""
    space = get_space("darts")
    cfg = TrainConfig(init_channels=6, layers=5, stem=stem)
    net = space.build_network(DARTS_V2, cfg, 3, 10).eval()
    stem_convs = [m for name, m in net.named_modules() if name.startswith("stem") and isinstance(m, nn.Conv2d)]
    ops = [op for cell in net.cells for op in cell.ops]
    shapes = {}

    def record(m, i, o):
        shapes[m] = (tuple(i[0].shape), tuple(o.shape))

    for m in stem_convs + ops + [net.classifier]:
        m.register_forward_hook(record)
    net(torch.randn(1, 3, size, size))
    configs = space.network_op_configs(DARTS_V2, cfg, size, in_channels=3, num_classes=10)
    assert len(configs) == len(stem_convs) + len(ops) + 1
    for config, module in zip(configs, stem_convs + ops):
        (_, c_in, h_in, _), (_, c_out, h_out, _) = shapes[module]
        assert config.input_shape == (h_in, h_in, c_in) and config.output_shape == (h_out, h_out, c_out)
    assert [c.kind for c in configs[: len(stem_convs)]] == ["Conv"] * len(stem_convs)
    assert configs[-1].kind == "Logits" and configs[-1].input_shape[-1] == shapes[net.classifier][0][1]


@pytest.mark.parametrize("stem,size", [("cifar", 16), ("imagenet", 64)])
def test_edge_op_configs_follow_the_supernet_with_either_stem(stem, size):
    space, cfg = get_space("darts"), SearchConfig(init_channels=4, layers=3, stem=stem)
    net = space.build_supernet(cfg, 3, 10)
    shapes = []
    for edge in net.edges():
        edge.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
    net(torch.randn(1, 3, size, size))
    configs = space.edge_op_configs(cfg, size)
    assert len(configs) == len(shapes)
    for ((_, c_in, h_in, _), (_, c_out, h_out, _)), edge_configs in zip(shapes, configs):
        assert {(c.input_shape, c.output_shape) for c in edge_configs} == {((h_in, h_in, c_in), (h_out, h_out, c_out))}
    stem_layers = [c for c in space.fixed_op_configs(cfg, size) if c.kind == "Conv"]
    assert len(stem_layers) == (1 if stem == "cifar" else 3)
    assert stem_layers[-1].output_shape[0] == stem_output_size(stem, size)


def test_count_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5))  # fmt: skip
    net.train()
    # 9x9 -> 5x5: 25 positions x 8 filters x 27 weights; depthwise: 25 x 8 x 9; linear: 8 x 5
    assert count_macs(net, (3, 9, 9)) == 25 * 8 * 27 + 25 * 8 * 9 + 8 * 5
    assert net.training  # the mode the caller left it in
    assert count_macs(nn.AvgPool2d(2), (3, 4, 4)) == 0  # no parameters: nothing to multiply, and no error


@pytest.mark.parametrize("genotype,stem,size", [("DARTS_V2", "cifar", 32), ("PC_DARTS_IMAGENET", "imagenet", 96)])
def test_count_macs_equals_the_sum_over_the_network_s_convolutions_and_linears(genotype, stem, size):
    """Summed by hand from each Conv2d's and Linear's output on an example: the count covers every layer."""
    net = _network(genotype, stem, 8, 5, 10, size)
    by_hand = 0

    def add(m, i, o):
        nonlocal by_hand
        per_output = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.weight[0, 0].numel()
        by_hand += o[0].numel() * per_output

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(add)
    macs = count_macs(net, (3, size, size))
    assert macs == by_hand > 0


def test_stem_is_checked():
    with pytest.raises(HwnasError, match="stem must be one of cifar, imagenet, got 'tiny'"):
        SearchConfig(stem="tiny").validate()
    with pytest.raises(HwnasError, match="stem must be one of cifar, imagenet"):
        TrainConfig(stem="").validate()
    assert load_genotype("PC_DARTS_IMAGENET").space == "darts"
