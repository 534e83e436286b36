"""Flag handling shared by the commands: flags map onto config fields; `--resume` reuses a stored config."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

from hwnas.config import positive
from hwnas.errors import HwnasError

DATA_FLAGS = {"dataset": "dataset", "data_dir": "data_dir", "image_size": "image_size",
              "train_portion": "train_portion", "workers": "workers"}  # fmt: skip
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "absl")  # INFO per exported op
_LATENCY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*$")


def quiet_exporters() -> None:
    """Keep the ONNX and LiteRT exporters' per-op INFO lines out of a command's log."""
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def int_at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse names the flag in its one-line error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def parse_latency_ms(text: str) -> float:
    """'80ms', '80', '0.08s', '1500us' -> milliseconds."""
    match = _LATENCY.match(str(text))
    if not match:
        raise HwnasError(f"malformed latency {text!r}: use e.g. 80ms, 80, 0.08s or 1500us")
    value = float(match.group(1)) * {"ms": 1.0, None: 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}[match.group(2)]
    if not positive(value):  # 1e999ms is infinite: no budget, and "Infinity" in config.json is not JSON
        raise HwnasError(f"latency budget must be positive and finite, got {text!r}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", help="digits (default, offline), cifar10, imagefolder, fake")
    group.add_argument("--data-dir", help="folder of cifar10 (cifar-10-batches-py/) or imagefolder (train/, val/)")
    group.add_argument("--image-size", type=int, help="input resolution (default 32)")
    group.add_argument("--train-portion", type=float, help="search: share of train data for weights (default 0.5)")
    group.add_argument("--workers", type=int, metavar="N",
                       help="processes loading batches beside each training process (default 0: none); the "
                            "batches are the same for any N; may change on --resume")  # fmt: skip


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--run-dir", help="where to write the run (default runs/<command>-<time>)")
    group.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    group.add_argument("--seed", type=int, help="random seed (default 0)")
    group.add_argument("--device", help="auto (default: cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda "
                                        "(this process's GPU) or cuda:N; may change on --resume")  # fmt: skip
    group.add_argument("--checkpoint-minutes", type=float, metavar="M",
                       help="also checkpoint within an epoch every M minutes (default 10; 0: at epoch ends only); "
                            "may change on --resume")  # fmt: skip
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--no-plots", action="store_true",
                       help="draw no PNGs at the end (e.g. in sweeps); metrics.jsonl and the JSON files hold their "
                            "figures")  # fmt: skip


def refuse_unless(applies: bool, flags: dict[str, Any], what: str) -> None:
    """Where a flag means nothing (`applies` False), name the first of `flags` given (None or False: not given)."""
    given = [flag for flag, value in flags.items() if value is not None and value is not False]
    if given and not applies:
        raise HwnasError(f"{given[0]} {what}")


def check_run_flags(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir:
        raise HwnasError("--resume continues its run directory in place; leave out --run-dir")


def explicit(args: argparse.Namespace, names) -> dict[str, Any]:
    """The flags among `names` the user actually gave (argparse defaults are None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def build_config(cls, args: argparse.Namespace, flags: dict[str, str], base=None, resumable=("epochs",)):
    """A config from `base` (defaults, or a resumed run's stored config) with the given flags applied.

    `flags` maps argparse dest -> config field. When resuming, only fields in `resumable` may change.
    """
    given = {flags[k]: v for k, v in explicit(args, flags).items()}
    data_given = {DATA_FLAGS[k]: v for k, v in explicit(args, DATA_FLAGS).items()}
    if args.seed is not None:
        data_given.setdefault("seed", args.seed)
    if base is not None:
        changed = sorted(k for k in {**given, **data_given} if k not in resumable and k != "seed")
        if changed or (args.seed is not None and args.seed != base.seed):
            raise HwnasError(f"cannot change {', '.join(changed or ['seed'])} when resuming; "
                             f"only {', '.join(resumable)} may change")  # fmt: skip
        data = dataclasses.replace(base.data, **{k: v for k, v in data_given.items() if k != "seed"})
        return base.replace(**given, data=data)
    defaults = cls()
    data = dataclasses.replace(defaults.data, **data_given)
    try:
        return _absolute_paths(dataclasses.replace(defaults, data=data, **given))
    except TypeError as err:
        raise HwnasError(str(err)) from None


def _absolute_paths(cfg):
    """`cfg` with its data directory and the files it names (a target table, a genotype) as absolute paths, so
    that `--resume` finds them from any working directory."""
    files = {f: str(Path(getattr(cfg, f)).resolve()) for f in ("target", "genotype")
             if isinstance(getattr(cfg, f, None), str) and Path(getattr(cfg, f)).is_file()}  # fmt: skip
    if cfg.data.data_dir is not None:
        files["data"] = dataclasses.replace(cfg.data, data_dir=str(Path(cfg.data.data_dir).resolve()))
    return cfg.replace(**files)


def default_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
