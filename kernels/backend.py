"""Which implementation runs hwnas.kernels: Triton on CUDA tensors, the native library, or plain PyTorch.

Per tensor: Triton for CUDA tensors when triton is installed and the tensor is large enough to repay a launch;
else the native library (`CMakeLists.txt` at the repository root builds `kernels/native/libhwnas_native.so`,
registering `torch.ops.hwnas.*`) for the devices it was built for; else the PyTorch reference, always correct,
only slower. `$HWNAS_KERNELS` narrows the choice, to compare implementations on one device: `triton` (Triton
for CUDA tensors of any size), `native` (the native library where built, else the reference), `reference`, or
`auto` (the default). Nothing here touches CUDA at import time; the native library is loaded on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from hwnas.errors import HwnasError

try:
    import triton
    import triton.language as tl
except ImportError:  # the @jit kernels then stay plain functions that nothing launches
    triton = None
    tl = None

log = logging.getLogger(__name__)

ENV_VAR = "HWNAS_KERNELS"
CHOICES = ("auto", "triton", "native", "reference")
NATIVE_LIBRARY = Path(__file__).resolve().parent / "native" / "libhwnas_native.so"
BUILD_COMMAND = (
    'cmake -S . -B build/native -DPython3_EXECUTABLE="$(command -v python)" && cmake --build build/native -j'
)

_native_status: str | None = None  # None before the first load attempt, "loaded" once torch.ops.hwnas exists
_native_kernels: dict[tuple[str, str], bool] = {}  # (device type, op) -> the library has that op's kernel for it


def jit(fn):
    """`triton.jit` when Triton is installed; otherwise the plain function, which is then never launched."""
    return triton.jit(fn) if triton is not None else fn


def load_native() -> bool:
    """Load the native library if it is built (again after building it); True once torch.ops.hwnas exists."""
    global _native_status
    if _native_status == "loaded":
        return True
    _native_kernels.clear()
    if not NATIVE_LIBRARY.exists():
        _native_status = "not built"
    else:
        try:
            torch.ops.load_library(str(NATIVE_LIBRARY))
            _native_status = "loaded"
        except (OSError, RuntimeError) as err:  # e.g. built against another torch
            _native_status = f"failed to load: {err}"
            log.warning("hwnas native kernels %s; the PyTorch reference runs instead", _native_status)
    return _native_status == "loaded"


def _native_for(device_type: str, op: str = "dot") -> bool:
    """Whether the native library has torch.ops.hwnas.<op> for the device (a library built from older sources
    lacks the ops added since)."""
    if (device_type, op) not in _native_kernels:
        if _native_status is None:
            load_native()
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
        has = False
        if _native_status == "loaded" and key:
            try:
                has = torch._C._dispatch_has_kernel_for_dispatch_key(f"hwnas::{op}", key)
            except RuntimeError:  # no such op in this build
                has = False
        _native_kernels[device_type, op] = has
    return _native_kernels[device_type, op]


def requested() -> str:
    """The `$HWNAS_KERNELS` choice; anything outside CHOICES is an error naming them."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise HwnasError(f"${ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(CHOICES)}")
    return choice


def kernel_backend(device: torch.device, numel: int | None = None, triton_min_numel: int = 0) -> str:
    """What runs a kernel on `numel` elements (None: any number) on `device`: "triton", "native" or "reference".

    Under `auto`, Triton takes CUDA tensors of at least `triton_min_numel` elements: below that a launch (~10 µs
    of host work) costs more than the torch op it replaces."""
    choice = requested()
    if choice == "reference":
        return "reference"
    if device.type == "cuda" and triton is not None:
        if choice == "triton" or (choice == "auto" and (numel is None or numel >= triton_min_numel)):
            return "triton"
    return "native" if _native_for(device.type) else "reference"


def native_op(op: str, device: torch.device) -> bool:
    """Whether torch.ops.hwnas.<op> runs for `device`: a native-only kernel (no Triton version) under `auto` or
    `native`, where the library is built with it."""
    return requested() != "reference" and _native_for(device.type, op)


def backend_report() -> dict[str, str]:
    """For `hwnas info` and the search log: the backend per device, and why the others are not used."""
    load_native()
    native = str(NATIVE_LIBRARY) if _native_status == "loaded" else f"{_native_status}; build: {BUILD_COMMAND}"
    return {
        "kernels_requested": f"{requested()} (${ENV_VAR})",
        "kernels_cpu": kernel_backend(torch.device("cpu")),
        "kernels_cuda": _cuda_backends() if torch.cuda.is_available() else "no CUDA device",
        "kernels_native": native,
        "triton": triton.__version__ if triton is not None else "not installed",
    }


def _cuda_backends() -> str:
    cuda = torch.device("cuda")
    large, small = kernel_backend(cuda), kernel_backend(cuda, 0, 1)
    return large if large == small else f"{large} on large tensors, {small} on small ones"
