"""Bad inputs: one-line HwnasErrors, raised before anything is written, and no partial files left behind."""

import json
import sys

import pytest
import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.export import ExportOptions, export_network, resolve_spec
from hwnas.export import pipeline as pipeline_module
from hwnas.spaces import load_genotype
from tests.export.conftest import needs_litert

SHAPES = {"input_size": 16, "in_channels": 3, "num_classes": 4}


def _assert_nothing_written(parent):
    assert list(parent.iterdir()) == [], list(parent.iterdir())


def _fails(match, **kwargs):
    with pytest.raises(HwnasError, match=match) as info:
        resolve_spec(**kwargs)
    assert "\n" not in str(info.value)


def test_genotype_that_does_not_fit_the_space(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"space": "mobile", "blocks": ["sep_conv_3x3"] * 21}))
    _fails("malformed mobile genotype", genotype=str(bad), **SHAPES)
    _fails("--init-channels do\\(es\\) not shape a network of space 'mobile'", genotype="PROXYLESS_MOBILE",
           shape={"init_channels": 4}, **SHAPES)  # fmt: skip
    _fails("--width-mult", genotype="DARTS_V2", shape={"width_mult": 0.5}, **SHAPES)
    _fails("--stem do\\(es\\) not shape", genotype="PROXYLESS_MOBILE", shape={"stem": "imagenet"}, **SHAPES)
    _fails("stem must be one of cifar, imagenet, got 'tiny'", genotype="DARTS_V2", shape={"stem": "tiny"}, **SHAPES)
    search = tmp_path / "search"
    search.mkdir()
    (search / "config.json").write_text(json.dumps({"kind": "search", "config": {"space": "mobile"}}))
    load_genotype("DARTS_V2").save(search / "genotype.json")
    _fails("is for space 'darts', not the searched 'mobile'", run=str(search))
    _fails("exactly one of --run", run=str(search), genotype="DARTS_V2")


def test_network_shape_is_checked_wherever_it_comes_from(train_run, tmp_path):
    """Flags, a weights record or a hand-edited run config: a shape that does not build, or builds no cells."""
    imagenet = {"stem": "imagenet", "init_channels": 5, "layers": 3}
    _fails("init channels must be even with the imagenet stem, got 5", genotype="DARTS_V2", shape=imagenet, **SHAPES)
    _fails("width multiplier must lie in \\(0, 4\\], got 8", genotype="PROXYLESS_MOBILE", shape={"width_mult": 8},
           **SHAPES)  # fmt: skip
    for field, match in (("layers", "layers must be >= 1, got 0"), ("init_channels", "init channels must be >= 2")):
        edited = tmp_path / field
        edited.mkdir()
        stored = json.loads((train_run / "config.json").read_text())
        stored["config"][field] = 0
        (edited / "config.json").write_text(json.dumps(stored))
        _fails(match, run=str(edited))


@needs_litert
def test_weights_that_do_not_match(train_run, tmp_path):
    spec = resolve_spec(run=str(train_run), shape={"init_channels": 8})
    with pytest.raises(HwnasError, match="do not match the architecture: tensors .*of another shape"):
        export_network(spec, ExportOptions(("onnx",), tmp_path / "out"))
    _assert_nothing_written(tmp_path)
    _fails("trained for another architecture", genotype="DARTS_V1", weights=str(train_run / "model.pt"))
    bare = tmp_path / "bare.pt"
    torch.save({"classifier.weight": torch.zeros(4, 8)}, bare)
    shape = {"init_channels": 4, "layers": 3}
    spec = resolve_spec(genotype="DARTS_V2", weights=str(bare), shape=shape, **SHAPES)
    with pytest.raises(HwnasError, match="do not match the architecture: tensors .* missing"):
        export_network(spec, ExportOptions(("tflite",), tmp_path / "out"))
    bare.unlink()
    _assert_nothing_written(tmp_path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    _fails("junk.pt is not a PyTorch file", genotype="DARTS_V2", weights=str(tmp_path / "junk.pt"))


class Mystery(nn.Module):
    """A network with an op neither converter knows: a custom op with no ONNX or TFLite lowering."""

    def forward(self, x):
        return torch.ops.hwnas_test.mystery(x).mean(dim=(2, 3))


@torch.library.custom_op("hwnas_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


@pytest.mark.parametrize(
    "fmt,match", [("onnx", "ONNX export failed"), pytest.param("tflite", "TFLite conversion", marks=needs_litert)]
)
def test_unsupported_op(monkeypatch, tmp_path, fmt, match):
    monkeypatch.setattr(pipeline_module, "build_network", lambda spec: Mystery().eval())
    spec = resolve_spec(genotype="DARTS_V2", **SHAPES)
    out = tmp_path / "nested" / "out"
    with pytest.raises(HwnasError, match=match) as info:
        export_network(spec, ExportOptions((fmt,), out))
    assert "\n" not in str(info.value)
    _assert_nothing_written(tmp_path)  # not even the parent directories made for --out


def test_missing_converter(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if the export extra were not installed
    spec = resolve_spec(genotype="DARTS_V2", **SHAPES)
    with pytest.raises(HwnasError, match='litert-torch is not installed.*pip install "hwnas\\[export\\]"'):
        export_network(spec, ExportOptions(("onnx", "tflite"), tmp_path / "out"))
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"formats": ("onnx",), "quantize": "int8"}, "--quantize applies to TFLite"),
        ({"formats": ("tflite",), "dynamic_batch": True}, "--dynamic-batch applies to ONNX"),
        ({"formats": ("tflite",), "layout": "nwhc"}, "unknown layout"),
        ({"formats": ("onnx",), "threads": 0}, "threads must be >= 1"),
    ],
)
def test_bad_options(tmp_path, options, match):
    spec = resolve_spec(genotype="DARTS_V2", **SHAPES)
    with pytest.raises(HwnasError, match=match):
        export_network(spec, ExportOptions(out=tmp_path / "out", **options))
    _assert_nothing_written(tmp_path)


@needs_litert
def test_int8_needs_data_shaped_like_the_input(tmp_path):
    shapes = {**SHAPES, "in_channels": 1}  # the fake dataset has 3
    spec = resolve_spec(genotype="DARTS_V2", data={"dataset": "fake"}, shape={"init_channels": 4, "layers": 3},
                        **shapes)  # fmt: skip
    with pytest.raises(HwnasError, match="int8 calibration needs training data shaped like the input"):
        export_network(spec, ExportOptions(("tflite",), tmp_path / "out", quantize="int8"))
    _assert_nothing_written(tmp_path)


def test_outputs_that_differ_from_pytorch_fail_the_export(monkeypatch, tmp_path):
    """An exported model that does not compute the network (here: ONNX Runtime's outputs nudged by 1e-2) is an
    error, and nothing is published."""
    from hwnas.export import onnx as onnx_module

    run = onnx_module.OnnxModel.__call__
    monkeypatch.setattr(onnx_module.OnnxModel, "__call__", lambda self, x: run(self, x) + 1e-2)
    spec = resolve_spec(genotype="DARTS_V2", shape={"init_channels": 4, "layers": 3}, **SHAPES)
    with pytest.raises(HwnasError, match="the onnx model's outputs differ from PyTorch's by 0.01 ") as info:
        export_network(spec, ExportOptions(("onnx",), tmp_path / "out"))
    assert "\n" not in str(info.value)
    _assert_nothing_written(tmp_path)
