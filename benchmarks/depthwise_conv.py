"""Backward of a depthwise convolution on the CPU: torch's (oneDNN) against the native kernel of hwnas.kernels.

    python benchmarks/depthwise_conv.py [--batch 16] [--threads 1] [--rounds 15] [--json PATH]

For every depthwise filter a search here runs (DARTS's sep_conv and dil_conv at the shapes of the default
supernet, C=16, 32×32, 8 cells, whole and PC-DARTS's C/4 channels; MBConv's k3/5/7 at stride 1 and 2), in NCHW
and NHWC: the median time of both gradients (input and weight) from each implementation, timed alternately in
each round so that a shared machine's drift hits both alike, and each one's largest error against a float64
reference, relative to the gradient's largest magnitude; and per layout and family the total time of each
implementation and of the choice DepthwiseConv2d makes (native for dilated or wider than 3×3 filters). The
native library must be built (README).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hwnas.cli.common import int_at_least
from hwnas.kernels import backend
from hwnas.kernels.depthwise_conv import OP, depthwise_conv2d_backward_reference
from hwnas.profilers.protocol import machine_metadata
from hwnas.run import write_json_atomic

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "depthwise_conv.json"
log = logging.getLogger("depthwise_conv")

# (op, channels, H = W, kernel, stride, dilation): DARTS ops on the default supernet's three stages (C = 16, 32,
# 64 at 32, 16, 8 pixels; the reduction cells starting the second and third read their C channels at twice the
# size, at stride 2) and PC-DARTS's quarter of them
DARTS_OPS = {"sep_conv_3x3": (3, 1), "sep_conv_5x5": (5, 1), "dil_conv_3x3": (3, 2), "dil_conv_5x5": (5, 2)}
STAGES = ((16, 32), (32, 16), (64, 8))
MBCONV = [(f"mbconv_k{k}", c, hw, k, s, 1) for k in (3, 5, 7) for c, hw, s in ((96, 16, 1), (144, 16, 2), (240, 8, 1))]


def configs() -> list[tuple[str, int, int, int, int, int]]:
    rows = []
    for name, (k, d) in DARTS_OPS.items():
        for stage, (c, hw) in enumerate(STAGES):
            for channels in (c, c // 4):
                rows.append((name, channels, hw, k, 1, d))
                if stage > 0:  # a reduction edge
                    rows.append((name, channels, 2 * hw, k, 2, d))
    return rows + MBCONV


def _time_once(fn, rounds_times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds_times.append(1e3 * (time.perf_counter() - start))


def measure(batch: int, rounds: int, layout: str, cfg: tuple) -> dict:
    name, c, hw, k, s, d = cfg
    fmt = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}[layout]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, hw, hw, generator=gen).contiguous(memory_format=fmt)  # (B, C, H, W)
    weight = torch.randn(c, 1, k, k, generator=gen)
    pad = d * (k - 1) // 2
    geometry = ((s, s), (pad, pad), (d, d))
    grad = torch.randn(F.conv2d(x, weight, None, *geometry, c).shape, generator=gen).contiguous(memory_format=fmt)
    impls = {
        "torch": lambda: depthwise_conv2d_backward_reference(grad, x, weight, *geometry),
        "native": lambda: getattr(torch.ops.hwnas, OP)(grad, x, weight, *geometry, [True, True]),
    }
    exact = depthwise_conv2d_backward_reference(grad.double(), x.double(), weight.double(), *geometry)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    errors = {}
    for impl, fn in impls.items():
        got = fn()  # warm-up, and the values checked
        errors[impl] = max(((g.double() - e).abs().max() / e.abs().max()).item() for g, e in zip(got, exact))
    for _ in range(rounds):
        for impl, fn in impls.items():
            _time_once(fn, times[impl])
    torch_ms, native_ms = (statistics.median(times[impl]) for impl in impls)
    return {
        "op": name, "layout": layout, "batch": batch, "channels": c, "size": hw, "kernel": k, "stride": s,
        "dilation": d, "torch_ms": torch_ms, "native_ms": native_ms, "speedup": torch_ms / native_ms,
        "torch_rel_err": errors["torch"], "native_rel_err": errors["native"],
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    head = (
        f"{'op':<13} {'layout':<6} {'C':>4} {'HxW':>6} {'s':>2} {'torch ms':>9} {'native ms':>10} {'speedup':>8} "
        f"{'torch err':>10} {'native err':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['op']:<13} {r['layout']:<6} {r['channels']:>4} {r['size']:>3}x{r['size']:<2} {r['stride']:>2} "
            f"{r['torch_ms']:>9.3f} {r['native_ms']:>10.3f} {r['speedup']:>7.2f}x "
            f"{r['torch_rel_err']:>10.1e} {r['native_rel_err']:>10.1e}"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Per layout and family (DARTS, MBConv): total time of one backward of every filter, and the ratio."""
    out = {}
    for layout in sorted({r["layout"] for r in rows}):
        for family in ("darts", "mbconv"):
            sel = [r for r in rows if r["layout"] == layout and r["op"].startswith("mbconv") == (family == "mbconv")]
            torch_ms, native_ms = sum(r["torch_ms"] for r in sel), sum(r["native_ms"] for r in sel)
            # what DepthwiseConv2d runs: native for dilated or wider than 3x3 filters, torch's for the rest
            auto_ms = sum(r["native_ms"] if r["dilation"] > 1 or r["kernel"] > 3 else r["torch_ms"] for r in sel)
            slower = [f"{r['op']} C={r['channels']} {r['size']}px s{r['stride']}" for r in sel if r["speedup"] < 1]
            out[f"{layout}_{family}"] = {
                "torch_ms": torch_ms, "native_ms": native_ms, "auto_ms": auto_ms, "speedup": torch_ms / native_ms,
                "auto_speedup": torch_ms / auto_ms, "native_slower": slower,
            }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int_at_least(1), default=16)
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int_at_least(1), default=15, help="timed rounds per filter (median)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not backend.native_op(OP, torch.device("cpu")):
        print(f"depthwise_conv: the native library is not built with {OP}; build it: {backend.BUILD_COMMAND}",
              file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for layout in ("nhwc", "nchw"):
        for cfg in configs():
            rows.append(measure(args.batch, args.rounds, layout, cfg))
            log.info("%s %s: %.2fx", layout, cfg, rows[-1]["speedup"])
    print(table(rows))
    totals = summary(rows)
    print()
    for key, s in totals.items():
        print(
            f"{key:<12} torch {s['torch_ms']:8.1f} ms  native {s['native_ms']:8.1f} ms ({s['speedup']:.2f}x)  "
            f"as DepthwiseConv2d runs them {s['auto_ms']:8.1f} ms ({s['auto_speedup']:.2f}x)"
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_metadata(args.threads, {}),
        "protocol": {"batch": args.batch, "rounds": args.rounds, "dtype": "float32", "timed": "both gradients"},
        "summary": totals,
        "rows": rows,
    }
    write_json_atomic(args.json, result)
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
