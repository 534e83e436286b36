"""Helpers shared by the latency tests."""

import importlib.util
from dataclasses import replace
from pathlib import Path

from hwnas.latency.features import op_cost
from hwnas.latency.table import LatencyTable, TableEntry, TableMetadata
from hwnas.ops.opconfig import OpConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "latency_tables"
SHARED_DATA = REPO.parent / "shared" / "latency_data"  # the published phone tables, beside the checkout (and in CI)


def make_table(configs: list[OpConfig], target="cpu", space="mobile", input_size=224) -> LatencyTable:
    """A table whose latencies are a simple function of the ops' MACs."""
    metadata = TableMetadata(
        target=target,
        device="test CPU",
        runtime="pytorch",
        runtime_version="2.0",
        threads=1,
        space=space,
        input_size=input_size,
        source="tests",
        date="2025-01-01",
    )
    entries = {op.key(): TableEntry(op_cost(op).macs / 1e6 + 0.001, 0.01, 10) for op in configs}
    return LatencyTable(metadata, entries)


def of_this_machine(table: LatencyTable) -> LatencyTable:
    """`table` as `hwnas profile` writes it here: this machine's device name and CPU signature."""
    from hwnas.latency.targets import this_machine
    from hwnas.profilers.protocol import cpu_signature

    machine = {**table.metadata.details.get("machine", {}), "cpu_signature": cpu_signature()}
    details = {**table.metadata.details, "machine": machine}
    device = this_machine(table.metadata.target)
    return LatencyTable(replace(table.metadata, device=device, details=details), table.entries)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
