"""`hwnas targets`: the latency tables a search can target (shipped and user-built)."""

from __future__ import annotations

import argparse

from hwnas.errors import HwnasError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="only tables for this search space")


def run(args) -> int:
    from hwnas.latency.targets import list_tables, taken_by_target, user_table_dir

    tables = list_tables()
    infos = [i for i in tables if args.space is None or i.space == args.space]
    if not infos and args.space is not None:
        known = ", ".join(sorted({i.space for i in tables}))
        raise HwnasError(f"no latency tables for space {args.space!r}; tables exist for: {known}")
    rows = [("TARGET", "SPACE", "SIZE", "DEVICE", "RUNTIME", "THREADS", "ENTRIES", "ORIGIN", "USED", "PATH")]
    for info, taken in zip(infos, taken_by_target(infos)):
        m = info.table.metadata
        runtime = f"{m.runtime} {m.runtime_version}" if m.runtime_version != "not documented" else m.runtime
        rows.append((m.target, m.space, str(m.input_size), m.device, runtime, str(m.threads or "-"),
                     str(len(info.table)), info.origin, "yes" if taken else "-", str(info.table.path)))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"user tables: {user_table_dir()} (set $HWNAS_TABLES to change); USED: what --target takes here")
    return 0
