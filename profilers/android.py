"""An Android phone over adb, timed by TensorFlow Lite's `benchmark_model` binary (supplied by the user).

Each op is converted to its own .tflite (as the tflite profiler does), pushed to a scratch directory on the
phone, and run with fixed threads, a delegate (CPU, XNNPACK, GPU, NNAPI) and optionally a `taskset` CPU mask
(pin to the big cores). The scratch directory is removed when the profiler closes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from torch import nn

from hwnas.errors import HwnasError
from hwnas.profilers.base import Profiler
from hwnas.profilers.benchmark_output import BenchmarkResult, parse_benchmark_output
from hwnas.profilers.protocol import Measurement
from hwnas.profilers.tflite import convert_tflite

log = logging.getLogger(__name__)
DELEGATE_FLAGS = {
    "cpu": ["--use_xnnpack=false"],
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}
REMOTE_DIR = "/data/local/tmp/hwnas"
IQR_PER_STD = 1.349  # IQR of a normal distribution in standard deviations: benchmark_model reports no quartiles
ADB_TIMEOUT_S = 600


def parse_devices(text: str) -> dict[str, str]:
    """`adb devices` output -> {serial: state} (state: device, unauthorized, offline, ...)."""
    devices = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            devices[parts[0]] = parts[1]
    return devices


def benchmark_command(
    binary: str,
    model: str,
    threads: int,
    warmup_runs: int,
    runs: int,
    delegate: str = "xnnpack",
    cpu_mask: str | None = None,
    op_profiling: bool = False,
) -> str:
    """The shell command run on the phone."""
    if delegate not in DELEGATE_FLAGS:
        raise HwnasError(f"unknown delegate {delegate!r}; known: {', '.join(DELEGATE_FLAGS)}")
    args = [
        binary,
        f"--graph={model}",
        f"--num_threads={threads}",
        f"--warmup_runs={warmup_runs}",
        f"--num_runs={runs}",
        *DELEGATE_FLAGS[delegate],
    ]
    if op_profiling:
        args.append("--enable_op_profiling=true")
    if cpu_mask:
        args = ["taskset", cpu_mask, *args]
    return " ".join(args)


class AndroidProfiler(Profiler):
    device = "android"
    runtime = "tflite-benchmark_model"

    def __init__(
        self,
        threads: int = 1,
        batch: int = 1,
        protocol=None,
        serial: str | None = None,
        binary: str | None = None,
        delegate: str = "xnnpack",
        cpu_mask: str | None = None,
        op_profiling: bool = False,
        adb: str = "adb",
    ):
        super().__init__(threads, batch, protocol)
        if delegate not in DELEGATE_FLAGS:
            raise HwnasError(f"unknown delegate {delegate!r}; known: {', '.join(DELEGATE_FLAGS)}")
        if cpu_mask is not None and not all(c in "0123456789abcdefABCDEF" for c in cpu_mask.removeprefix("0x")):
            raise HwnasError(f"--cpu-mask must be a hexadecimal taskset mask such as f0, got {cpu_mask!r}")
        self.delegate, self.cpu_mask, self.op_profiling = delegate, cpu_mask, op_profiling
        self.adb = shutil.which(adb)
        if self.adb is None:
            raise HwnasError(f"{adb!r} not found on PATH; install Android platform-tools to profile on a phone")
        if binary is None or not Path(binary).is_file():
            raise HwnasError(
                f"benchmark_model binary not found{f' at {binary}' if binary else ''}: pass --binary PATH "
                "(the android_aarch64 benchmark_model from the TensorFlow Lite / LiteRT releases)"
            )
        self.binary = Path(binary)
        self.serial: str | None = None
        self.serial = self._pick_device(serial)
        self.remote_binary = f"{REMOTE_DIR}/benchmark_model"
        self.last_result: BenchmarkResult | None = None
        self._run("shell", f"mkdir -p {REMOTE_DIR}")
        self._run("push", str(self.binary), self.remote_binary)
        self._run("shell", f"chmod 755 {self.remote_binary}")
        self._models = 0

    def _pick_device(self, serial: str | None) -> str:
        devices = parse_devices(self._adb("devices").stdout)
        if serial is not None and serial not in devices:
            raise HwnasError(f"no device {serial!r} attached (adb devices: {', '.join(devices) or 'none'})")
        if serial is None:
            if not devices:
                raise HwnasError(
                    "no Android device attached (adb devices lists none); connect one with USB debugging on"
                )
            if len(devices) > 1:
                raise HwnasError(
                    f"several devices attached ({', '.join(devices)}); choose with --serial (repeat it to shard "
                    "over phones of one model)"
                )
            serial = next(iter(devices))
        state = devices[serial]
        if state == "unauthorized":
            raise HwnasError(f"device {serial} is unauthorized: accept the USB debugging prompt on the phone")
        if state != "device":
            raise HwnasError(f"device {serial} is {state}; reconnect it (adb reconnect) and retry")
        return serial

    def _adb(self, *args: str) -> subprocess.CompletedProcess:
        command = [self.adb, *(["-s", self.serial] if self.serial else []), *args]
        log.debug("running %s", " ".join(command))
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=ADB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise HwnasError(f"adb {' '.join(args)} timed out after {ADB_TIMEOUT_S} s") from None

    def _run(self, *args: str) -> str:
        done = self._adb(*args)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise HwnasError(f"adb {args[0]} failed on {self.serial}: {message[-1] if message else done.returncode}")
        return done.stdout

    def versions(self) -> dict[str, str]:
        digest = hashlib.sha256(self.binary.read_bytes()).hexdigest()[:12]
        return {self.runtime: f"{self.binary.name} sha256:{digest}"}

    @functools.cached_property
    def _phone(self) -> dict[str, str]:
        props = {
            "model": "ro.product.model",
            "android": "ro.build.version.release",
            "soc": "ro.board.platform",
        }
        return {name: self._run("shell", "getprop", prop).strip() for name, prop in props.items()}

    def phone(self) -> dict[str, str]:
        """Model, Android release and SoC (read once per profiler)."""
        return dict(self._phone)

    def clock_name(self) -> str:
        return "benchmark_model"

    def device_name(self) -> str:
        return self.phone()["model"] or f"Android device {self.serial}"

    @property
    def label(self) -> str:
        return str(self.serial)

    def device_info(self) -> dict:
        return {"serial": self.serial, "model": self.device_name()}

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["phone"] = {"serial": self.serial, **self.phone(), "cpu_mask": self.cpu_mask}
        meta["delegate"] = self.delegate
        return meta

    def measure_tflite(self, model: bytes) -> Measurement:
        """Push one .tflite, run benchmark_model on it, remove it: median (else mean), IQR ≈ 1.349 std."""
        self._models += 1
        remote = f"{REMOTE_DIR}/op{self._models}.tflite"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "op.tflite"
            local.write_bytes(model)
            self._run("push", str(local), remote)
        try:
            command = benchmark_command(
                self.remote_binary,
                remote,
                self.threads,
                self.protocol.warmup_runs,
                self.protocol.runs,
                self.delegate,
                self.cpu_mask,
                self.op_profiling,
            )
            result = parse_benchmark_output(self._run("shell", command))
        finally:
            self._run("shell", f"rm -f {remote}")
        self.last_result = result
        for row in result.op_profile:
            log.debug("%s: %s %.3f ms (%s)", remote, row.node_type, row.avg_ms, row.name)
        typical_us = result.median_us if result.median_us is not None else result.avg_us
        iqr_ms = IQR_PER_STD * result.std_us / 1e3 if result.std_us is not None else 0.0
        return Measurement(typical_us / 1e3, iqr_ms, result.count or self.protocol.runs)

    def measure_module(self, module: nn.Module, shape: tuple[int, ...]) -> Measurement:
        return self.measure_tflite(convert_tflite(module, shape))

    def close(self) -> None:
        self._run("shell", f"rm -rf {REMOTE_DIR}")
