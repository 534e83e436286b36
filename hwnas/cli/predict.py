"""`hwnas predict`: latency of op configurations, measured where a table has them, predicted where not."""

from __future__ import annotations

import argparse
import json
import os

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SearchConfig()
    parser.add_argument("--table", required=True, help="table file, or target name (uses all its tables)")
    parser.add_argument("--key", action="append", default=[], help="op key to estimate (repeatable)")
    parser.add_argument("--space", help="estimate every op configuration of this space (mobile, darts)")
    parser.add_argument("--input-size", type=int, help="input size for --space (default: 224 mobile, 32 darts)")
    parser.add_argument("--width-mult", type=float, default=defaults.width_mult)
    parser.add_argument("--init-channels", type=int, default=defaults.init_channels)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--missing-only", action="store_true", help="list only what the table lacks")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _tables(spec: str, space: str | None):
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.targets import list_tables

    if spec.endswith(".json") or os.sep in spec:
        return [LatencyTable.load(spec)]
    tables = [info.table for info in list_tables() if info.table.metadata.target == spec]
    if space is not None and any(t.metadata.space == space for t in tables):
        tables = [t for t in tables if t.metadata.space == space]
    if not tables:
        raise HwnasError(f"no latency table for target {spec!r} (see `hwnas targets`)")
    return tables


def run(args) -> int:
    from hwnas.cli.profile import DEFAULT_INPUT_SIZE
    from hwnas.latency.catalogue import space_op_configs
    from hwnas.latency.predictor import estimate

    configs = [OpConfig.from_key(key) for key in args.key]
    if args.space:
        size = args.input_size or DEFAULT_INPUT_SIZE.get(args.space)
        if size is None:
            raise HwnasError(f"--input-size is needed for space {args.space!r}")
        cfg = SearchConfig(
            space=args.space, width_mult=args.width_mult, init_channels=args.init_channels, layers=args.layers
        )
        configs += space_op_configs(args.space, size, cfg)
    if not configs:
        raise HwnasError("nothing to predict: give --key KEY or --space SPACE")
    results = estimate(_tables(args.table, args.space), configs)
    if args.missing_only:
        results = [r for r in results if not r[2]]
    if args.json:
        print(
            json.dumps(
                [{"key": op.key(), "latency_ms": ms, "measured": measured} for op, ms, measured in results],
                indent=2,
            )
        )
        return 0
    for op, ms, measured in results:
        print(f"{ms:10.4f} ms  {'measured ' if measured else 'predicted'}  {op.key()}")
    return 0
