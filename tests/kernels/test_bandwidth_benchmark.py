"""benchmarks/kernel_bandwidth.py and benchmarks/gpu_checks.sh: a clear exit without a GPU; on one, every
operation and backend measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels.conftest import ROOT, needs_cuda

SCRIPT = ROOT / "benchmarks" / "kernel_bandwidth.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the run below")
def test_without_cuda_exits_2_with_one_line():
    done = run()
    assert done.returncode == 2 and done.stderr.strip() == "kernel_bandwidth: needs a CUDA GPU; torch sees none here"


@needs_cuda
def test_small_run_on_cuda(tmp_path: Path):
    out = tmp_path / "bandwidth.json"
    done = run("--sizes", "5000", "--calls", "2", "--samples", "3", "--warmup", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    ops = {(r["op"], r["impl"]) for r in rows}
    assert {("copy", "torch"), ("accumulate", "triton"), ("shuffle", "reference"), ("dot", "triton")} <= ops
    assert all(r["gb_s"] > 0 and r["ms"] > 0 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run in earnest")
def test_gpu_checks_script_stops_at_once_without_cuda(tmp_path: Path):
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "gpu_checks: needs a CUDA GPU; torch sees none here"
    assert not any((tmp_path / "out").iterdir())  # nothing built, tested or measured
