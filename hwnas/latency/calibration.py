"""A table's per-network correction: whole networks ≈ a · Σ op entries + b (issue 5), and how it is measured.

Whole networks do not run in the sum of their ops' times: memory traffic between layers and, on the DARTS space,
the cells' 1x1 preprocessing and concatenations (which have no entries) add time, while the per-call overhead
each op pays when timed as a model of its own is paid once per network. `hwnas profile --calibrate N` builds N
random architectures of the space (`Supernet.sample`, seeded, so a re-run measures the same ones), measures each
end to end with the table's own profiler and protocol, and fits a and b by least squares on relative error
against the sums of their layers' entries; `LatencyTable.network_ms` applies the fit. Until the fit, the
measurements wait beside the table in `<table>.calibration.json` ({network key: entry}), so a calibration
resumes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hwnas.errors import HwnasError
from hwnas.fresh_process import in_fresh_process
from hwnas.latency.table import NetworkCorrection, TableEntry
from hwnas.ops.opconfig import OpConfig

CALIBRATION_SEED = 0
MIN_ARCHITECTURES = 3  # two parameters and a residual; 50 or more for a correction worth shipping
IN_CHANNELS = 3  # the tables' stems take RGB input


@dataclass(frozen=True)
class CalibrationNetwork:
    """One architecture of a space at a table's input size; plain data, so rounds in fresh processes get it."""

    space: str
    genotype: dict[str, Any]  # Genotype.to_json()
    cfg: dict[str, Any]  # SearchConfig.to_json(): the network shape (DARTS init_channels, layers)
    input_size: int

    @property
    def key(self) -> str:
        text = json.dumps([self.genotype, self.cfg, self.input_size], sort_keys=True)
        return f"{self.space}-network-{hashlib.sha1(text.encode()).hexdigest()[:16]}"

    def _parts(self):
        from hwnas.config import SearchConfig
        from hwnas.spaces import get_space

        space = get_space(self.space)
        return space, space.genotype_from_json(self.genotype), SearchConfig.from_json(self.cfg)

    def layers(self) -> list[OpConfig]:
        """The layers the table sums for this network."""
        space, genotype, cfg = self._parts()
        return space.network_op_configs(genotype, cfg, self.input_size, IN_CHANNELS)

    def build(self) -> nn.Module:
        """The derived network itself (random weights, eval mode), as `hwnas train` and `hwnas export` build it."""
        space, genotype, cfg = self._parts()
        return space.build_network(genotype, cfg, IN_CHANNELS, space.table_classes).eval()

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, IN_CHANNELS, self.input_size, self.input_size)

    def measure(self, profiler):
        """This network timed end to end by `profiler` (a `hwnas.profilers.Profiler`), at its batch size."""
        return profiler.measure_model(self.key, self.build, self.input_shape(profiler.batch))


def combine_rounds(measurements) -> TableEntry:
    """Median of the rounds' medians, median of their IQRs (unknown counts as 0), all their runs (`measurements`:
    Measurement or TableEntry, one per round)."""
    return TableEntry(
        float(np.median([m.median_ms for m in measurements])),
        float(np.median([m.iqr_ms or 0.0 for m in measurements])),
        sum(m.runs for m in measurements),
    )


def _measure_with(options: dict[str, Any], network: CalibrationNetwork):
    from hwnas.profilers import get_profiler

    with get_profiler(**options) as profiler:
        return network.measure(profiler)


def measure_in_fresh_processes(network: CalibrationNetwork, options: dict[str, Any], rounds: int) -> TableEntry:
    """`network` timed by `get_profiler(**options)` in `rounds` fresh processes, one after another: the median of
    their medians, as `hwnas profile --rounds` measures table entries and calibration networks. Per-process
    effects such as memory placement move a whole network's median by 1-5% between processes, and the calling
    process (a search that just trained) is not in the state a deployed model runs in. An exporting profiler
    exports once, into a temporary cache the rounds share. Errors in a round are raised here."""
    import tempfile

    from hwnas.profilers import PROFILERS, ExportingProfiler

    if rounds < 1:
        raise HwnasError(f"a measurement needs at least one round, got {rounds}")
    with tempfile.TemporaryDirectory(prefix="hwnas-measure-") as cache:
        if issubclass(PROFILERS.get(options["device"]), ExportingProfiler):
            options = {**options, "cache_dir": cache}
        measured = [in_fresh_process(_measure_with, options, network) for _round in range(rounds)]
    return combine_rounds(measured)


def calibration_networks(space_name: str, cfg, input_size: int, n: int, seed: int = CALIBRATION_SEED):
    """`n` distinct random architectures of the space shaped by `cfg` (a SearchConfig); the first n of a longer
    list are the same, so asking for more later measures only the new ones."""
    import torch

    from hwnas.spaces import get_space

    if n < MIN_ARCHITECTURES:
        raise HwnasError(f"--calibrate needs at least {MIN_ARCHITECTURES} architectures (50 or more advised), got {n}")
    space = get_space(space_name)
    supernet = space.build_supernet(cfg, IN_CHANNELS, space.table_classes)
    generator = torch.Generator().manual_seed(seed)
    networks: dict[str, CalibrationNetwork] = {}
    for _attempt in range(100 * n):
        network = CalibrationNetwork(space_name, supernet.sample(generator).to_json(), cfg.to_json(), input_size)
        networks.setdefault(network.key, network)
        if len(networks) == n:
            return list(networks.values())
    raise HwnasError(f"the space has fewer than {n} distinct architectures to calibrate on")


def fit_network_correction(sums_ms, measured_ms, fitted: str | None = None) -> NetworkCorrection:
    """measured ≈ a · sum + b by least squares on relative error (each network weighted by 1 / measured)."""
    sums, measured = np.asarray(sums_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    if len(sums) < MIN_ARCHITECTURES or sums.shape != measured.shape:
        raise HwnasError(f"a network correction needs at least {MIN_ARCHITECTURES} (sum, measured) pairs")
    if np.any(measured <= 0) or np.ptp(sums) == 0:
        raise HwnasError("a network correction needs positive measurements of networks with different sums")
    w = 1.0 / measured
    (a, b), *_ = np.linalg.lstsq(np.c_[sums, np.ones_like(sums)] * w[:, None], measured * w, rcond=None)
    if a <= 0:
        raise HwnasError(f"the fitted network correction has slope {a:.3g} <= 0: the measurements are too noisy")
    rmse = float(np.sqrt(np.mean((a * sums + b - measured) ** 2)))
    return NetworkCorrection(float(a), float(b), len(sums), fitted or datetime.date.today().isoformat(), rmse)


def calibration_path(table_path: str | Path) -> Path:
    return Path(f"{table_path}.calibration.json")


def load_measurements(path: Path) -> dict[str, TableEntry]:
    """Whole-network measurements so far: {network key: entry} ({} when none)."""
    if not path.exists():
        return {}

    def corrupt(why) -> HwnasError:
        return HwnasError(f"{path} is corrupt ({why}); delete it to measure the networks again")

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:  # a directory, binary, truncated, ...
        raise corrupt(err) from None
    if not isinstance(data, dict):
        raise corrupt(f"expected a JSON object, got {type(data).__name__}")
    return {key: TableEntry.from_json(value, f"{path}, {key}") for key, value in data.items()}


def save_measurements(path: Path, measured: dict[str, TableEntry]) -> None:
    from hwnas.run import write_json_atomic

    write_json_atomic(path, {key: entry.to_json() for key, entry in measured.items()})
