"""Host profilers measure a small op set; the exporting ones skip cleanly when their runtime is missing."""

import sys

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig
from hwnas.profilers import PROFILERS, Protocol, get_profiler

FAST = Protocol(warmup_runs=2, runs=5, min_sample_ms=0.2)
OPS = [
    OpConfig.from_key("expanded_conv-input:16x16x8-output:8x8x16-expand:3-kernel:3-stride:2-idskip:0"),
    OpConfig.from_key("sep_conv_3x3-input:8x8x8-output:8x8x8-stride:1"),
    OpConfig.from_key("Logits-input:4x4x16-output:10"),
]


# ~800x the MACs of OPS[0], whose time is mostly per-call overhead: a profiler that times the op it was given
# measures it far slower (at 32x32, ~200x, an AMD EPYC VM under load measured it only 2.8-4.8x slower)
BIG = OpConfig.from_key("expanded_conv-input:64x64x32-output:64x64x32-expand:6-kernel:5-stride:1-idskip:1")


def check(profiler, ops):
    medians = []
    for op in [*ops, BIG]:
        m = profiler.measure_op(op)
        assert m.median_ms > 0 and m.iqr_ms >= 0 and 3 <= m.runs <= FAST.runs
        medians.append(m.median_ms)
    assert medians[-1] > 5 * medians[0], medians
    meta = profiler.metadata()
    assert meta["machine"]["threads"] == 1 and meta["protocol"]["runs"] == FAST.runs
    assert meta["protocol"]["clock"] in ("thread", "cuda-events")
    assert profiler.runtime_version


def test_registry_names():
    assert PROFILERS.names() == ["cpu", "onnxruntime", "tflite", "gpu", "android"]
    with pytest.raises(HwnasError, match="unknown profiler device 'npu'"):
        get_profiler("npu")


def test_cpu_profiler():
    before = torch.get_num_threads()
    with get_profiler("cpu", threads=1, protocol=FAST) as profiler:
        check(profiler, OPS)
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_onnxruntime_profiler():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    check(get_profiler("onnxruntime", threads=1, protocol=FAST), OPS[:2])


def test_tflite_profiler():
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    check(get_profiler("tflite", threads=1, protocol=FAST), OPS[:1] + OPS[2:])
    builtin = get_profiler("tflite", threads=1, protocol=FAST, delegate="cpu")  # TFLite's kernels, no XNNPACK
    check(builtin, OPS[:1])
    assert builtin.metadata()["delegate"] == "cpu"
    model = builtin.export(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4).eval(), (1, 4, 6, 6))
    for profiler, delegated in ((builtin, False), (get_profiler("tflite"), True)):
        ops = [op["op_name"] for op in profiler.interpreter(model)._get_ops_details()]
        assert ("DELEGATE" in ops) == delegated, ops
    with pytest.raises(HwnasError, match="delegate 'nnapi': the LiteRT interpreter here runs xnnpack or cpu"):
        get_profiler("tflite", delegate="nnapi")


def test_missing_runtime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # any import of it raises ImportError
    with pytest.raises(HwnasError, match=r'pip install "hwnas\[export\]"'):
        get_profiler("onnxruntime").measure_op(OPS[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda_is_a_clear_error():
    with pytest.raises(HwnasError, match="needs CUDA"):
        get_profiler("gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_profiler():
    profiler = get_profiler("gpu", protocol=FAST)
    check(profiler, OPS)
    assert profiler.metadata()["machine"]["gpu"]


def test_bad_threads():
    with pytest.raises(HwnasError, match="threads must be >= 1"):
        get_profiler("cpu", threads=0)


def test_exports_are_cached_on_disk(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    first = get_profiler("onnxruntime", protocol=FAST, cache_dir=tmp_path)
    first.measure_op(OPS[1])
    assert [p.suffix for p in tmp_path.iterdir()] == [".onnx"]
    again = get_profiler("onnxruntime", protocol=FAST, cache_dir=tmp_path)
    again.export = None  # a second export would fail: the cached model is loaded instead
    assert again.measure_op(OPS[1]).median_ms > 0


def test_quiet_converter_keeps_converter_output_off_the_terminal(capfd, caplog):
    """The converters' progress (stdout), torch's pytree deprecation warning and C++ log lines (descriptor 2,
    past sys.stderr) stay off the terminal; the native lines are logged at DEBUG; descriptor 2 comes back."""
    import logging
    import os
    import warnings

    from hwnas.profilers.base import quiet_converter

    with caplog.at_level(logging.DEBUG, logger="hwnas.profilers.base"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_converter():
            print("converting 3/7")
            os.write(2, b"I0000 flatbuffer_export.cc] Estimated count of arithmetic ops\n")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        os.write(2, b"after\n")
    out, err = capfd.readouterr()
    assert out == "" and err == "after\n" and not seen
    assert [r.levelname for r in caplog.records if "flatbuffer_export.cc" in r.message] == ["DEBUG"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="hwnas.profilers.base"), pytest.raises(RuntimeError):
        with quiet_converter():
            os.write(2, b"error: failed to legalize operation\n")
            raise RuntimeError("conversion failed")
    assert [r.levelname for r in caplog.records if "failed to legalize" in r.message] == ["WARNING"]
    assert capfd.readouterr().err == ""
