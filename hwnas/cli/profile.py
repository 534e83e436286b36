"""`hwnas profile`: measure every op configuration of a space on a device into a latency table, and optionally
calibrate the table's per-network correction on whole architectures (`--calibrate N`).

Several devices of one model (`--serial A --serial B`, or several GPUs) measure in parallel, one thread each,
into one table (`hwnas.profilers.shard`). Resumable: entries already in --out are kept and skipped; the table is
rewritten atomically after each entry, so a device that fails mid-profile loses nothing it measured, and a
re-run measures what is left. Calibration measurements wait in `<out>.calibration.json` until the fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import shlex
import sys
from pathlib import Path

from hwnas.cli.common import quiet_exporters, refuse_unless
from hwnas.config import STEMS, SearchConfig
from hwnas.errors import HwnasError, resumable_by
from hwnas.fresh_process import in_fresh_process
from hwnas.latency.calibration import (
    CalibrationNetwork,
    calibration_networks,
    calibration_path,
    combine_rounds,
    fit_network_correction,
    load_measurements,
    save_measurements,
)
from hwnas.latency.catalogue import space_op_configs
from hwnas.latency.table import LatencyTable, TableEntry, TableMetadata
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers.protocol import Measurement

log = logging.getLogger(__name__)
DEFAULT_INPUT_SIZE = {"mobile": 224, "darts": 32}
DEVICES = ("cpu", "onnxruntime", "tflite", "gpu", "android")
DELEGATED = ("tflite", "android")  # the devices --delegate applies to
DEFAULT_DELEGATE = "xnnpack"
HOST_CPU = ("cpu", "onnxruntime", "tflite")  # the devices timed on this machine's CPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SearchConfig()
    parser.add_argument("--device", required=True, choices=DEVICES)
    parser.add_argument("--space", default="mobile", help="search space: mobile or darts (default mobile)")
    parser.add_argument("--input-size", type=int, help="input resolution (default 224 mobile, 32 darts)")
    parser.add_argument("--width-mult", type=float, default=defaults.width_mult, help="mobile space width")
    parser.add_argument("--init-channels", type=int, default=defaults.init_channels, help="DARTS space")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="DARTS space")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="DARTS space")
    parser.add_argument("--stem", choices=STEMS, default=defaults.stem, help="DARTS space: cifar (default) or imagenet")
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
    parser.add_argument(
        "--calibrate",
        type=int,
        metavar="N",
        help="after the ops, measure N random whole architectures end to end and store the table's per-network "
        "correction a·sum+b (50 or more recommended; skipped when the table already has one fitted on >= N)",
    )
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --calibrate: measure the architectures again and refit even if the table has a correction "
        "(timings drift with the machine's state: refit on the day the table's estimates matter)",
    )
    parser.add_argument("--out", help="table file (default: <user table dir>/<name>_<space>_<size>.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--name", help="target name the table answers to (default: the device)")
    android = parser.add_argument_group("android")
    android.add_argument(
        "--serial", action="append", help="adb serial of the phone; repeat to measure on several phones of one model"
    )
    android.add_argument("--binary", help="benchmark_model binary for the phone (android_aarch64 build)")
    android.add_argument(
        "--delegate",
        choices=("cpu", "xnnpack", "gpu", "nnapi"),
        help="also for --device tflite (xnnpack or cpu, TFLite's builtin kernels); default xnnpack. Another "
        "delegate's table answers to <device>_<delegate> unless --name says otherwise",
    )
    android.add_argument("--cpu-mask", help="taskset mask, e.g. f0 for the big cores")
    android.add_argument("--op-profiling", action="store_true", help="benchmark_model --enable_op_profiling")
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--gpu-ids", help="comma-separated CUDA device indices, one model (default: all visible)")


def _gpu_ids(text: str | None) -> list[int]:
    if text is None:
        import torch

        return list(range(torch.cuda.device_count())) or [0]  # [0]: the profiler says what is missing
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise HwnasError(f"--gpu-ids must be comma-separated integers such as 0,1, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise HwnasError(f"--gpu-ids must be >= 0, got {text!r}")
    return ids


def _device_options(args, cache_dir: Path | None = None) -> list[dict]:
    """get_profiler keyword arguments, one dict per device (picklable, for rounds run in fresh processes)."""
    from hwnas.profilers import PROFILERS, ExportingProfiler, Protocol

    android_only = {"--serial": args.serial, "--binary": args.binary, "--cpu-mask": args.cpu_mask,
                    "--op-profiling": args.op_profiling}  # fmt: skip
    refuse_unless(args.device == "android", android_only, "applies to --device android")
    refuse_unless(args.device == "gpu", {"--gpu-ids": args.gpu_ids}, "applies to --device gpu")
    refuse_unless(args.device in DELEGATED, {"--delegate": args.delegate},
                  f"applies to --device {' and '.join(DELEGATED)}")  # fmt: skip
    protocol = Protocol(warmup_runs=args.warmup, runs=args.runs, clock=args.clock)
    options = {"device": args.device, "threads": args.threads, "batch": args.batch, "protocol": protocol}
    if cache_dir is not None and issubclass(PROFILERS.get(args.device), ExportingProfiler):
        options["cache_dir"] = str(cache_dir)
    if args.device in DELEGATED:
        options["delegate"] = args.delegate or DEFAULT_DELEGATE
    if args.device == "android":
        options.update(binary=args.binary, cpu_mask=args.cpu_mask, op_profiling=args.op_profiling)
        per_device = [{"serial": serial} for serial in args.serial or [None]]
    elif args.device == "gpu":
        per_device = [{"gpu_index": i} for i in _gpu_ids(args.gpu_ids)]
    else:
        per_device = [{}]
    names = [next(iter(d.values())) for d in per_device if d]
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise HwnasError(f"device {', '.join(repeated)} given more than once")
    return [{**options, **device} for device in per_device]


def _count(details: dict, info: dict, n: int = 1) -> None:
    """Add `n` entries measured to the device `info` in the table details' per-device list."""
    devices = details.setdefault("devices", [])
    for device in devices:
        if {k: v for k, v in device.items() if k != "entries_measured"} == info:
            device["entries_measured"] = device.get("entries_measured", 0) + n
            return
    devices.append({**info, "entries_measured": n})


