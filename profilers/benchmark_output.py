"""Parse the output of TensorFlow Lite's `benchmark_model` (tensorflow/lite/tools/benchmark), old and new.

Handles, with or without ``INFO: `` / glog / logcat prefixes and in plain or scientific notation:

* old summary:  ``Average inference timings in us: Warmup: 91471, Init: 4108, Inference: 80660.1``
  (and the older ``..., no stats: 137722``);
* new summary:  ``Inference timings in us: Init: 855, First inference: 49060, Warmup (avg): 34825.1,
  Inference (avg): 33209.4``;
* run statistics ``count=50 first=32891 curr=33978 min=32641 max=34005 avg=33209.4 std=450`` with optional
  ``p5= median= p95=`` (the last such line is the timed phase; the first is warm-up);
* ``--enable_op_profiling=true`` tables (``Run Order``, ``Top by Computation Time``,
  ``Summary by node type``), tab- or space-aligned, with and without the ``[start]`` column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hwnas.errors import HwnasError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PREFIX = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+\] )?"  # glog (TF 1.x)
    r"(?:(?:INFO|WARNING|ERROR|VERBOSE): )?(?:\[[^\]\s]+:\d+\] ?)?"  # INFO: [file.h:123]
)
_STATS = re.compile(rf"\bcount=\d+(?:\s+\w+={_NUMBER})*")
_PAIR = re.compile(rf"(\w+)=({_NUMBER})")
_NEW_SUMMARY = re.compile(rf"(?<!Average )Inference timings in us:.*?Inference \(avg\):\s*({_NUMBER})")
_OLD_SUMMARY = re.compile(rf"Average inference timings in us:.*?(?:Inference|no stats):\s*({_NUMBER})")
_INIT = re.compile(rf"Init:\s*({_NUMBER})")
_TABLE_TITLE = re.compile(r"^=+ (.+?) =+$")


@dataclass(frozen=True)
class OpProfileRow:
    """One row of a per-op profiling table (times in milliseconds)."""

    node_type: str
    avg_ms: float
    first_ms: float | None = None
    start_ms: float | None = None  # absent from newer benchmark_model builds
    percent: float | None = None
    times_called: int | None = None
    name: str = ""


@dataclass(frozen=True)
class OpProfileTable:
    title: str  # "Run Order", "Top by Computation Time", "Summary by node type"
    section: str  # the "Profiling Info for ..." heading it sits under ("" when there is none)
    rows: tuple[OpProfileRow, ...]


@dataclass(frozen=True)
class BenchmarkResult:
    """Timings of the timed phase in microseconds, as benchmark_model reports them."""

    avg_us: float
    count: int | None = None
    std_us: float | None = None
    median_us: float | None = None
    p5_us: float | None = None
    p95_us: float | None = None
    init_us: float | None = None
    tables: tuple[OpProfileTable, ...] = field(default=())

    @property
    def op_profile(self) -> tuple[OpProfileRow, ...]:
        """The per-op ``Run Order`` of the benchmark runs (not of initialisation); empty without profiling."""
        runs = [t for t in self.tables if t.title == "Run Order" and "Initialization" not in t.section]
        return runs[-1].rows if runs else ()


def strip_prefix(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\r\n"), count=1)


def parse_benchmark_output(text: str) -> BenchmarkResult:
    """The timed-phase statistics (and profiling tables) of one benchmark_model run; HwnasError if absent."""
    lines = [strip_prefix(line) for line in text.splitlines()]
    stats = [
        dict(_PAIR.findall(m.group(0)))
        for line in lines
        if not line.lstrip().startswith(("Timings", "Memory"))
        for m in [_STATS.search(line)]
        if m
    ]
    summary = next((m for line in lines for m in [_NEW_SUMMARY.search(line) or _OLD_SUMMARY.search(line)] if m), None)
    if summary is None and not stats:
        tail = " | ".join(line.strip() for line in lines if line.strip())[-300:]
        raise HwnasError(f"benchmark_model printed no inference timings; its output ends: {tail or '(nothing)'}")
    timed = stats[-1] if stats else {}
    avg = float(summary.group(1)) if summary else float(timed["avg"])
    init = next(
        (float(m.group(1)) for line in lines if "timings in us" in line for m in [_INIT.search(line)] if m),
        None,
    )

    def get(name):
        return float(timed[name]) if name in timed else None

    return BenchmarkResult(
        avg_us=avg,
        count=int(timed["count"]) if "count" in timed else None,
        std_us=get("std"),
        median_us=get("median"),
        p5_us=get("p5"),
        p95_us=get("p95"),
        init_us=init,
        tables=tuple(_parse_tables(lines)),
    )


def _split(line: str) -> list[str]:
    fields = line.split("\t") if "\t" in line else re.split(r"\s{2,}", line)
    return [f.strip() for f in fields if f.strip()]


def _number(value: str) -> float:
    return float(value.rstrip("%"))


def _parse_tables(lines: list[str]):
    section, i = "", 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("Profiling Info for") or line.startswith("Operator-wise Profiling Info for"):
            section = line
        title = _TABLE_TITLE.match(line)
        if title and i + 1 < len(lines) and "[" in lines[i + 1]:
            header = [h.strip("[]").strip().lower() for h in _split(lines[i + 1])]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip() and not _TABLE_TITLE.match(lines[i].strip()):
                fields = _split(lines[i])
                if len(fields) == len(header):
                    rows.append(_row(dict(zip(header, fields))))
                i += 1
            yield OpProfileTable(title.group(1), section, tuple(rows))
            continue
        i += 1


def _row(cells: dict[str, str]) -> OpProfileRow:
    def opt(name, cast=_number):
        return cast(cells[name]) if name in cells else None

    return OpProfileRow(
        node_type=cells["node type"],
        avg_ms=_number(cells["avg ms"]),
        first_ms=opt("first"),
        start_ms=opt("start"),
        percent=opt("%") if "%" in cells else opt("avg %"),
        times_called=opt("times called", lambda v: int(float(v))),
        name=cells.get("name", "").removeprefix("[").removesuffix("]"),
    )
