"""`hwnas targets`: the latency tables a search can target (shipped and user-built)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="only tables for this search space")


def run(args) -> int:
    from hwnas.latency.targets import list_tables, user_table_dir

    rows = [("TARGET", "SPACE", "SIZE", "DEVICE", "RUNTIME", "THREADS", "ENTRIES", "ORIGIN", "PATH")]
    for info in list_tables():
        m = info.table.metadata
        if args.space and m.space != args.space:
            continue
        runtime = f"{m.runtime} {m.runtime_version}" if m.runtime_version != "not documented" else m.runtime
        rows.append(
            (
                m.target,
                m.space,
                str(m.input_size),
                m.device,
                runtime,
                str(m.threads or "-"),
                str(len(info.table)),
                info.origin,
                str(info.table.path),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"user tables: {user_table_dir()} (set $HWNAS_TABLES to change)")
    return 0
