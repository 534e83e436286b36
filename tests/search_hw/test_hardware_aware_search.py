"""Searching the mobile space to a latency budget: strategies, memory of one path, the target mode, the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.memory import saved_tensor_bytes
from hwnas.run import RunDir
from hwnas.search import deployed_size, run_search
from hwnas.spaces import get_space, load_genotype
from hwnas.strategies import STRATEGIES
from tests.search_hw.conftest import SIZE, WIDTH, mobile_config


def test_mobile_space_structure():
    net = get_space("mobile").build_supernet(mobile_config(width_mult=1.0), 1, 10)
    assert len(net.blocks) == 21 and net.alpha.shape == (21, 7)
    firsts = [b.first for b in net.block_shapes]
    assert sum(firsts) == 6 and [b.c_out for b in net.block_shapes if b.first] == [24, 40, 80, 96, 192, 320]
    probs = net.probabilities()["blocks"]
    assert all((probs[i, 6] == 0) == first for i, first in enumerate(firsts))
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_pcdarts_on_the_mobile_space_runs_identity_blocks_on_a_channel_fraction():
    """PC-DARTS K=4: identity blocks' candidates see C/4 channels; stage-first blocks (width or stride change)
    all of them; the fused kernels give the same output and α gradient as the reference mixing. In float64 and
    at batch 4: the last stages are 1x1 at 32x32, and with batch 2 their BatchNorms normalise two values per
    channel, which amplified rounding 100x per block (α gradients of 3e6, fused and reference 1.4e-7 apart in
    float64 on an AMD EPYC; float32 rounding to ~5e-4)."""
    from hwnas.supernet.mixed import PartialChannel

    nets = []
    for fused in (False, True):
        torch.manual_seed(0)
        net = get_space("mobile").build_supernet(mobile_config(width_mult=1.0), 3, 10, partial_channels=4)
        net.set_mixing(PartialChannel(fused=fused))
        nets.append(net.double())
    net = nets[0]
    for block, shape in zip(net.blocks, net.block_shapes):
        first_conv = next(m for m in block.mixed.ops[0].modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == (shape.c_in // 4 if shape.identity else shape.c_in)
        assert block.mixed.partial_channels == (4 if shape.identity else 1)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 7, 1, 0])
    outputs = [n(x) for n in nets]
    grads = [torch.autograd.grad(F.cross_entropy(out, y), n.alpha)[0] for out, n in zip(outputs, nets)]
    assert outputs[0].shape == (4, 10)
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-9)
    with pytest.raises(HwnasError, match="not divisible by pc-k 5"):
        get_space("mobile").build_supernet(mobile_config(width_mult=1.0), 3, 10, partial_channels=5)


@pytest.mark.parametrize("strategy", ["proxyless", "gdas", "darts", "pcdarts"])
def test_strategies_move_alpha_and_derive_valid_mobile_architectures(strategy):
    cfg = mobile_config(strategy=strategy)
    torch.manual_seed(0)
    s = STRATEGIES.get(strategy)(cfg)
    net = get_space("mobile").build_supernet(cfg, 3, 4, **s.supernet_options())
    s.prepare(net)
    before = net.alpha.detach().clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
        s.step(batch, batch)
    assert not torch.equal(before, net.alpha.detach()) and torch.isfinite(net.alpha).all()
    s.derive().validate()


def test_proxyless_rescale_keeps_unsampled_probabilities_on_the_mobile_space():
    """An α step moves only the two sampled paths of each block and keeps their total probability (ProxylessNAS
    Sec. 3.2.1), with the strategy's own optimiser, step after step: on the mobile supernet, whose α group is a
    masked copy of its parameter."""
    cfg = mobile_config(strategy="proxyless")
    torch.manual_seed(0)
    s = STRATEGIES.get("proxyless")(cfg)
    net = get_space("mobile").build_supernet(cfg, 3, 4)
    s.prepare(net)
    with torch.no_grad():
        net.alpha.normal_()
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        s.generator.manual_seed(step)
        batch = (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
        before = net.probabilities()["blocks"].detach()
        s.arch_step(batch, batch)
        after = net.probabilities()["blocks"].detach()
        for row, pair in enumerate(net.last_paths["blocks"].active):
            others = [k for k in range(after.shape[1]) if k not in pair]
            torch.testing.assert_close(after[row, others], before[row, others], atol=1e-6, rtol=0)
            torch.testing.assert_close(after[row, pair].sum(), before[row, pair].sum(), atol=1e-6, rtol=0)
        assert not torch.allclose(after, before)


def test_proxyless_weight_step_saves_one_paths_memory():
    """ProxylessNAS's weight step keeps one path's activations: within 20% of the sampled network's."""
    cfg = mobile_config(strategy="proxyless", width_mult=1.0)
    s = STRATEGIES.get("proxyless")(cfg)
    space = get_space("mobile")
    net = space.build_supernet(cfg, 3, 10)
    s.prepare(net)
    s.generator.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    supernet_bytes = saved_tensor_bytes(lambda: F.cross_entropy(net(x), y), exclude=list(net.parameters()))
    sampled_rows = [("blocks", r, active[0]) for r, active in enumerate(net.last_paths["blocks"].active)]
    sampled = net.with_decisions(net.derive(), sampled_rows)
    network = space.build_network(sampled, cfg, 3, 10)
    network_bytes = saved_tensor_bytes(lambda: F.cross_entropy(network(x), y), exclude=list(network.parameters()))
    assert network_bytes <= supernet_bytes <= 1.2 * network_bytes


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_target_mode_lands_in_the_budget_band(tmp_path, synthetic_table, fraction):
    space = get_space("mobile")
    probe = space.build_supernet(mobile_config(), 3, 4)
    from hwnas.latency.expected import LatencyModel

    model = LatencyModel(space, mobile_config(), synthetic_table, probe)
    budget = model.min_ms(probe) + fraction * (model.max_ms(probe) - model.min_ms(probe))
    cfg = mobile_config(strategy="proxyless", target=str(synthetic_table.path), latency_ms=budget, epochs=2)
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False)
    summary = result.summary
    assert 0.9 * budget <= summary["predicted_latency_ms"] <= budget
    repaired = summary["argmax_latency_ms"] + sum(change["delta_ms"] for change in summary["repairs"])
    assert repaired == pytest.approx(summary["predicted_latency_ms"])  # the repairs made the difference
    assert summary["latency_budget_ms"] == budget and summary["table"]["sha256"]
    assert {"expected_latency_ms", "lambda", "argmax_latency_ms"} <= set(result.history[-1])
    assert result.history[-1]["lambda"] != cfg.latency_lambda  # the dual step moved λ (its sign: test_loss_forms)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["predicted_latency_ms"] == summary["predicted_latency_ms"]
    assert saved["derived_size"] == deployed_size(cfg, space, result.genotype)  # at the table's 32x32, 1000 classes
    assert saved["derived_size"]["input_size"] == 32 and saved["derived_size"]["num_classes"] == 1000
    assert (tmp_path / "run" / "architecture.png").is_file()


