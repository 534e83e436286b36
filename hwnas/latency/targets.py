"""Finding latency tables: the ones shipped in `hwnas.latency_tables` and the ones a user built.

User tables live in `$HWNAS_TABLES`, else `$XDG_CACHE_HOME/hwnas/latency_tables` (default
`~/.cache/hwnas/latency_tables`); `hwnas profile` writes there by default. `resolve_target` turns a `--target`
(name or path) into a table. Of several tables for one target, space and input size, a host target (`cpu`,
`onnxruntime`, `tflite`, `gpu`: the runtime on this machine) takes one measured on this machine's device first;
then a user table comes before a shipped one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hwnas.errors import HwnasError
from hwnas.latency.table import LatencyTable

log = logging.getLogger(__name__)
ENV_VAR = "HWNAS_TABLES"
HOST_DEVICES = ("cpu", "onnxruntime", "tflite", "gpu")


@dataclass(frozen=True)
class TableInfo:
    origin: str  # "user" or "shipped"
    table: LatencyTable

    @property
    def name(self) -> str:
        return self.table.metadata.target

    @property
    def device(self) -> str:
        return self.table.metadata.device

    @property
    def runtime(self) -> str:
        return self.table.metadata.runtime

    @property
    def space(self) -> str:
        return self.table.metadata.space

    @property
    def input_size(self) -> int:
        return self.table.metadata.input_size


def this_machine(target: str) -> str | None:
    """The device a host target's profiler measures here, as tables name it (`metadata.device`); None for a
    phone target, or `gpu` without CUDA."""
    if target == "gpu":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if target in HOST_DEVICES:
        from hwnas.profilers.protocol import host_cpu_name

        return host_cpu_name()
    return None


def other_machine(table: LatencyTable, here: str | None) -> str:
    """ "measured on <device> (<signature>); this machine is <here> (<signature>)": what the warnings about a table
    of another machine (`machine_match` 0) say of it."""
    from hwnas.profilers.protocol import cpu_signature

    meta = table.metadata
    recorded = meta.details.get("machine", {}).get("cpu_signature", "-")
    return f"measured on {meta.device} ({recorded}); this machine is {here} ({cpu_signature() or '-'})"


def machine_match(table: LatencyTable) -> int:
    """2: `table` was measured on this machine's device, to its CPU signature (family, model, stepping, L2) where
    the table records one, 1: on a device of this name whose signature the table does not record (tables made
    before signatures were), 0: elsewhere. A VM's CPU name ("Intel(R) Xeon(R) Processor") can hide different
    hardware: one such VM ran the ONNX Runtime ops of another's table 1.40x slower."""
    if table.metadata.device != this_machine(table.metadata.target):
        return 0
    if table.metadata.target == "gpu":  # named by the GPU, whatever the host CPU
        return 2
    from hwnas.profilers.protocol import cpu_signature

    recorded = table.metadata.cpu_signature
    if not recorded:
        return 1
    return 2 if recorded == cpu_signature() else 0


def preferred(tables: list[LatencyTable], target: str) -> list[LatencyTable]:
    """`tables` (user ones first, as `list_tables` gives them) in the order `target` takes them: those measured
    on this machine first (see `machine_match`)."""
    return sorted(tables, key=machine_match, reverse=True)  # stable: user tables stay first


def user_table_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "hwnas" / "latency_tables"


def default_table_path(target: str, space: str, input_size: int) -> Path:
    return user_table_dir() / f"{target}_{space}_{input_size}.json"


def list_tables() -> list[TableInfo]:
    """Every readable table, user ones first; unreadable files are skipped with a warning."""
    found = []
    user_dir = user_table_dir()
    user_files = sorted(user_dir.glob("*.json")) if user_dir.is_dir() else []
    shipped = sorted(
        (f for f in resources.files("hwnas.latency_tables").iterdir() if f.name.endswith(".json")),
        key=lambda f: f.name,
    )
    for origin, files in (("user", user_files), ("shipped", shipped)):
        for f in files:
            try:
                table = LatencyTable.from_text(f.read_text(), f"latency table {f}", Path(str(f)))
            except (HwnasError, OSError, UnicodeDecodeError) as err:
                log.warning("skipping %s: %s", f, err)
                continue
            found.append(TableInfo(origin, table))
    return found


def taken_by_target(infos: list[TableInfo]) -> list[bool]:
    """Per table of `infos`, whether `--target` takes it here: of the tables for one target, space and input size,
    the one `preferred` puts first."""
    groups: dict[tuple, list[LatencyTable]] = {}
    for info in infos:
        groups.setdefault((info.name, info.space, info.input_size), []).append(info.table)
    taken = {id(preferred(tables, target)[0]) for (target, _space, _size), tables in groups.items()}
    return [id(info.table) in taken for info in infos]


def is_shipped(table: LatencyTable) -> bool:
    """Whether `table` is one of the package's own (refitted or extended as a user copy, never in place)."""
    shipped = Path(str(resources.files("hwnas.latency_tables"))).resolve()
    return table.path is not None and Path(table.path).resolve().parent == shipped


def profile_command(device: str, space: str, input_size: int, *flags: str) -> str:
    """The `hwnas profile` command line that measures `device`'s table of `space` at `input_size`."""
    return " ".join(("hwnas profile --device", device, "--space", space, "--input-size", str(input_size), *flags))


def profile_hint(target: str, space: str, input_size: int) -> str:
    """The command that measures a table for `target`."""
    if target in HOST_DEVICES:
        return f"build one with `{profile_command(target, space, input_size)}`"
    flags = ("--binary PATH/benchmark_model", f"--name {target}")
    return f"measure your own phone with `{profile_command('android', space, input_size, *flags)}`"


def resolve_target(name_or_path: str, space: str, input_size: int) -> LatencyTable:
    """The table for target `name_or_path` (a target name or a table file) for `space` at `input_size`."""
    if name_or_path.endswith(".json") or os.sep in name_or_path or Path(name_or_path).is_file():
        return LatencyTable.load(name_or_path, space, input_size)
    tables = [info.table for info in list_tables() if info.table.metadata.target == name_or_path]
    if not tables and name_or_path in HOST_DEVICES:
        raise HwnasError(f"no {name_or_path} latency table yet; " + profile_hint(name_or_path, space, input_size))
    if not tables:
        known = sorted({info.table.metadata.target for info in list_tables()} | set(HOST_DEVICES))
        raise HwnasError(f"unknown target {name_or_path!r}; known: {', '.join(known)} (or a table file path)")
    for_space = [t for t in tables if t.metadata.space == space]
    if not for_space:
        spaces = sorted({t.metadata.space for t in tables})
        raise HwnasError(
            f"target {name_or_path!r} has no table for space {space!r} (only {', '.join(spaces)}); "
            + profile_hint(name_or_path, space, input_size)
        )
    for table in preferred(for_space, name_or_path):
        if table.metadata.input_size == input_size:
            return table
    sizes = ", ".join(str(s) for s in sorted({t.metadata.input_size for t in for_space}))
    raise HwnasError(
        f"target {name_or_path!r} has no {space} table at input size {input_size} (only {sizes}); "
        + profile_hint(name_or_path, space, input_size)
    )
