"""The numerical check of an export against PyTorch: judged against how much the outputs vary across inputs, flagged
where that variation is too small to show a broken export, and never passed by NaN."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.export import ExportOptions, build_network, export_network, resolve_spec
from hwnas.export import pipeline as pipeline_module
from hwnas.export.report import FLOAT_TOLERANCE, ROUNDING_TOLERANCE, check_informative, error_bound
from hwnas.export.runner import ExportedModel
from hwnas.spaces import load_genotype

SHAPES = {"input_size": 16, "in_channels": 3, "num_classes": 4}
TINY = {"init_channels": 4, "layers": 3}


def _tiny_darts():
    return resolve_spec(genotype="DARTS_V2", shape=TINY, **SHAPES)


def test_bound_follows_the_outputs_spread():
    rng = np.random.default_rng(0)
    varied = 5 + rng.standard_normal((8, 4))  # logits that vary by ~1 about 5: judged against the variation
    spread = np.abs(varied - varied.mean(axis=0)).max()
    assert error_bound(varied) == pytest.approx(FLOAT_TOLERANCE * spread) and check_informative(varied)
    flat = 0.5 + 1e-6 * rng.standard_normal((8, 4))  # outputs that barely depend on the input: rounding sets the bound
    assert error_bound(flat) == ROUNDING_TOLERANCE and not check_informative(flat)  # outputs below 1: size 1


def test_outputs_off_by_a_little_of_their_spread_fail(monkeypatch, tmp_path):
    """5e-5 off: within the former bound (1e-4 for outputs below 1) but 0.1% of this network's output spread."""
    from hwnas.export import onnx as onnx_module

    run = onnx_module.OnnxModel.__call__
    monkeypatch.setattr(onnx_module.OnnxModel, "__call__", lambda self, x: run(self, x) + 5e-5)
    torch.manual_seed(0)
    with pytest.raises(HwnasError, match=r"outputs differ from PyTorch's by 5.0\d*e-05 \(bound 1e-05\)"):
        export_network(_tiny_darts(), ExportOptions(("onnx",), tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def _insensitive(spec):
    """A network whose outputs hardly depend on its input, as a random mobile-space network's (~1e-8 there)."""
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    with torch.no_grad():
        net[2].weight.mul_(1e-4)
    return net.eval()


def test_an_uninformative_check_is_said(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(pipeline_module, "build_network", _insensitive)
    with caplog.at_level(logging.WARNING, "hwnas.export.pipeline"):
        (row,) = export_network(_tiny_darts(), ExportOptions(("onnx",), tmp_path / "flat"))
    assert row.check_informative is False and row.to_json()["check_informative"] is False
    assert "cannot tell an export that ignores its input from a good one" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "hwnas.export.pipeline"):
        (row,) = export_network(_tiny_darts(), ExportOptions(("onnx",), tmp_path / "darts"))
    assert row.check_informative is True and "cannot tell" not in caplog.text


def test_non_finite_weights_are_an_error(tmp_path):
    spec = _tiny_darts()
    state = build_network(spec).state_dict()
    state["classifier.weight"][0, 0] = float("nan")
    torch.save(
        {"genotype": load_genotype("DARTS_V2").to_json(), "config": spec.cfg.to_json(), "in_channels": 3,
         "num_classes": 4, "state_dict": state},
        tmp_path / "model.pt",
    )  # fmt: skip
    spec = resolve_spec(genotype="DARTS_V2", weights=str(tmp_path / "model.pt"), input_size=16)
    out = tmp_path / "exports" / "out"
    with pytest.raises(HwnasError, match=r"outputs are not finite: .*NaN or infinity \(first classifier.weight"):
        export_network(spec, ExportOptions(("onnx",), out))
    assert not out.parent.exists()


class NanModel(ExportedModel):
    batch, threads, input_shape = None, 1, [1, 3, 16, 16]

    def run_batch(self, x):
        return np.full((len(x), 4), np.nan, np.float32)

    def invoker(self, x):
        return lambda: None


@pytest.mark.parametrize("fmt,quantize", [("onnx", None), ("tflite", "fp16")])
def test_non_finite_exported_outputs_fail(tmp_path, fmt, quantize):
    spec = _tiny_darts()
    options = ExportOptions((fmt,), tmp_path / "out", quantize=quantize)
    checks = pipeline_module.Checks(build_network(spec), spec, options, use_dataset=False)
    with pytest.raises(HwnasError, match=f"the {fmt} model's outputs hold NaN or infinity where PyTorch's are finite"):
        pipeline_module._row(fmt, "model", 0, "converter", NanModel(), spec, options, checks)