def measure_round(
    options: list[dict],
    metadata: dict,
    keys: list[str],
    networks: list[CalibrationNetwork],
    path: str,
    desc: str | None,
) -> str | None:
    """Measure every op in `keys` that the table at `path` lacks, then every network in `networks` that
    `calibration_path(path)` lacks, sharded over the devices, saving after each (one round, resumable).
    Returns what failed, or None when everything was measured."""
    from hwnas.profilers.shard import measure_sharded, open_devices

    quiet_exporters()
    table = LatencyTable.load(path) if Path(path).exists() else LatencyTable(TableMetadata(**metadata), path=path)
    todo = [OpConfig.from_key(key) for key in keys if key not in table]
    calibration = calibration_path(path)
    measured = load_measurements(calibration)
    network_todo = [n for n in networks if n.key not in measured]
    with open_devices(options) as profilers:

        def record_op(profiler, op: OpConfig, m: Measurement) -> None:
            table.add(op, TableEntry(m.median_ms, m.iqr_ms, m.runs))
            _count(table.metadata.details, profiler.device_info())
            table.save()

        report = measure_sharded(profilers, todo, lambda p, op: p.measure_op(op), record_op, desc)
        if report.unmeasured:
            first = report.unmeasured[0].key()
            return (f"{report.describe_failures()}; {len(report.unmeasured)} op configuration(s) not measured "
                    f"(first: {first})")  # fmt: skip
        working = [p for p in profilers if not report.failed(p)]

        def record_network(_profiler, network: CalibrationNetwork, m: Measurement) -> None:
            measured[network.key] = TableEntry(m.median_ms, m.iqr_ms, m.runs)
            save_measurements(calibration, measured)

        calibrated = measure_sharded(working, network_todo, lambda p, network: network.measure(p), record_network,
                                     desc and desc + " networks")  # fmt: skip
        if calibrated.unmeasured:
            return f"{calibrated.describe_failures()}; {len(calibrated.unmeasured)} calibration network(s) not measured"
        failures = "; ".join(r.describe_failures() for r in (report, calibrated) if r.failures)
        if failures:
            log.warning("%s; the other devices measured the rest", failures)
    return None


