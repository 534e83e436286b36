"""ONNX Runtime, CPU execution provider, fixed intra-op threads: each module exported to its own ONNX model.

Export uses `torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter, PyTorch's default since
2.9);
ONNX Runtime applies its full graph optimisation (BatchNorm folding, activation fusion) at session creation.
"""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from hwnas.profilers.base import ExportingProfiler, RunBatch, example_input, import_extra, quiet_converter

log = logging.getLogger(__name__)


def _ort():
    return import_extra("onnxruntime", "onnxruntime")


def export_onnx(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """The ONNX model (serialised) of `module` in eval mode on an input of NCHW `shape`."""
    import torch

    import_extra("onnxscript", "onnxscript")  # the dynamo exporter needs it
    with quiet_converter():
        program = torch.onnx.export(module.eval(), (example_input(shape),), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def onnx_session(model: bytes | str, threads: int):
    """An ONNX Runtime session for `model` (serialised, or a file path) as hwnas times every ONNX model: CPU
    execution provider, `threads` intra-op threads, sequential execution, full graph optimisation."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeProfiler(ExportingProfiler):
    device = "onnxruntime"
    runtime = "onnxruntime"
    suffix = ".onnx"

    def versions(self) -> dict[str, str]:
        import torch

        return {"onnxruntime": _ort().__version__, "torch.onnx": torch.__version__}

    def export(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        _ort()
        return export_onnx(module, shape)

    def load(self, model: bytes, shape: tuple[int, ...]) -> RunBatch:
        session = onnx_session(model, self.threads)
        feed = {session.get_inputs()[0].name: example_input(shape).numpy().astype(np.float32)}
        return self.host_timer(lambda: session.run(None, feed))
