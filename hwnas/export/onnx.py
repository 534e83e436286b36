"""ONNX: `torch.onnx.export` with the dynamo (torch.export-based) exporter, checked by `onnx.checker`, run by
ONNX Runtime's CPU execution provider with the session settings the `onnxruntime` profiler times ops with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.errors import first_line_error
from hwnas.export.runner import ExportedModel
from hwnas.profilers.base import import_extra, quiet_converter
from hwnas.profilers.onnxruntime import onnx_session

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> str:
    """Write `module` (eval mode) traced on `example` to `path`, weights inline (external data only past
    ONNX's 2 GB limit); returns the opset, e.g. ``opset 20``. A dynamic batch needs an example batch >= 2."""
    onnx = import_extra("onnx", "onnx")
    import_extra("onnxscript", "onnxscript")  # the dynamo exporter's ONNX builder
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        with quiet_converter():
            program = torch.onnx.export(
                module.eval(), (example,), dynamo=True, dynamic_shapes=dynamic_shapes,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )  # fmt: skip
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; any means "cannot export"
        raise first_line_error("ONNX export failed (an op without an ONNX translation?)", err) from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise first_line_error("the exported ONNX model fails onnx.checker", err) from None
    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return f"opset {opset}"


class OnnxModel(ExportedModel):
    def __init__(self, path: Path, threads: int = 1):
        self.session = onnx_session(str(path), threads)
        self.input = self.session.get_inputs()[0]
        self.threads = threads
        self.batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None

    @property
    def input_shape(self) -> list[int | str]:
        return list(self.input.shape)

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def invoker(self, x: np.ndarray) -> Callable[[], object]:
        feed = {self.input.name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: self.session.run(None, feed)
