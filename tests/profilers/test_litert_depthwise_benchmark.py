"""benchmarks/litert_depthwise.py: the mobile space's depthwise shapes, timed under both LiteRT delegates."""

from __future__ import annotations

import json

import pytest

from tests.latency.helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("litert_depthwise")


def test_shapes_are_the_mobile_spaces_hidden_widths(bench):
    shapes = bench.depthwise_shapes(224)
    assert len(shapes) == len(set(shapes)) == 18
    assert shapes[:2] == [(48, 112, 2), (96, 112, 2)]  # the first searched block, e3 and e6 of 16 channels
    assert (1152, 7, 1) in shapes  # the last stage: 192 channels, e6


def test_times_both_delegates(bench, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    shapes = bench.depthwise_shapes(32)[::6]  # 3 of the 18: each is converted to .tflite, 3 s apiece
    monkeypatch.setattr(bench, "depthwise_shapes", lambda input_size: shapes)
    out = tmp_path / "dw.json"
    assert bench.main(["--input-size", "32", "--kernels", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["channels"], r["hw_in"], r["stride"]) for r in result["rows"]] == shapes
    for row in result["rows"]:
        assert row["xnnpack_ms"] > 0 and row["cpu_ms"] > 0
        assert row["xnnpack_ps_per_mac"] == pytest.approx(1e9 * row["xnnpack_ms"] / row["macs"])
    assert set(result["summary"]) == {"k3"}
