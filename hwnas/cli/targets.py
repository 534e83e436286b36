"""`hwnas targets`: the latency tables a search can target (shipped and user-built)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="only tables for this search space")


def run(args) -> int:
    from hwnas.latency.targets import list_tables, preferred, user_table_dir

    infos = [i for i in list_tables() if not args.space or i.table.metadata.space == args.space]
    groups: dict[tuple, list] = {}
    for info in infos:
        m = info.table.metadata
        groups.setdefault((m.target, m.space, m.input_size), []).append(info.table)
    taken = {id(preferred(tables, target)[0]) for (target, _space, _size), tables in groups.items()}
    rows = [("TARGET", "SPACE", "SIZE", "DEVICE", "RUNTIME", "THREADS", "ENTRIES", "ORIGIN", "USED", "PATH")]
    for info in infos:
        m = info.table.metadata
        runtime = f"{m.runtime} {m.runtime_version}" if m.runtime_version != "not documented" else m.runtime
        used = "yes" if id(info.table) in taken else "-"
        rows.append((m.target, m.space, str(m.input_size), m.device, runtime, str(m.threads or "-"),
                     str(len(info.table)), info.origin, used, str(info.table.path)))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"user tables: {user_table_dir()} (set $HWNAS_TABLES to change); USED: what --target takes here")
    return 0
