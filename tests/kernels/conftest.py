from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from dataclasses import dataclass
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
    build.mkdir(parents=True, exist_ok=True)
    with (build.parent / "native.lock").open("w") as lock:  # one build at a time: each pytest-xdist worker asks
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in (
            ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
            ["cmake", "--build", str(build), "-j2"],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert backend.load_native(), backend._native_status
    return torch.ops.hwnas


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@dataclass(frozen=True)
class Kernels:
    name: str  # the backend kernel_backend() picks for tensors on `device`
    device: torch.device


@pytest.fixture(
    params=[
        "reference-cpu",
        "native-cpu",
        pytest.param("triton-cuda", marks=needs_cuda),
        pytest.param("native-cuda", marks=needs_cuda),
        pytest.param("reference-cuda", marks=needs_cuda),
    ]
)
def kernels(request, monkeypatch):
    """Run a test on each backend of each device here: the PyTorch reference and the native library (built on
    first use) on the CPU; on a GPU also Triton (at every size: `auto` leaves small tensors to torch) and the
    native CUDA kernels.
    $HWNAS_KERNELS selects the backend, as a user would; TF32 is off so that CUDA compares in float32."""
    name, device = request.param.split("-")
    if name == "native":
        if device == "cuda" and not shutil.which("nvcc"):
            pytest.skip("no nvcc: the native library was built without CUDA kernels")
        request.getfixturevalue("native_ops")
    if name == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv(backend.ENV_VAR, name)
    if device == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    setup = Kernels(name, torch.device(device))
    assert backend.kernel_backend(setup.device) == name, f"{name} does not run on {device} here"
    return setup
