"""The table prediction of a whole exported network: its layers keyed as the tables are, summed, corrected."""

import dataclasses
import logging

import pytest

from hwnas.config import SearchConfig
from hwnas.export import ExportOptions, export_network, resolve_spec
from hwnas.export.predict import network_op_configs, predicted_latency
from hwnas.latency.catalogue import mobile_op_configs
from hwnas.latency.table import LatencyTable, NetworkCorrection
from hwnas.profilers.protocol import Protocol
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
        prediction = predicted_latency(fmt, spec, threads=1)
        assert prediction.latency_ms == pytest.approx(expected)
        assert (prediction.table, prediction.device) == (str(tables[target].path), tables[target].metadata.device)
        assert predicted_latency(fmt, spec, threads=2) is None  # the table times 1 thread
    small = resolve_spec(genotype="PROXYLESS_MOBILE", input_size=160, in_channels=3, num_classes=1000)
    assert predicted_latency("onnx", small, threads=1) is None  # no table at 160


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
    raw = predicted_latency("onnx", spec, threads=1).latency_ms
    correction = NetworkCorrection(1.2, 0.5, 50, "2026-01-01", 0.1)
    table.metadata = dataclasses.replace(table.metadata, network_correction=correction)
    table.save(tmp_path / "onnxruntime_mobile_224.json")
    assert predicted_latency("onnx", spec, threads=1).latency_ms == pytest.approx(1.2 * raw + 0.5)


def test_report_names_the_table_and_a_table_of_another_machine_is_warned_of(tmp_path, monkeypatch, caplog):
    """The report row says which table priced the export; one measured elsewhere (here "test CPU") is taken, with a
    warning, as a search takes it."""
    monkeypatch.setenv("HWNAS_TABLES", str(tmp_path / "tables"))
    spec = resolve_spec(genotype="DARTS_V2", shape={"init_channels": 4, "layers": 3}, input_size=16, in_channels=3,
                        num_classes=4)  # fmt: skip
    path = tmp_path / "tables" / "onnxruntime_darts_16.json"
    path.parent.mkdir()
    make_table(network_op_configs(spec), target="onnxruntime", space="darts", input_size=16).save(path)
    options = ExportOptions(("onnx",), tmp_path / "out", protocol=Protocol(warmup_runs=1, runs=3, min_sample_ms=0.0))
    with caplog.at_level(logging.WARNING, "hwnas.export.predict"):
        (row,) = export_network(spec, options)
    assert row.predicted_latency_ms > 0 and (row.latency_table, row.latency_table_device) == (str(path), "test CPU")
    assert f"comes from {path}, measured on test CPU" in caplog.text
    assert "hwnas profile --device onnxruntime --space darts --input-size 16" in caplog.text
    of_this_machine(LatencyTable.load(path)).save(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "hwnas.export.predict"):
        (row,) = export_network(spec, options)
    assert row.latency_table == str(path) and "measured on" not in caplog.text
