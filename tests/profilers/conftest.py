"""A fake `adb` on PATH replaying recorded `benchmark_model` output, with one or more phones attached.

Environment: FAKE_ADB_DEVICES (`adb devices` lines, `;`-separated), FAKE_ADB_OUTPUT (the recorded output),
FAKE_ADB_MODELS (`SERIAL=model;...`, default Pixel 7), FAKE_ADB_DISCONNECT (`SERIAL:N`: every command on SERIAL
fails once it has measured N models, as when a phone is unplugged), FAKE_ADB_LOG (every call, one JSON line).
"""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FAKE_ADB = """#!{python} -S
import fcntl, json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a+") as f:  # locked: phones are measured from parallel threads
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    history = [json.loads(line) for line in f]
    f.write(json.dumps(args) + "\\n")
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
disconnect = os.environ.get("FAKE_ADB_DISCONNECT", "")
if serial and disconnect.startswith(serial + ":"):
    measured = sum(1 for c in history if c[:3] == ["-s", serial, "shell"] and c[3].startswith("rm -f "))
    if measured >= int(disconnect.split(":")[1]):
        print(f"adb: device '{{serial}}' not found", file=sys.stderr)
        sys.exit(1)
if args[0] == "devices":
    print("List of devices attached")
    print(os.environ.get("FAKE_ADB_DEVICES", "").replace(";", "\\n"))
elif args[0] == "shell" and "--graph=" in args[1]:
    print(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[:2] == ["shell", "getprop"]:
    models = dict(item.split("=") for item in os.environ.get("FAKE_ADB_MODELS", "").split(";") if item)
    props = {{"ro.product.model": models.get(serial, "Pixel 7"), "ro.build.version.release": "14",
              "ro.board.platform": "gs201"}}
    print(props[args[2]])
"""


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """(benchmark_model binary, calls()): adb on PATH with one phone R5CT1234 attached."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R5CT1234\tdevice")
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "new_info_median.txt"))
    for name in ("FAKE_ADB_MODELS", "FAKE_ADB_DISCONNECT"):
        monkeypatch.delenv(name, raising=False)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()]

    return binary, calls
