"""The table format: round trip, validation errors, lookup and coverage."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from hwnas.errors import HwnasError
from hwnas.latency.catalogue import mobile_op_configs
from hwnas.latency.table import LatencyTable, NetworkCorrection, TableEntry
from hwnas.ops.opconfig import OpConfig
from tests.latency.helpers import make_table

CONFIGS = mobile_op_configs(224)[:10]


@pytest.fixture
def table_json():
    return make_table(CONFIGS).to_json()


def write(tmp_path, data, name="t.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_round_trip(tmp_path):
    table = make_table(CONFIGS)
    path = table.save(tmp_path / "sub" / "cpu_mobile_224.json")
    loaded = LatencyTable.load(path, space="mobile", input_size=224)
    assert loaded.to_json() == table.to_json()
    assert loaded.metadata == table.metadata and loaded.path == path
    assert [p.name for p in path.parent.iterdir()] == ["cpu_mobile_224.json"]  # no temporary left behind
    assert loaded.lookup(CONFIGS[3]) == table.entries[CONFIGS[3].key()].median_ms
    assert loaded.ops() == sorted(CONFIGS, key=lambda op: op.key())


def test_lookup_missing_require_and_sum():
    table = make_table(CONFIGS)
    other = OpConfig.from_key("Conv-input:192x192x3-output:96x96x32")
    assert table.lookup(other) is None and other not in table and CONFIGS[0] in table
    assert table.missing(CONFIGS + [other]) == [other]
    with pytest.raises(HwnasError, match="lacks 1 of 11 op configurations .*Conv-input:192x192x3.*; run this"):
        table.require(CONFIGS + [other], hint="run this")
    assert table.sum_ms(CONFIGS[:2]) == pytest.approx(sum(table.lookup(op) for op in CONFIGS[:2]))
    with pytest.raises(HwnasError, match="lacks"):
        table.sum_ms([other])


def test_wrong_space_and_resolution(tmp_path, table_json):
    path = write(tmp_path, table_json)
    with pytest.raises(HwnasError, match="is for space 'mobile', not 'darts'"):
        LatencyTable.load(path, space="darts")
    with pytest.raises(HwnasError, match="measured at input size 224, not 192"):
        LatencyTable.load(path, space="mobile", input_size=192)


def test_unreadable_files(tmp_path):
    with pytest.raises(HwnasError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json")
    with pytest.raises(HwnasError, match="malformed .*not JSON"):
        LatencyTable.load(write(tmp_path, "{oops"))
    with pytest.raises(HwnasError, match="expected a JSON object"):
        LatencyTable.load(write(tmp_path, "[1, 2]"))


def _set(data, path, value):
    *parents, last = path
    for p in parents:
        data = data[p]
    if value is KeyError:
        del data[last]
    else:
        data[last] = value


FIRST = mobile_op_configs(224)[0].key()
CORRECTION = {"a": 1.1, "b_ms": -0.2, "architectures": 50, "fitted": "2026-01-02", "rmse_ms": 0.3}
BAD = [
    (("format",), "other", "'format' must be"),
    (("version",), 2, "version 2 is not supported"),
    (("extra",), 1, r"unknown field\(s\) extra"),
    (("metadata",), [], "metadata must be an object"),
    (("metadata", "space"), KeyError, "metadata lacks 'space'"),
    (("metadata", "threads"), "one", "'threads' must be int"),
    (("metadata", "input_size"), True, "'input_size' must be int"),
    (("metadata", "input_size"), 0, "'input_size' must be >= 1"),
    (("metadata", "colour"), "red", r"unknown metadata field\(s\) colour"),
    (("metadata", "statistic"), "mode", "'statistic' must be 'median' or 'mean'"),
    (("entries",), {}, "'entries' must be a non-empty object"),
    (("entries", "Conv-input:224x224-output"), {"median_ms": 1, "iqr_ms": 0, "runs": 1}, "malformed op key"),
    # the same op as FIRST, which lookups would never find: a second entry for it, or a stray one
    (
        ("entries", "Conv-input:0224x224x3-output:112x112x32"),
        {"median_ms": 1, "iqr_ms": 0, "runs": 1},
        "op key 'Conv-input:0224x224x3-output:112x112x32' is not canonical; write 'Conv-input:224x224x3-output:112",
    ),
    (
        ("entries", "Conv-input:224x224-output:112x112x32"),
        {"median_ms": 1, "iqr_ms": 0, "runs": 1},
        "Conv needs input:HxWxC and output:HxWxC",
    ),
    (("metadata", "details"), {"machine": "hand-edited"}, "details 'machine' must be an object, got 'hand-edited'"),
    (("metadata", "details"), {"machine": {"cpu_signature": 6}}, "'machine.cpu_signature' must be a string"),
    (("metadata", "details"), {"protocol": [10, 30]}, "details 'protocol' must be an object"),
    (("metadata", "details"), {"delegate": None}, "details 'delegate' must be a string"),
    (("metadata", "details"), {"protocol": {"runs": "30"}}, "details: protocol runs must be an integer, got '30'"),
    (("metadata", "details"), {"protocol": {"runs": 2}}, "details: a measurement needs at least 3 runs"),
    (("metadata", "details"), {"rounds": 0}, "details 'rounds' must be an integer >= 1"),
    (("metadata", "details"), {"rounds": "3"}, "details 'rounds' must be an integer >= 1"),
    (("metadata", "details"), {"devices": {"model": "x"}}, "'devices' must be a list of objects with an integer"),
    (("metadata", "details"), {"devices": [{"model": "x"}]}, "'devices' must be a list of objects with an integer"),
    (("metadata", "details"), {"devices": [{"entries_measured": True}]}, "'devices' must be a list of objects"),
    (("entries", FIRST, "median_ms"), -1.0, "median_ms must be a finite number >= 0"),
    (("entries", FIRST, "median_ms"), math.nan, "median_ms must be a finite number >= 0"),
    (("entries", FIRST, "median_ms"), math.inf, "median_ms must be a finite number >= 0"),
    (("entries", FIRST, "median_ms"), "1.0", "median_ms must be a finite number >= 0"),
    (("entries", FIRST, "iqr_ms"), -0.1, "iqr_ms must be a finite number >= 0 or null"),
    (("entries", FIRST, "runs"), 0, "runs must be a positive integer"),
    (("entries", FIRST, "runs"), True, "runs must be a positive integer"),
    (("entries", FIRST, "extra"), 1, "must be an object with median_ms, iqr_ms and runs"),
    (("metadata", "network_correction"), 1.1, "network_correction must be an object with a, b_ms, architectures"),
    (("metadata", "network_correction"), {**CORRECTION, "c": 1}, "network_correction must be an object with"),
    (("metadata", "network_correction"), {**CORRECTION, "a": 0.0}, "'a' must be a finite number > 0"),
    (("metadata", "network_correction"), {**CORRECTION, "a": math.inf}, "'a' must be a finite number > 0"),
    (("metadata", "network_correction"), {**CORRECTION, "b_ms": "0"}, "'b_ms' must be a finite number"),
    (("metadata", "network_correction"), {**CORRECTION, "architectures": 1}, "'architectures' must be an integer >= 2"),
    (("metadata", "network_correction"), {**CORRECTION, "fitted": "yesterday"}, "'fitted' must be an ISO date"),
    (("metadata", "network_correction"), {**CORRECTION, "rmse_ms": -1}, "'rmse_ms' must be a finite number >= 0"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[" ".join(map(str, b[0])) + f"={b[1]!r}" for b in BAD])
def test_validation_errors(tmp_path, table_json, path, value, message):
    data = copy.deepcopy(table_json)
    _set(data, path, value)
    with pytest.raises(HwnasError, match=message) as err:
        LatencyTable.load(write(tmp_path, data))
    assert str(tmp_path) in str(err.value)  # names the file


def test_null_spread_and_unknown_threads_are_allowed(table_json):
    data = copy.deepcopy(table_json)
    data["entries"][FIRST]["iqr_ms"] = None
    data["metadata"]["threads"] = None
    table = LatencyTable.from_json(data)
    assert table.entries[FIRST] == TableEntry(table.entries[FIRST].median_ms, None, 10)
    assert table.metadata.threads is None


def test_save_without_path():
    with pytest.raises(HwnasError, match="no path"):
        make_table(CONFIGS).save()


def test_network_correction_round_trip_and_estimate(tmp_path):
    table = make_table(CONFIGS)
    assert "network_correction" not in table.to_json()["metadata"]  # absent: the estimate is the plain sum
    assert table.network_ms(4.0) == 4.0
    table.metadata = dataclasses.replace(table.metadata, network_correction=NetworkCorrection(**CORRECTION))
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert loaded.metadata == table.metadata and loaded.to_json()["metadata"]["network_correction"] == CORRECTION
    assert loaded.network_ms(4.0) == pytest.approx(1.1 * 4.0 - 0.2)
    total = torch.tensor(4.0, requires_grad=True)
    (grad,) = torch.autograd.grad(loaded.network_ms(total), total)
    assert float(grad) == pytest.approx(1.1)
