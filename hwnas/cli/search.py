"""hwnas search: DARTS, PC-DARTS, GDAS, ProxylessNAS or random search on a supernet, optionally to a latency
budget on a named target; in one process or data-parallel in several (`--nproc`, torchrun)."""

from __future__ import annotations

import argparse

from hwnas.cli import parallel
from hwnas.cli.common import (
    add_data_arguments,
    add_run_arguments,
    build_config,
    check_run_flags,
    parse_latency_ms,
    quiet_exporters,
    refuse_unless,
)
from hwnas.config import LATENCY_LOSSES, STEMS, SearchConfig
from hwnas.run import RunDir

FLAGS = {
    "space": "space", "strategy": "strategy", "epochs": "epochs", "batch_size": "batch_size",
    "init_channels": "init_channels", "layers": "layers", "steps": "steps", "primitives": "primitives",
    "seed": "seed", "unrolled": "unrolled", "pc_k": "pc_k", "fused": "fused", "w_lr": "w_lr", "a_lr": "a_lr",
    "grad_clip": "grad_clip", "arch_warmup_epochs": "arch_warmup_epochs", "target": "target", "latency": "latency_ms",
    "latency_loss": "latency_loss", "latency_lambda": "latency_lambda", "width_mult": "width_mult",
    "random_samples": "random_samples", "device": "device", "sync_bn": "sync_bn",
    "measured_repairs": "measured_repairs", "latency_input_size": "latency_input_size",
    "checkpoint_minutes": "checkpoint_minutes", "stem": "stem", "w_lr_min": "w_lr_min",
    "latency_init_channels": "latency_init_channels", "latency_layers": "latency_layers",
    "latency_stem": "latency_stem",
}  # fmt: skip
RESUMABLE = (
    "epochs",
    "device",
    "sync_bn",
    "measured_repairs",
    "checkpoint_minutes",
    "workers",
)  # a resumed run may continue longer, elsewhere
# flags that only mean something for some configs: given elsewhere, they are a mistake to name, not to ignore
ONLY_WITH = (
    (("width_mult",), lambda cfg: cfg.space == "mobile", "shapes the mobile space"),
    (("init_channels", "layers", "steps", "stem"), lambda cfg: cfg.space == "darts", "shapes the DARTS space"),
    (("latency_init_channels", "latency_layers", "latency_stem"), lambda cfg: cfg.space == "darts",
     "shapes the DARTS network the budget is for"),
    (("pc_k",), lambda cfg: cfg.strategy == "pcdarts", "applies to --strategy pcdarts"),
    (("random_samples",), lambda cfg: cfg.strategy == "random", "applies to --strategy random"),
    (("latency_loss", "latency_lambda", "latency_input_size", "measured_repairs", "latency_init_channels",
      "latency_layers", "latency_stem"), lambda cfg: cfg.target is not None, "goes with --target and --latency"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="darts (default) or mobile; with --target the default is mobile")
    parser.add_argument("--strategy", help="darts (default), pcdarts, gdas, proxyless, random")
    parser.add_argument("--epochs", type=int, help="search epochs (default 8)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64)")
    parser.add_argument("--init-channels", type=int, help="DARTS: channels of the first cells (default 8)")
    parser.add_argument("--layers", type=int, help="DARTS: cells (default 5)")
    parser.add_argument("--steps", type=int, help="DARTS: intermediate nodes per cell (default 4)")
    parser.add_argument("--stem", choices=STEMS,
                        help="DARTS: cifar (default: one 3x3 convolution) or imagenet (three stride-2 convolutions "
                             "first, as PC-DARTS searched on ImageNet)")  # fmt: skip
    parser.add_argument("--primitives", type=lambda s: tuple(p for p in s.split(",") if p),
                        help="comma-separated subset of the space's ops")  # fmt: skip
    parser.add_argument("--width-mult", type=float, help="mobile: width multiplier (default 1.0)")
    parser.add_argument("--unrolled", action="store_true", default=None, help="DARTS second order")
    parser.add_argument("--pc-k", type=int, help="PC-DARTS: 1/K of the channels through the mixed op (default 4)")
    parser.add_argument("--fused", action="store_true", default=None,
                        help="memory-saving fused mixed op (recomputes ops in backward)")  # fmt: skip
    parser.add_argument("--w-lr", type=float, help="weight learning rate (default 0.025)")
    parser.add_argument("--w-lr-min", type=float, help="weight learning rate at the end of the cosine (default 0.001)")
    parser.add_argument("--grad-clip", type=float, help="weight gradient clip, 0 = off (default 5 darts, off mobile)")
    parser.add_argument("--a-lr", type=float, help="architecture learning rate (default 3e-4 darts, 3e-2 mobile)")
    parser.add_argument("--arch-warmup-epochs", type=int, help="epochs before α starts to move (default 0)")
    hw = parser.add_argument_group("hardware-aware search")
    hw.add_argument("--target", help="latency table: a name (mobile, cpu, onnxruntime, tflite, gpu) or a file")
    hw.add_argument("--latency-input-size", type=int, metavar="N",
                    help="resolution the latency is evaluated at, the table's (default 224 mobile, --image-size "
                         "darts); training keeps --image-size")  # fmt: skip
    hw.add_argument("--latency", help="latency budget, e.g. 80ms, 80, 0.08s, 1500us")
    hw.add_argument(
        "--latency-init-channels",
        type=int,
        metavar="C",
        help="DARTS: the budget is for the network of C channels you will train (default: --init-channels)",
    )
    hw.add_argument("--latency-layers", type=int, metavar="L", help="DARTS: ... and L cells (default: --layers)")
    hw.add_argument("--latency-stem", choices=STEMS, help="DARTS: ... and this stem (default: --stem)")
    hw.add_argument("--latency-loss", choices=LATENCY_LOSSES, help="default: target")
    hw.add_argument("--latency-lambda", type=float, help="λ of the additive form / initial λ of the target mode")
    hw.add_argument("--random-samples", type=int, help="random search: architectures trained (default 8)")
    hw.add_argument("--measured-repairs", type=int, metavar="N",
                    help="host tables of this machine: re-derive up to N times (default 2) from the derived network's "
                         "measured latency when it lands outside [0.9 T, T]; 0 = measure only")  # fmt: skip
    add_data_arguments(parser)
    add_run_arguments(parser)
    parallel.add_arguments(parser, "search", "search")


def run(args: argparse.Namespace) -> int:
    from hwnas.search import run_search

    quiet_exporters()  # a search on a host runtime's table exports the derived network to time it
    done = parallel.run(
        "search",
        args,
        _config,
        lambda cfg, run_dir: run_search(cfg, run_dir, not args.no_progress, plots=not args.no_plots),
    )
    if done is None:  # another rank, or the launcher of --nproc's processes: their rank 0 reported
        return 0
    cfg, run_dir, result = done
    final = result.summary.get("final", {})
    print(f"genotype: {run_dir.path / 'genotype.json'}")
    print(f"search: {cfg.epochs} epochs in {result.summary['wall_s']:.0f} s, "
          f"last val accuracy {final.get('val_acc', float('nan')):.4f}")  # fmt: skip
    for key in ("predicted_latency_ms", "latency_budget_ms", "measured_latency_ms"):
        if result.summary.get(key) is not None:
            print(f"{key}: {result.summary[key]:.2f}")
    if "derived_size" in result.summary:
        size = result.summary["derived_size"]
        print(f"derived network: {size['params']} parameters, {size['macs'] / 1e6:.1f}M MACs at "
              f"{size['input_size']}x{size['input_size']}, {size['num_classes']} classes")  # fmt: skip
    print(f"run directory: {run_dir.path}")
    return 0


def _config(args: argparse.Namespace, processes: int) -> tuple[SearchConfig, str | None]:
    """The search config and run directory the flags ask for, checked before anything is written."""
    from hwnas.search import check_search_config

    check_run_flags(args)
    if args.latency is not None:
        args.latency = parse_latency_ms(args.latency)
    if args.resume:
        resumed, stored = RunDir.open(args.resume, "search", log_to_file=False)
        cfg = build_config(SearchConfig, args, FLAGS, base=SearchConfig.from_json(stored), resumable=RESUMABLE)
        resumed.check_epochs(cfg.epochs)
    else:
        cfg = build_config(SearchConfig, args, FLAGS)
        if cfg.target is not None and args.space is None:
            cfg = cfg.replace(space="mobile")
        if args.steps is not None:  # the cell concatenates its last 4 nodes (DARTS), or all of fewer
            cfg = cfg.replace(multiplier=min(cfg.multiplier, cfg.steps))
        for names, applies, what in ONLY_WITH:
            refuse_unless(applies(cfg), {f"--{n.replace('_', '-')}": getattr(args, n) for n in names}, what)
    check_search_config(cfg, processes)
    parallel.check_processes(cfg, processes)
    return cfg, args.resume or args.run_dir
