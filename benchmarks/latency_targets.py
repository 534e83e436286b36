"""Hardware-aware search to a budget: does the derived architecture land in [0.9 T, T], and beat random search?

For each (target table, budget): search the mobile space on digits (short), derive, train the result briefly
(the proxy accuracy: the mean over --proxy-seeds training seeds), and do the same for random search under the
same budget with the same training. For host runtimes, the search also times the derived network end to end
(224x224, batch 1) on that runtime and re-derives from that measurement when it lands outside [0.9 T, T]
(`measured_repairs`, default 2). Then the per-step memory (bytes saved for backward, against the discrete network
of the path the step ran) and time of ProxylessNAS, GDAS and DARTS on the mobile space.

    python benchmarks/latency_targets.py [--targets mobile onnxruntime tflite] [--epochs 3] [--proxy-seeds 2]

Budgets: 60, 80, 100 ms on `mobile` (the Pixel 1 table); on host tables, 25/50/75% of the way from the space's
fastest to its slowest architecture. Prints a table; writes JSON and a PNG of the derived architectures, to
results/latency_targets.json for the default targets and results/latency_targets_<targets>.json for others.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwnas.config import DataConfig, SearchConfig, TrainConfig  # noqa: E402
from hwnas.latency.expected import LatencyModel  # noqa: E402
from hwnas.latency.targets import resolve_target  # noqa: E402
from hwnas.memory import saved_tensor_bytes  # noqa: E402
from hwnas.run import RunDir, write_json_atomic  # noqa: E402
from hwnas.search import run_search  # noqa: E402
from hwnas.spaces import get_space  # noqa: E402
from hwnas.strategies import STRATEGIES  # noqa: E402
from hwnas.train import run_train  # noqa: E402

log = logging.getLogger("latency_targets")


def budgets_for(target: str) -> list[float]:
    if target == "mobile":
        return [60.0, 80.0, 100.0]
    space, cfg = get_space("mobile"), SearchConfig(space="mobile")
    net = space.build_supernet(cfg, 3, 10)
    model = LatencyModel(space, cfg, resolve_target(target, "mobile", 224), net)
    lo, hi = model.min_ms(net), model.max_ms(net)
    return [round(lo + f * (hi - lo), 2) for f in (0.25, 0.5, 0.75)]


def proxy_accuracies(genotype_path: Path, workdir: Path, epochs: int, seeds: int) -> list[float]:
    """Test accuracy after `epochs` of training, once per training seed (a 3-epoch figure swings by ~0.05)."""
    accuracies = []
    for seed in range(seeds):
        cfg = TrainConfig(genotype=str(genotype_path), epochs=epochs, drop_path_prob=0.0, seed=seed)
        run = RunDir.create(workdir / f"seed{seed}", "train", cfg.to_json())
        accuracies.append(run_train(cfg, run, progress=False).test_acc)
    return accuracies


def search_and_train(target: str, budget: float, strategy: str, args, workdir: Path) -> dict:
    cfg = SearchConfig(space="mobile", strategy=strategy, target=target, latency_ms=budget, epochs=args.epochs,
                       batch_size=64, random_samples=args.random_samples, seed=args.seed,
                       data=DataConfig(dataset="digits", image_size=32))  # fmt: skip
    run = workdir / f"{target}-{budget:g}-{strategy}"
    t0 = time.perf_counter()
    result = run_search(cfg, RunDir.create(run, "search", cfg.to_json()), progress=False)
    search_s = time.perf_counter() - t0
    accuracies = proxy_accuracies(run / "genotype.json", workdir / f"{run.name}-train", args.train_epochs,
                                  args.proxy_seeds)  # fmt: skip
    measured = result.summary.get("measured_latency_ms")  # host tables: the search times the derived network
    table_ms = result.summary["predicted_latency_ms"]
    return {
        "strategy": strategy,
        "genotype": result.genotype.describe(),
        "blocks": list(result.genotype.blocks),
        "table_ms": table_ms,
        "table_over_target": table_ms / budget,
        "measured_ms": measured,
        "measured_over_target": None if measured is None else measured / budget,
        "proxy_acc": statistics.mean(accuracies),
        "proxy_accs": accuracies,
        "search_s": search_s,
        "repairs": len(result.summary["repairs"]),
        "measured_rederivations": result.summary.get("measured_rederivations", []),
    }


def path_network(net, space, cfg):
    """The discrete network of the path the supernet's last forward ran: the sampled path for single-path
    strategies (one active candidate per block), the argmax otherwise (DARTS runs every candidate)."""
    genotype = net.derive()
    paths = net.last_paths["blocks"].active
    if all(len(active) == 1 for active in paths):
        genotype = net.with_decisions(genotype, [("blocks", row, active[0]) for row, active in enumerate(paths)])
    return space.build_network(genotype, cfg, 1, 10)


def step_costs(batch: int, repeats: int) -> list[dict]:
    """Per weight step: bytes saved for backward, against the discrete network of the path that step ran, and
    median time, for three strategies on the mobile supernet."""
    rows = []
    space = get_space("mobile")
    x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))

    def saved_by(model) -> int:
        return saved_tensor_bytes(lambda: F.cross_entropy(model(x), y), exclude=list(model.parameters()))

    for name in ("proxyless", "gdas", "darts"):
        torch.manual_seed(0)
        cfg = SearchConfig(space="mobile", strategy=name)
        strategy = STRATEGIES.get(name)(cfg)
        net = space.build_supernet(cfg, 1, 10)
        strategy.prepare(net)
        strategy.generator.manual_seed(0)
        with net.architecture_fixed():  # as a weight step runs it
            saved = saved_by(net)  # the supernet's forward first: it samples the path
        path_saved = saved_by(path_network(net, space, cfg))
        strategy.weight_step((x, y))  # untimed: the first step runs cold (3x the later ones on the mobile space)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            strategy.weight_step((x, y))
            times.append((time.perf_counter() - t0) * 1e3)
        rows.append({"strategy": name, "batch": batch, "saved_bytes": saved, "path_saved_bytes": path_saved,
                     "saved_over_path": saved / path_saved,
                     "weight_step_ms": statistics.median(times)})  # fmt: skip
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwnas.plots import plot_mobile_genotype
    from hwnas.spaces.mobile import MobileGenotype

    searched = [r for r in rows if r["strategy"] != "random"]
    fig, axes = plt.subplots(len(searched), 1, figsize=(12, 1.3 * len(searched)), squeeze=False)
    for ax, row in zip(axes[:, 0], searched):
        title = f"{row['target']} @ {row['budget_ms']:g} ms: table {row['table_ms']:.1f} ms"
        plot_mobile_genotype(MobileGenotype(tuple(row["blocks"])), path, title=title, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["mobile", "onnxruntime", "tflite"])
    parser.add_argument("--strategy", default="darts", help="searched strategy (default darts, as hwnas search)")
    parser.add_argument("--epochs", type=int, default=3, help="search epochs")
    parser.add_argument("--train-epochs", type=int, default=3, help="proxy training epochs")
    parser.add_argument("--proxy-seeds", type=int, default=2, help="proxy trainings (seeds) averaged per result")
    parser.add_argument("--random-samples", type=int, default=4)
    parser.add_argument("--step-batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        type=Path,
        help="default: results/latency_targets.json for the default targets, "
        "results/latency_targets_<targets>.json for others, so one target's run keeps the rest",
    )
    args = parser.parse_args(argv)
    if args.json is None:
        suffix = "" if args.targets == parser.get_default("targets") else "_" + "_".join(args.targets)
        args.json = ROOT / "benchmarks" / "results" / f"latency_targets{suffix}.json"
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            for budget in budgets_for(target):
                for strategy in (args.strategy, "random"):
                    row = {"target": target, "budget_ms": budget,
                           **search_and_train(target, budget, strategy, args, Path(tmp))}  # fmt: skip
                    rows.append(row)
                    print(f"{target:12s} {budget:7.2f} {strategy:9s} table {row['table_ms']:7.2f} "
                          f"({row['table_over_target']:.3f} T) measured {row['measured_ms'] or float('nan'):7.2f} "
                          f"acc {row['proxy_acc']:.4f}  {row['genotype']}", flush=True)  # fmt: skip
    steps = step_costs(args.step_batch, repeats=3)
    print(
        f"\nper weight step on the mobile supernet (batch {args.step_batch}, 32x32; path: the discrete network of "
        "the path the step ran, the argmax for darts):"
    )
    print(f"{'strategy':10s} {'saved MiB':>10s} {'path MiB':>10s} {'ratio':>6s} {'step ms':>8s}")
    for s in steps:
        print(f"{s['strategy']:10s} {s['saved_bytes'] / 2**20:10.1f} {s['path_saved_bytes'] / 2**20:10.1f} "
              f"{s['saved_over_path']:6.2f} {s['weight_step_ms']:8.0f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, {"config": {k: str(v) for k, v in vars(args).items()}, "searches": rows,
                                  "steps": steps})  # fmt: skip
    plot(rows, args.json.with_suffix(".png"))
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
