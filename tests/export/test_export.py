"""Exports of a DARTS-cell and a mobile-space network to ONNX and TFLite, checked numerically here as well."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.export import ExportOptions, build_network, export_network, resolve_spec
from hwnas.export.onnx import OnnxModel
from hwnas.export.pipeline import QUANTIZED_AGREEMENT
from hwnas.export.report import FLOAT_TOLERANCE, REPORT_NAME
from hwnas.export.tflite import PadExcludingAvgPool, TfliteModel
from hwnas.latency.catalogue import mobile_blocks
from hwnas.profilers.protocol import Protocol
from hwnas.spaces.mobile import MobileGenotype
from tests.export.conftest import SIZE, needs_litert

FAST = Protocol(warmup_runs=1, runs=3, min_sample_ms=0.0)


def _pytorch(spec, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build_network(spec)(torch.from_numpy(x)).numpy()


def _report(out):
    return json.loads((out / REPORT_NAME).read_text())


@needs_litert
def test_darts_run_to_onnx_and_tflite(train_run, tmp_path):
    spec = resolve_spec(run=str(train_run))
    assert spec.weights is not None and spec.input_size == SIZE and spec.in_channels == 3
    out = tmp_path / "out"
    rows = export_network(spec, ExportOptions(("onnx", "tflite"), out, protocol=FAST))
    assert _report(out) == [row.to_json() for row in rows]
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx", "model.tflite"]
    onnx_row, tflite_row = rows
    assert onnx_row.opset_or_converter.startswith("opset ")
    assert tflite_row.opset_or_converter.startswith("litert-torch ")
    for row in rows:
        assert row.input_shape == [1, 3, SIZE, SIZE] and row.input_layout == "NCHW"
        assert row.bytes == (out / row.file).stat().st_size
        assert row.max_abs_error <= FLOAT_TOLERANCE and row.top1_agreement == 1.0
        assert row.measured_latency_ms > 0 and row.predicted_latency_ms is None  # no darts table at 16x16
    # independently of the pipeline's own check: fresh inputs through both runtimes
    x = np.random.default_rng(7).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    reference = _pytorch(spec, x)
    scale = max(1.0, np.abs(reference).max())
    for model in (OnnxModel(out / "model.onnx"), TfliteModel((out / "model.tflite").read_bytes())):
        assert np.abs(model(x) - reference).max() <= FLOAT_TOLERANCE * scale
    # an export into the same directory replaces its format's row in the report and keeps the others
    (again,) = export_network(spec, ExportOptions(("onnx",), out, protocol=FAST))
    assert _report(out) == [tflite_row.to_json(), again.to_json()]


@needs_litert
def test_mobile_nhwc_dynamic_batch(tmp_path):
    # the shortest network of the space: every stage's first block only, a genotype file with width 1 that
    # --width-mult narrows
    blocks = [b.index == 0 and "mbconv_k3_e3" or "zero" for b in mobile_blocks()]
    MobileGenotype(tuple(blocks)).save(tmp_path / "genotype.json")
    spec = resolve_spec(genotype=str(tmp_path / "genotype.json"), shape={"width_mult": 0.25}, input_size=32,
                        in_channels=3, num_classes=5)  # fmt: skip
    assert spec.space == "mobile" and spec.genotype.width_mult == 0.25 and not spec.dataset_known
    out = tmp_path / "mobile"
    options = ExportOptions(("onnx", "tflite"), out, layout="nhwc", dynamic_batch=True, protocol=FAST)
    torch.manual_seed(0)  # random weights: the same ones when `_pytorch` builds the network again
    onnx_row, tflite_row = export_network(spec, options)
    assert onnx_row.input_shape == ["batch", 32, 32, 3] and tflite_row.input_shape == [1, 32, 32, 3]
    for row in (onnx_row, tflite_row):
        assert row.input_layout == "NHWC" and row.max_abs_error <= FLOAT_TOLERANCE
        assert row.top1_agreement is None  # the spec names no dataset (all shapes were given)
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    torch.manual_seed(0)
    reference = _pytorch(spec, x)
    onnx = OnnxModel(out / "model.onnx")
    assert onnx.batch is None  # all three at once
    assert np.abs(onnx(nhwc) - reference).max() <= FLOAT_TOLERANCE * max(1.0, np.abs(reference).max())
    tflite = TfliteModel((out / "model.tflite").read_bytes())
    assert np.abs(tflite(nhwc) - reference).max() <= FLOAT_TOLERANCE * max(1.0, np.abs(reference).max())


@needs_litert
@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_quantized_tflite_loads_and_runs(train_run, tmp_path, mode):
    spec = resolve_spec(run=str(train_run))
    out = tmp_path / mode
    (row,) = export_network(spec, ExportOptions(("tflite",), out, quantize=mode, calibration_batches=1,
                                                protocol=FAST))  # fmt: skip
    assert row.file == f"model_{mode}.tflite" and mode in row.opset_or_converter
    assert row.predicted_latency_ms is None  # the tables time float32 ops
    assert row.top1_agreement >= QUANTIZED_AGREEMENT  # on the run's test split
    model = TfliteModel((out / row.file).read_bytes())
    assert model.input_dtype == ("int8" if mode == "int8" else "float32")
    x = np.random.default_rng(5).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    reference = _pytorch(spec, x)
    outputs = model(x)
    assert outputs.shape == reference.shape and np.all(np.isfinite(outputs))
    # float16 weights with float32 arithmetic stay close; int8 activations within a few quantisation steps
    bound = 1e-2 if mode == "fp16" else 5e-2
    assert np.abs(outputs - reference).max() <= bound * np.abs(reference).max()


@pytest.mark.parametrize(
    "pool",
    [nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
     nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)],
    ids=["stride1", "stride2", "ceil"],
)  # fmt: skip
@pytest.mark.parametrize("size", [7, 8])
def test_quantizable_pool_is_the_padding_excluding_average(pool, size):
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(PadExcludingAvgPool(pool)(x), pool(x))


@needs_litert
def test_int8_export_of_cells_with_average_pooling(tmp_path):
    """avg_pool_3x3 (padding excluded) in both cell types: ai-edge-quantizer finds no ranges for its direct
    lowering; the exporter rewrites it as a padding-counting pool and a division, which quantise."""
    cell = [["avg_pool_3x3", 0], ["skip_connect", 1], ["avg_pool_3x3", 2], ["max_pool_3x3", 0]]
    genotype = {"space": "darts", "normal": cell, "normal_concat": [2, 3], "reduce": cell, "reduce_concat": [2, 3]}
    (tmp_path / "g.json").write_text(json.dumps(genotype))
    spec = resolve_spec(genotype=str(tmp_path / "g.json"), data={"dataset": "fake"},
                        shape={"init_channels": 4, "layers": 3}, input_size=SIZE, in_channels=3,
                        num_classes=4)  # fmt: skip
    (row,) = export_network(spec, ExportOptions(("tflite",), tmp_path / "out", quantize="int8",
                                                calibration_batches=1, protocol=FAST))  # fmt: skip
    assert row.file == "model_int8.tflite" and row.top1_agreement >= QUANTIZED_AGREEMENT


OTHER_FILESYSTEM = Path("/dev/shm")  # tmpfs on Linux


@pytest.mark.skipif(not OTHER_FILESYSTEM.is_dir(), reason="needs /dev/shm")
@pytest.mark.parametrize("existing", [False, True])
def test_out_is_a_link_to_another_filesystem(tmp_path, existing):
    """--out linked to a directory on another filesystem than its parent: the files are written on the target's."""
    target = Path(tempfile.mkdtemp(dir=OTHER_FILESYSTEM))
    try:
        if os.stat(target).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the temporary directory's filesystem here")
        if not existing:
            target.rmdir()  # a dangling link: the export cannot go through it
        (tmp_path / "out").symlink_to(target)
        spec = resolve_spec(genotype="DARTS_V2", shape={"init_channels": 4, "layers": 3}, input_size=SIZE,
                            in_channels=3, num_classes=4)  # fmt: skip
        if existing:
            export_network(spec, ExportOptions(("onnx",), tmp_path / "out", protocol=FAST))
            assert sorted(p.name for p in target.iterdir()) == ["export_report.json", "model.onnx"]
        else:
            with pytest.raises(HwnasError, match="cannot move the export into .*out: "):
                export_network(spec, ExportOptions(("onnx",), tmp_path / "out", protocol=FAST))
            assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the link, and nothing beside it
    finally:
        shutil.rmtree(target, ignore_errors=True)
