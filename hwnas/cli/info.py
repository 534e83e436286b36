"""hwnas info: versions, the backends found, and the latency tables available."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
from pathlib import Path

PACKAGES = ("hwnas", "torch", "numpy", "scikit-learn", "triton", "onnx", "onnxruntime", "onnxscript",
            "ai-edge-litert", "litert-torch", "torchvision")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print as JSON")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def collect() -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "versions": {p: _version(p) for p in PACKAGES}}  # fmt: skip
    from hwnas.device import resolve_device

    backends = {"cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
                "device_auto": str(resolve_device("auto", processes=1, local_rank=0)),  # what --device auto picks
                "cpu_threads": str(torch.get_num_threads())}  # fmt: skip
    if _has("hwnas.kernels.backend"):
        from hwnas.kernels.backend import backend_report

        backends.update(backend_report())
    if _has("onnxruntime"):
        import onnxruntime

        backends["onnxruntime_providers"] = ", ".join(onnxruntime.get_available_providers())
    backends["litert_interpreter"] = "found" if _has("ai_edge_litert") else "not installed"
    info["backends"] = backends
    info["latency_tables"] = []
    if _has("hwnas.latency.targets"):
        from hwnas.latency.targets import list_tables, taken_by_target

        tables = list_tables()
        info["latency_tables"] = [
            {**{k: getattr(t, k) for k in ("name", "device", "runtime", "space", "input_size")},
             "taken_by_target": taken, "path": str(t.table.path)}
            for t, taken in zip(tables, taken_by_target(tables))
        ]  # fmt: skip
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']} on {info['platform']}")
    print("versions:")
    for name, version in info["versions"].items():
        print(f"  {name:16s} {version}")
    print("backends:")
    for name, value in info["backends"].items():
        print(f"  {name:22s} {value}")
    print("latency tables:")
    for t in info["latency_tables"]:
        taken = " (--target takes it here)" if t["taken_by_target"] else ""
        print(f"  {t['name']:12s} {t['device']} / {t['runtime']}, space {t['space']} at {t['input_size']}: "
              f"{Path(t['path']).name}{taken}")  # fmt: skip
    if not info["latency_tables"]:
        print("  none")
    return 0
