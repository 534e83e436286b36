"""The depthwise convolutions of the mobile space in LiteRT, with XNNPACK and with TFLite's builtin kernels.

    python benchmarks/litert_depthwise.py [--input-size 224] [--json PATH]

Each MBConv block's depthwise convolution (its hidden width C·e at its input resolution and stride, e ∈ {3, 6},
k ∈ {3, 5, 7}) is converted once to a one-op .tflite model and timed, 1 thread, by the tflite profiler's
protocol, under both delegates of `hwnas profile --device tflite --delegate xnnpack|cpu`. The table gives
milliseconds and picoseconds per multiply-accumulate: where a kernel size leaves XNNPACK's fast path, and how
its cost per MAC moves with the shape, which is what the latency predictor has to model (latency_accuracy.py's
`predictor_worst_layer`).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
from pathlib import Path

from torch import nn

from hwnas.latency.catalogue import conv_out, mobile_blocks
from hwnas.profilers import Protocol, get_profiler
from hwnas.profilers.protocol import machine_metadata, measure
from hwnas.run import write_json_atomic

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "litert_depthwise.json"
DELEGATES = ("xnnpack", "cpu")
log = logging.getLogger("litert_depthwise")


def depthwise_shapes(input_size: int) -> list[tuple[int, int, int]]:
    """(channels, input height = width, stride) of every distinct depthwise conv of the mobile space."""
    shapes = {(b.c_in * e, b.hw_in, b.stride) for b in mobile_blocks(input_size) for e in (3, 6)}
    return sorted(shapes, key=lambda s: (-s[1], s[2], s[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    protocol = Protocol()
    profilers = {d: get_profiler("tflite", threads=1, protocol=protocol, delegate=d) for d in DELEGATES}
    rows = []
    for channels, hw, stride in depthwise_shapes(args.input_size):
        for kernel in args.kernels:
            conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)
            shape = (1, channels, hw, hw)
            model = profilers["xnnpack"].export(conv.eval(), shape)
            macs = conv_out(hw, stride) ** 2 * channels * kernel * kernel
            row = {"channels": channels, "hw_in": hw, "stride": stride, "kernel": kernel, "macs": macs}
            for delegate, profiler in profilers.items():
                ms = measure(profiler.load(model, shape), protocol).median_ms
                row[f"{delegate}_ms"] = ms
                row[f"{delegate}_ps_per_mac"] = 1e9 * ms / macs
            log.info("%s", row)
            rows.append(row)

    print(f"{'C':>5} {'H=W':>4} {'s':>2} {'k':>2} {'xnnpack ms':>11} {'builtin ms':>11} {'xnnpack ps/MAC':>15} "
          f"{'builtin ps/MAC':>15} {'xnnpack/builtin':>16}")  # fmt: skip
    for r in rows:
        print(f"{r['channels']:>5} {r['hw_in']:>4} {r['stride']:>2} {r['kernel']:>2} {r['xnnpack_ms']:>11.3f} "
              f"{r['cpu_ms']:>11.3f} {r['xnnpack_ps_per_mac']:>15.1f} {r['cpu_ps_per_mac']:>15.1f} "
              f"{r['xnnpack_ms'] / r['cpu_ms']:>16.2f}")  # fmt: skip
    summary = {
        f"k{k}": {
            f"{d}_ps_per_mac_median": statistics.median(r[f"{d}_ps_per_mac"] for r in rows if r["kernel"] == k)
            for d in DELEGATES
        }
        for k in args.kernels
    }
    for name, medians in summary.items():
        xnnpack, builtin = medians["xnnpack_ps_per_mac_median"], medians["cpu_ps_per_mac_median"]
        print(f"{name}: median ps/MAC xnnpack {xnnpack:.1f}, builtin {builtin:.1f}")
    write_json_atomic(
        args.json,
        {
            "date": datetime.date.today().isoformat(),
            "input_size": args.input_size,
            "protocol": protocol.to_json(),
            "machine": machine_metadata(1, profilers["xnnpack"].versions()),
            "summary": summary,
            "rows": rows,
        },
    )
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
