"""The per-network correction: the fit, and the architectures it is measured on."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.config import SearchConfig
from hwnas.errors import HwnasError
from hwnas.latency.calibration import (
    calibration_networks,
    fit_network_correction,
    load_measurements,
    measure_in_fresh_processes,
)
from hwnas.latency.catalogue import space_op_configs
from tests.conftest import ROOT

DARTS = SearchConfig(init_channels=4, layers=3, primitives=("skip_connect", "avg_pool_3x3", "sep_conv_3x3"))


def test_fit_recovers_a_linear_relation():
    sums = np.linspace(5.0, 20.0, 12)
    correction = fit_network_correction(sums, 1.15 * sums + 0.4, fitted="2026-01-01")
    assert correction.a == pytest.approx(1.15) and correction.b_ms == pytest.approx(0.4)
    assert correction.architectures == 12 and correction.fitted == "2026-01-01" and correction.rmse_ms < 1e-9
    noisy = 1.15 * sums + 0.4 + np.random.default_rng(0).normal(0, 0.1, sums.size)
    assert 0.05 < fit_network_correction(sums, noisy).rmse_ms < 0.2


@pytest.mark.parametrize(
    ("sums", "measured", "message"),
    [
        ([1.0, 2.0], [1.0, 2.0], "at least 3"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "different sums"),
        ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "slope"),
    ],
)
def test_fit_errors(sums, measured, message):
    with pytest.raises(HwnasError, match=message):
        fit_network_correction(sums, measured)


CORRUPT = {"list": b"[]", "string": b'"x"', "binary": b"\xff\xfe", "truncated": b"{", "directory": None}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=list(CORRUPT))
def test_corrupt_calibration_measurements_are_named(tmp_path, content):
    path = tmp_path / "t.json.calibration.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(HwnasError, match=f"^{re.escape(str(path))} is corrupt .*; delete it to measure the networks"):
        load_measurements(path)


def test_calibration_networks_are_distinct_seeded_and_in_the_table_s_keys():
    networks = calibration_networks("darts", DARTS, 8, 6)
    assert len({n.key for n in networks}) == 6
    assert [n.key for n in calibration_networks("darts", DARTS, 8, 4)] == [n.key for n in networks[:4]]
    keys = {op.key() for op in space_op_configs("darts", 8, DARTS)}
    for network in networks[:2]:
        assert {op.key() for op in network.layers()} <= keys
        with torch.no_grad():
            assert network.build()(torch.zeros(network.input_shape())).shape == (1, 10)  # the tables' classes
    with pytest.raises(HwnasError, match="at least 3"):
        calibration_networks("darts", DARTS, 8, 2)


def test_mobile_calibration_networks_sum_the_mobile_catalogue():
    cfg = SearchConfig(space="mobile", width_mult=0.35)
    network = calibration_networks("mobile", cfg, 32, 3)[0]
    assert {op.key() for op in network.layers()} <= {op.key() for op in space_op_configs("mobile", 32, cfg)}
    with torch.no_grad():
        assert network.build()(torch.zeros(network.input_shape())).shape == (1, 1000)


def test_a_network_is_timed_in_fresh_processes(capfd):
    """Each round runs in a process of its own, the entry combines the rounds, a round's error reaches the
    caller. A round that sent its result exits by itself: it is not interrupted in its exit handlers (which
    printed a KeyboardInterrupt traceback from torch's library finalizers into a search's output)."""
    from hwnas.profilers import Protocol

    network = calibration_networks("mobile", SearchConfig(space="mobile", width_mult=0.35), 32, 3)[0]
    options = {"device": "onnxruntime", "protocol": Protocol(warmup_runs=1, runs=3)}
    entry = measure_in_fresh_processes(network, options, rounds=2)
    assert entry.median_ms > 0 and entry.runs == 6  # Tukey's fences reject none of three samples
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(HwnasError, match="at least one round"):
        measure_in_fresh_processes(network, options, rounds=0)
    if not torch.cuda.is_available():
        with pytest.raises(HwnasError, match="CUDA"):
            measure_in_fresh_processes(network, {"device": "gpu"}, rounds=1)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, not yet reaped
            return True
        time.sleep(0.1)
    return False


def _profile(out: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "hwnas", "profile", "--device", "cpu", "--out", str(out),
                             "--no-progress"], stderr=subprocess.PIPE, text=True, env=env, **popen)  # fmt: skip


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it exited since it was listed
        return b""


def _measuring_process(command: subprocess.Popen) -> int:
    """The pid of the round's process of a running `hwnas profile` (spawn also starts a tracker)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        measuring = [p for p in _children(command.pid) if b"spawn_main" in _cmdline(p)]
        if measuring:
            return measuring[0]
        time.sleep(0.05)
    raise AssertionError("no measuring process started")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the measuring process through /proc")
def test_ctrl_c_as_the_measuring_process_starts_prints_no_traceback(tmp_path):
    """Ctrl-C reaches the whole process group, the measuring process too, likely in the middle of its imports:
    one line from the command, exit code 130, no traceback from either process, none left behind."""
    out = tmp_path / "cpu.json"
    command = _profile(out, start_new_session=True)
    measuring = _measuring_process(command)
    os.killpg(command.pid, signal.SIGINT)
    _stdout, stderr = command.communicate(timeout=60)
    assert _gone(measuring, timeout_s=10), "the measuring process outlived the command"
    assert command.returncode == 130 and "Traceback" not in stderr, stderr
    last = f"hwnas: interrupted; continue with: the same command ({out} keeps what was measured)"
    assert stderr.strip().splitlines()[-1] == last, stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the measuring process through /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_profile_leaves_no_measuring_process_behind(tmp_path, stop):
    """`hwnas profile` measures each round in a fresh process. SIGTERM to the command: one line naming how to
    continue, exit code 143, the round's process stopped; SIGKILL (no chance to clean up): the round's process
    notices its parent is gone and exits rather than go on measuring into the table as an orphan."""
    out = tmp_path / "cpu.json"
    command = _profile(out)
    measuring = _measuring_process(command)
    time.sleep(2)  # it is measuring now
    command.send_signal(stop)
    _stdout, stderr = command.communicate(timeout=60)
    assert _gone(measuring, timeout_s=10), "the measuring process outlived the command"
    if stop == signal.SIGTERM:
        assert command.returncode == 143 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1] == (
            f"hwnas: stopped by SIGTERM; continue with: the same command ({out} keeps what was measured)"
        )
