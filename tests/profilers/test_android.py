"""The Android profiler against a fake `adb` on PATH (conftest.py): commands, parsing, clean-up, device errors."""

import pytest

from hwnas.errors import HwnasError
from hwnas.profilers.android import AndroidProfiler, benchmark_command, parse_devices


def test_parse_devices():
    text = "List of devices attached\nR5CT1234\tdevice\nemulator-5554\tunauthorized\n\n"
    assert parse_devices(text) == {"R5CT1234": "device", "emulator-5554": "unauthorized"}
    assert parse_devices("* daemon started successfully\nList of devices attached\n") == {}


def test_benchmark_command():
    command = benchmark_command("/d/bm", "/d/op.tflite", 2, 5, 20, "xnnpack", "f0", op_profiling=True)
    assert command == (
        "taskset f0 /d/bm --graph=/d/op.tflite --num_threads=2 --warmup_runs=5 --num_runs=20 "
        "--use_xnnpack=true --enable_op_profiling=true"
    )
    assert benchmark_command("/d/bm", "/d/m", 1, 1, 3, "gpu").endswith("--num_runs=3 --use_gpu=true")
    assert "--use_nnapi=true" in benchmark_command("/d/bm", "/d/m", 1, 1, 3, "nnapi")
    assert "--use_xnnpack=false" in benchmark_command("/d/bm", "/d/m", 1, 1, 3, "cpu")
    with pytest.raises(HwnasError, match="unknown delegate"):
        benchmark_command("/d/bm", "/d/m", 1, 1, 3, "hexagon")


def test_measure_pushes_runs_parses_and_cleans_up(fake_adb):
    binary, calls = fake_adb
    with AndroidProfiler(threads=1, binary=str(binary), cpu_mask="f0") as profiler:
        m = profiler.measure_tflite(b"TFL3 fake model")
        assert profiler.device_name() == "Pixel 7"
        assert profiler.metadata()["phone"]["soc"] == "gs201"
    assert m.median_ms == pytest.approx(0.6085) and m.runs == 1630
    assert m.iqr_ms == pytest.approx(1.349 * 0.017)
    log = calls()
    assert log[0] == ["devices"]
    assert all(c[:2] == ["-s", "R5CT1234"] for c in log[1:])
    commands = [" ".join(c[2:]) for c in log[1:]]
    assert commands[0] == "shell mkdir -p /data/local/tmp/hwnas"
    assert commands[1].startswith("push ") and commands[1].endswith(" /data/local/tmp/hwnas/benchmark_model")
    assert commands[2] == "shell chmod 755 /data/local/tmp/hwnas/benchmark_model"
    assert commands[3].endswith(" /data/local/tmp/hwnas/op1.tflite")
    assert commands[4].startswith(
        "shell taskset f0 /data/local/tmp/hwnas/benchmark_model "
        "--graph=/data/local/tmp/hwnas/op1.tflite --num_threads=1"
    )
    assert commands[5] == "shell rm -f /data/local/tmp/hwnas/op1.tflite"
    assert commands[-1] == "shell rm -rf /data/local/tmp/hwnas"


def test_missing_adb(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HwnasError, match="'adb' not found on PATH"):
        AndroidProfiler(binary=str(tmp_path / "benchmark_model"))


def test_missing_binary(fake_adb, tmp_path):
    with pytest.raises(HwnasError, match="benchmark_model binary not found at .*nope"):
        AndroidProfiler(binary=str(tmp_path / "nope"))
    with pytest.raises(HwnasError, match="pass --binary"):
        AndroidProfiler()


@pytest.mark.parametrize(
    ("devices", "serial", "message"),
    [
        ("", None, "no Android device attached"),
        ("R5CT1234\tunauthorized", None, "unauthorized: accept the USB debugging prompt"),
        ("R5CT1234\toffline", None, "is offline"),
        ("A1\tdevice;B2\tdevice", None, "several devices attached .*--serial"),
        ("A1\tdevice", "B2", "no device 'B2' attached"),
    ],
)
def test_device_errors(fake_adb, monkeypatch, devices, serial, message):
    binary, _calls = fake_adb
    monkeypatch.setenv("FAKE_ADB_DEVICES", devices)
    with pytest.raises(HwnasError, match=message):
        AndroidProfiler(binary=str(binary), serial=serial)


def test_serial_picks_among_several(fake_adb, monkeypatch):
    binary, calls = fake_adb
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1\tdevice;B2\tdevice")
    AndroidProfiler(binary=str(binary), serial="B2").close()
    assert calls()[1][:2] == ["-s", "B2"]


def test_bad_cpu_mask(fake_adb):
    binary, _calls = fake_adb
    with pytest.raises(HwnasError, match="hexadecimal taskset mask"):
        AndroidProfiler(binary=str(binary), cpu_mask="big")
