"""hwnas train: train a derived network (a genotype file or a published one) from scratch, in one process or
data-parallel in several (`--nproc`, torchrun)."""

from __future__ import annotations

import argparse

from hwnas.cli import parallel
from hwnas.cli.common import add_data_arguments, add_run_arguments, build_config, check_run_flags, refuse_unless
from hwnas.config import LR_SCHEDULES, PRECISIONS, STEMS, TrainConfig
from hwnas.errors import HwnasError
from hwnas.run import RunDir

FLAGS = {
    "genotype": "genotype", "epochs": "epochs", "batch_size": "batch_size", "init_channels": "init_channels",
    "layers": "layers", "lr": "lr", "drop_path_prob": "drop_path_prob", "auxiliary_weight": "auxiliary_weight",
    "cutout": "cutout", "seed": "seed", "width_mult": "width_mult", "grad_clip": "grad_clip", "device": "device",
    "checkpoint_minutes": "checkpoint_minutes", "sync_bn": "sync_bn", "precision": "precision", "stem": "stem",
    "label_smoothing": "label_smoothing", "lr_schedule": "lr_schedule", "lr_decay": "lr_decay",
    "warmup_epochs": "warmup_epochs", "weight_decay": "weight_decay",
}  # fmt: skip
# a resumed run may continue longer, elsewhere, in another precision
RESUMABLE = ("epochs", "device", "sync_bn", "checkpoint_minutes", "precision", "workers")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that shape a derived network (shared with `hwnas export`)."""
    parser.add_argument("--genotype", help="genotype JSON file or a published name (DARTS_V1, DARTS_V2, "
                                           "PC_DARTS, PC_DARTS_IMAGENET, PROXYLESS_MOBILE)")  # fmt: skip
    parser.add_argument("--init-channels", type=int, help="DARTS: channels of the first cells (default 16)")
    parser.add_argument("--layers", type=int, help="DARTS: cells (default 8)")
    parser.add_argument("--stem", choices=STEMS,
                        help="DARTS: cifar (default: one 3x3 convolution, cells at the input resolution) or imagenet "
                             "(three stride-2 convolutions first: 224x224 cells run at 28x28; DARTS's ImageNet "
                             "network)")  # fmt: skip
    parser.add_argument("--width-mult", type=float, help="mobile: width multiplier (default: the genotype's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_network_arguments(parser)
    parser.add_argument("--epochs", type=int, help="training epochs (default 30)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, help="initial learning rate (default 0.025)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="after the warm-up: cosine (default) or linear to 0, or exponential (x --lr-decay an "
                             "epoch)")  # fmt: skip
    parser.add_argument("--lr-decay", type=float, help="exponential schedule: factor per epoch (default 0.97)")
    parser.add_argument("--warmup-epochs", type=int, help="epochs of linear warm-up to --lr (default 0)")
    parser.add_argument("--weight-decay", type=float, help="SGD weight decay (default 3e-4; DARTS on ImageNet: 3e-5)")
    parser.add_argument("--grad-clip", type=float, help="gradient-norm clip, 0 = off (default 5 darts, off mobile)")
    parser.add_argument("--drop-path-prob", type=float, help="final drop-path probability (default 0.1)")
    parser.add_argument("--auxiliary-weight", type=float, help="> 0 adds the auxiliary head (DARTS: 0.4)")
    parser.add_argument("--cutout", type=int, help="cutout side in pixels (default 0: off)")
    parser.add_argument("--label-smoothing", type=float, metavar="EPS",
                        help="label smoothing of the training loss (default 0; DARTS on ImageNet: 0.1)")  # fmt: skip
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32 (default), or mixed precision: bf16 or fp16 autocast, weights in fp32 (for GPUs, "
                             "and bf16 for CPUs with AMX or AVX-512 BF16); may change on --resume")  # fmt: skip
    add_data_arguments(parser)
    add_run_arguments(parser)
    parallel.add_arguments(parser, "train", "training")


def run(args: argparse.Namespace) -> int:
    from hwnas.train import run_train

    done = parallel.run(
        "train",
        args,
        _config,
        lambda cfg, run_dir: run_train(cfg, run_dir, not args.no_progress, plots=not args.no_plots),
    )
    if done is None:  # another rank, or the launcher of --nproc's processes: their rank 0 reported
        return 0
    _cfg, run_dir, result = done
    print(f"test accuracy: {result.test_acc:.4f}")
    print(f"parameters: {result.params}")
    print(f"MACs: {result.macs / 1e6:.1f}M per example")
    print(f"weights: {run_dir.path / 'model.pt'}")
    return 0


def _config(args: argparse.Namespace, processes: int) -> tuple[TrainConfig, str | None]:
    """The training config and run directory the flags ask for, checked before anything is written."""
    check_run_flags(args)
    if args.resume:
        run_dir, stored = RunDir.open(args.resume, "train", log_to_file=False)
        cfg = build_config(TrainConfig, args, FLAGS, base=TrainConfig.from_json(stored), resumable=RESUMABLE)
        cfg.validate()
        run_dir.check_epochs(cfg.epochs)
    else:
        cfg = build_config(TrainConfig, args, FLAGS)
        from hwnas.data import check_data
        from hwnas.spaces import load_genotype

        cfg.validate()
        check_data(cfg.data, cfg.batch_size, processes)
        if args.train_portion is not None:
            raise HwnasError("--train-portion splits a search's data; training uses the whole train split")
        genotype = load_genotype(cfg.genotype)  # a bad genotype fails before the run directory exists
        if cfg.width_mult is not None and genotype.space != "mobile":
            raise HwnasError(f"--width-mult shapes mobile networks; genotype {cfg.genotype} is for space "
                             f"{genotype.space!r}")  # fmt: skip
        darts_only = {"--auxiliary-weight": args.auxiliary_weight, "--init-channels": args.init_channels,
                      "--layers": args.layers, "--stem": args.stem,
                      "--drop-path-prob": args.drop_path_prob}  # fmt: skip
        refuse_unless(genotype.space == "darts", darts_only,
                      f"shapes DARTS networks; genotype {cfg.genotype} is for space {genotype.space!r}")  # fmt: skip
        if genotype.space == "darts":
            from hwnas.spaces.darts import warn_about_stem

            warn_about_stem(cfg.stem, cfg.data.image_size)
    parallel.check_processes(cfg, processes)
    return cfg, args.resume or args.run_dir
