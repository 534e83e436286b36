"""Latency profilers, registered by device name: cpu, onnxruntime, tflite, gpu, android.

Importing this package loads no runtime: onnxruntime, litert-torch and ai-edge-litert are imported when a
profiler needs them, and CUDA is touched only when a gpu profiler is created.
"""

from __future__ import annotations

from hwnas.profilers.android import AndroidProfiler
from hwnas.profilers.base import ExportingProfiler, Profiler
from hwnas.profilers.cpu import CpuProfiler
from hwnas.profilers.gpu import GpuProfiler
from hwnas.profilers.onnxruntime import OnnxRuntimeProfiler
from hwnas.profilers.protocol import Measurement, Protocol
from hwnas.profilers.tflite import TfliteProfiler
from hwnas.registry import Registry

PROFILERS: Registry[type[Profiler]] = Registry("profiler device")
for _cls in (CpuProfiler, OnnxRuntimeProfiler, TfliteProfiler, GpuProfiler, AndroidProfiler):
    PROFILERS.register(_cls.device)(_cls)


def get_profiler(device: str, **options) -> Profiler:
    """A profiler for `device` (threads=, batch=, protocol=, and the device's own options)."""
    return PROFILERS.get(device)(**options)


__all__ = ["PROFILERS", "ExportingProfiler", "Measurement", "Profiler", "Protocol", "get_profiler"]
