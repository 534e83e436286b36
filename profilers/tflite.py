"""LiteRT (TensorFlow Lite) with the XNNPACK delegate and fixed threads: each module converted on its own.

Conversion: litert-torch (the maintained PyTorch-to-LiteRT converter, formerly ai-edge-torch) with
channels-last input and output, so a single op is timed without the layout transposes a whole NHWC network
does not have. Runtime: the ai-edge-litert interpreter, the maintained successor of tflite-runtime (whose only
CPython 3.11 build needs numpy < 2); its default op resolver applies XNNPACK. `delegate="cpu"` runs TFLite's
builtin kernels instead (as `benchmark_model --use_xnnpack=false` does on a phone): on the x86 VMs here
XNNPACK runs a 7x7 depthwise convolution ~5x slower than they do (benchmarks/litert_depthwise.py).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from hwnas.errors import HwnasError
from hwnas.profilers.base import ExportingProfiler, RunBatch, example_input, import_extra, quiet_converter

DELEGATES = ("xnnpack", "cpu")  # named as for --device android: cpu = TFLite's builtin kernels, no delegate


def litert_torch_module():
    """The litert-torch converter, its progress bar off (shared with `hwnas.export.tflite`)."""
    litert_torch = import_extra("litert_torch", "litert-torch")
    litert_torch.config.show_progress = False
    return litert_torch


def interpreter_module():
    """`ai_edge_litert.interpreter`, the LiteRT interpreter (shared with `hwnas.export.tflite`)."""
    return import_extra("ai_edge_litert.interpreter", "ai-edge-litert")


def convert_tflite(module: nn.Module, shape: tuple[int, ...]) -> bytes:
    """The .tflite flatbuffer of `module` (eval mode), taking and (for 4-D outputs) returning NHWC tensors."""
    import torch

    module = module.eval()
    with torch.no_grad():
        out_ndim = module(example_input(shape)).dim()
    b, c, h, w = shape
    with quiet_converter():  # importing litert-torch logs a torch deprecation warning, converting C++ INFO lines
        litert_torch = litert_torch_module()
        wrapped = litert_torch.to_channel_last_io(module, args=[0], outputs=[0] if out_ndim == 4 else [])
        return bytes(litert_torch.convert(wrapped.eval(), (example_input((b, h, w, c)),)).model_content())


class TfliteProfiler(ExportingProfiler):
    device = "tflite"
    runtime = "ai-edge-litert"
    suffix = ".tflite"

    def __init__(self, *args, delegate: str = "xnnpack", **kwargs):
        super().__init__(*args, **kwargs)
        if delegate not in DELEGATES:
            raise HwnasError(
                f"delegate {delegate!r}: the LiteRT interpreter here runs {' or '.join(DELEGATES)} "
                "(gpu and nnapi run on a phone: --device android)"
            )
        self.delegate = delegate

    def metadata(self) -> dict:
        return {**super().metadata(), "delegate": self.delegate}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        interpreter_module()
        return {"ai-edge-litert": version("ai-edge-litert"), "litert-torch": version("litert-torch")}

    def export(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        interpreter_module()
        return convert_tflite(module, shape)

    def interpreter(self, model: bytes):
        """An allocated LiteRT interpreter of `model` with this profiler's threads and delegate."""
        litert = interpreter_module()
        resolver = {"xnnpack": "AUTO", "cpu": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}[self.delegate]
        interpreter = litert.Interpreter(
            model_content=model,
            num_threads=self.threads,
            experimental_op_resolver_type=getattr(litert.OpResolverType, resolver),
        )
        interpreter.allocate_tensors()
        return interpreter

    def load(self, model: bytes, shape: tuple[int, ...]) -> RunBatch:
        interpreter = self.interpreter(model)
        detail = interpreter.get_input_details()[0]
        b, c, h, w = shape
        x = example_input((b, c, h, w)).permute(0, 2, 3, 1).numpy().astype(np.float32)
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(x).reshape(detail["shape"]))
        return self.host_timer(interpreter.invoke)
