"""Latency lookup tables: one JSON file per (target, space, input size), keyed by `OpConfig.key()`.

Format (version 1; documented in latency_tables/README.md)::

    {"format": "hwnas-latency-table", "version": 1,
     "metadata": {"target": "onnxruntime", "device": "...", "runtime": "onnxruntime",
                  "runtime_version": "1.32.0",
                  "threads": 1, "batch": 1, "space": "mobile", "input_size": 224, "statistic": "median",
                  "source": "...", "date": "2026-01-01", "details": {...},
                  "network_correction": {"a": 1.1, "b_ms": -0.1, "architectures": 50, "fitted": "2026-01-02",
                                         "rmse_ms": 0.2}},
     "entries": {"Conv-input:224x224x3-output:112x112x32": {"median_ms": 0.34, "iqr_ms": 0.03, "runs": 29},
                 ...}}

A network's latency is estimated from the sum of its ops' entries (ProxylessNAS, Cai et al. 2019, Eq. 4:
E[latency] = Σ_blocks Σ_ops p_op · F(op)), through the table's optional per-network correction
a · Σ + b (whole networks do not run in the sum of their ops' times), fitted on whole architectures measured end to
end (`hwnas profile --calibrate N`); without one the estimate is the plain sum.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig

if TYPE_CHECKING:
    import torch

FORMAT = "hwnas-latency-table"
VERSION = 1


@dataclass(frozen=True)
class TableEntry:
    median_ms: float  # the table's `statistic` (median for hwnas measurements, mean for published tables)
    iqr_ms: float | None  # interquartile range; None where the source gives no spread
    runs: int  # timed runs behind the figure

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> TableEntry:
        if not isinstance(data, dict) or set(data) != {"median_ms", "iqr_ms", "runs"}:
            raise HwnasError(f"{where}: an entry must be an object with median_ms, iqr_ms and runs, got {data!r}")
        median, iqr, runs = data["median_ms"], data["iqr_ms"], data["runs"]
        if not _is_number(median) or not math.isfinite(median) or median < 0:
            raise HwnasError(f"{where}: median_ms must be a finite number >= 0, got {median!r}")
        if iqr is not None and (not _is_number(iqr) or not math.isfinite(iqr) or iqr < 0):
            raise HwnasError(f"{where}: iqr_ms must be a finite number >= 0 or null, got {iqr!r}")
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise HwnasError(f"{where}: runs must be a positive integer, got {runs!r}")
        return cls(float(median), None if iqr is None else float(iqr), runs)


@dataclass(frozen=True)
class NetworkCorrection:
    """Whole-network latency ≈ a · Σ op latencies + b, least squares on relative error over `architectures`
    networks measured end to end with the table's profiler and protocol."""

    a: float
    b_ms: float
    architectures: int  # networks the fit saw
    fitted: str  # ISO date
    rmse_ms: float  # of the corrected estimate over those networks

    def apply(self, sum_ms: float | torch.Tensor) -> float | torch.Tensor:
        """a · sum_ms + b (a float, or a tensor: the map is linear, so gradients just scale by a)."""
        return self.a * sum_ms + self.b_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> NetworkCorrection:
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            raise HwnasError(f"{where}: network_correction must be an object with {', '.join(names)}, got {data!r}")
        a, b, n, fitted, rmse = (data[name] for name in names)
        if not _is_number(a) or not math.isfinite(a) or a <= 0:
            raise HwnasError(f"{where}: network_correction 'a' must be a finite number > 0, got {a!r}")
        if not _is_number(b) or not math.isfinite(b):
            raise HwnasError(f"{where}: network_correction 'b_ms' must be a finite number, got {b!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise HwnasError(f"{where}: network_correction 'architectures' must be an integer >= 2, got {n!r}")
        if not isinstance(fitted, str) or not _is_iso_date(fitted):
            raise HwnasError(f"{where}: network_correction 'fitted' must be an ISO date, got {fitted!r}")
        if not _is_number(rmse) or not math.isfinite(rmse) or rmse < 0:
            raise HwnasError(f"{where}: network_correction 'rmse_ms' must be a finite number >= 0, got {rmse!r}")
        return cls(float(a), float(b), n, fitted, float(rmse))


@dataclass(frozen=True)
class TableMetadata:
    target: str  # the name `--target` resolves: cpu, onnxruntime, tflite, mobile, note10, ...
    device: str  # the hardware, in words
    runtime: str
    runtime_version: str
    threads: int | None  # None where the source does not say
    space: str
    input_size: int
    source: str  # who measured it and how (command line or publication)
    date: str  # ISO date of the measurement or conversion
    batch: int = 1
    statistic: str = "median"  # what median_ms holds: "median" or "mean"
    details: dict[str, Any] = field(default_factory=dict)  # machine, protocol, phone, citation, ...
    network_correction: NetworkCorrection | None = None  # None: a network's estimate is the plain sum

    @property
    def cpu_signature(self) -> str | None:
        """The recorded signature of the CPU the table was measured on (hwnas.profilers.protocol.cpu_signature),
        None where the table records none."""
        return self.details.get("machine", {}).get("cpu_signature")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.network_correction is None:
            del data["network_correction"]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> TableMetadata:
        if not isinstance(data, dict):
            raise HwnasError(f"{where}: metadata must be an object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise HwnasError(f"{where}: unknown metadata field(s) {', '.join(unknown)}")
        types = {"threads": int, "input_size": int, "batch": int, "details": dict}
        for name, f in known.items():
            if name == "network_correction":
                continue
            if name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise HwnasError(f"{where}: metadata lacks {name!r}")
                continue
            expected = types.get(name, str)
            value = data[name]
            if name == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, expected):
                raise HwnasError(f"{where}: metadata {name!r} must be {expected.__name__}, got {value!r}")
        for name in ("threads", "input_size", "batch"):
            if data.get(name) is not None and data[name] < 1:
                raise HwnasError(f"{where}: metadata {name!r} must be >= 1, got {data[name]}")
        if data.get("statistic", "median") not in ("median", "mean"):
            raise HwnasError(f"{where}: metadata 'statistic' must be 'median' or 'mean', got {data['statistic']!r}")
        _check_details(data.get("details", {}), where)
        correction = data.get("network_correction")
        if correction is not None:
            correction = NetworkCorrection.from_json(correction, where)
        return cls(**{**data, "network_correction": correction})


class LatencyTable:
    """Per-op latencies of one target for one space at one input size; see the module docstring."""

    def __init__(
        self,
        metadata: TableMetadata,
        entries: dict[str, TableEntry] | None = None,
        path: str | Path | None = None,
    ):
        self.metadata = metadata
        self.entries: dict[str, TableEntry] = dict(entries or {})
        self.path = Path(path) if path is not None else None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, op: OpConfig | str) -> bool:
        return (op.key() if isinstance(op, OpConfig) else op) in self.entries

    def __repr__(self) -> str:
        m = self.metadata
        return f"LatencyTable({m.target!r}, space={m.space!r}, input_size={m.input_size}, entries={len(self)})"

    def lookup(self, op: OpConfig) -> float | None:
        """The latency of `op` in milliseconds, or None when the table lacks it."""
        entry = self.entries.get(op.key())
        return entry.median_ms if entry is not None else None

    def add(self, op: OpConfig, entry: TableEntry) -> None:
        self.entries[op.key()] = entry

    def ops(self) -> list[OpConfig]:
        return [OpConfig.from_key(key) for key in self.entries]

    def missing(self, configs: list[OpConfig]) -> list[OpConfig]:
        return [op for op in configs if op.key() not in self.entries]

    def require(self, configs: list[OpConfig], hint: str = "") -> None:
        """HwnasError naming the first missing config (and how to measure it) unless all are present."""
        missing = self.missing(configs)
        if missing:
            raise HwnasError(
                f"latency table {self.name} lacks {len(missing)} of {len(configs)} op configurations "
                f"(first: {missing[0].key()}){'; ' + hint if hint else ''}"
            )

    def sum_ms(self, configs: list[OpConfig]) -> float:
        """Σ latency over `configs` (a network's layers)."""
        self.require(configs)
        return sum(self.entries[op.key()].median_ms for op in configs)

    def network_ms(self, sum_ms: float | torch.Tensor) -> float | torch.Tensor:
        """The table's estimate of a whole network whose layers sum to `sum_ms` (a float or a tensor): the
        per-network correction a · sum + b where the table has one, else the sum itself."""
        correction = self.metadata.network_correction
        return sum_ms if correction is None else correction.apply(sum_ms)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else self.metadata.target

    def check(self, space: str | None = None, input_size: int | None = None) -> LatencyTable:
        m = self.metadata
        if space is not None and m.space != space:
            raise HwnasError(f"latency table {self.name} is for space {m.space!r}, not {space!r}")
        if input_size is not None and m.input_size != input_size:
            raise HwnasError(f"latency table {self.name} was measured at input size {m.input_size}, not {input_size}")
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "metadata": self.metadata.to_json(),
            "entries": {key: self.entries[key].to_json() for key in sorted(self.entries)},
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "latency table", path: str | Path | None = None) -> LatencyTable:
        if not isinstance(data, dict):
            raise HwnasError(f"malformed {where}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise HwnasError(f"malformed {where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise HwnasError(
                f"{where}: table format version {data.get('version')!r} is not supported "
                f"(this hwnas reads version {VERSION})"
            )
        unknown = sorted(set(data) - {"format", "version", "metadata", "entries"})
        if unknown:
            raise HwnasError(f"malformed {where}: unknown field(s) {', '.join(unknown)}")
        metadata = TableMetadata.from_json(data.get("metadata"), f"malformed {where}")
        raw = data.get("entries")
        if not isinstance(raw, dict) or not raw:
            raise HwnasError(f"malformed {where}: 'entries' must be a non-empty object")
        entries = {}
        for key, value in raw.items():
            try:
                canonical = OpConfig.from_key(key).key()
            except HwnasError as err:
                raise HwnasError(f"malformed {where}: {err}") from None
            if key != canonical:  # lookups go by the canonical key: this entry would never be found
                raise HwnasError(f"malformed {where}: op key {key!r} is not canonical; write {canonical!r}")
            entries[key] = TableEntry.from_json(value, f"malformed {where}, entry {key}")
        return cls(metadata, entries, path)

    @classmethod
    def from_text(cls, text: str, where: str, path: str | Path | None = None) -> LatencyTable:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HwnasError(f"malformed {where}: not JSON ({err})") from None
        return cls.from_json(data, where, path)

    @classmethod
    def load(cls, path: str | Path, space: str | None = None, input_size: int | None = None) -> LatencyTable:
        """Read and validate a table; with `space` / `input_size`, check it is for that space and size."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise HwnasError(f"latency table {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise HwnasError(f"cannot read latency table {path}: {err}") from None
        return cls.from_text(text, f"latency table {path}", path).check(space, input_size)

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (temporary file + rename) to `path`, or to where the table was loaded from."""
        from hwnas.run import write_json_atomic

        target = Path(path) if path is not None else self.path
        if target is None:
            raise HwnasError("this latency table has no path to save to")
        write_json_atomic(target, self.to_json())
        self.path = target
        return target


def _check_details(details: dict[str, Any], where: str) -> None:
    """The `details` fields hwnas reads (choosing a table, resuming, re-measuring), where present."""

    def fail(name: str, expected: str, value: Any) -> HwnasError:
        return HwnasError(f"{where}: metadata details {name!r} must be {expected}, got {value!r}")

    machine = details.get("machine", {})
    if not isinstance(machine, dict):
        raise fail("machine", "an object", machine)
    if not isinstance(machine.get("cpu_signature", ""), str):
        raise fail("machine.cpu_signature", "a string", machine["cpu_signature"])
    if not isinstance(details.get("protocol", {}), dict):
        raise fail("protocol", "an object", details["protocol"])
    if "protocol" in details:  # a table's protocol is repeated: to time a derived network, to resume
        from hwnas.profilers import Protocol

        try:
            Protocol.from_json(details["protocol"])
        except HwnasError as err:
            raise HwnasError(f"{where}: metadata details: {err}") from None
    if not isinstance(details.get("delegate", ""), str):
        raise fail("delegate", "a string", details["delegate"])
    rounds = details.get("rounds", 1)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise fail("rounds", "an integer >= 1", rounds)
    devices = details.get("devices", [])
    if not isinstance(devices, list) or not all(map(_is_device_record, devices)):
        raise fail("devices", "a list of objects with an integer entries_measured >= 0", devices)


def _is_device_record(device: Any) -> bool:
    """One of `details.devices`: an object with the number of entries that device measured."""
    count = device.get("entries_measured") if isinstance(device, dict) else None
    return isinstance(count, int) and not isinstance(count, bool) and count >= 0


def _is_iso_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
