import json

import pytest
import torch

from hwnas.config import SearchConfig, TrainConfig
from hwnas.errors import HwnasError
from hwnas.spaces import get_space, load_genotype
from hwnas.spaces.darts import DARTS_V1, DARTS_V2, DartsGenotype, DartsNetwork, edge_inputs, reduction_layers


def test_supernet_forward_backward_and_parameter_split():
    space = get_space("darts")
    net = space.build_supernet(SearchConfig(init_channels=4, layers=3), 3, 10)
    assert len(net.edges()) == 3 * 14
    assert net.alpha_normal.shape == (14, 8) and net.alpha_reduce.shape == (14, 8)
    arch_ids = {id(p) for p in net.arch_parameters()}
    assert arch_ids == {id(net.alpha_normal), id(net.alpha_reduce)}
    assert not arch_ids & {id(p) for p in net.weights()}
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert net.alpha_normal.grad.abs().sum() > 0 and net.alpha_reduce.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weights() if p.requires_grad)


def test_reduction_cells_at_one_and_two_thirds():
    assert reduction_layers(8) == (2, 5)
    assert reduction_layers(20) == (6, 13)
    net = get_space("darts").build_supernet(SearchConfig(init_channels=4, layers=6), 3, 10)
    assert [c.reduction for c in net.cells] == [False, False, True, False, True, False]


def test_steps_and_primitive_subset():
    cfg = SearchConfig(
        init_channels=4, layers=3, steps=2, multiplier=2, primitives=("none", "skip_connect", "sep_conv_3x3")
    )
    net = get_space("darts").build_supernet(cfg, 1, 5)
    assert net.alpha_normal.shape == (len(edge_inputs(2)), 3)
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 5)
    assert len(net.derive().normal) == 4


def test_bad_primitive_is_a_user_error():
    with pytest.raises(HwnasError, match="unknown op 'conv_9x9'"):
        get_space("darts").build_supernet(SearchConfig(primitives=("conv_9x9", "none")), 3, 10)


def _onehot_alpha(net, choices):
    """Set α so that edge e strongly prefers op choices[e] (default: `none`, index 0)."""
    with torch.no_grad():
        for alpha in (net.alpha_normal, net.alpha_reduce):
            alpha.fill_(0.0)
            alpha[:, 0] = 5.0  # none dominates everywhere: it must still be excluded
            for e, (k, strength) in choices.items():
                alpha[e, k] = strength


def test_derivation_from_hand_set_alpha():
    net = get_space("darts").build_supernet(SearchConfig(init_channels=4, layers=3), 3, 10)
    prims = list(net.primitives)
    # node 0 (edges 0, 1): edge 1 strong sep_conv_3x3, edge 0 weaker max_pool
    # node 1 (edges 2, 3, 4): edges 4 (from node 0) and 2 (from input 0) win
    choices = {1: (prims.index("sep_conv_3x3"), 4.0), 0: (prims.index("max_pool_3x3"), 3.0),
               4: (prims.index("dil_conv_5x5"), 4.5), 2: (prims.index("skip_connect"), 3.5),
               3: (prims.index("avg_pool_3x3"), 1.0)}  # fmt: skip
    _onehot_alpha(net, choices)
    genotype = net.derive()
    assert genotype.normal[:2] == (("sep_conv_3x3", 1), ("max_pool_3x3", 0))
    assert genotype.normal[2:4] == (("dil_conv_5x5", 2), ("skip_connect", 0))
    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    assert genotype.normal_concat == (2, 3, 4, 5)


def test_genotype_json_round_trip(tmp_path):
    for genotype in (DARTS_V1, DARTS_V2):
        data = json.loads(json.dumps(genotype.to_json()))
        assert DartsGenotype.from_json(data) == genotype
        path = tmp_path / "g.json"
        genotype.save(path)
        assert load_genotype(str(path)) == genotype
    assert load_genotype("DARTS_V2") is DARTS_V2


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "malformed genotype file"),
        ('{"normal": []}', "'space' field"),
        ('{"space": "darts", "normal": [["sep_conv_3x3", 0]]}', "malformed DARTS genotype"),
        (
            '{"space": "darts", "normal": [["warp", 0], ["skip_connect", 1]], "normal_concat": [2],'
            ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "unknown op 'warp'",
        ),
        (
            '{"space": "darts", "normal": [["skip_connect", 0], ["skip_connect", 7]], "normal_concat": [2],'
            ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "reads node 7",
        ),
        ('{"space": "nowhere"}', "unknown search space"),
        ('{"space": ["darts"]}', "'space' field"),
        (
            '{"space": "darts", "normal": [["skip_connect", 0.7], ["skip_connect", 1]], "normal_concat": [2],'
            ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "'normal' must be a list of \\[op, input node\\] pairs",
        ),
        (
            '{"space": "darts", "normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": ["2"],'
            ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "'normal_concat' must be a list of node indices",
        ),
        (
            '{"space": "darts", "normal": [["skip_connect", 0], ["skip_connect", 1]], "normal_concat": [2, 2],'
            ' "reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}',
            "out of range or repeated",
        ),
        ('{"space": "mobile", "blocks": [], "width_mult": "nan"}', "'width_mult' must be a number"),
        ('{"space": "mobile", "blocks": [], "width_mult": Infinity}', "width multiplier must lie in"),
        ('{"space": "mobile", "blocks": [], "width_mult": true}', "'width_mult' must be a number"),
        ('{"space": "mobile", "blocks": "k3e3"}', "'blocks' must be a list of op names"),
    ],
)
def test_malformed_genotype_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HwnasError, match=message):
        load_genotype(str(path))


@pytest.mark.parametrize("auxiliary", [0.0, 0.4])
def test_derived_network_shapes_drop_path_and_aux(auxiliary):
    cfg = TrainConfig(init_channels=4, layers=6, auxiliary_weight=auxiliary)
    net = get_space("darts").build_network(DARTS_V2, cfg, 1, 10)
    assert isinstance(net, DartsNetwork)
    net.drop_path_prob = 0.3
    out = net(torch.randn(3, 1, 16, 16))
    if auxiliary:
        logits, aux = out
        assert aux.shape == (3, 10)
    else:
        logits = out
    assert logits.shape == (3, 10)
    net.eval()
    assert net(torch.randn(3, 1, 16, 16)).shape == (3, 10)


def test_edge_op_configs_follow_the_supernet():
    space, cfg = get_space("darts"), SearchConfig(init_channels=4, layers=3)
    configs = space.edge_op_configs(cfg, 32)
    net = space.build_supernet(cfg, 3, 10)
    assert len(configs) == len(net.edges())
    shapes = []
    hooks = [e.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
             for e in net.edges()]  # fmt: skip
    net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    for (inp, out), edge_configs in zip(shapes, configs):
        for c in edge_configs:
            assert c.input_shape == (inp[2], inp[3], inp[1]) and c.output_shape == (out[2], out[3], out[1])
