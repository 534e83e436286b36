"""`export_report.json`: one row per exported file, and the agreement measures behind its columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

REPORT_NAME = "export_report.json"
# float32 exports: max |exported - PyTorch| <= FLOAT_TOLERANCE times the outputs' spread across the check inputs,
# or ROUNDING_TOLERANCE times max(1, max |output|) where that is larger (`error_bound`): float32 rounding alone
# reached ~1e-7 on the test networks (ONNX Runtime and LiteRT), and a bound below it would fail good exports
FLOAT_TOLERANCE = 1e-4
ROUNDING_TOLERANCE = 1e-5
INFORMATIVE_SPREAD = 100  # the check is informative when an export off by 1% of the spread fails it


@dataclass(frozen=True)
class ExportRow:
    format: str  # "onnx" or "tflite"
    file: str  # file name inside the output directory
    bytes: int
    opset_or_converter: str  # "opset 20", "litert-torch 0.10.0", "litert-torch 0.10.0 + ai-edge-quantizer ... int8"
    input_shape: list[int | str]  # "batch" for a dynamic dimension
    input_layout: str  # "NCHW" or "NHWC"
    max_abs_error: float  # vs PyTorch float32 on fresh N(0, 1) inputs
    check_informative: bool  # PyTorch's outputs vary across those inputs enough for the error to show a broken export
    top1_agreement: float | None  # share of test-split examples whose argmax matches PyTorch's; None without data
    measured_latency_ms: float  # median on the host runtime under the profilers' protocol, batch 1
    predicted_latency_ms: float | None  # the runtime's lookup table; None when it has none for this network
    latency_table: str | None  # that table's file
    latency_table_device: str | None  # what that table was measured on (maybe not this machine: a warning says so)
    params: int  # of the PyTorch network exported
    macs: int  # multiply-accumulates of one example through it (hwnas.complexity)

    def to_json(self) -> dict:
        return asdict(self)


def max_abs_error(reference: np.ndarray, output: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(output, dtype=np.float64) - reference)))


def output_spread(reference: np.ndarray) -> float:
    """How much the outputs vary across the check inputs (axis 0): max |output - its mean over the inputs|. An export
    that ignores or scrambles its input is off by about this much, whatever the outputs' size."""
    return float(np.max(np.abs(reference - reference.mean(axis=0))))


def error_bound(reference: np.ndarray) -> float:
    """The largest max |exported - PyTorch| a float32 export may show: FLOAT_TOLERANCE of the outputs' spread, but
    never below float32 rounding (ROUNDING_TOLERANCE of the outputs' size, at least 1)."""
    size = max(1.0, float(np.max(np.abs(reference))))
    return max(FLOAT_TOLERANCE * output_spread(reference), ROUNDING_TOLERANCE * size)


def check_informative(reference: np.ndarray) -> bool:
    """Whether the error check can tell a broken export from a good one: False for networks whose outputs barely
    depend on their input (random or lightly trained mobile-space ones): rounding, not the spread, sets their bound,
    and an export that ignores or scrambles its input can stay within it."""
    return output_spread(reference) >= INFORMATIVE_SPREAD * error_bound(reference)


def top1_agreement(reference: np.ndarray, output: np.ndarray) -> float:
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(output, axis=1)))
