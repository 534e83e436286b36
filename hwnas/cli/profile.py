"""`hwnas profile`: measure every op configuration of a space on a device into a latency table.

Resumable: entries already in --out are kept and skipped; the table is rewritten atomically after each entry.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
from pathlib import Path

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import space_op_configs
from hwnas.latency.table import LatencyTable, TableEntry, TableMetadata
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers.protocol import Measurement

log = logging.getLogger(__name__)
DEFAULT_INPUT_SIZE = {"mobile": 224, "darts": 32}
DEVICES = ("cpu", "onnxruntime", "tflite", "gpu", "android")
CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "absl")  # INFO per exported op


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SearchConfig()
    parser.add_argument("--device", required=True, choices=DEVICES)
    parser.add_argument("--space", default="mobile", help="search space: mobile or darts (default mobile)")
    parser.add_argument("--input-size", type=int, help="input resolution (default 224 mobile, 32 darts)")
    parser.add_argument("--width-mult", type=float, default=defaults.width_mult, help="mobile space width")
    parser.add_argument("--init-channels", type=int, default=defaults.init_channels, help="DARTS space")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="DARTS space")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="DARTS space")
    parser.add_argument("--primitives", help="comma-separated candidate ops (default: the space's full set)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1: steadier figures)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up runs per op")
    parser.add_argument("--runs", type=int, default=30, help="timed samples per op")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds over all ops, each in a fresh process; an entry is the median of its rounds "
        "(default 3; 1 on android)",
    )
    parser.add_argument(
        "--clock",
        default="auto",
        choices=("auto", "thread", "wall"),
        help="host timer: thread CPU time (default at 1 thread; immune to other processes) or wall",
    )
    parser.add_argument("--out", help="table file (default: <user table dir>/<name>_<space>_<size>.json)")
    parser.add_argument("--name", help="target name the table answers to (default: the device)")
    android = parser.add_argument_group("android")
    android.add_argument("--serial", help="adb serial of the phone")
    android.add_argument("--binary", help="benchmark_model binary for the phone (android_aarch64 build)")
    android.add_argument("--delegate", default="xnnpack", choices=("cpu", "xnnpack", "gpu", "nnapi"))
    android.add_argument("--cpu-mask", help="taskset mask, e.g. f0 for the big cores")
    android.add_argument("--op-profiling", action="store_true", help="benchmark_model --enable_op_profiling")


def _profiler_options(args, cache_dir: Path | None = None) -> dict:
    """get_profiler keyword arguments (picklable, for rounds run in fresh processes)."""
    from hwnas.profilers import PROFILERS, ExportingProfiler, Protocol

    protocol = Protocol(warmup_runs=args.warmup, runs=args.runs, clock=args.clock)
    options = {"device": args.device, "threads": args.threads, "batch": args.batch, "protocol": protocol}
    if args.device == "android":
        options.update(
            serial=args.serial,
            binary=args.binary,
            delegate=args.delegate,
            cpu_mask=args.cpu_mask,
            op_profiling=args.op_profiling,
        )
    if cache_dir is not None and issubclass(PROFILERS.get(args.device), ExportingProfiler):
        options["cache_dir"] = str(cache_dir)
    return options


def measure_round(options: dict, metadata: dict, keys: list[str], path: str, desc: str) -> None:
    """Measure every op in `keys` that the table at `path` lacks, saving after each (one round, resumable)."""
    from tqdm import tqdm

    from hwnas.profilers import get_profiler

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    table = LatencyTable.load(path) if Path(path).exists() else LatencyTable(TableMetadata(**metadata), path=path)
    todo = [OpConfig.from_key(key) for key in keys if key not in table]
    with get_profiler(**options) as profiler:
        for op in tqdm(todo, desc=desc, unit="op", file=sys.stderr):
            m = profiler.measure_op(op)
            table.add(op, TableEntry(m.median_ms, m.iqr_ms, m.runs))
            table.save()


def measure_rounds(args, rounds: int, metadata: TableMetadata, todo: list[OpConfig], table: LatencyTable) -> None:
    """`rounds` rounds, each in a fresh process (per-process effects such as memory placement differ
    between processes); each entry becomes the median of its rounds. Round files stay beside the table until
    all rounds are merged, so an interrupted run resumes where it stopped."""
    import multiprocessing
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    rounds_dir = table.path.with_name(table.path.name + ".rounds")
    options = _profiler_options(args, rounds_dir / "models")
    keys = [op.key() for op in todo]
    for r in range(rounds):
        path = rounds_dir / f"round{r + 1}.json"
        desc = f"profile {args.device} round {r + 1}/{rounds}"
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
            fresh.submit(measure_round, options, vars(metadata), keys, str(path), desc).result()
    tables = [LatencyTable.load(rounds_dir / f"round{r + 1}.json") for r in range(rounds)]
    for op in todo:
        entries = [t.entries[op.key()] for t in tables]
        table.add(op, combine_rounds([Measurement(e.median_ms, e.iqr_ms or 0.0, e.runs) for e in entries]))
    table.save()
    shutil.rmtree(rounds_dir)


def _check_resumable(table: LatencyTable, metadata: TableMetadata) -> None:
    old = table.metadata
    for name in ("target", "runtime", "threads", "batch"):
        if getattr(old, name) != getattr(metadata, name):
            raise HwnasError(
                f"{table.path} holds {name} {getattr(old, name)!r}, not {getattr(metadata, name)!r}; "
                "choose another --out"
            )
    if old.runtime_version != metadata.runtime_version:
        log.warning(
            "%s was measured with %s %s; adding entries measured with %s",
            table.path,
            old.runtime,
            old.runtime_version,
            metadata.runtime_version,
        )


def combine_rounds(measurements) -> TableEntry:
    """Median of the rounds' medians, median of their IQRs, all their runs."""
    import numpy as np

    return TableEntry(
        float(np.median([m.median_ms for m in measurements])),
        float(np.median([m.iqr_ms for m in measurements])),
        sum(m.runs for m in measurements),
    )


