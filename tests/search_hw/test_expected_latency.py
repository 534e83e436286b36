"""E[LAT] (ProxylessNAS Eq. 4) against the table's network estimate and finite differences; repair; the loss
forms."""

import dataclasses

import pytest
import torch

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import mobile_network_op_configs
from hwnas.latency.expected import LatencyModel
from hwnas.latency.loss import LatencyObjective
from hwnas.latency.table import LatencyTable, NetworkCorrection
from hwnas.latency.targets import resolve_target
from hwnas.spaces import get_space, load_genotype
from hwnas.spaces.darts import DartsGenotype, edge_inputs
from tests.conftest import ROOT
from tests.latency.helpers import make_table
from tests.search_hw.conftest import SIZE, WIDTH, mobile_config


def _mobile(table, dtype=torch.float64):
    space, cfg = get_space("mobile"), mobile_config()
    net = space.build_supernet(cfg, 3, 4).to(dtype)
    return space, cfg, net, LatencyModel(space, cfg, table, net)


def _corrected(table, a=1.25, b_ms=0.8):
    """`table` with a non-identity per-network correction."""
    corrected = dataclasses.replace(
        table.metadata, network_correction=NetworkCorrection(a, b_ms, 50, "2026-01-01", 0.1)
    )
    return type(table)(corrected, table.entries, table.path)


@pytest.mark.parametrize("corrected", [False, True])
def test_expected_latency_equals_the_table_s_network_estimate_for_one_hot_alpha(synthetic_table, corrected):
    table = _corrected(synthetic_table) if corrected else synthetic_table
    _space, _cfg, net, model = _mobile(table)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        genotype = net.sample(generator)
        with torch.no_grad():
            net.alpha.fill_(-60.0)
            for row, (_g, _r, k) in enumerate(net.decisions(genotype)):
                net.alpha[row, k] = 60.0
        table_sum = table.sum_ms(mobile_network_op_configs(genotype.blocks, SIZE, WIDTH))
        estimate = 1.25 * table_sum + 0.8 if corrected else table_sum
        assert table.network_ms(table_sum) == pytest.approx(estimate)
        assert float(model.expected_ms(net).detach()) == pytest.approx(estimate, rel=1e-9)
        assert model.architecture_ms(net, genotype) == pytest.approx(estimate, rel=1e-9)
        assert net.derive() == genotype


def test_a_correction_is_linear_in_e_lat_and_scales_its_gradient(synthetic_table):
    _space, _cfg, net, plain = _mobile(synthetic_table)
    corrected = LatencyModel(get_space("mobile"), mobile_config(), _corrected(synthetic_table), net)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(3))
    assert float(corrected.expected_ms(net).detach()) == pytest.approx(
        1.25 * float(plain.expected_ms(net).detach()) + 0.8
    )
    (grad,) = torch.autograd.grad(corrected.expected_ms(net), net.alpha)
    (plain_grad,) = torch.autograd.grad(plain.expected_ms(net), net.alpha)
    assert torch.allclose(grad, 1.25 * plain_grad)
    assert corrected.min_ms(net) == pytest.approx(1.25 * plain.min_ms(net) + 0.8)
    assert corrected.max_ms(net) == pytest.approx(1.25 * plain.max_ms(net) + 0.8)
    budget = corrected.min_ms(net) + 0.5 * (corrected.max_ms(net) - corrected.min_ms(net))
    genotype, changes = corrected.repair(net, net.derive(), budget)
    assert 0.9 * budget <= corrected.architecture_ms(net, genotype) <= budget
    before = corrected.architecture_ms(net, net.derive())
    assert before + sum(c["delta_ms"] for c in changes) == pytest.approx(corrected.architecture_ms(net, genotype))


