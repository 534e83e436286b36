"""benchmarks/search_memory.py end to end at tiny batches: memory rows from fresh processes, step times paired."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.conftest import ROOT
from tests.latency.helpers import load_benchmark

SCRIPT = ROOT / "benchmarks" / "search_memory.py"


def test_rows_hold_memory_and_round_robin_times(tmp_path: Path):
    """One batch size (each row and each timing is a process of its own, 5 s of imports apiece)."""
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(SCRIPT), "--batch-sizes", "2", "--variants", "naive", "pc_fused", "--layers", "3",
           "--backends", "auto", "reference", "--repeats", "2", "--cycles", "1", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    by = {(r["variant"], r["kernels"]): r for r in rows}
    assert sorted(by) == [("naive", "auto"), ("pc_fused", "auto"), ("pc_fused", "reference")] and len(rows) == 3
    naive, auto, reference = by["naive", "auto"], by["pc_fused", "auto"], by["pc_fused", "reference"]
    assert all(r["batch"] == 2 and r["layers"] == 3 for r in rows)
    assert naive["timed_rounds"] == 2 and naive["timed_cycles"] == 1 and naive["step_ms"] > 0
    assert "wall_x_first_backend" not in naive and naive["step_x_naive"] == naive["cpu_x_naive"] == 1.0
    assert 0 < auto["saved_bytes"] < naive["saved_bytes"] and auto["step_ms"] > 0
    assert auto["saved_bytes"] == reference["saved_bytes"]  # the backends compute and save alike
    assert auto["wall_x_first_backend"] == 1.0 and reference["wall_x_first_backend"] > 0  # paired in rounds
    assert reference["backend"] == "reference" and auto["step_x_naive"] > 0 and reference["cpu_x_naive"] > 0
    assert naive["max_batch_4gib"] == int(4 * 2**30 * 2 / naive["saved_bytes"])  # one size: a line through 0
    assert "x naive" in done.stdout and "x 1st backend" in done.stdout  # the printed table


@pytest.mark.parametrize(
    ("benchmark", "flag", "value", "minimum"),
    [("search_memory", "--layers", "0", 1), ("search_memory", "--cycles", "0", 1),
     ("search_memory", "--repeats", "0", 1), ("search_memory", "--batch-sizes", "0", 1),
     ("depthwise_conv", "--rounds", "0", 1), ("distributed_scaling", "--steps", "0", 1),
     ("distributed_scaling", "--batch-per-proc", "1", 2)],
)  # fmt: skip
def test_out_of_range_options_are_one_line_errors(capsys, benchmark, flag, value, minimum):
    """No cells, no cycles or timed rounds, no batch: an IndexError or a StatisticsError after minutes of work."""
    with pytest.raises(SystemExit) as stop:
        load_benchmark(benchmark).main([flag, value])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.endswith(f"argument {flag}: expected an integer >= {minimum}, got '{value}'")


def test_max_batch_extrapolates_a_least_squares_line():
    max_batch = load_benchmark("search_memory").max_batch
    rows = [{"batch": b, "saved_bytes": 2**20 + b * 2**24} for b in (16, 32, 64)]  # 1 MiB + 16 MiB per example
    assert max_batch(rows) == (4 * 2**30 - 2**20) // 2**24
    assert max_batch([{"batch": 8, "saved_bytes": 2**30}]) == 32


def test_x_naive_is_the_median_over_cycles_of_same_cycle_ratios():
    """A VM that slows between cycles moves both variants alike: the ratio of each cycle survives, not that of
    times taken in different cycles."""
    add_times = load_benchmark("search_memory").add_times

    def run(wall_ms: list[float], cpu_ms: list[float]) -> dict:
        return {"auto": {"wall_ms": wall_ms, "cpu_ms": cpu_ms}}

    cycles = [  # the machine 2x slower in the second cycle and 3x in the third
        {("naive", 16): run([100, 110], [100, 100]), ("pc_fused", 16): run([40, 50], [45, 45])},
        {("naive", 16): run([200, 220], [200, 200]), ("pc_fused", 16): run([90, 110], [100, 100])},
        {("naive", 16): run([300, 330], [300, 300]), ("pc_fused", 16): run([120, 120], [120, 120])},
    ]
    rows = [{"variant": v, "batch": 16, "kernels": "auto"} for v in ("naive", "pc_fused")]
    add_times(rows, cycles, rounds=2)
    naive, fused = rows
    assert naive["step_x_naive"] == naive["cpu_x_naive"] == 1.0 and naive["timed_cycles"] == 3
    assert fused["step_x_naive"] == round(45 / 105, 3)  # the median of 0.429, 0.476, 0.381; unpaired: 100 / 210
    assert fused["cpu_x_naive"] == 0.45  # the median of 0.45, 0.5, 0.4; unpaired: 100 / 200
    assert fused["step_ms"] == 100 and naive["step_ms"] == 210  # all rounds of all cycles
