"""hwnas search: DARTS, PC-DARTS, GDAS, ProxylessNAS or random search on a supernet, optionally to a latency
budget on a named target."""

from __future__ import annotations

import argparse

from hwnas.cli.common import add_data_arguments, add_run_arguments, build_config, default_run_dir, parse_latency_ms
from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.run import RunDir

FLAGS = {
    "space": "space", "strategy": "strategy", "epochs": "epochs", "batch_size": "batch_size",
    "init_channels": "init_channels", "layers": "layers", "steps": "steps", "primitives": "primitives",
    "seed": "seed", "unrolled": "unrolled", "pc_k": "pc_k", "fused": "fused", "w_lr": "w_lr", "a_lr": "a_lr",
    "arch_warmup_epochs": "arch_warmup_epochs", "target": "target", "latency": "latency_ms",
    "latency_loss": "latency_loss", "latency_lambda": "latency_lambda", "width_mult": "width_mult",
    "random_samples": "random_samples",
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="darts (default) or mobile; with --target the default is mobile")
    parser.add_argument("--strategy", help="darts (default; proxyless with --target), pcdarts, gdas, proxyless, random")
    parser.add_argument("--epochs", type=int, help="search epochs (default 8)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64)")
    parser.add_argument("--init-channels", type=int, help="DARTS: channels of the first cells (default 8)")
    parser.add_argument("--layers", type=int, help="DARTS: cells (default 5)")
    parser.add_argument("--steps", type=int, help="DARTS: intermediate nodes per cell (default 4)")
    parser.add_argument("--primitives", type=lambda s: tuple(p for p in s.split(",") if p),
                        help="comma-separated subset of the space's ops")  # fmt: skip
    parser.add_argument("--width-mult", type=float, help="mobile: width multiplier (default 1.0)")
    parser.add_argument("--unrolled", action="store_true", default=None, help="DARTS second order")
    parser.add_argument("--pc-k", type=int, help="PC-DARTS: 1/K of the channels through the mixed op (default 4)")
    parser.add_argument("--fused", action="store_true", default=None,
                        help="memory-saving fused mixed op (recomputes ops in backward)")  # fmt: skip
    parser.add_argument("--w-lr", type=float, help="weight learning rate (default 0.025)")
    parser.add_argument("--a-lr", type=float, help="architecture learning rate (default 3e-4 darts, 1e-3 mobile)")
    parser.add_argument("--arch-warmup-epochs", type=int, help="epochs before α starts to move (default 0)")
    hw = parser.add_argument_group("hardware-aware search")
    hw.add_argument("--target", help="latency table: a name (mobile, note10, cpu, onnxruntime, tflite) or a file")
    hw.add_argument("--latency", help="latency budget, e.g. 80ms, 80, 0.08s, 1500us")
    hw.add_argument("--latency-loss", choices=["target", "additive", "multiplicative"], help="default: target")
    hw.add_argument("--latency-lambda", type=float, help="λ of the additive form / initial λ of the target mode")
    hw.add_argument("--random-samples", type=int, help="random search: architectures trained (default 8)")
    add_data_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hwnas.search import check_search_config, run_search

    if args.latency is not None:
        args.latency = parse_latency_ms(args.latency)
    if args.resume:
        run_dir, stored = RunDir.open(args.resume, "search")
        cfg = build_config(SearchConfig, args, FLAGS, base=SearchConfig.from_json(stored))
        run_dir.write_json("config.json", {"kind": "search", "config": cfg.to_json()})
    else:
        cfg = build_config(SearchConfig, args, FLAGS)
        if cfg.target is not None and args.space is None:
            cfg = cfg.replace(space="mobile")
        if cfg.target is not None and args.strategy is None:
            cfg = cfg.replace(strategy="proxyless")
        if (cfg.target is None) != (cfg.latency_ms is None):
            raise HwnasError("--target and --latency go together")
        check_search_config(cfg)
        run_dir = RunDir.create(args.run_dir or default_run_dir("search"), "search", cfg.to_json())
    result = run_search(cfg, run_dir, progress=not args.no_progress)
    final = result.summary.get("final", {})
    print(f"genotype: {run_dir.path / 'genotype.json'}")
    print(f"search: {cfg.epochs} epochs in {result.summary['wall_s']:.0f} s, "
          f"last val accuracy {final.get('val_acc', float('nan')):.4f}")  # fmt: skip
    for key in ("predicted_latency_ms", "latency_budget_ms"):
        if key in result.summary:
            print(f"{key}: {result.summary[key]:.2f}")
    print(f"run directory: {run_dir.path}")
    return 0