def _check_gradient(model, net, alpha, cells):
    """∂E[LAT]/∂α at `cells` against central finite differences; returns the autograd gradient."""
    (grad,) = torch.autograd.grad(model.expected_ms(net), alpha)
    eps = 1e-6
    for row, col in cells:
        with torch.no_grad():
            alpha[row, col] += eps
            plus = float(model.expected_ms(net).detach())
            alpha[row, col] -= 2 * eps
            minus = float(model.expected_ms(net).detach())
            alpha[row, col] += eps
        assert float(grad[row, col]) == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-9)
    return grad


@pytest.mark.parametrize("corrected", [False, True])
def test_expected_latency_gradient_by_finite_differences(synthetic_table, corrected):
    _space, _cfg, net, model = _mobile(_corrected(synthetic_table) if corrected else synthetic_table)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(1))
    grad = _check_gradient(model, net, net.alpha, [(0, 0), (1, 6), (5, 3), (20, 2)])
    assert grad[0, 6] == 0  # `zero` is not a candidate of a stage's first block


def _darts(cfg, size=16, **supernet_options):
    space = get_space("darts")
    net = space.build_supernet(cfg, 3, 10, **supernet_options).double()
    configs = [c for edge in space.edge_op_configs(cfg, size) for c in edge] + space.fixed_op_configs(cfg, size)
    table = make_table(configs, target="synthetic", space="darts", input_size=size)
    return space, net, table, LatencyModel(space, cfg, table, net)


