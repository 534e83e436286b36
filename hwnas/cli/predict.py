"""`hwnas predict`: latency of op configurations, measured where a table has them, predicted where not; with
--genotype, of a whole network: its layers, their sum and the table's network estimate (the per-network
correction a · sum + b of the table for the network's space and input size, where it has one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from hwnas.cli.common import explicit
from hwnas.config import ALL_SHAPE_FIELDS, STEMS, SearchConfig, TrainConfig, check_all, shape_fields_check
from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    search, train = SearchConfig(), TrainConfig()
    parser.add_argument("--table", required=True, help="table file, or target name (uses all its tables)")
    parser.add_argument("--key", action="append", default=[], help="op key to estimate (repeatable)")
    parser.add_argument("--space", help="estimate every op configuration of this space (mobile, darts)")
    parser.add_argument(
        "--genotype", help="estimate this whole network (genotype file or published name; mobile: its own width)"
    )
    parser.add_argument("--input-size", type=int, help="for --space, --genotype (default: 224 mobile, 32 darts)")
    parser.add_argument("--width-mult", type=float, help=f"mobile: width multiplier (default: --space "
                        f"{search.width_mult}; --genotype its own)")  # fmt: skip
    parser.add_argument("--init-channels", type=int, help=f"DARTS: channels of the first cells (default: "
                        f"--space {search.init_channels}, as searched; --genotype {train.init_channels}, as "
                        "trained)")  # fmt: skip
    parser.add_argument("--layers", type=int, help=f"DARTS: cells (default: --space {search.layers}, as searched; "
                        f"--genotype {train.layers}, as trained)")  # fmt: skip
    parser.add_argument("--stem", choices=STEMS, help=f"DARTS: cifar or imagenet (default {search.stem})")
    parser.add_argument("--missing-only", action="store_true", help="list only what the table lacks")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _tables(spec: str, space: str | None):
    """A table file, or a target's tables: of several for one space and input size (one per machine), the one
    `--target` takes here, as the search that estimates with it."""
    from hwnas.latency.table import LatencyTable
    from hwnas.latency.targets import list_tables, taken_by_target

    if spec.endswith(".json") or os.sep in spec:
        return [LatencyTable.load(spec, space)]  # of `space` where one is estimated, at any input size
    infos = [info for info in list_tables() if info.name == spec]
    tables = [info.table for info, taken in zip(infos, taken_by_target(infos)) if taken]
    if not tables:
        raise HwnasError(f"no latency table for target {spec!r} (see `hwnas targets`)")
    if space is not None and not any(t.metadata.space == space for t in tables):
        spaces = ", ".join(sorted({t.metadata.space for t in tables}))
        raise HwnasError(f"target {spec!r} has no table for space {space!r} (only {spaces})")
    return tables if space is None else [t for t in tables if t.metadata.space == space]


def _input_size(args, space: str) -> int:
    from hwnas.cli.profile import DEFAULT_INPUT_SIZE
    from hwnas.spaces import get_space

    get_space(space)  # an unknown space is named as such
    size = args.input_size if args.input_size is not None else DEFAULT_INPUT_SIZE.get(space)
    if size is None:
        raise HwnasError(f"--input-size is needed for space {space!r}")
    return size


def _shape(args, space: str, input_size: int, defaults: SearchConfig | TrainConfig) -> SearchConfig:
    """The network shape: the flags given, else `defaults`' (the search's for a space, the training's for a
    genotype, so that `predict --genotype` estimates the network `train` and `export` build)."""
    given = explicit(args, ALL_SHAPE_FIELDS)
    check_all([shape_fields_check(space, given)])
    cfg = SearchConfig(space=space, init_channels=defaults.init_channels, layers=defaults.layers, stem=defaults.stem,
                       latency_input_size=input_size).replace(**given)  # fmt: skip
    cfg.validate()
    return cfg


def _network(args) -> int:
    """--genotype: the network's layers, their sum and the table's network estimate."""
    from hwnas.latency.predictor import estimate_network
    from hwnas.spaces import get_space, load_genotype

    if args.key or args.space or args.missing_only:
        raise HwnasError("--genotype estimates one network; it does not combine with --key, --space, --missing-only")
    genotype = load_genotype(args.genotype)
    size = _input_size(args, genotype.space)
    shape = _shape(args, genotype.space, size, TrainConfig())
    if args.width_mult is not None:  # a mobile network's width lives in its genotype
        genotype = dataclasses.replace(genotype, width_mult=shape.width_mult)
    layers = get_space(genotype.space).network_op_configs(genotype, shape, size)
    tables = _tables(args.table, genotype.space)
    exact = next((t for t in tables if (t.metadata.space, t.metadata.input_size) == (genotype.space, size)), None)
    network = estimate_network(tables, layers, exact)
    correction = exact.metadata.network_correction if exact else None
    if args.json:
        rows = [{"key": op.key(), "latency_ms": ms, "measured": measured} for op, ms, measured in network.rows]
        print(json.dumps({"layers": rows, "sum_ms": network.sum_ms, "latency_ms": network.latency_ms,
                          "network_correction": correction.to_json() if correction else None}, indent=2))  # fmt: skip
        return 0
    for op, ms, measured in network.rows:
        print(f"{ms:10.4f} ms  {'measured ' if measured else 'predicted'}  {op.key()}")
    print(f"{network.sum_ms:10.4f} ms  sum of {len(layers)} layers")
    how = (f"{correction.a:.4f} · sum + {correction.b_ms:.4f} ms, fitted on {correction.architectures} architectures"
           if correction else "no network correction: the sum")  # fmt: skip
    print(f"{network.latency_ms:10.4f} ms  network estimate ({how})")
    return 0


def run(args) -> int:
    from hwnas.latency.catalogue import space_op_configs
    from hwnas.latency.predictor import estimate

    if args.genotype:
        return _network(args)
    configs = [OpConfig.from_key(key) for key in args.key]
    if args.space:
        size = _input_size(args, args.space)
        configs += space_op_configs(args.space, size, _shape(args, args.space, size, SearchConfig()))
    if not configs:
        raise HwnasError("nothing to predict: give --key KEY, --space SPACE or --genotype GENOTYPE")
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
