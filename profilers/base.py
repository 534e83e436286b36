"""The profiler interface: time one OpConfig (built into a model of its own) or a whole nn.Module."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers.build import build_op, input_shape
from hwnas.profilers.protocol import Measurement, Protocol, host_cpu_name, machine_metadata, measure, timed

RunBatch = Callable[[int], float]  # run the model n times, return the elapsed milliseconds
log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_converter():
    """Silence a model converter (torch.onnx's dynamo exporter, litert-torch): its progress on stdout, torch's
    pytree deprecation warning it triggers, and its C++ logging (one absl INFO line per converted model) on file
    descriptor 2, which Python's sys.stderr never sees. What went to descriptor 2 is logged: at DEBUG, or at
    WARNING when the conversion failed (it may say why)."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sink.seek(0)
            native = sink.read().decode(errors="replace").strip()
            if native:
                log.log(logging.WARNING if failed else logging.DEBUG, "converter output: %s", native)


class Profiler:
    """Subclasses set `device` (the registry name) and `runtime`, and implement `prepare` and `versions`."""

    device: ClassVar[str]
    runtime: ClassVar[str]

    def __init__(self, threads: int = 1, batch: int = 1, protocol: Protocol | None = None):
        if threads < 1:
            raise HwnasError(f"threads must be >= 1, got {threads}")
        if batch < 1:
            raise HwnasError(f"batch must be >= 1, got {batch}")
        self.threads, self.batch = threads, batch
        self.protocol = protocol or Protocol()

    def versions(self) -> dict[str, str]:
        """Runtime name -> version, for the table metadata."""
        raise NotImplementedError

    @property
    def runtime_version(self) -> str:
        return self.versions()[self.runtime]

    def prepare(self, module: nn.Module, shape: tuple[int, ...]) -> RunBatch:
        """Make `module` (eval mode) runnable on an input of NCHW `shape`; return its `run_batch`."""
        raise NotImplementedError

    def clock_name(self) -> str:
        return self.protocol.resolve_clock(self.threads)

    def measure_module(self, module: nn.Module, shape: tuple[int, ...]) -> Measurement:
        return measure(self.prepare(module.eval(), shape), self.protocol)

    def measure_model(self, key: str, build: Callable[[], nn.Module], shape: tuple[int, ...]) -> Measurement:
        """Time the module `build()` makes (an op, or a whole network) on an NCHW input of `shape`; `key` names
        it for profilers that cache their serialised models."""
        return self.measure_module(build(), shape)

    def measure_op(self, op: OpConfig) -> Measurement:
        return self.measure_model(op.key(), lambda: build_op(op), input_shape(op, self.batch))

    def host_timer(self, fn: Callable[[], object]) -> RunBatch:
        """`run_batch` for a runtime computing on the calling thread, with the protocol's clock."""
        return timed(fn, self.protocol.resolve_clock(self.threads))

    def gpu_name(self) -> str | None:
        return None

    def device_name(self) -> str:
        """The hardware, in words, for the table metadata (devices sharing one table share this)."""
        return host_cpu_name()

    @property
    def label(self) -> str:
        """This device among several of one model, for messages (an adb serial, ``cuda:1``)."""
        return self.device

    def device_info(self) -> dict:
        """What tells this device apart from others of its model, for the table's per-device metadata."""
        return {"model": self.device_name()}

    def metadata(self) -> dict:
        """What the table records about how it was measured."""
        return {
            "machine": machine_metadata(self.threads, self.versions(), self.gpu_name()),
            "protocol": {**self.protocol.to_json(), "clock": self.clock_name()},
        }

    def close(self) -> None:
        """Release what the profiler holds (the Android profiler removes its files from the phone)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ExportingProfiler(Profiler):
    """A profiler whose runtime loads a serialised model (ONNX, .tflite): export once, then load and time.

    With `cache_dir`, each model is exported once overall: repeated rounds in fresh processes reuse the files
    there (whole networks are large, so nothing is kept in memory).
    """

    suffix: ClassVar[str]  # file suffix of the serialised model

    def __init__(self, threads: int = 1, batch: int = 1, protocol: Protocol | None = None,
                 cache_dir: str | Path | None = None):  # fmt: skip
        super().__init__(threads, batch, protocol)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def export(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        raise NotImplementedError

    def load(self, model: bytes, shape: tuple[int, ...]) -> RunBatch:
        raise NotImplementedError

    def prepare(self, module: nn.Module, shape: tuple[int, ...]) -> RunBatch:
        return self.load(self.export(module, shape), shape)

    def exported(self, key: str, build: Callable[[], nn.Module], shape: tuple[int, ...]) -> bytes:
        """The serialised model of `build()` named `key`, from `cache_dir` when exported there before."""
        path = self.cache_dir / (hashlib.sha1(key.encode()).hexdigest()[:20] + self.suffix) if self.cache_dir else None
        if path is not None and path.is_file():
            model = path.read_bytes()
        else:
            model = self.export(build().eval(), shape)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(model)
                os.replace(tmp, path)
        return model

    def measure_model(self, key: str, build: Callable[[], nn.Module], shape: tuple[int, ...]) -> Measurement:
        return measure(self.load(self.exported(key, build, shape), shape), self.protocol)


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def missing_extra(package: str, err: ImportError) -> HwnasError:
    return HwnasError(f'{package} is not installed ({err}); install the export extra: pip install "hwnas[export]"')


def import_extra(module: str, package: str):
    """`import module`, or the one-line error naming `package` and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(package, err) from None
