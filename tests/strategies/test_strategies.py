import json

import pytest
import torch
import torch.nn.functional as F

from hwnas.config import grad_clip_for
from hwnas.errors import HwnasError
from hwnas.memory import saved_tensor_bytes
from hwnas.spaces import get_space
from hwnas.strategies import STRATEGIES
from tests.conftest import tiny_search_config


def _prepared(strategy_name, dtype=torch.float32, **changes):
    cfg = tiny_search_config(strategy=strategy_name, **changes)
    torch.manual_seed(0)
    strategy = STRATEGIES.get(strategy_name)(cfg)
    net = get_space("darts").build_supernet(cfg, 3, 4, **strategy.supernet_options()).to(dtype)
    strategy.prepare(net)
    return strategy, net


def _batch(n=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("name", ["darts", "pcdarts", "gdas", "proxyless"])
def test_each_strategy_moves_alpha_and_derives(name):
    strategy, net = _prepared(name)
    before = [a.detach().clone() for a in net.arch_parameters()]
    for i in range(3):
        metrics = strategy.step(_batch(seed=i), _batch(seed=10 + i))
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(metrics)
    assert all(not torch.equal(b, a) for b, a in zip(before, net.arch_parameters()))  # α (and β) of every cell
    assert all(torch.isfinite(a).all() for a in net.arch_parameters())
    genotype = strategy.derive()
    genotype.validate()


def _saved_bytes(strategy, batch) -> int:
    """Bytes a forward of the strategy's supernet on `batch` keeps for backward (parameters aside)."""
    return saved_tensor_bytes(lambda: strategy.task_loss(batch)[0], exclude=list(strategy.supernet.parameters()))


@pytest.mark.parametrize("name", ["darts", "pcdarts"])
def test_arch_step_computes_the_alpha_gradient_alone(name):
    """The α step's gradient is a full backward's, with no weight gradient (it would be discarded) and fewer bytes
    kept for backward (no layer inputs for weight gradients)."""
    strategy, net = _prepared(name)
    val = _batch(seed=1)
    strategy.arch_objective(strategy.task_loss(val)[0]).backward()
    expected = [a.grad.clone() for a in net.arch_parameters()]
    full = _saved_bytes(strategy, val)
    with net.weights_fixed():
        assert _saved_bytes(strategy, val) < full
    net.zero_grad(set_to_none=True)
    strategy.arch_step(_batch(), val)
    for grad, alpha in zip(expected, net.arch_parameters()):
        torch.testing.assert_close(alpha.grad, grad)
    assert all(w.grad is None and w.requires_grad for w in net.weights())


@pytest.mark.parametrize("name", ["darts", "pcdarts"])
def test_weight_step_computes_the_weight_gradients_alone(name):
    """The weight step's gradients are a full backward's, with no α gradient and fewer bytes kept for backward
    (the weighted sums keep no candidate outputs for ∂L/∂α)."""
    strategy, net = _prepared(name, grad_clip=0.0)  # unclipped, as the reference
    batch = _batch()
    F.cross_entropy(net(batch[0]), batch[1]).backward()
    expected = [w.grad.clone() for w in net.weights()]
    full = _saved_bytes(strategy, batch)
    with net.architecture_fixed():
        assert _saved_bytes(strategy, batch) < full
    net.zero_grad(set_to_none=True)
    strategy.w_opt = torch.optim.SGD(net.weights(), lr=0.0)  # leaves the weights as they are
    strategy.weight_step(batch)
    for grad, weight in zip(expected, net.weights()):
        torch.testing.assert_close(weight.grad, grad)
    assert all(a.grad is None and a.requires_grad for a in net.arch_parameters())


def test_second_order_gradient_matches_exact_hessian_vector_product():
    """DARTS Eq. 7 by finite differences (Eq. 8) against autograd through the unrolled step, in float64."""
    strategy, net = _prepared(
        "darts",
        dtype=torch.float64,
        unrolled=True,
        init_channels=2,
        layers=1,
        steps=2,
        multiplier=2,
        primitives=("none", "skip_connect", "avg_pool_3x3", "dil_conv_3x3"),
    )
    net.eval()  # BatchNorm on running statistics: the train forward must not differ between the evaluations
    train, val = _batch(dtype=torch.float64), _batch(dtype=torch.float64, seed=1)
    approx, _ = strategy.unrolled_arch_gradient(train, val)

    names, weights = zip(*net.named_weights())
    alphas = net.arch_parameters()
    xi = strategy.w_opt.param_groups[0]["lr"]
    wd = strategy.cfg.w_weight_decay
    g_train = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), weights, create_graph=True,
                                  allow_unused=True)  # fmt: skip
    w_prime = {n: w - xi * ((g if g is not None else 0) + wd * w) for n, w, g in zip(names, weights, g_train)}
    val_loss = F.cross_entropy(torch.func.functional_call(net, w_prime, (val[0],)), val[1])
    exact = [torch.zeros_like(a) if g is None else g
             for a, g in zip(alphas, torch.autograd.grad(val_loss, alphas, allow_unused=True))]  # fmt: skip
    assert exact[0].abs().sum() > 0
    for a, e in zip(approx, exact):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-8), (a - e).abs().max()
    (first_order,) = torch.autograd.grad(
        F.cross_entropy(torch.func.functional_call(net, {n: w.detach() for n, w in w_prime.items()}, (val[0],)),
                        val[1]), alphas[0])  # fmt: skip
    assert not torch.allclose(first_order, exact[0], rtol=1e-4, atol=1e-8)  # the second-order term matters


