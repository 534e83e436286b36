"""The table prediction of a whole exported network: its layers keyed as the tables are, summed, corrected."""

import dataclasses

import pytest

from hwnas.config import SearchConfig
from hwnas.export import resolve_spec
from hwnas.export.predict import network_op_configs, predicted_latency_ms
from hwnas.latency.catalogue import mobile_op_configs
from hwnas.latency.table import NetworkCorrection
from hwnas.spaces import get_space, load_genotype
from tests.latency.helpers import make_table, of_this_machine


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """User tables for both host runtimes, of this machine (so they come before the shipped ones): mobile at 224."""
    monkeypatch.setenv("HWNAS_TABLES", str(tmp_path))
    made = {}
    for target in ("onnxruntime", "tflite"):
        synthetic = make_table(mobile_op_configs(224), target=target)
        table = of_this_machine(synthetic)
        table.save(tmp_path / f"{target}_mobile_224.json")
        made[target] = table
    return made


def test_mobile_prediction_sums_the_table(tables):
    spec = resolve_spec(genotype="PROXYLESS_MOBILE", input_size=224, in_channels=3, num_classes=1000)
    layers = network_op_configs(spec)
    assert len(layers) == 4 + sum(block != "zero" for block in spec.genotype.blocks)
    for fmt, target in (("onnx", "onnxruntime"), ("tflite", "tflite")):
        assert tables[target].missing(layers) == []
        expected = sum(tables[target].lookup(op) for op in layers)
        assert predicted_latency_ms(fmt, spec, threads=1) == pytest.approx(expected)
        assert predicted_latency_ms(fmt, spec, threads=2) is None  # the table times 1 thread
    small = resolve_spec(genotype="PROXYLESS_MOBILE", input_size=160, in_channels=3, num_classes=1000)
    assert predicted_latency_ms("onnx", small, threads=1) is None  # no table at 160


def test_darts_layers_are_the_space_catalogue_s():
    cfg = SearchConfig(init_channels=8, layers=5)
    space = get_space("darts")
    candidates = {op for edge in space.edge_op_configs(cfg, 32) for op in edge}
    layers = space.network_op_configs(load_genotype("DARTS_V2"), cfg, 32)
    assert [layers[0], layers[-1]] == space.fixed_op_configs(cfg, 32)  # stem and classifier
    assert len(layers) == 2 + 5 * 8 and set(layers[1:-1]) <= candidates  # 8 chosen ops per cell
    assert space.network_op_configs(load_genotype("DARTS_V2"), cfg, 32, in_channels=1, num_classes=4)[-1].key() == (
        "Logits-input:8x8x128-output:4"
    )


def test_prediction_applies_the_table_s_network_correction(tables, tmp_path):
    spec = resolve_spec(genotype="PROXYLESS_MOBILE", input_size=224, in_channels=3, num_classes=1000)
    table = tables["onnxruntime"]
    raw = predicted_latency_ms("onnx", spec, threads=1)
    correction = NetworkCorrection(1.2, 0.5, 50, "2026-01-01", 0.1)
    table.metadata = dataclasses.replace(table.metadata, network_correction=correction)
    table.save(tmp_path / "onnxruntime_mobile_224.json")
    assert predicted_latency_ms("onnx", spec, threads=1) == pytest.approx(1.2 * raw + 0.5)