def test_deployed_size_of_proxylessnas_mobile():
    """In this space (the Pixel 1 table's: 24 channels in stage 1) ProxylessNAS-Mobile has 4,073,520 parameters and
    304.2M MACs at 224x224; the released model widens stage 1 to 32 channels (4.08M parameters)."""
    size = deployed_size(SearchConfig(space="mobile"), get_space("mobile"), load_genotype("PROXYLESS_MOBILE"))
    assert size == {"input_size": 224, "num_classes": 1000, "params": 4_073_520, "macs": 304_227_008}


def test_random_search_respects_the_budget(tmp_path, synthetic_table):
    space = get_space("mobile")
    probe = space.build_supernet(mobile_config(), 3, 4)
    from hwnas.latency.expected import LatencyModel

    model = LatencyModel(space, mobile_config(), synthetic_table, probe)
    budget = 0.5 * (model.min_ms(probe) + model.max_ms(probe))
    cfg = mobile_config(strategy="random", target=str(synthetic_table.path), latency_ms=budget, epochs=1,
                        random_samples=3)  # fmt: skip
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False, plots=False)
    assert result.summary["predicted_latency_ms"] <= budget
    assert "best_candidate_val_acc" in result.history[-1]


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_host_targets_time_the_derived_network(tmp_path, target, caplog):
    """A table measured by a host profiler, its protocol recorded as the profiler records it: the summary holds
    the derived network's measured latency (None, with a warning, where that profiler cannot run: `gpu` without
    CUDA)."""
    from dataclasses import replace

    from hwnas.latency.catalogue import mobile_op_configs
    from hwnas.latency.table import LatencyTable
    from hwnas.profilers import Protocol
    from tests.latency.helpers import make_table
    from tests.search_hw.conftest import SIZE, WIDTH

    synthetic = make_table(mobile_op_configs(SIZE, WIDTH), target=target, space="mobile", input_size=SIZE)
    clock = "cuda-events" if target == "gpu" else "thread"  # the clock each profiler's metadata records
    details = {"protocol": {**Protocol(warmup_runs=2, runs=5).to_json(), "clock": clock}, "rounds": 1}
    slow = {k: replace(e, median_ms=100 * e.median_ms) for k, e in synthetic.entries.items()}  # ~100x this CPU
    table = LatencyTable(replace(synthetic.metadata, details=details), slow)
    table.save(tmp_path / f"{target}_mobile_{SIZE}.json")
    _fastest, slowest = _budget_range(table)  # a budget the space can meet, far above what this CPU measures
    cfg = mobile_config(strategy="random", target=str(table.path), latency_ms=slowest, epochs=1, random_samples=1)
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False, plots=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    if target == "gpu" and not torch.cuda.is_available():
        assert saved["measured_latency_ms"] is None and "could not time the derived network" in caplog.text
    else:
        assert saved["measured_latency_ms"] > 0 and saved["measured_on"]
        assert saved["measured_latency_ms"] == result.summary["measured_latency_ms"]
        # the synthetic table is nothing like this machine: far from the budget, with the command that refits it
        assert f"--device {target} --space mobile --input-size {SIZE} --calibrate 50 --recalibrate" in caplog.text
        assert saved["measured_rederivations"] == []  # "test CPU" is not this machine: measured, not re-derived
        assert f"`hwnas profile --device {target} --space mobile --input-size {SIZE} --calibrate 60`" in caplog.text


