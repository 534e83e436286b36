"""Table discovery and target resolution."""

import dataclasses
import json
import logging

import pytest

from hwnas.errors import HwnasError
from hwnas.latency.catalogue import mobile_op_configs
from hwnas.latency.table import LatencyTable
from hwnas.latency.targets import default_table_path, list_tables, resolve_target, user_table_dir
from tests.latency.helpers import make_table, of_this_machine


def test_user_dir_from_environment(user_tables, monkeypatch):
    assert user_table_dir() == user_tables
    assert default_table_path("cpu", "mobile", 224) == user_tables / "cpu_mobile_224.json"
    monkeypatch.delenv("HWNAS_TABLES")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert str(user_table_dir()) == "/xdg/hwnas/latency_tables"


def test_shipped_phone_tables_resolve(user_tables):
    pixel1 = resolve_target("mobile", "mobile", 224)
    assert pixel1.metadata.device == "Google Pixel 1" and len(pixel1) == 72
    for size in (160, 176, 192, 208, 224):
        note10 = resolve_target("note10", "ofa", size)
        assert note10.metadata.input_size == size and len(note10) == 96
        assert "Once-for-All" in note10.metadata.source


def test_user_table_shadows_shipped_and_paths_resolve(user_tables):
    mine = make_table(mobile_op_configs(224)[:5], target="mobile")
    mine.save(user_tables / "mobile_mobile_224.json")
    resolved = resolve_target("mobile", "mobile", 224)
    assert resolved.path == user_tables / "mobile_mobile_224.json" and len(resolved) == 5
    assert resolve_target(str(resolved.path), "mobile", 224).to_json() == mine.to_json()
    origins = {(i.origin, i.table.metadata.target) for i in list_tables()}
    assert ("user", "mobile") in origins and ("shipped", "mobile") in origins


def test_resolution_errors(user_tables):
    with pytest.raises(HwnasError, match="unknown target 'pixel9'; known: .*mobile.*note10"):
        resolve_target("pixel9", "mobile", 224)
    with pytest.raises(HwnasError, match="'mobile' has no table for space 'darts' .*hwnas profile --device android"):
        resolve_target("mobile", "darts", 32)
    with pytest.raises(HwnasError, match=r"no mobile table at input size 192 \(only 224\)"):
        resolve_target("mobile", "mobile", 192)
    with pytest.raises(HwnasError, match="does not exist"):
        resolve_target("missing.json", "mobile", 224)


def test_host_target_without_table_names_the_profile_command(user_tables):
    make_table(mobile_op_configs(224)[:5], target="gpu").save(user_tables / "gpu_mobile_224.json")
    with pytest.raises(HwnasError, match="`hwnas profile --device gpu --space darts --input-size 32`"):
        resolve_target("gpu", "darts", 32)


def test_malformed_user_table_is_skipped(user_tables, caplog):
    (user_tables / "broken.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        tables = list_tables()
    assert all(i.table.path.name != "broken.json" for i in tables)
    assert "broken.json" in caplog.text


def test_host_target_takes_a_table_of_this_machine_first(user_tables, capsys):
    """Of two user onnxruntime tables, the one measured on this machine's CPU wins over the one listed first
    (`hwnas targets` marks it used); a phone target has no such preference."""

    from hwnas.cli import main
    from hwnas.latency.targets import this_machine

    elsewhere = make_table(mobile_op_configs(224)[:5], target="onnxruntime")
    elsewhere.save(user_tables / "a_onnxruntime_mobile_224.json")
    here = of_this_machine(elsewhere)
    here.save(user_tables / "b_onnxruntime_mobile_224.json")
    assert elsewhere.metadata.device != here.metadata.device
    assert resolve_target("onnxruntime", "mobile", 224).path == user_tables / "b_onnxruntime_mobile_224.json"
    assert this_machine("mobile") is None
    assert main(["targets", "--space", "mobile"]) == 0
    used = {line.split()[-1]: line.split()[-2] for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert used[str(user_tables / "a_onnxruntime_mobile_224.json")] == "-"
    assert used[str(user_tables / "b_onnxruntime_mobile_224.json")] == "yes"
    # predict estimates with the table the search would (the other's entries would shadow it otherwise)
    for table, scale in ((elsewhere, 1.0), (here, 3.0)):
        table.entries = {k: dataclasses.replace(e, median_ms=scale * e.median_ms) for k, e in table.entries.items()}
        table.save()
    key = next(iter(here.entries))
    assert main(["predict", "--table", "onnxruntime", "--key", key, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["latency_ms"] == pytest.approx(here.entries[key].median_ms)


def test_a_table_of_this_cpu_name_but_another_signature_is_not_this_machines():
    """One CPU name can hide different hardware (a VM's "Intel(R) Xeon(R) Processor"): a table recording this
    machine's signature goes before one recording none (older tables), which goes before one recording another."""
    from dataclasses import replace

    from hwnas.latency.targets import machine_match, preferred
    from hwnas.profilers.protocol import cpu_signature

    mine = of_this_machine(make_table(mobile_op_configs(224)[:5], target="onnxruntime"))

    def signed(signature: str | None) -> LatencyTable:
        machine = {} if signature is None else {"cpu_signature": signature}
        return LatencyTable(replace(mine.metadata, details={"machine": machine}), mine.entries)

    other, unsigned = signed("family 6 model 1 stepping 0, L2 1K"), signed(None)
    assert (machine_match(other), machine_match(unsigned)) == (0, 1)
    assert preferred([other, unsigned], "onnxruntime") == [unsigned, other]
    if cpu_signature():  # Linux reports one
        assert machine_match(mine) == 2
        assert preferred([other, unsigned, mine], "onnxruntime") == [mine, unsigned, other]


def test_every_shipped_table_loads_and_every_host_table_covers_its_space(caplog):
    """The shipped tables load without a warning; each host table holds every configuration of its space (the
    mobile space at 224, the DARTS search shape at 32) and a per-network correction."""
    from hwnas.config import SearchConfig
    from hwnas.latency.catalogue import space_op_configs
    from hwnas.latency.targets import HOST_DEVICES

    with caplog.at_level(logging.WARNING):
        shipped = [i.table for i in list_tables() if i.origin == "shipped"]
    assert not caplog.records
    assert {t.metadata.target for t in shipped} >= {"mobile", "note10", "cpu", "onnxruntime", "tflite"}
    hosts = [t for t in shipped if t.metadata.target in HOST_DEVICES]
    assert {(t.metadata.target, t.metadata.space) for t in hosts} >= {
        (d, s) for d in ("cpu", "onnxruntime", "tflite") for s in ("mobile", "darts")
    }
    for table in hosts:
        m = table.metadata
        table.require(space_op_configs(m.space, m.input_size, SearchConfig(space=m.space)))
        assert m.network_correction is not None and m.network_correction.a > 0, table.path
