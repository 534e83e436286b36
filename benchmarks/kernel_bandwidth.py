"""Achieved memory bandwidth of the hwnas.kernels on a CUDA GPU, against a device-to-device copy in the same run.

    python benchmarks/kernel_bandwidth.py [--sizes 1048576 16777216 268435456] [--json PATH]

For each size n (float32 elements) and each implementation (Triton, the native CUDA library where built, the
PyTorch reference), the median time of one call over --samples CUDA-event samples of --calls back-to-back calls
each, after warm-up, and the bandwidth it achieves counting the bytes the operation must move:

- copy:             dst.copy_(src)                      read n, write n  (the ceiling: torch's own D2D copy)
- accumulate:       out += w·y (weighted_accumulate)    read 2n, write n (one candidate of Eq. 2 of DARTS)
- overwrite:        out = w·y                           read n, write n  (the first candidate)
- dot:              ⟨g, o_k(x)⟩                         read 2n          (the ∂L/∂w_k reduction of backward)
- shuffle:          PC-DARTS shuffle into place         read n, write n  ((64, 64, s, s), s² = n/4096, K=4)

The goal of the kernels issue: Triton's accumulate at ≥ 70% of the copy's bandwidth at the largest size
(sizes within the 60 MB L2 of an H200 measure the cache, not HBM, and are reported for launch overhead).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from hwnas.kernels import backend, mixed_op, partial_channel
from hwnas.run import write_json_atomic

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "kernel_bandwidth.json"
GOAL = 0.70  # accumulate bandwidth / copy bandwidth, Triton, largest size
log = logging.getLogger("kernel_bandwidth")


def time_call(fn: Callable, args: tuple, calls: int, samples: int, warmup: int) -> float:
    """Median milliseconds of fn(*args): CUDA events around `calls` back-to-back calls, `samples` times."""
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(calls):
            fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def implementations(native: bool) -> dict[str, dict[str, Callable]]:
    """operation -> implementation -> fn(tensors) building the call; native only where it has CUDA kernels."""
    ops = {
        "accumulate": {
            "triton": lambda out, y: mixed_op.weighted_accumulate_triton(out, y, 0.3, False),
            "reference": lambda out, y: mixed_op.weighted_accumulate_reference(out, y, 0.3, False),
        },
        "overwrite": {
            "triton": lambda out, y: mixed_op.weighted_accumulate_triton(out, y, 0.3, True),
            "reference": lambda out, y: mixed_op.weighted_accumulate_reference(out, y, 0.3, True),
        },
        "dot": {
            "triton": lambda a, b: mixed_op.dot_triton(a, b),
            "reference": lambda a, b: mixed_op.dot_reference(a, b),
        },
        "shuffle": {
            "triton": lambda mixed, bypass: partial_channel.partial_channel_shuffle_triton(mixed, bypass, 4),
            "reference": lambda mixed, bypass: partial_channel.partial_channel_shuffle_reference(mixed, bypass, 4),
        },
    }
    if native:
        hw = torch.ops.hwnas
        ops["accumulate"]["native"] = lambda out, y: hw.weighted_accumulate_(out, y, 0.3, False)
        ops["overwrite"]["native"] = lambda out, y: hw.weighted_accumulate_(out, y, 0.3, True)
        ops["dot"]["native"] = lambda a, b: hw.dot(a, b)
        ops["shuffle"]["native"] = lambda mixed, bypass: hw.partial_channel_shuffle(mixed, bypass, 4)
    return ops


BYTES_PER_ELEMENT = {"copy": 2, "accumulate": 3, "overwrite": 2, "dot": 2, "shuffle": 2}  # float32 moves of n


def operands(op: str, n: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    if op == "shuffle":  # a node (B=64, C=64, s, s): 4096 planes, each within the native kernel's grid
        s = max(1, round((n / 4096) ** 0.5))
        node = torch.randn(64, 64, s, s, device=dev)
        return node[:, :16], node[:, 16:]  # the PC-DARTS views at K=4: mixed channels, bypassed ones
    return torch.randn(n, device=dev), torch.randn(n, device=dev)


def measure(sizes: list[int], calls: int, samples: int, warmup: int) -> list[dict]:
    dev = torch.device("cuda")
    native = backend.load_native() and backend._native_for("cuda")
    rows = []
    for n in sizes:
        src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
        copy_ms = time_call(torch.Tensor.copy_, (dst, src), calls, samples, warmup)
        copy_gbs = BYTES_PER_ELEMENT["copy"] * 4 * n / copy_ms / 1e6
        rows.append({"op": "copy", "impl": "torch", "n": n, "ms": copy_ms, "gb_s": copy_gbs, "x_copy": 1.0})
        for op, impls in implementations(native).items():
            args = operands(op, n, dev)
            elements = sum(t.numel() for t in args) if op == "shuffle" else n
            for impl, fn in impls.items():
                ms = time_call(fn, args, calls, samples, warmup)
                gbs = BYTES_PER_ELEMENT[op] * 4 * elements / ms / 1e6
                rows.append({"op": op, "impl": impl, "n": elements, "ms": ms, "gb_s": gbs, "x_copy": gbs / copy_gbs})
                log.info("%s %s n=%d: %.4f ms, %.0f GB/s", op, impl, elements, ms, gbs)
        src = dst = args = None  # freed before the next size's tensors
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'op':<11} {'impl':<10} {'elements':>11} {'us/call':>9} {'GB/s':>8} {'x copy':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['op']:<11} {r['impl']:<10} {r['n']:>11} {1e3 * r['ms']:>9.1f} {r['gb_s']:>8.0f} {r['x_copy']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2**20, 2**24, 2**28], help="float32 elements")
    parser.add_argument("--calls", type=int, default=20, help="back-to-back calls per sample")
    parser.add_argument("--samples", type=int, default=15, help="CUDA-event samples (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not torch.cuda.is_available():
        print("kernel_bandwidth: needs a CUDA GPU; torch sees none here", file=sys.stderr)
        return 2
    if backend.triton is None:
        print('kernel_bandwidth: needs triton (pip install "hwnas[kernels]")', file=sys.stderr)
        return 2
    rows = measure(args.sizes, args.calls, args.samples, args.warmup)
    largest = max(r["n"] for r in rows if r["op"] == "accumulate")
    got = next(r for r in rows if (r["op"], r["impl"], r["n"]) == ("accumulate", "triton", largest))
    print(table(rows))
    verdict = "met" if got["x_copy"] >= GOAL else "NOT met"
    print(f"\nTriton accumulate at n={largest}: {got['x_copy']:.2f}x copy bandwidth (goal >= {GOAL}: {verdict})")
    result = {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": backend.triton.__version__},
        "native_cuda": any(r["impl"] == "native" for r in rows),
        "protocol": {"calls": args.calls, "samples": args.samples, "warmup": args.warmup, "dtype": "float32"},
        "goal": {"accumulate_x_copy_min": GOAL, "n": largest, "triton_x_copy": got["x_copy"], "met": verdict == "met"},
        "rows": rows,
    }
    write_json_atomic(args.json, result)
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