def measure_rounds(args, rounds: int, metadata: TableMetadata, todo, networks, table: LatencyTable) -> dict:
    """`rounds` rounds, each in a fresh process (per-process effects such as memory placement differ
    between processes); each entry becomes the median of its rounds. Round files stay beside the table until
    all rounds are merged, so an interrupted run resumes where it stopped. Returns the networks' measurements
    (median of the rounds), also kept in `<out>.calibration.json` until the fit."""
    import shutil

    rounds_dir = table.path.with_name(table.path.name + ".rounds")
    for path in (rounds_dir / f"round{r + 1}.json" for r in range(rounds)):
        if path.exists():  # left by a run stopped before <out> existed: only the round says how it measured
            old = LatencyTable.load(path, metadata.space, metadata.input_size).metadata
            _check_resumable(old, metadata, path, args.device in HOST_CPU,
                             f"re-run with the options it was measured with, or delete {rounds_dir}")  # fmt: skip
    calibration = calibration_path(table.path)
    measured = load_measurements(calibration)
    networks = [n for n in networks if n.key not in measured]
    if not (todo or networks):
        return measured
    options = _device_options(args, rounds_dir / "models")
    keys = [op.key() for op in todo]
    for r in range(rounds):
        path = rounds_dir / f"round{r + 1}.json"
        desc = None if args.no_progress else f"profile {args.device} round {r + 1}/{rounds}"
        failure = in_fresh_process(measure_round, options, vars(metadata), keys, networks, str(path), desc)
        if failure:
            raise HwnasError(f"round {r + 1}: {failure}; re-run the same command to measure the rest")
    tables = [LatencyTable.load(rounds_dir / f"round{r + 1}.json") for r in range(rounds)] if todo else []
    for op in todo:
        table.add(op, combine_rounds([t.entries[op.key()] for t in tables]))
    for t in tables:
        for device in t.metadata.details.get("devices", []):
            info = {k: v for k, v in device.items() if k != "entries_measured"}
            _count(table.metadata.details, info, device["entries_measured"])
    table.save()
    per_round = [load_measurements(calibration_path(rounds_dir / f"round{r + 1}.json")) for r in range(rounds)]
    measured.update({n.key: combine_rounds([m[n.key] for m in per_round]) for n in networks})
    if networks:
        save_measurements(calibration, measured)  # the round files go next: a failed fit or a Ctrl-C keeps these
    shutil.rmtree(rounds_dir)
    return measured


def _check_resumable(
    old: TableMetadata, new: TableMetadata, where: Path, host_cpu: bool, remedy: str = "choose another --out"
) -> None:
    """Refuse to add to `where` (a table, or a round of one) entries measured otherwise than those it holds: on
    other hardware (another phone model, another CPU of one name when `host_cpu`), or with other options."""

    def refuse(what: str) -> HwnasError:
        return HwnasError(f"{where} {what}; {remedy}")

    for name in ("target", "runtime", "threads", "batch", "device"):
        if getattr(old, name) != getattr(new, name):
            raise refuse(f"holds {name} {getattr(old, name)!r}, not {getattr(new, name)!r}")
    delegates = old.details.get("delegate"), new.details.get("delegate")
    if None not in delegates and delegates[0] != delegates[1]:
        raise refuse(f"was measured with delegate {delegates[0]}, not {delegates[1]}")
    signatures = [old.cpu_signature, new.cpu_signature]
    if host_cpu and all(signatures) and signatures[0] != signatures[1]:
        raise refuse(f"was measured on a CPU of signature {signatures[0]!r}, not {signatures[1]!r}")
    protocols = old.details.get("protocol"), new.details.get("protocol")
    if None not in protocols and protocols[0] != protocols[1]:  # warm-up, runs, clock, ...
        keys = protocols[0].keys() | protocols[1].keys()
        differ = sorted(k for k in keys if protocols[0].get(k) != protocols[1].get(k))
        was, now = (", ".join(f"{k} {protocol.get(k)!r}" for k in differ) for protocol in protocols)
        raise refuse(f"was measured with {was}, not {now}")
    if old.runtime_version != new.runtime_version:
        log.warning("%s was measured with %s %s; adding entries measured with %s", where, old.runtime,
                    old.runtime_version, new.runtime_version)  # fmt: skip


def _networks_to_calibrate(args, table: LatencyTable, cfg: SearchConfig, input_size: int) -> list:
    if args.calibrate is None:
        return []
    correction = table.metadata.network_correction
    if correction is not None and correction.architectures >= args.calibrate and not args.recalibrate:
        log.info("%s already has a network correction fitted on %d architectures", table.path,
                 correction.architectures)  # fmt: skip
        return []
    return calibration_networks(args.space, cfg, input_size, args.calibrate)