def _one_hot(net, genotype, steps: int) -> None:
    """α one-hot on `genotype`'s edges and ops, `none` on every other edge."""
    rows = {edge: r for r, edge in enumerate(edge_inputs(steps))}
    with torch.no_grad():
        for alpha, edges in ((net.alpha_normal, genotype.normal), (net.alpha_reduce, genotype.reduce)):
            alpha.fill_(-60.0)
            alpha[:, 0] = 60.0
            for k, (op, src) in enumerate(edges):
                alpha[rows[(2 + k // 2, src)]] = -60.0
                alpha[rows[(2 + k // 2, src)], net.primitives.index(op)] = 60.0


def test_darts_cell_expected_latency_gradient_by_finite_differences():
    _space, net, _table, model = _darts(SearchConfig(init_channels=4, layers=3))
    with torch.no_grad():
        net.alpha_normal.normal_(generator=torch.Generator().manual_seed(4))
        net.alpha_reduce.normal_(generator=torch.Generator().manual_seed(5))
    for alpha in (net.alpha_normal, net.alpha_reduce):
        grad = _check_gradient(model, net, alpha, [(0, 0), (3, 4), (8, 7), (13, 2)])
        assert grad.abs().sum() > 0


def test_missing_keys_are_predicted(synthetic_table):
    """A table lacking some of the space's configurations: the predictor fills them in, and the model names them;
    lacking its one stem convolution, there is no dense convolution to learn that cost from: a clear error."""

    def without(dropped):
        kept = {k: e for k, e in synthetic_table.entries.items() if k not in dropped}
        return type(synthetic_table)(synthetic_table.metadata, kept, synthetic_table.path.with_name("partial.json"))

    dropped = sorted(k for k in synthetic_table.entries if k.startswith("expanded_conv"))[::9]
    model = _mobile(without(dropped))[3]
    assert model.predicted_keys == dropped
    assert torch.isfinite(model.edge_ms).all() and (model.edge_ms >= 0).all()
    with pytest.raises(HwnasError, match=r"'Conv-input:32x32x3-output:16x16x16': .* no dense k×k convolution"):
        _mobile(without([k for k in synthetic_table.entries if k.startswith("Conv-")]))


@pytest.mark.parametrize("edge_normalization", [False, True])
def test_darts_cell_expected_latency_is_exact_for_one_hot_alpha(edge_normalization):
    """PC-DARTS's β scales the edges of a node unequally: E[LAT] was their β-weighted mean (times 2), not the sum
    of the two kept edges, and β had a latency gradient that could not change the derived cell."""
    cfg = SearchConfig(init_channels=4, layers=3)
    _space, net, _table, model = _darts(cfg, edge_normalization=edge_normalization)
    genotype = load_genotype("DARTS_V2")
    _one_hot(net, genotype, cfg.steps)
    if edge_normalization:
        with torch.no_grad():
            for beta in (net.beta_normal, net.beta_reduce):
                beta.normal_(generator=torch.Generator().manual_seed(1)).mul_(2)
    derived = net.derive()

    def per_node(edges):
        return [sorted(edges[k : k + 2]) for k in range(0, len(edges), 2)]

    assert per_node(derived.normal) == per_node(genotype.normal)
    assert per_node(derived.reduce) == per_node(genotype.reduce)
    expected = model.expected_ms(net)
    assert float(expected.detach()) == pytest.approx(model.architecture_ms(net, genotype), rel=1e-9)
    if edge_normalization:
        grads = torch.autograd.grad(expected, [net.beta_normal, net.beta_reduce])
        assert all(float(g.abs().max()) < 1e-9 for g in grads)


def test_darts_latency_prices_the_derived_network_s_stem():
    """The derived network's stem has NETWORK_STEM_MULTIPLIER x init channels whatever the supernet's: priced with
    the supernet's stem multiplier, architecture_ms differed from the table's sum over the network's layers."""
    cfg = SearchConfig(init_channels=4, layers=3, stem_multiplier=1)
    space, net, table, model = _darts(cfg)
    genotype = load_genotype("DARTS_V2")
    layers = space.network_op_configs(genotype, cfg, 16)
    assert model.architecture_ms(net, genotype) == pytest.approx(table.sum_ms(layers), rel=1e-9)


@pytest.mark.parametrize("slowest", [False, True])
def test_darts_extremes_are_architectures_the_space_derives(slowest):
    """The fastest (slowest) DARTS cells keep, per node, the two inputs whose cheapest (dearest) op is cheapest
    (dearest): min_ms and max_ms are those architectures' latencies, and every sampled architecture lies between."""
    cfg = SearchConfig(init_channels=4, layers=3)
    _space, net, _table, model = _darts(cfg)
    pick = max if slowest else min
    cells = {}
    for group, cost in model.group_ms.items():
        edges, offset = [], 0
        for i in range(cfg.steps):
            best = {j: pick(net.allowed(group, offset + j), key=lambda k, r=offset + j: float(cost[r, k]))
                    for j in range(2 + i)}  # fmt: skip
            kept = sorted(best, key=lambda j: float(cost[offset + j, best[j]]), reverse=slowest)[:2]
            edges += [(net.primitives[best[j]], j) for j in sorted(kept)]
            offset += 2 + i
        cells[group] = tuple(edges)
    concat = tuple(range(2, 2 + cfg.steps))
    extreme = DartsGenotype(cells["normal"], concat, cells["reduce"], concat)
    expected = model.max_ms(net) if slowest else model.min_ms(net)
    assert model.architecture_ms(net, extreme) == pytest.approx(expected, rel=1e-12)
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        assert model.min_ms(net) <= model.architecture_ms(net, net.sample(generator)) <= model.max_ms(net)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_darts_latency_prices_the_network_to_deploy(stem):
    """A 3-cell, 4-channel supernet's latency term, shaped by `latency_*` as the 7-cell, 6-channel network
    `hwnas train` will build: the derived architecture's latency is that network's layers summed by the table."""
    size = 32
    search = SearchConfig(init_channels=4, layers=3, latency_init_channels=6, latency_layers=7, latency_stem=stem)
    deployed = search.latency_network()
    assert (deployed.init_channels, deployed.layers, deployed.stem) == (6, 7, stem)
    space = get_space("darts")
    net = space.build_supernet(search, 3, 10).double()
    configs = [c for edge in space.edge_op_configs(deployed, size) for c in edge]
    table = make_table(configs + space.fixed_op_configs(deployed, size), space="darts", input_size=size)
    model = LatencyModel(space, deployed, table, net)
    genotype = load_genotype("DARTS_V2")
    _one_hot(net, genotype, search.steps)
    network_sum = table.sum_ms(space.network_op_configs(genotype, deployed, size))
    assert model.architecture_ms(net, genotype) == pytest.approx(network_sum, rel=1e-9)
    assert float(model.expected_ms(net).detach()) == pytest.approx(network_sum, rel=1e-9)
    with pytest.raises(ValueError, match="98 edge costs for 42 edges"):  # not the supernet's rows
        net.group_costs(model.edge_ms)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_repair_lands_in_the_budget_band(synthetic_table, fraction):
    _space, _cfg, net, model = _mobile(synthetic_table)
    budget = model.min_ms(net) + fraction * (model.max_ms(net) - model.min_ms(net))
    generator = torch.Generator().manual_seed(2)
    for _ in range(4):
        genotype, changes = model.repair(net, net.sample(generator), budget)
        genotype.validate()
        assert 0.9 * budget <= model.architecture_ms(net, genotype) <= budget
        for change in changes:
            assert change["delta_ms"] != 0


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.97])
def test_darts_repair_moves_inputs_to_reach_any_budget_in_range(fraction):
    """On a measured table (ONNX Runtime, this project's Xeon VM), a DARTS cell's cheapest ops depend on which
    inputs a node keeps (stride-2 edges of reduction cells cost more): near the fastest architecture, changing ops
    alone left 3 of 6 derived architectures over budget; the repair may also move a node's input."""
    table = LatencyTable.load(ROOT / "latency_tables" / "onnxruntime_darts_32_xeon_m167.json")
    cfg = SearchConfig(init_channels=16, layers=8)
    net = get_space("darts").build_supernet(SearchConfig(init_channels=4, layers=3), 3, 10)
    model = LatencyModel(get_space("darts"), cfg, table, net)
    budget = model.min_ms(net) + fraction * (model.max_ms(net) - model.min_ms(net))
    moved = 0
    for seed in range(6):
        with torch.no_grad():
            net.alpha_normal.normal_(generator=torch.Generator().manual_seed(seed))
            net.alpha_reduce.normal_(generator=torch.Generator().manual_seed(seed + 100))
        genotype, changes = model.repair(net, net.derive(), budget)
        genotype.validate()
        for edges in (genotype.normal, genotype.reduce):  # each node still reads two distinct inputs
            assert all(edges[k][1] != edges[k + 1][1] for k in range(0, len(edges), 2))
        assert 0.9 * budget <= model.architecture_ms(net, genotype) <= budget
        moved += sum("to_row" in change for change in changes)
    assert moved > 0 or fraction > 0.02


def test_a_budget_above_the_slowest_architecture_repairs_nothing(synthetic_table):
    """`--latency 80s` meant as 80 ms: the budget binds nothing, and the repair must not push the architecture
    up towards the slowest one to reach 0.9 T."""
    _space, _cfg, net, model = _mobile(synthetic_table)
    genotype = net.sample(torch.Generator().manual_seed(6))
    assert model.repair(net, genotype, 1000 * model.max_ms(net)) == (genotype, [])
    assert model.repair(net, genotype, model.max_ms(net))[1]  # at the slowest: still lifted into the band


def test_loss_forms(synthetic_table):
    _space, _cfg, net, model = _mobile(synthetic_table)
    budget = float(model.expected_ms(net).detach())
    ce = torch.tensor(2.0, dtype=torch.float64)
    additive = LatencyObjective(model, budget, "additive", lam=0.5)
    assert float(additive(ce, net).detach()) == pytest.approx(2.5)
    multiplicative = LatencyObjective(model, budget / 2, "multiplicative", beta=0.6)
    assert float(multiplicative(ce, net).detach()) == pytest.approx(2.0 * 2**0.6)
    target = LatencyObjective(model, 0.5 * model.min_ms(net) + 0.5 * budget, "target", lam=0.0)
    target(ce, net)
    assert target.lam > 0  # the argmax architecture is too slow: λ grows
    loose = LatencyObjective(model, 10 * model.max_ms(net), "target", lam=0.0)
    loose(ce, net)
    assert loose.lam < 0  # far too fast for the budget: λ turns negative and rewards latency


@pytest.mark.parametrize("mode", ["additive", "target", "multiplicative"])
def test_loss_gradient_reaches_alpha_through_e_lat(synthetic_table, mode):
    """∂loss/∂α: ∂CE/∂α + (λ/T)·∂E[LAT]/∂α (additive, target), r^β·∂CE/∂α + CE·β·r^(β-1)/T·∂E[LAT]/∂α with
    r = E[LAT]/T (multiplicative): E[LAT] is not a constant of the architecture step."""
    _space, _cfg, net, model = _mobile(synthetic_table)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(4))
    budget, lam, beta = 0.8 * float(model.expected_ms(net).detach()), 0.7, 0.6
    objective = LatencyObjective(model, budget, mode, lam=lam, beta=beta)

    def ce():  # any task loss that depends on α
        return (net.alpha.sin() ** 2).sum()

    (grad_loss,) = torch.autograd.grad(objective(ce(), net), net.alpha)
    (grad_ce,) = torch.autograd.grad(ce(), net.alpha)
    expected = model.expected_ms(net)
    (grad_e,) = torch.autograd.grad(expected, net.alpha)
    assert grad_e.abs().max() > 0
    ratio, task = float(expected.detach()) / budget, float(ce().detach())
    if mode == "multiplicative":
        analytic = ratio**beta * grad_ce + task * beta * ratio ** (beta - 1) / budget * grad_e
    else:
        analytic = grad_ce + lam / budget * grad_e
    torch.testing.assert_close(grad_loss, analytic)


def test_alpha_steps_on_the_latency_loss_alone_make_the_network_faster(synthetic_table):
    """Gradient steps on λ·E[LAT]/T lower E[LAT] and the argmax architecture's latency (before any repair)."""
    _space, _cfg, net, model = _mobile(synthetic_table)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(5))
    start_expected = float(model.expected_ms(net).detach())
    start_argmax = model.architecture_ms(net, net.derive())
    objective = LatencyObjective(model, start_expected, "additive", lam=1.0)
    optimizer = torch.optim.Adam([net.alpha], lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        objective(torch.zeros((), dtype=torch.float64), net).backward()
        optimizer.step()
    assert float(model.expected_ms(net).detach()) < 0.8 * start_expected
    assert model.architecture_ms(net, net.derive()) < start_argmax


def test_shipped_pixel1_table_range():
    """The ProxylessNAS Pixel 1 table spans about 30 ms (all optional blocks skipped) to about 191 ms."""
    table = resolve_target("mobile", "mobile", 224)
    space, cfg = get_space("mobile"), SearchConfig(space="mobile")
    net = space.build_supernet(cfg, 3, 10)
    model = LatencyModel(space, cfg, table, net)
    assert model.min_ms(net) == pytest.approx(30, abs=3)
    assert model.max_ms(net) == pytest.approx(191, abs=3)
    assert not model.predicted_keys


def test_repair_reports_net_changes(synthetic_table):
    """The greedy steps may pass through an intermediate choice (k7_e3 -> k5_e6 -> k7_e6): the changes logged and
    kept in summary.json are the net ones, one per block that changed, adding up to the latency moved (they were
    the steps: on some budgets of this sweep, more entries than blocks changed)."""
    _space, _cfg, net, model = _mobile(synthetic_table)
    low, high = model.min_ms(net), model.max_ms(net)
    for seed in range(6):
        with torch.no_grad():
            net.alpha.normal_(generator=torch.Generator().manual_seed(seed)).mul_(2)
        derived = net.derive()
        for i in range(41):
            genotype, changes = model.repair(net, derived, low + (high - low) * i / 40)
            changed = [a != b for a, b in zip(net.decisions(derived), net.decisions(genotype))]
            assert len(changes) == sum(changed) and all(c["from"] != c["to"] for c in changes)
            moved = model.architecture_ms(net, genotype) - model.architecture_ms(net, derived)
            assert sum(c["delta_ms"] for c in changes) == pytest.approx(moved, abs=1e-9)
