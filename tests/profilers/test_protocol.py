"""The shared measurement protocol."""

import platform
import time

import pytest

from hwnas.errors import HwnasError
from hwnas.profilers.protocol import Protocol, machine_metadata, measure, summarize, timed


def test_summarize_rejects_outliers():
    samples = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 50.0]
    m = summarize(samples)
    assert m.runs == 6 and m.median_ms == pytest.approx(1.0)
    assert summarize(samples, outlier_iqr=0).runs == 7
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_measure_batches_short_ops_to_min_sample_time():
    calls = []

    def run_batch(n):  # an op of 0.1 ms
        calls.append(n)
        return 0.1 * n

    m = measure(run_batch, Protocol(warmup_runs=4, runs=5, min_sample_ms=2.0))
    assert calls == [4] + [20] * 5
    assert m.median_ms == pytest.approx(0.1) and m.iqr_ms == pytest.approx(0.0) and m.runs == 5


def test_protocol_validation_and_json():
    with pytest.raises(HwnasError, match="at least 3 runs"):
        Protocol(runs=2)
    for field, value, expected in [
        ("runs", "30", "an integer"), ("warmup_runs", True, "an integer"), ("clock", ["wall"], "unknown clock"),
        ("min_sample_ms", float("nan"), "a finite number"), ("outlier_iqr", -1.0, "a finite number >= 0"),
    ]:  # fmt: skip
        with pytest.raises(HwnasError, match=expected):
            Protocol(**{field: value})
    assert Protocol(min_sample_ms=0, outlier_iqr=2).outlier_iqr == 2
    assert Protocol.from_json({"clock": ["wall"]}).clock == "auto"
    assert Protocol().to_json()["runs"] == 30


def test_clock_choice_and_thread_clock_ignores_sleeping():
    assert Protocol().resolve_clock(1) == "thread" and Protocol().resolve_clock(2) == "wall"
    assert Protocol(clock="wall").resolve_clock(1) == "wall"
    with pytest.raises(HwnasError, match="single-threaded"):
        Protocol(clock="thread").resolve_clock(4)
    with pytest.raises(HwnasError, match="unknown clock"):
        Protocol(clock="tsc")
    nap = timed(lambda: time.sleep(0.01), "thread")(3)  # waiting is not CPU time
    assert nap < 5 and timed(lambda: time.sleep(0.01), "wall")(3) >= 30


def test_machine_metadata():
    meta = machine_metadata(1, {"onnxruntime": "1.0"})
    assert meta["threads"] == 1 and meta["python"] == platform.python_version()
    assert meta["versions"]["onnxruntime"] == "1.0" and "torch" in meta["versions"]
    assert "gpu" not in meta and machine_metadata(1, {}, gpu="H100")["gpu"] == "H100"


@pytest.mark.parametrize(("clock", "repeated"), [("thread", "thread"), ("wall", "wall"), ("cuda-events", "auto")])
def test_a_recorded_protocol_is_repeated(clock, repeated):
    """A table records its protocol with the clock the measurement resolved to (`Profiler.metadata`); a host
    clock is repeated, a device's own clock (CUDA events) goes back to auto, and unknown keys are ignored."""
    recorded = {**Protocol(warmup_runs=3, runs=7, min_sample_ms=1.5).to_json(), "clock": clock, "rounds": 3}
    assert Protocol.from_json(recorded) == Protocol(warmup_runs=3, runs=7, min_sample_ms=1.5, clock=repeated)
    assert Protocol.from_json({}) == Protocol()
