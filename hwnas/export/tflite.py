"""TFLite (LiteRT): converted by litert-torch, quantised by ai-edge-quantizer, run by the LiteRT interpreter.

- float32: `litert_torch.convert(module, (example,))`, the maintained PyTorch-to-LiteRT converter (formerly
  ai-edge-torch), which lowers torch.export programs straight to a .tflite flatbuffer.
- fp16: ai-edge-quantizer's weight-only float casting (the recipe behind litert-torch's `full_fp16_recipe`):
  weights stored in float16, computed in float32.
- int8: ai-edge-quantizer's static int8 recipe (`static_wi8_ai8`: per-channel int8 weights, asymmetric int8
  activations) on the float32 flatbuffer, calibrated on training inputs with each tensor's extreme values
  (`qsv_utils.min_max_update`). Its default calibration keeps a moving average (factor 0.95) of per-sample
  ranges, which clips rarer large activations: on a DARTS network trained 2 epochs on digits that gave 94%
  top-1 agreement with float32, against 97.5-98.6% with the extremes (100% on a network trained 10 epochs).
  The input and output tensors are int8 too (a full-integer model); `TfliteModel` quantises inputs and
  dequantises outputs with their scale and zero point. litert-torch's own PT2E route (torchao `prepare_pt2e`
  / `convert_pt2e` with its `PT2EQuantizer`) agrees as well (98.1% and 100% on the same networks) but takes
  40-80 s per conversion on 2 cores, against ~2 s here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hwnas.errors import first_line_error
from hwnas.export.runner import ExportedModel
from hwnas.profilers.base import missing_extra, quiet_converter
from hwnas.profilers.tflite import interpreter_module, litert_torch_module

log = logging.getLogger(__name__)


def _quantizer():
    try:
        from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils
    except ImportError as err:
        raise missing_extra("ai-edge-quantizer", err) from None
    return SimpleNamespace(algorithm_manager=algorithm_manager, calibrator=calibrator, qtyping=qtyping,
                           quantizer=quantizer, recipe=recipe, recipe_manager=recipe_manager,
                           qsv_utils=qsv_utils)  # fmt: skip


@contextlib.contextmanager
def _quiet():
    """Silence the converter and quantiser: progress on stdout and stderr, C++ logging, every lowered op logged
    at INFO on the root logger."""
    logging.disable(logging.INFO)
    try:
        with quiet_converter(), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


class PadExcludingAvgPool(nn.Module):
    """`nn.AvgPool2d(count_include_pad=False)` as average pooling that counts the padding, divided by each
    window's share of in-image elements: the same numbers, in ops ai-edge-quantizer calibrates for int8. (It finds
    no quantisation parameters for the reduce-window lowering of the padding-excluding form, so int8 exports of
    DARTS cells with `avg_pool_3x3` failed.)"""

    def __init__(self, pool: nn.AvgPool2d):
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        self.ceil_mode = pool.ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)  # (1, 1, H, W)

        def pool(t):
            return nn.functional.avg_pool2d(t, self.kernel_size, self.stride, self.padding, self.ceil_mode, True)

        return pool(x) / pool(ones)


def with_quantizable_pools(module: nn.Module) -> nn.Module:
    """A copy of `module` whose padding-excluding average pools are `PadExcludingAvgPool`s."""
    module = copy.deepcopy(module)
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.AvgPool2d and not child.count_include_pad and child.divisor_override is None:
                setattr(parent, name, PadExcludingAvgPool(child))
    return module


def convert_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    """The float32 .tflite flatbuffer of `module` (eval mode) traced on `example` (its batch is fixed)."""
    with _quiet():  # importing litert-torch logs a torch deprecation warning
        litert_torch = litert_torch_module()
    try:
        with _quiet():
            return bytes(litert_torch.convert(module.eval(), (example,)).model_content())
    except Exception as err:  # noqa: BLE001 - the converter raises many types; any means "cannot convert"
        raise first_line_error("TFLite conversion failed (an op litert-torch cannot lower?)", err) from None


def quantize_tflite(flatbuffer: bytes, mode: str, calibration: Iterable[np.ndarray] = ()) -> bytes:
    """`flatbuffer` quantised to `mode`: "fp16", or "int8" calibrated on `calibration` (float32 inputs of the
    model's input shape)."""
    aeq = _quantizer()
    try:
        with _quiet(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            if mode == "fp16":
                q = aeq.quantizer.Quantizer(flatbuffer)
                q.add_weight_only_config(".*", aeq.qtyping.TFLOperationName.ALL_SUPPORTED, 16,
                                         aeq.qtyping.QuantGranularity.TENSORWISE,
                                         aeq.algorithm_manager.AlgorithmName.FLOAT_CASTING)  # fmt: skip
                result = q.quantize(enable_progress_report=False)
            else:
                q = aeq.quantizer.Quantizer(flatbuffer, aeq.recipe.static_wi8_ai8())
                result = q.quantize(_extreme_ranges(aeq, flatbuffer, calibration), enable_progress_report=False)
    except Exception as err:  # noqa: BLE001 - the quantiser raises many types
        raise first_line_error(f"{mode} quantisation failed", err) from None
    numeric = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if numeric:  # e.g. an activation with a ~0 calibrated range (untrained weights): bias scales vanish
        log.warning("%s quantisation hit a degenerate range (%s); the model may be inaccurate", mode,
                    numeric[0].message)  # fmt: skip
    return bytes(result.quantized_model)


def _extreme_ranges(aeq, flatbuffer: bytes, calibration: Iterable[np.ndarray]) -> dict:
    """Per tensor, the min and max over all calibration inputs (see the module docstring)."""
    manager = aeq.recipe_manager.RecipeManager()
    manager.load_quantization_recipe(aeq.recipe.static_wi8_ai8())
    calibrator = aeq.calibrator.Calibrator(flatbuffer, num_threads=1, qsv_update_func=aeq.qsv_utils.min_max_update)
    signature, name = _signature_input(flatbuffer)
    calibrator.calibrate({signature: [{name: np.asarray(x, dtype=np.float32)} for x in calibration]}, manager)
    return calibrator.get_model_qsvs()


def _signature_input(flatbuffer: bytes) -> tuple[str, str]:
    """(signature key, input name) of a single-input model."""
    interpreter = interpreter_module().Interpreter(model_content=flatbuffer)
    signature, io_names = next(iter(interpreter.get_signature_list().items()))
    return signature, io_names["inputs"][0]


class TfliteModel(ExportedModel):
    """The LiteRT interpreter with its default op resolver (XNNPACK), as the `tflite` profiler times ops."""

    def __init__(self, flatbuffer: bytes, threads: int = 1):
        self.interpreter = interpreter_module().Interpreter(model_content=flatbuffer, num_threads=threads)
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