def _measure(args, options, rounds: int, metadata: TableMetadata, table: LatencyTable, out, todo, networks):
    """Measure the ops `todo` and the calibration `networks` into `out`: (the table as saved, the networks'
    measurements)."""
    if not (todo or networks):
        return table, {}
    if rounds > 1:
        return table, measure_rounds(args, rounds, metadata, todo, networks, table)
    failure = measure_round(options, vars(metadata), [op.key() for op in todo], networks, str(out),
                            None if args.no_progress else f"profile {args.device}")  # fmt: skip
    if failure:
        raise HwnasError(f"{failure}; {out} keeps what was measured: re-run the same command to measure the rest")
    return LatencyTable.load(out), load_measurements(calibration_path(out))


def _store_correction(table: LatencyTable, networks: list[CalibrationNetwork], measured: dict) -> str:
    sums = [table.sum_ms(n.layers()) for n in networks]
    try:
        correction = fit_network_correction(sums, [measured[n.key].median_ms for n in networks])
    except HwnasError as err:  # a re-run would fit the same measurements
        raise HwnasError(f"{err}; delete {calibration_path(table.path)} to measure the networks again") from None
    table.metadata = dataclasses.replace(table.metadata, network_correction=correction)
    table.save()
    return (f"network correction a={correction.a:.4f}, b={correction.b_ms:.4f} ms on {correction.architectures} "
            f"architectures (RMSE {correction.rmse_ms:.3f} ms)")  # fmt: skip


def run(args) -> int:
    from hwnas.latency.predictor import MIN_ENTRIES, LatencyPredictor, predictor_path
    from hwnas.latency.targets import default_table_path
    from hwnas.profilers.shard import open_devices
    from hwnas.spaces import get_space

    quiet_exporters()
    if args.recalibrate and args.calibrate is None:
        raise HwnasError("--recalibrate goes with --calibrate N")
    if args.name is not None and any(sep and sep in args.name for sep in ("/", os.sep, os.altsep)):
        raise HwnasError(f"--name is the target's name, not a path: no path separator, got {args.name!r}")
    space = get_space(args.space).name
    input_size = args.input_size if args.input_size is not None else DEFAULT_INPUT_SIZE.get(space)
    if input_size is None:
        raise HwnasError(f"--input-size is needed for space {space!r}")
    primitives = tuple(args.primitives.split(",")) if args.primitives is not None else None
    cfg = SearchConfig(
        space=space,
        init_channels=args.init_channels,
        layers=args.layers,
        steps=args.steps,
        stem=args.stem,
        multiplier=min(SearchConfig().multiplier, args.steps),
        primitives=primitives,
        width_mult=args.width_mult,
        latency_input_size=input_size,
    )
    cfg.validate()
    configs = space_op_configs(space, input_size, cfg)
    name = args.name or args.device
    if args.name is None and args.delegate not in (None, DEFAULT_DELEGATE):
        name = f"{args.device}_{args.delegate}"
    out = args.out or default_table_path(name, space, input_size)
    rounds = args.rounds if args.rounds is not None else 1 if args.device == "android" else 3
    if rounds < 1:
        raise HwnasError(f"--rounds must be >= 1, got {rounds}")
    options = _device_options(args)
    with open_devices(options) as profilers:
        first = profilers[0]
        metadata = TableMetadata(
            target=name,
            device=first.device_name(),
            runtime=first.runtime,
            runtime_version=first.runtime_version,
            threads=args.threads,
            space=space,
            input_size=input_size,
            source="hwnas " + shlex.join(sys.argv[1:]),
            date=datetime.date.today().isoformat(),
            batch=args.batch,
            details={**first.metadata(), "rounds": rounds},
        )
        if Path(out).exists():
            table = LatencyTable.load(out, space, input_size)
            _check_resumable(table.metadata, metadata, table.path, args.device in HOST_CPU)
        else:
            table = LatencyTable(metadata, path=out)
        todo = table.missing(configs)
        devices = ", ".join(p.label for p in profilers) if len(profilers) > 1 else metadata.device
        log.info("%s: %d op configurations, %d to measure in %d round(s), on %s", out, len(configs), len(todo),
                 rounds, devices)  # fmt: skip
    networks = _networks_to_calibrate(args, table, cfg, input_size)
    with resumable_by(f"the same command ({out} keeps what was measured)"):
        table, measured = _measure(args, options, rounds, metadata, table, out, todo, networks)
    if len(table) >= MIN_ENTRIES:
        LatencyPredictor.fit_table(table).save(predictor_path(table), table)
    print(f"{out}: {len(table)} entries ({len(todo)} measured now), space {space}, input size {input_size}")
    if networks:
        print(f"{out}: {_store_correction(table, networks, measured)}")
        calibration_path(out).unlink(missing_ok=True)
    return 0
