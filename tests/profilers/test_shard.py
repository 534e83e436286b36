"""Profiling on several devices: the shared queue, failures, and `hwnas profile` over two fake phones (fake adb
in conftest.py; each op's .tflite conversion is stubbed out, the phones' output is recorded)."""

import json
import threading

import pytest

from hwnas.cli import main
from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.catalogue import space_op_configs
from hwnas.latency.table import LatencyTable
from hwnas.profilers.base import Profiler
from hwnas.profilers.protocol import Measurement
from hwnas.profilers.shard import measure_sharded

TINY = "--space darts --input-size 8 --init-channels 4 --layers 3 --primitives skip_connect,avg_pool_3x3".split()
CONFIGS = space_op_configs(
    "darts", 8, SearchConfig(init_channels=4, layers=3, primitives=("skip_connect", "avg_pool_3x3"))
)


class FakeDevice(Profiler):
    device, runtime = "fake", "fake"

    def __init__(self, name: str, fail_after: int | None = None, crash: bool = False):
        super().__init__()
        self.name, self.fail_after, self.crash, self.done = name, fail_after, crash, 0

    @property
    def label(self) -> str:
        return self.name

    def measure(self, job: int) -> Measurement:
        if self.crash:
            raise ZeroDivisionError("a bug")
        if self.fail_after is not None and self.done >= self.fail_after:
            raise HwnasError(f"{self.name} unplugged")
        self.done += 1
        threading.Event().wait(0.002)  # let the other device take its turn
        return Measurement(float(job), 0.0, 3)


def shard(devices, jobs):
    recorded = {}

    def record(device, job, m):
        assert job not in recorded
        recorded[job] = (device.label, m.median_ms)

    report = measure_sharded(devices, jobs, lambda d, job: d.measure(job), record, "test")
    return report, recorded


def test_every_job_is_measured_once_across_devices():
    report, recorded = shard([FakeDevice("A"), FakeDevice("B")], list(range(40)))
    assert sorted(recorded) == list(range(40)) and all(ms == job for job, (_d, ms) in recorded.items())
    assert sum(report.measured.values()) == 40 and set(report.measured) == {"A", "B"}
    assert not report.failures and not report.unmeasured


def test_a_failed_device_leaves_the_rest_to_the_others():
    report, recorded = shard([FakeDevice("A"), FakeDevice("B", fail_after=3)], list(range(20)))
    assert report.measured["B"] == 3 and [f.device for f in report.failures] == ["B"]
    assert len(report.unmeasured) == 1 and len(recorded) == 19  # B's job in flight, not retried
    assert "device B failed after 3 measured (B unplugged)" in report.describe_failures()


def test_when_every_device_fails_the_remaining_jobs_are_reported():
    report, recorded = shard([FakeDevice("A", fail_after=2), FakeDevice("B", fail_after=2)], list(range(10)))
    assert len(recorded) == 4 and sorted(report.unmeasured + list(recorded)) == list(range(10))


def test_a_bug_is_raised_not_reported():
    with pytest.raises(ZeroDivisionError):
        shard([FakeDevice("A"), FakeDevice("B", crash=True)], list(range(10)))


@pytest.fixture
def two_phones(fake_adb, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1\tdevice;B2\tdevice")
    monkeypatch.setattr("hwnas.profilers.android.convert_tflite", lambda module, shape: b"TFL3 fake")
    binary, calls = fake_adb
    out = tmp_path / "phones.json"
    args = ["profile", "--device", "android", *TINY, "--binary", str(binary), "--out", str(out)]
    return args, out, calls


def test_two_phones_share_the_ops_into_one_table(two_phones, capsys):
    args, out, calls = two_phones
    assert main([*args, "--serial", "A1", "--serial", "B2"]) == 0
    table = LatencyTable.load(out)
    assert set(table.entries) == {op.key() for op in CONFIGS}
    assert table.metadata.device == "Pixel 7"
    devices = {d["serial"]: d for d in table.metadata.details["devices"]}
    assert set(devices) == {"A1", "B2"} and {d["model"] for d in devices.values()} == {"Pixel 7"}
    assert sum(d["entries_measured"] for d in devices.values()) == len(CONFIGS)
    runs = [c[1] for c in calls() if "--graph=" in " ".join(c)]
    assert len(runs) == len(CONFIGS) and set(runs) == {"A1", "B2"}  # each op once, on both phones
    assert f"{len(CONFIGS)} entries ({len(CONFIGS)} measured now)" in capsys.readouterr().out


def test_a_phone_unplugged_mid_profile_keeps_what_was_measured(two_phones, monkeypatch, capsys):
    args, out, calls = two_phones
    monkeypatch.setenv("FAKE_ADB_DISCONNECT", "B2:2")
    assert main([*args, "--serial", "A1", "--serial", "B2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "device B2 failed after 2 measured" in error and "1 op configuration(s) not measured" in error
    assert "re-run the same command" in error
    table = LatencyTable.load(out)
    assert len(table) == len(CONFIGS) - 1  # A1 measured the rest; B2's op in flight is missing
    devices = {d["serial"]: d["entries_measured"] for d in table.metadata.details["devices"]}
    assert devices["B2"] == 2 and devices["A1"] == len(CONFIGS) - 3

    monkeypatch.delenv("FAKE_ADB_DISCONNECT")  # plugged back in: the same command finishes the table
    assert main([*args, "--serial", "A1", "--serial", "B2"]) == 0
    assert len(LatencyTable.load(out)) == len(CONFIGS)
    assert "(1 measured now)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("serials", "message"),
    [
        (["A1", "A1"], "device A1 given more than once"),
        (["A1", "C3"], "no device 'C3' attached"),
    ],
)
def test_bad_serials(two_phones, capsys, serials, message):
    args, out, _calls = two_phones
    assert main([*args, *(x for s in serials for x in ("--serial", s))]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_mixed_models_are_refused_in_one_line(two_phones, monkeypatch, cli):
    args, out, calls = two_phones
    monkeypatch.setenv("FAKE_ADB_MODELS", "A1=Pixel 7;B2=Pixel 8")
    done = cli(*args, "--serial", "A1", "--serial", "B2")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "different models (A1: Pixel 7, B2: Pixel 8)" in lines[0]
    assert not out.exists()
    assert ["-s", "B2", "shell", "rm -rf /data/local/tmp/hwnas"] in calls()  # both phones cleaned up


def test_device_flags_belong_to_their_device(capsys):
    assert main(["profile", "--device", "cpu", *TINY, "--serial", "A1"]) == 2
    assert main(["profile", "--device", "cpu", *TINY, "--gpu-ids", "0"]) == 2
    assert main(["profile", "--device", "gpu", *TINY, "--gpu-ids", "0,x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--serial applies to --device android" in err[0] and "--gpu-ids applies to --device gpu" in err[1]
    assert "--gpu-ids must be comma-separated integers" in err[2]


def test_json_metadata_records_each_device(two_phones):
    args, out, _calls = two_phones
    assert main([*args, "--serial", "B2"]) == 0
    details = json.loads(out.read_text())["metadata"]["details"]
    assert details["devices"] == [{"serial": "B2", "model": "Pixel 7", "entries_measured": len(CONFIGS)}]
