"""Parsing benchmark_model output: old and new summaries, statistics lines, op-profiling tables."""

from pathlib import Path

import pytest

from hwnas.errors import HwnasError
from hwnas.profilers.benchmark_output import parse_benchmark_output, strip_prefix

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_old_format_no_stats():
    result = parse_benchmark_output(read("old_no_stats.txt"))
    assert result.avg_us == pytest.approx(3518.64)
    assert (result.count, result.std_us, result.init_us, result.median_us) == (284, 41.0, 2118.0, None)
    assert result.op_profile == ()


def test_old_format_inference_and_scientific_notation():
    result = parse_benchmark_output(read("old_inference.txt"))
    assert result.avg_us == pytest.approx(11971.3)
    assert result.count == 30  # the timed phase, not the single warm-up run


def test_new_format_with_info_prefix_and_percentiles():
    result = parse_benchmark_output(read("new_info_median.txt"))
    assert result.avg_us == pytest.approx(613.87)
    assert (result.median_us, result.p5_us, result.p95_us, result.count) == (608.5, 600.0, 637.0, 1630)
    assert result.init_us == 1920.0


def test_profiling_table_with_start_column():
    result = parse_benchmark_output(read("profiling_with_start.txt"))
    assert result.avg_us == pytest.approx(1653.2)
    assert result.count == 604  # the "Timings (microseconds)" summary line is not the timed phase
    rows = result.op_profile
    assert [r.node_type for r in rows] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD"]
    assert rows[1].start_ms == pytest.approx(0.522) and rows[1].avg_ms == pytest.approx(0.598)
    assert rows[0].name == "hwnas/body/0/Relu6" and rows[0].times_called == 1
    titles = [t.title for t in result.tables]
    assert titles == ["Run Order", "Run Order", "Top by Computation Time", "Summary by node type"]
    summary = result.tables[-1].rows
    assert summary[0].node_type == "CONV_2D" and summary[0].avg_ms == pytest.approx(1.033)


def test_profiling_table_without_start_column_and_spaced_names():
    result = parse_benchmark_output(read("profiling_no_start.txt"))
    assert result.median_us == pytest.approx(395.5)
    rows = result.op_profile
    assert len(rows) == 3 and all(r.start_ms is None for r in rows)
    assert rows[1].node_type == "Convolution (NHWC, F32) DWConv"
    assert rows[1].name == "Delegate/Convolution (NHWC, F32) DWConv:1"
    assert sum(r.avg_ms for r in rows) == pytest.approx(0.389)


def test_space_aligned_table_and_glog_prefix():
    text = read("profiling_with_start.txt").replace("\t", "    ")
    assert [r.avg_ms for r in parse_benchmark_output(text).op_profile] == [0.521, 0.598, 0.512, 0.0167]
    glog = "\n".join(
        f"2018-09-10 12:36:37.571102: I tensorflow/lite/tools/benchmark.cc:85] {line}"
        for line in read("old_no_stats.txt").splitlines()
    )
    assert parse_benchmark_output(glog).avg_us == pytest.approx(3518.64)


def test_strip_prefix_variants():
    assert strip_prefix("INFO: count=3 avg=2") == "count=3 avg=2"
    assert strip_prefix("INFO: [./litert/tools/benchmark_litert_model.h:81] x") == "x"
    assert strip_prefix("count=3") == "count=3"


def test_failed_run_is_a_clear_error():
    with pytest.raises(HwnasError, match="no inference timings.*Failed to construct interpreter"):
        parse_benchmark_output(read("failed.txt"))
    with pytest.raises(HwnasError, match=r"\(nothing\)"):
        parse_benchmark_output("")
