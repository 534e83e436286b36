"""benchmarks/search_memory.py end to end at tiny batches: memory rows from fresh processes, step times paired."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.kernels.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "search_memory.py"


def test_rows_hold_memory_and_round_robin_times(tmp_path: Path):
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(SCRIPT), "--batch-sizes", "1", "2", "--variants", "naive", "pc_fused",
           "--backends", "auto", "reference", "--repeats", "2", "--cycles", "2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert sorted((r["variant"], r["kernels"], r["batch"]) for r in rows) == [
        ("naive", "auto", 1), ("naive", "auto", 2), ("pc_fused", "auto", 1), ("pc_fused", "auto", 2),
        ("pc_fused", "reference", 1), ("pc_fused", "reference", 2),
    ]  # fmt: skip
    by = {(r["variant"], r["kernels"], r["batch"]): r for r in rows}
    for batch in (1, 2):
        naive = by["naive", "auto", batch]
        assert naive["timed_rounds"] == 2 and naive["timed_cycles"] == 2 and naive["step_ms"] > 0
        assert "wall_x_first_backend" not in naive and naive["step_x_naive"] == naive["cpu_x_naive"] == 1.0
        auto, reference = by["pc_fused", "auto", batch], by["pc_fused", "reference", batch]
        assert auto["saved_bytes"] < naive["saved_bytes"] and auto["step_ms"] > 0
        assert auto["wall_x_first_backend"] == 1.0 and reference["wall_x_first_backend"] > 0  # paired in rounds
        assert reference["backend"] == "reference" and auto["step_x_naive"] > 0 and reference["cpu_x_naive"] > 0
    assert by["naive", "auto", 2]["saved_bytes"] > by["naive", "auto", 1]["saved_bytes"]
    assert "x naive" in done.stdout and "x 1st backend" in done.stdout  # the printed table
