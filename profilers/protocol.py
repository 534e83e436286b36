"""The one measurement protocol every profiler follows, and the machine metadata stored with its results.

Warm-up runs, then `runs` timed samples; each sample times enough back-to-back calls to last `min_sample_ms`
(timeit's autorange idea, so sub-millisecond ops are not dominated by timer resolution). Samples outside
Tukey's fences (1.5 IQR beyond the quartiles) are rejected; the result is the median and IQR of the rest.

Clock: single-threaded host runtimes (PyTorch, ONNX Runtime and LiteRT at 1 thread all compute on the calling
thread) are timed by default with the calling thread's CPU time (`time.thread_time`), which does not count
time the thread waits while other processes hold the core. On a shared 2-core machine under load, wall-clock
medians of a whole network came out 3-4x the uncontended figure while its thread CPU time stayed within a few
percent. With several threads, or with ``clock="wall"``, the wall clock (`time.perf_counter`) is used.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwnas.errors import HwnasError

log = logging.getLogger(__name__)
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


@dataclass(frozen=True)
class Protocol:
    warmup_runs: int = 10
    runs: int = 30
    min_sample_ms: float = 2.0
    outlier_iqr: float = 1.5  # Tukey's fence factor; 0 disables rejection
    clock: str = "auto"  # "wall", "thread" (CPU time of the calling thread), "auto": thread when single-threaded

    def __post_init__(self):
        for name, counted in (("warmup_runs", True), ("runs", True), ("min_sample_ms", False), ("outlier_iqr", False)):
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(value, int if counted else int | float)
            if not number or (not counted and not 0 <= value < math.inf):  # NaN fails 0 <= NaN
                expected = "an integer" if counted else "a finite number >= 0"
                raise HwnasError(f"protocol {name} must be {expected}, got {value!r}")
        if self.warmup_runs < 0:
            raise HwnasError(f"warm-up runs must be >= 0, got {self.warmup_runs}")
        if self.runs < 3:
            raise HwnasError(f"a measurement needs at least 3 runs, got {self.runs}")
        if not isinstance(self.clock, str) or (self.clock not in CLOCKS and self.clock != "auto"):
            raise HwnasError(f"unknown clock {self.clock!r}; known: auto, {', '.join(CLOCKS)}")

    def resolve_clock(self, threads: int) -> str:
        """The clock a host measurement with `threads` threads uses."""
        if self.clock == "auto":
            return "thread" if threads == 1 else "wall"
        if self.clock == "thread" and threads > 1:
            raise HwnasError("the thread CPU-time clock only measures single-threaded runs; use --clock wall")
        return self.clock

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Protocol:
        """The protocol that repeats one recorded in a table's metadata. Its clock is the one the measurement
        resolved to: a host clock is kept; a device's own (the GPU profiler's CUDA events) is not the
        protocol's to choose, so it becomes "auto"."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not isinstance(fields.get("clock"), str) or fields["clock"] not in CLOCKS:
            fields["clock"] = "auto"
        return cls(**fields)


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    iqr_ms: float
    runs: int  # samples kept after outlier rejection


def summarize(samples_ms: list[float] | np.ndarray, outlier_iqr: float = 1.5) -> Measurement:
    """Median and IQR of the samples inside Tukey's fences."""
    samples = np.asarray(samples_ms, dtype=float)
    if samples.size == 0 or not np.all(np.isfinite(samples)):
        raise ValueError(f"cannot summarise samples {samples_ms!r}")
    q1, q3 = np.percentile(samples, [25, 75])
    if outlier_iqr > 0:
        fence = outlier_iqr * (q3 - q1)
        samples = samples[(samples >= q1 - fence) & (samples <= q3 + fence)]
        q1, q3 = np.percentile(samples, [25, 75])
    return Measurement(float(np.median(samples)), float(q3 - q1), int(samples.size))


def measure(run_batch: Callable[[int], float], protocol: Protocol) -> Measurement:
    """Time `run_batch(n)` (runs the op n times, returns the elapsed milliseconds) under `protocol`."""
    warm_ms = run_batch(max(1, protocol.warmup_runs)) / max(1, protocol.warmup_runs)
    number = max(1, math.ceil(protocol.min_sample_ms / max(warm_ms, 1e-6)))
    samples = [run_batch(number) / number for _ in range(protocol.runs)]
    return summarize(samples, protocol.outlier_iqr)


def timed(fn: Callable[[], object], clock: str) -> Callable[[int], float]:
    """A `run_batch` for host runtimes: n calls of `fn`, timed with `clock` ("wall" or "thread")."""
    now = CLOCKS[clock]

    def run_batch(n: int) -> float:
        start = now()
        for _ in range(n):
            fn()
        return (now() - start) * 1e3

    return run_batch


@functools.cache
def _first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if not key and fields:  # the first processor's block has ended
                    break
                fields.setdefault(key, value)
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _first_cpu().get("model name") or platform.processor() or platform.machine()


@functools.cache
def cpu_signature() -> str:
    """What tells apart CPUs sold (or virtualised) under one name, e.g. a VM's "Intel(R) Xeon(R) Processor": the
    first CPU's family, model and stepping and its L2 size, as Linux reports them; "" where it does not."""
    wanted, fields = ("cpu family", "model", "stepping"), _first_cpu()
    if not all(fields.get(k, "").isdigit() for k in wanted):
        return ""
    signature = "family {} model {} stepping {}".format(*(fields[k] for k in wanted))
    for cache in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (cache / "level").read_text().strip() == "2":
                return f"{signature}, L2 {(cache / 'size').read_text().strip()}"
        except OSError:
            continue
    return signature


def host_cpu_name() -> str:
    """This machine's CPU as host profilers name their device in a table (`metadata.device`)."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def machine_metadata(threads: int, versions: dict[str, str], gpu: str | None = None) -> dict:
    """CPU model and signature, core count, threads used, OS, Python and runtime versions, and GPU name if any."""
    import torch

    meta = {
        "cpu": cpu_model(),
        "cpu_signature": cpu_signature(),
        "cores": os.cpu_count(),
        "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, **versions},
    }
    if gpu is not None:
        meta["gpu"] = gpu
    return meta