@pytest.mark.parametrize(("scale", "repairs"), [(0.8, 2), (0.8, 0), (1.08, 2), (1.15, 2)])
def test_rederived_from_its_own_measurement(tmp_path, monkeypatch, scale, repairs):
    """A host table of this machine whose estimates are off: every network measures `scale` x its estimate.
    The kept network's table estimate stays in [0.9 T, T] whatever the measurement (at 1.08x its measurement is
    under T too; at 1.15x no network can be both). Beyond the ±10% tolerance (0.8x) the re-derivation takes the
    table band's top, the network measured nearest the tolerance. With no repairs allowed, it is measured only."""
    from dataclasses import replace

    import hwnas.search as search
    from hwnas.latency.catalogue import mobile_op_configs
    from hwnas.latency.table import LatencyTable
    from hwnas.profilers import get_profiler
    from tests.latency.helpers import make_table
    from tests.search_hw.conftest import SIZE, WIDTH

    with get_profiler("cpu") as profiler:
        here = profiler.device_name()
    synthetic = make_table(mobile_op_configs(SIZE, WIDTH), target="cpu", space="mobile", input_size=SIZE)
    table = LatencyTable(replace(synthetic.metadata, device=here), synthetic.entries)
    table.save(tmp_path / f"cpu_mobile_{SIZE}.json")
    seen, timed = {}, []

    def spy(cfg, space, supernet):
        seen["model"], seen["supernet"] = real_model(cfg, space, supernet), supernet
        return seen["model"]

    def this_machine(options, rounds, cfg, genotype, input_size):
        assert options["device"] == "cpu" and rounds == 1  # the synthetic table records no rounds
        timed.append(scale * seen["model"].architecture_ms(seen["supernet"], genotype))
        return timed[-1]

    real_model = search.latency_model
    monkeypatch.setattr(search, "latency_model", spy)
    monkeypatch.setattr(search, "_time_derived", this_machine)
    budget = 3.0  # the synthetic space spans 1.8-3.9 ms
    cfg = mobile_config(strategy="random", target=str(table.path), latency_ms=budget, epochs=1, random_samples=1,
                        measured_repairs=repairs)  # fmt: skip
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False, plots=False)
    summary = result.summary
    assert 0.9 * budget <= timed[0] / scale <= budget  # the search's own derivation is in the band by the table
    assert len(summary["measured_rederivations"]) == len(timed) - 1 <= repairs
    kept = seen["model"].architecture_ms(seen["supernet"], result.genotype)
    assert summary["predicted_latency_ms"] == kept and summary["measured_latency_ms"] == scale * kept
    measured = summary["measured_latency_ms"]
    if not repairs:
        assert measured == timed[0] and len(timed) == 1
    elif scale < 0.9:
        assert len(timed) == 2 and timed[0] < measured < 0.9 * budget
        assert (1 - search.AIM_MARGIN) * budget <= kept <= budget
        assert all(change["delta_ms"] > 0 for change in summary["measured_rederivations"][0]["changes"])
    else:
        assert 0.9 * budget <= kept <= budget and 0.9 * budget <= measured <= 1.1 * budget
        assert (measured <= budget) == (scale < 1.1)
    assert json.loads((tmp_path / "run" / "genotype.json").read_text()) == result.genotype.to_json()