def run(args) -> int:
    from hwnas.latency.predictor import MIN_ENTRIES, LatencyPredictor, predictor_path
    from hwnas.latency.targets import default_table_path
    from hwnas.profilers import get_profiler

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    space = args.space
    input_size = args.input_size or DEFAULT_INPUT_SIZE.get(space)
    if input_size is None:
        raise HwnasError(f"--input-size is needed for space {space!r}")
    primitives = tuple(args.primitives.split(",")) if args.primitives else None
    cfg = SearchConfig(
        space=space,
        init_channels=args.init_channels,
        layers=args.layers,
        steps=args.steps,
        multiplier=min(SearchConfig().multiplier, args.steps),
        primitives=primitives,
        width_mult=args.width_mult,
    )
    configs = space_op_configs(space, input_size, cfg)
    name = args.name or args.device
    out = args.out or default_table_path(name, space, input_size)
    rounds = args.rounds or (1 if args.device == "android" else 3)
    if rounds < 1:
        raise HwnasError(f"--rounds must be >= 1, got {rounds}")
    options = _profiler_options(args)
    with get_profiler(**options) as profiler:
        metadata = TableMetadata(
            target=name,
            device=profiler.device_name(),
            runtime=profiler.runtime,
            runtime_version=profiler.runtime_version,
            threads=args.threads,
            space=space,
            input_size=input_size,
            source="hwnas " + shlex.join(sys.argv[1:]),
            date=datetime.date.today().isoformat(),
            batch=args.batch,
            details={**profiler.metadata(), "rounds": rounds},
        )
        if Path(out).exists():
            table = LatencyTable.load(out, space, input_size)
            _check_resumable(table, metadata)
        else:
            table = LatencyTable(metadata, path=out)
        todo = table.missing(configs)
        log.info(
            "%s: %d op configurations, %d to measure in %d round(s), on %s",
            out,
            len(configs),
            len(todo),
            rounds,
            metadata.device,
        )
    if todo and rounds == 1:
        measure_round(options, vars(metadata), [op.key() for op in todo], str(out), f"profile {args.device}")
        table = LatencyTable.load(out)
    elif todo:
        measure_rounds(args, rounds, metadata, todo, table)
    if len(table) >= MIN_ENTRIES:
        LatencyPredictor.fit_table(table).save(predictor_path(table), table)
    print(f"{out}: {len(table)} entries ({len(todo)} measured now), space {space}, input size {input_size}")
    return 0
