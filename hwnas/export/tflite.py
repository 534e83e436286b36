"""TFLite (LiteRT): converted by litert-torch, quantised by ai-edge-quantizer, run by the LiteRT interpreter.

- float32: `litert_torch.convert(module, (example,))`, the maintained PyTorch-to-LiteRT converter (formerly
  ai-edge-torch), which lowers torch.export programs straight to a .tflite flatbuffer.
- fp16: ai-edge-quantizer's weight-only float casting (the recipe behind litert-torch's `full_fp16_recipe`):
  weights stored in float16, computed in float32.
- int8: ai-edge-quantizer's static int8 recipe (`static_wi8_ai8`: per-channel int8 weights, int8
  activations) calibrated on training inputs. The model's input and output tensors are int8 too (full-integer
  model); `TfliteModel` quantises inputs and dequantises outputs with the tensors' scale and zero point.
  litert-torch 0.10's own PT2E route (torchao `prepare_pt2e` / `convert_pt2e` with its `PT2EQuantizer`) gives
  the same kind of model but takes ~70 s for a 3-cell DARTS network on 2 cores, against < 1 s here.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from hwnas.export.errors import conversion_error
from hwnas.export.runner import ExportedModel
from hwnas.profilers.base import missing_extra

QUANTIZATIONS = ("fp16", "int8")


def _litert_torch():
    try:
        import litert_torch
    except ImportError as err:
        raise missing_extra("litert-torch", err) from None
    litert_torch.config.show_progress = False
    return litert_torch


def _quantizer():
    try:
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe
    except ImportError as err:
        raise missing_extra("ai-edge-quantizer", err) from None
    return algorithm_manager, qtyping, quantizer, recipe


def convert_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    """The float32 .tflite flatbuffer of `module` (eval mode) traced on `example` (its batch is fixed)."""
    litert_torch = _litert_torch()
    logging.disable(logging.INFO)  # it logs every lowered op at INFO on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = litert_torch.convert(module.eval(), (example,))
        return bytes(model.model_content())
    except Exception as err:  # noqa: BLE001 - the converter raises many types; any means "cannot convert"
        raise conversion_error("TFLite conversion failed (an op litert-torch cannot lower?)", err) from None
    finally:
        logging.disable(logging.NOTSET)


def quantize_tflite(flatbuffer: bytes, mode: str, calibration: Iterable[np.ndarray] = ()) -> bytes:
    """`flatbuffer` quantised to `mode`: "fp16", or "int8" calibrated on `calibration` (float32 inputs of the
    model's input shape)."""
    algorithm_manager, qtyping, quantizer, recipe = _quantizer()
    try:
        if mode == "fp16":
            q = quantizer.Quantizer(flatbuffer)
            q.add_weight_only_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16,
                                     qtyping.QuantGranularity.TENSORWISE,
                                     algorithm_manager.AlgorithmName.FLOAT_CASTING)  # fmt: skip
            return bytes(q.quantize(enable_progress_report=False).quantized_model)
        q = quantizer.Quantizer(flatbuffer, recipe.static_wi8_ai8())
        signature, name = _signature_input(flatbuffer)
        samples = [{name: np.asarray(x, dtype=np.float32)} for x in calibration]
        with contextlib.redirect_stderr(io.StringIO()):  # its calibration progress bar
            qsvs = q.calibrate({signature: samples}, num_threads=1)
        return bytes(q.quantize(qsvs, enable_progress_report=False).quantized_model)
    except Exception as err:  # noqa: BLE001 - the quantiser raises many types
        raise conversion_error(f"{mode} quantisation failed", err) from None


def _signature_input(flatbuffer: bytes) -> tuple[str, str]:
    """(signature key, input name) of a single-input model."""
    interpreter = _interpreter_class()(model_content=flatbuffer)
    signature, io_names = next(iter(interpreter.get_signature_list().items()))
    return signature, io_names["inputs"][0]


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise missing_extra("ai-edge-litert", err) from None
    return Interpreter


class TfliteModel(ExportedModel):
    """The LiteRT interpreter with its default op resolver (XNNPACK), as the `tflite` profiler times ops."""

    def __init__(self, flatbuffer: bytes, threads: int = 1):
        self.interpreter = _interpreter_class()(model_content=flatbuffer, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.threads = threads
        self.batch = int(self.input["shape"][0])

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.input["shape"]]

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.input["dtype"]).name

    def _feed(self, x: np.ndarray) -> None:
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind == "i":  # full-integer model: quantise with the input tensor's scale and zero point
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x, dtype=dtype))

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        self._feed(x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        if out.dtype.kind == "i":
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return np.array(out, dtype=np.float32)

    def invoker(self, x: np.ndarray) -> Callable[[], object]:
        self._feed(x)
        return self.interpreter.invoke
