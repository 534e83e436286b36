"""Import hygiene and fallbacks: no triton, no native library, no CUDA touched at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.kernels import backend, backend_report


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_triton_or_native_library():
    out = run_python(
        """
        import sys
        from pathlib import Path
        sys.modules["triton"] = None  # import triton raises ImportError
        import torch
        import hwnas, hwnas.kernels
        from hwnas.kernels import backend, mixed_op, partial_channel
        backend.NATIVE_LIBRARY = Path("/nonexistent/libhwnas_native.so")
        assert not torch.cuda.is_initialized()
        ops = torch.nn.ModuleList([torch.nn.Conv2d(2, 2, 1), torch.nn.Identity()])
        x = torch.randn(1, 4, 3, 3, requires_grad=True)
        w = torch.tensor([0.3, 0.7], requires_grad=True)
        mixed = mixed_op.fused_mixed_op(x[:, :2], w, ops, [0, 1])
        y = partial_channel.partial_channel_shuffle(mixed, x[:, 2:], 2)
        y.square().sum().backward()
        report = hwnas.kernels.backend_report()
        assert report["kernels_cpu"] == "reference" and report["triton"] == "not installed", report
        assert report["kernels_native"].startswith("not built"), report
        assert not torch.cuda.is_initialized()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_report_names_every_backend():
    report = backend_report()
    assert set(report) == {"kernels_requested", "kernels_cpu", "kernels_cuda", "kernels_native", "triton"}
    assert report["kernels_cpu"] in ("native", "reference")


def test_environment_narrows_the_backend(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    assert backend.kernel_backend(cpu) == "reference" and backend_report()["kernels_requested"].startswith("ref")
    monkeypatch.setenv(backend.ENV_VAR, "native")
    monkeypatch.setattr(backend, "_native_for", lambda device_type: True)
    assert backend.kernel_backend(torch.device("cuda")) == "native"  # not Triton, even where it is installed
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    with pytest.raises(HwnasError, match=r"\$HWNAS_KERNELS='fast': expected one of auto, triton, native, reference"):
        backend.kernel_backend(cpu)


def test_auto_leaves_small_cuda_tensors_to_torch(monkeypatch):
    """No CUDA is touched: the choice depends on the device type, the size and what is installed."""
    pytest.importorskip("triton")
    cuda = torch.device("cuda")
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_native_for", lambda device_type: False)
    assert backend.kernel_backend(cuda, 1 << 20, 1 << 22) == "reference"
    assert backend.kernel_backend(cuda, 1 << 22, 1 << 22) == "triton"
    assert backend.kernel_backend(cuda) == "triton"
    assert backend.kernel_backend(torch.device("cpu"), 1 << 30, 1 << 22) == "reference"
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert backend.kernel_backend(cuda, 1, 1 << 22) == "triton"
    assert backend.kernel_backend(torch.device("cpu"), 1 << 30) == "reference"  # Triton only for CUDA tensors
