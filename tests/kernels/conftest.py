from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwnas.kernels import backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy machine OpenMP barriers stall them badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def native_ops():
    """Build the native library with CMake as the README says (incremental: build/native is kept), load it."""
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("no cmake or C++ compiler")
    build = ROOT / "build" / "native"
    for cmd in (
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build), "-j2"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert backend.load_native(), backend._native_status
    return torch.ops.hwnas


@pytest.fixture(params=["reference", "native"])
def cpu_backend(request, monkeypatch):
    """Run a test on the PyTorch reference kernels and on the native library (built on first use)."""
    if request.param == "native":
        request.getfixturevalue("native_ops")
    monkeypatch.setattr(backend, "kernel_backend", lambda device: request.param)
    return request.param
