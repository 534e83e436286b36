"""`export_report.json`: one row per exported file, and the agreement measures behind its columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

REPORT_NAME = "export_report.json"
FLOAT_TOLERANCE = 1e-4  # float32 exports: max |exported - PyTorch| <= this times the output scale


@dataclass(frozen=True)
class ExportRow:
    format: str  # "onnx" or "tflite"
    file: str  # file name inside the output directory
    bytes: int
    opset_or_converter: str  # "opset 20", "litert-torch 0.10.0", "litert-torch 0.10.0 + ai-edge-quantizer ... int8"
    input_shape: list[int | str]  # "batch" for a dynamic dimension
    input_layout: str  # "NCHW" or "NHWC"
    max_abs_error: float  # vs PyTorch float32 on fresh N(0, 1) inputs
    top1_agreement: float | None  # share of test-split examples whose argmax matches PyTorch's; None without data
    measured_latency_ms: float  # median on the host runtime under the profilers' protocol, batch 1
    predicted_latency_ms: float | None  # the runtime's lookup table; None when it has none for this network
    params: int  # of the PyTorch network exported
    macs: int  # multiply-accumulates of one example through it (hwnas.complexity)

    def to_json(self) -> dict:
        return asdict(self)


def max_abs_error(reference: np.ndarray, output: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(output, dtype=np.float64) - reference)))


def output_scale(reference: np.ndarray) -> float:
    """The scale errors are judged against: the largest |output| (at least 1, so near-zero logits do not turn
    float32 rounding into a failure)."""
    return max(1.0, float(np.max(np.abs(reference))))


def top1_agreement(reference: np.ndarray, output: np.ndarray) -> float:
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(output, axis=1)))
