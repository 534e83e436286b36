"""Converting the published phone tables, and the converted tables shipped with hwnas."""

import pytest

from hwnas.errors import HwnasError
from hwnas.latency.convert import convert_all, convert_ofa, convert_proxyless
from hwnas.latency.table import LatencyTable
from tests.latency.helpers import SHARED_DATA, SHIPPED


def test_shipped_phone_tables_load():
    pixel1 = LatencyTable.load(SHIPPED / "mobile_mobile_224.json", space="mobile", input_size=224)
    assert pixel1.metadata.statistic == "mean" and "ProxylessNAS" in pixel1.metadata.source
    assert pixel1.lookup(pixel1.ops()[0]) > 0
    for size in (160, 176, 192, 208, 224):
        table = LatencyTable.load(SHIPPED / f"note10_ofa_{size}.json", space="ofa", input_size=size)
        assert len(table) == 96 and all(e.iqr_ms is not None for e in table.entries.values())


def test_convert_small_files(tmp_path):
    proxyless = tmp_path / "mobile_trim.yaml"
    proxyless.write_text("Conv-input:224x224x3-output:112x112x32:\n  count: 9\n  mean: 4.0\n  var: 0.25\n")
    table = convert_proxyless(proxyless)
    entry = table.entries["Conv-input:224x224x3-output:112x112x32"]
    assert (entry.median_ms, entry.iqr_ms, entry.runs) == (4.0, None, 9)
    ofa = tmp_path / "160.yaml"
    ofa.write_text("Logits-input:1x1x1536-output:1000:\n  count: 5\n  mean: 0.5\n  std: 0.1\n")
    entry = convert_ofa(ofa, 160).entries["Logits-input:1x1x1536-output:1000"]
    assert entry.iqr_ms == pytest.approx(0.1349)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("Conv-input:1x1x3-output:1x1x8: 3\n", "lacks mean/count"),
        ("Conv-input:1x1x3-output:1x1x8: {count: 1, mean: -2}\n", "median_ms must be"),
        ("Conv-input:1x1x3-output: {count: 1, mean: 2}\n", "malformed op key"),
        ("a: [\n", "malformed published latency table"),
    ],
)
def test_convert_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HwnasError, match=message):
        convert_proxyless(path)
    with pytest.raises(HwnasError, match="does not exist"):
        convert_proxyless(tmp_path / "none.yaml")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no {SHARED_DATA} (the shared latency data)")
def test_convert_all_reproduces_the_shipped_entries(tmp_path):
    written = convert_all(SHARED_DATA, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        p.name for p in SHIPPED.glob("*_*_*.json") if p.name.startswith(("mobile_", "note10_"))
    )
    for path in written:
        assert LatencyTable.load(path).entries == LatencyTable.load(SHIPPED / path.name).entries