def _budget_range(table) -> tuple[float, float]:
    from hwnas.latency.expected import LatencyModel

    space = get_space("mobile")
    probe = space.build_supernet(mobile_config(), 3, 4)
    model = LatencyModel(space, mobile_config(), table, probe)
    return model.min_ms(probe), model.max_ms(probe)


MOBILE_TINY = ["--dataset", "fake", "--image-size", "16", "--width-mult", str(WIDTH), "--batch-size", "16",
               "--epochs", "1", "--no-progress", "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("strategy", ["darts", "pcdarts"])
def test_cli_searches_to_a_budget(cli, tmp_path, synthetic_table, strategy):
    """`hwnas search --target TABLE --latency T` as a user runs it: the mobile space by default, the derived
    architecture in [0.9 T, T] by the table, the summary naming the table."""
    fastest, slowest = _budget_range(synthetic_table)
    budget = fastest + 0.5 * (slowest - fastest)
    run = tmp_path / "run"
    done = cli("search", "--target", str(synthetic_table.path), "--latency", f"{budget:.4f}ms", "--strategy", strategy,
               "--latency-input-size", str(SIZE), *MOBILE_TINY, "--run-dir", str(run))  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["latency_input_size"] == SIZE and summary["table"]["path"] == str(synthetic_table.path)
    assert 0.9 * summary["latency_budget_ms"] <= summary["predicted_latency_ms"] <= summary["latency_budget_ms"]
    assert json.loads((run / "genotype.json").read_text())["space"] == "mobile"
    assert "predicted_latency_ms" in done.stdout


def test_budget_above_the_slowest_warns_and_another_resolution_fails(cli, tmp_path, synthetic_table):
    """Above the slowest architecture the constraint is inactive: one warning, and no repair towards the slowest
    architecture; a table lacking entries: one warning naming them; both in the run's log too. A table at another
    resolution than the one asked for is one line and exit 2, nothing written."""
    from tests.cli.test_cli import _one_line_error

    _fastest, slowest = _budget_range(synthetic_table)
    dropped = sorted(k for k in synthetic_table.entries if k.startswith("expanded_conv"))[::9]
    partial = type(synthetic_table)(synthetic_table.metadata,
                                    {k: e for k, e in synthetic_table.entries.items() if k not in dropped})  # fmt: skip
    partial.save(tmp_path / "partial_mobile_32.json")
    done = cli("search", "--target", str(tmp_path / "partial_mobile_32.json"), "--latency", f"{10 * slowest}ms",
               "--latency-input-size", str(SIZE), *MOBILE_TINY, "--run-dir", str(tmp_path / "loose"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log_txt = (tmp_path / "loose" / "log.txt").read_text()
    for output in (done.stderr, log_txt):
        assert output.count("above the slowest architecture") == 1 and "the constraint is inactive" in output
        lacks = [line for line in output.splitlines() if f"lacks {len(dropped)} op configuration(s)" in line]
        assert len(lacks) == 1 and all(key in lacks[0] for key in dropped), output
    assert json.loads((tmp_path / "loose" / "summary.json").read_text())["repairs"] == []
    with pytest.raises(HwnasError, match="latency input size must be >= 1"):
        mobile_config(latency_input_size=0).validate()
    done = cli("search", "--target", str(synthetic_table.path), "--latency", "3ms", "--latency-input-size", "64",
               *MOBILE_TINY, "--run-dir", str(tmp_path / "run"))  # fmt: skip
    _one_line_error(done, str(synthetic_table.path), "measured at input size 32, not 64")
    assert not (tmp_path / "run").exists()


def test_darts_search_budgets_the_network_it_will_train(tmp_path):
    """--latency-init-channels / --latency-layers: the budget binds the derived cells in the 4-cell, 6-channel
    network trained afterwards, not in the 3-cell, 4-channel supernet that searched them."""
    from hwnas.config import DataConfig, SearchConfig
    from hwnas.latency.expected import LatencyModel
    from tests.latency.helpers import make_table

    cfg = SearchConfig(space="darts", init_channels=4, layers=3, epochs=1, batch_size=16, latency_init_channels=6,
                       latency_layers=4, data=DataConfig(dataset="fake", image_size=8))  # fmt: skip
    space, deployed = get_space("darts"), cfg.latency_network()
    configs = [c for edge in space.edge_op_configs(deployed, 8) for c in edge] + space.fixed_op_configs(deployed, 8)
    table = make_table(configs, target="synthetic", space="darts", input_size=8)
    table.save(tmp_path / "synthetic_darts_8.json")
    probe = space.build_supernet(cfg, 3, 10)
    model = LatencyModel(space, deployed, table, probe)
    budget = model.min_ms(probe) + 0.5 * (model.max_ms(probe) - model.min_ms(probe))
    cfg = cfg.replace(target=str(table.path), latency_ms=budget)
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False, plots=False)
    deployed_ms = table.sum_ms(space.network_op_configs(result.genotype, deployed, 8))
    assert 0.9 * budget <= result.summary["predicted_latency_ms"] <= budget
    assert result.summary["predicted_latency_ms"] == pytest.approx(deployed_ms)
    assert result.summary["latency_network"] == {"init_channels": 6, "layers": 4, "stem": "cifar"}


@pytest.mark.parametrize("strategy", ["darts", "pcdarts"])
def test_darts_space_searches_to_a_budget(tmp_path, strategy):
    """DARTS and PC-DARTS cells are hardware-aware too: E[LAT] over each node's kept edges, derivation in band."""
    from hwnas.config import DataConfig, SearchConfig
    from hwnas.latency.expected import LatencyModel
    from tests.latency.helpers import make_table

    cfg = SearchConfig(space="darts", strategy=strategy, init_channels=8, layers=3, epochs=1, batch_size=16,
                       data=DataConfig(dataset="fake", image_size=8))  # fmt: skip
    space = get_space("darts")
    configs = [c for edge in space.edge_op_configs(cfg, 8) for c in edge if c] + space.fixed_op_configs(cfg, 8)
    table = make_table(configs, target="synthetic", space="darts", input_size=8)
    table.save(tmp_path / "synthetic_darts_8.json")
    probe = space.build_supernet(cfg, 3, 10, **STRATEGIES.get(strategy)(cfg).supernet_options())
    model = LatencyModel(space, cfg, table, probe)
    budget = model.min_ms(probe) + 0.5 * (model.max_ms(probe) - model.min_ms(probe))
    cfg = cfg.replace(target=str(table.path), latency_ms=budget)
    result = run_search(cfg, RunDir.create(tmp_path / "run", "search", cfg.to_json()), progress=False, plots=False)
    assert 0.9 * budget <= result.summary["predicted_latency_ms"] <= budget
    assert result.summary["predicted_latency_ms"] == pytest.approx(model.architecture_ms(probe, result.genotype))
    assert {"expected_latency_ms", "lambda", "argmax_latency_ms"} <= set(result.history[-1])