def test_proxyless_arch_step_keeps_unsampled_probabilities():
    strategy, net = _prepared("proxyless", a_weight_decay=0.0)
    strategy.generator.manual_seed(3)
    with torch.no_grad():
        net.alpha_normal.normal_()
    before = torch.softmax(net.alpha_normal.detach(), -1)
    strategy.a_opt = torch.optim.SGD(net.arch_parameters(), lr=0.5)  # no momentum: only sampled rows move
    strategy.arch_step(_batch(), _batch(seed=1))
    after = torch.softmax(net.alpha_normal.detach(), -1)
    pairs = net.last_paths["normal"].active
    for e, pair in enumerate(pairs):
        others = [k for k in range(after.shape[1]) if k not in pair]
        assert torch.allclose(after[e, others], before[e, others], atol=1e-6)
        assert torch.allclose(after[e, pair].sum(), before[e, pair].sum(), atol=1e-6)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("primitives", [("zero", "mbconv_k3_e3"), ("mbconv_k3_e3",)])
def test_proxyless_samples_no_masked_path_and_one_where_one_is_left(primitives):
    """A block with one allowed candidate (zero is masked on a stage's first block; or a one-op space) runs it
    behind gate 1 in the α step, and keeps its α; the others sample two distinct allowed paths."""
    cfg = tiny_search_config(space="mobile", strategy="proxyless", primitives=primitives, a_weight_decay=0.0)
    torch.manual_seed(0)
    strategy = STRATEGIES.get("proxyless")(cfg)
    net = get_space("mobile").build_supernet(cfg, 3, 4)
    strategy.prepare(net)
    before = net.alpha.detach().clone()
    strategy.step(_batch(), _batch(seed=1))
    strategy.arch_step(_batch(), _batch(seed=1))
    allowed = [net.allowed("blocks", row) for row in range(len(net.blocks))]
    assert [len(p) for p in net.last_paths["blocks"].active] == [min(2, len(a)) for a in allowed]
    for row, (paths, ok) in enumerate(zip(net.last_paths["blocks"].active, allowed)):
        assert set(paths) <= set(ok)
        if len(ok) == 1:
            assert net.alpha[row, ok[0]] == before[row, ok[0]]
    strategy.weight_step(_batch())
    assert all(p in a for (p,), a in zip(net.last_paths["blocks"].active, allowed))


def test_proxyless_weight_step_runs_one_path_per_edge():
    strategy, net = _prepared("proxyless")
    strategy.weight_step(_batch())
    for paths in net.last_paths.values():
        assert all(len(active) == 1 for active in paths.active)


