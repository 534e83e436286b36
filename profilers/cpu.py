"""PyTorch eager on the host CPU with a fixed intra-op thread count.

Eager PyTorch frees every activation after use; with glibc's defaults each large buffer is a fresh mmap, so a
mobile network at 224 page-faults ~3500 times per inference on this VM, which made a third of its CPU time
kernel work and its figures vary ±20% between processes. While the profiler is open, freed memory stays in the
process (glibc `mallopt`: no mmap for large blocks, no heap trimming), so it times the computation, as a
runtime with a caching allocator would see it; closing the profiler restores glibc's default thresholds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch
from torch import nn

from hwnas.profilers.base import Profiler, RunBatch, example_input

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
KEEP_THRESHOLD = 1 << 30


def _set_malloc_thresholds(value: int) -> bool:
    """Set glibc's mmap and trim thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, value)) and bool(libc.mallopt(M_TRIM_THRESHOLD, value))


class CpuProfiler(Profiler):
    device = "cpu"
    runtime = "pytorch"

    def __init__(self, threads: int = 1, batch: int = 1, protocol=None):
        super().__init__(threads, batch, protocol)
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._kept_memory = _set_malloc_thresholds(KEEP_THRESHOLD)
        if not self._kept_memory:
            log.debug("not glibc: eager allocations may page-fault during timing")

    def versions(self) -> dict[str, str]:
        return {"pytorch": torch.__version__}

    def metadata(self) -> dict:
        return {**super().metadata(), "freed_memory_kept": self._kept_memory}

    def prepare(self, module: nn.Module, shape: tuple[int, ...]) -> RunBatch:
        x = example_input(shape)

        @torch.inference_mode()
        def run():
            module(x)

        return self.host_timer(run)

    def close(self) -> None:
        torch.set_num_threads(self._previous_threads)
        if self._kept_memory:
            _set_malloc_thresholds(GLIBC_DEFAULT_THRESHOLD)
