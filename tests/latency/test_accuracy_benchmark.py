"""benchmarks/latency_accuracy.py's analysis: held-out predictions per layer and the worst-predicted layer."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from hwnas.latency.catalogue import space_op_configs
from hwnas.latency.table import LatencyTable
from tests.latency.helpers import load_benchmark, make_table


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("latency_accuracy")


def test_one_anomalous_layer_is_named_and_carries_the_error(bench):
    table = make_table(space_op_configs("mobile", 224))
    archs = bench.sample_archs(12, 0.3, seed=3)
    layers = [bench.mobile_network_op_configs(a, 224) for a in archs]
    anomalous = next(op for op in layers[0] if op.attr("kernel") == 7 and op.key().startswith("expanded_conv"))
    entries = dict(table.entries)
    entries[anomalous.key()] = replace(entries[anomalous.key()], median_ms=5 * entries[anomalous.key()].median_ms)
    table = LatencyTable(table.metadata, entries)
    measured = np.array([table.sum_ms(ls) for ls in layers])  # whole networks = the sum of their ops

    shared = frozenset.intersection(*(frozenset(op.key() for op in ls) for ls in layers))
    predictions = [bench.held_out_predictions(table, ls, shared) for ls in layers]
    for ls, pred in zip(layers, predictions):
        assert set(pred) == {op.key() for op in ls}
        assert all(pred[k] == table.lookup(op) for op in ls if (k := op.key()) in shared)  # looked up, not predicted
    held_out = np.array([bench.network_sum(ls, p) for ls, p in zip(layers, predictions)])

    worst = bench.worst_predicted_layer(table, layers, predictions, lambda total: total, measured)
    assert worst["key"] == anomalous.key()
    assert worst["networks_with_it"] == sum(any(op.key() == anomalous.key() for op in ls) for ls in layers)
    assert worst["mean_error_pct"] < -50  # a 5x outlier cannot be predicted from its neighbours
    before = bench.scores(held_out, measured)
    assert worst["within_10pct_if_exact"] >= before["within_10pct"]
    assert worst["within_5pct_if_exact"] > before["within_5pct"]


def test_runs_into_one_file_keep_their_settings_and_rescore(bench, tmp_path, monkeypatch):
    """A second run (other runtimes, other settings) into the same --out replaced the settings the first one's
    architectures were drawn with: --rescore then rebuilt other architectures (KeyError). Measuring is stubbed."""

    def analyse(runtime, table, archs, passes, n_cal):
        return {"n_calibration": n_cal, "arch_ids": [bench.arch_id(a) for a in archs], "passes": len(passes),
                "passes_ms": [[1.0] * len(archs)] * len(passes), "table": {"path": "t.json", "date": None}}  # fmt: skip

    monkeypatch.setattr(bench, "export_all", lambda *args: None)
    monkeypatch.setattr(bench, "resolve_target", lambda runtime, space, size: f"latency_tables/{runtime}.json")
    monkeypatch.setattr(
        bench, "run_passes", lambda runtime, f, archs, cache, n: [dict.fromkeys(map(bench.arch_id, archs), 1.0)] * n
    )
    monkeypatch.setattr(bench, "analyse", analyse)
    monkeypatch.setattr(bench, "phone_table_scores", lambda tables: {"tables": str(tables)})
    out = tmp_path / "accuracy.json"
    for runtime, archs, passes, seed in (("onnxruntime", 6, 4, 0), ("cpu", 4, 3, 1)):
        monkeypatch.setattr("sys.argv", ["latency_accuracy.py", "--out", str(out), "--cache", str(tmp_path / "cache"),
                                         "--runtimes", runtime, "--archs", str(archs), "--calibration", "2",
                                         "--passes", str(passes), "--seed", str(seed)])  # fmt: skip
        assert bench.main() == 0
    stored = bench.json.loads(out.read_text())
    assert (stored["onnxruntime"]["settings"]["seed"], stored["cpu"]["settings"]["seed"]) == (0, 1)
    monkeypatch.setattr(bench.LatencyTable, "load", lambda path: SimpleNamespace(metadata=SimpleNamespace(date=None)))
    monkeypatch.setattr("sys.argv", ["latency_accuracy.py", "--out", str(out), "--rescore", "--tables", str(tmp_path)])
    assert bench.main() == 0
    rescored = bench.json.loads(out.read_text())
    assert rescored["onnxruntime"]["arch_ids"] == stored["onnxruntime"]["arch_ids"]
    assert rescored["phone_tables"] == {"tables": str(tmp_path)}  # --rescore reads --tables as a run does