def test_gdas_samples_follow_the_gumbel_softmax():
    """Sampled ops are distributed as softmax(α) (the Gumbel-max trick), whatever the temperature."""
    from hwnas.supernet.mixed import GumbelHard

    alpha = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    mixing = GumbelHard(tau=5.0, generator=torch.Generator().manual_seed(0))
    counts = torch.zeros(4)
    for _ in range(4000):
        paths = mixing.path_weights(alpha, [frozenset()])
        counts[paths.active[0][0]] += 1
        assert torch.isfinite(paths.weights).all() and paths.weights[0, paths.active[0][0]] == 1.0
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)


def test_gdas_temperature_anneals_linearly():
    strategy, _ = _prepared("gdas", epochs=5, tau_max=10.0, tau_min=0.1)
    taus = []
    for epoch in range(5):
        strategy.start_epoch(epoch)
        taus.append(strategy.gumbel.tau)
    assert taus[0] == 10.0 and abs(taus[-1] - 0.1) < 1e-9
    assert all(a > b for a, b in zip(taus, taus[1:]))


def test_pcdarts_uses_partial_channels_and_edge_normalisation():
    strategy, net = _prepared("pcdarts", init_channels=8, pc_k=4)
    assert net.edge_normalization and len(net.arch_parameters()) == 4
    assert all(e.partial_channels == 4 for e in net.edges())
    strategy.step(_batch(), _batch(seed=1))
    assert net.beta_normal.grad is not None and net.beta_normal.grad.abs().sum() > 0


def _weight_grad_norm(space: str, grad_clip: float | None) -> float:
    changes = {"width_mult": 0.35} if space == "mobile" else {}
    cfg = tiny_search_config(space=space, strategy="darts", grad_clip=grad_clip, w_lr=0.0, **changes)
    torch.manual_seed(0)
    strategy = STRATEGIES.get("darts")(cfg)
    net = get_space(space).build_supernet(cfg, 3, 4)
    strategy.prepare(net)
    strategy.weight_step(_batch(16))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.weights() if p.grad is not None])))


@pytest.mark.parametrize("space", ["darts", "mobile"])
def test_weight_step_clips_gradients_by_the_flag(space):
    raw = _weight_grad_norm(space, 0.0)  # 0: off
    assert _weight_grad_norm(space, raw / 2) == pytest.approx(raw / 2, rel=1e-4)
    assert _weight_grad_norm(space, 2 * raw) == pytest.approx(raw, rel=1e-6)


def test_grad_clip_defaults_per_space():
    """5 on DARTS (its reference code), off on the mobile space (ProxylessNAS trains unclipped)."""
    assert grad_clip_for("darts", None) == 5.0 and grad_clip_for("mobile", None) is None
    assert grad_clip_for("mobile", 2.5) == 2.5 and grad_clip_for("darts", 0.0) is None
    assert tiny_search_config(space="mobile").weight_grad_clip is None
    with pytest.raises(HwnasError, match="grad clip must be >= 0"):
        tiny_search_config(grad_clip=-1.0).validate()


def test_random_search_keeps_the_candidate_best_on_the_val_split():
    """Each candidate trains on the same batches and is scored on the val batches; the one with the most correct
    val predictions in the epoch wins (ties: the first drawn), and the epoch's val accuracy is its own, not the mean
    of each batch's best candidate (which no one architecture reached)."""
    strategy, _net = _prepared("random", random_samples=3)
    strategy.start_epoch(0)
    assert len({json.dumps(g.to_json()) for g in strategy.candidates}) == 3
    val = _batch(seed=20)
    assert "val_acc" not in strategy.step(_batch(seed=0), val)
    for model, correct in zip(strategy.models, strategy.val_correct):  # counted after the candidate's step
        model.eval()
        with torch.no_grad():
            assert correct == int((model(val[0]).argmax(1) == val[1]).sum())
    strategy.val_correct, strategy.val_seen = [2, 5, 5], 6
    strategy.end_epoch(0)
    assert strategy.derive() == strategy.candidates[1]
    metrics = strategy.epoch_metrics()
    assert metrics["val_acc"] == metrics["best_candidate_val_acc"] == pytest.approx(5 / 6)
