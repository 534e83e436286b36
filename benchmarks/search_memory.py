"""Memory and time of one DARTS search step: naive vs fused mixed op, PC-DARTS, and the derived network.

    python benchmarks/search_memory.py [--batch-sizes 16 32 64] [--json PATH] [--device cpu|cuda]
    python benchmarks/search_memory.py --device cuda --backends auto triton reference --json .../search_memory_cuda.json

One first-order search step = forward + backward of the supernet on a batch (C=16, 8 cells, 32x32, 3 input
channels, 10 classes, all 8 DARTS ops; --layers sets the cells); `discrete` is the same step on
DartsNetwork(DARTS_V2, 16, 10, 8, 3).
Variants: naive (WeightedSum), fused (WeightedSum(fused=True)), pc_naive / pc_fused (PartialChannel, K=4, edge
normalisation). The fused variants run once per --backends choice ($HWNAS_KERNELS: `auto` is Triton on large
CUDA tensors, `triton` Triton on all of them, and the native library, where built, on the CPU). Each row's
memory is measured in a fresh subprocess, on its first step:

- saved_bytes: tensors saved for backward (saved_tensors_hooks), deduplicated by storage; saved_param_bytes is
  the part that are parameters or buffers (they exist anyway);
- peak_rss_bytes: peak resident memory during the first step minus resident memory just before it (the peak
  is reset through /proc/self/clear_refs; without it, getrusage's high-water mark gives a lower bound); on
  CUDA also peak_cuda_bytes (max_memory_allocated minus memory allocated before the step).

Times come from one more subprocess per variant and batch size (`time_backends`), on one network: a warm-up
step per backend (Triton compiles, cuDNN chooses), then --repeats rounds of one step per backend, the order
rotating. step_ms / cpu_ms are the median wall and process CPU time of a row's steps (CUDA events on CUDA);
wall_x_first_backend the median over rounds of its step's ratio to the first --backends choice's step of the same
round, which cancels the drift of a shared machine (several percent within minutes, as much as two backends
differ). The timing processes run in --cycles cycles, each timing every variant of one batch size back to back
before the next size; step_x_naive / cpu_x_naive are the median over cycles of a row's median time over naive's
in the same cycle (a shared VM's speed drifted by a third within an hour, more than variants taken minutes
apart may differ).

Networks and batches take the memory format searches use on the device (--layout auto: NHWC on the CPU, see
hwnas.device.memory_format); --layout nchw measures the other.

max_batch_4gib extrapolates saved_bytes, a least-squares line a + b·batch over the measured batch sizes,
to the batch whose saved tensors fill 4 GiB: (4 GiB - a) / b. Only saved tensors count, not parameters,
gradients or transient buffers. Timings default to one thread: on a shared machine, OpenMP threads competing
for cores make multi-threaded step times swing by several times; --threads changes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hwnas.cli.common import int_at_least
from hwnas.run import write_json_atomic

VARIANTS = ("naive", "fused", "pc_naive", "pc_fused", "discrete")
FUSED = ("fused", "pc_fused")
BUDGET = 4 * 2**30
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "search_memory.json"
log = logging.getLogger("search_memory")


def build(variant: str, layers: int = 8):
    from hwnas.ops.darts import DARTS_PRIMITIVES
    from hwnas.spaces.darts import DARTS_V2, DartsNetwork, DartsSupernet
    from hwnas.supernet.mixed import PartialChannel, WeightedSum

    if variant == "discrete":
        return DartsNetwork(DARTS_V2, 16, 10, layers, 3)
    pc = variant.startswith("pc_")
    net = DartsSupernet(16, 10, layers, 3, DARTS_PRIMITIVES, partial_channels=4 if pc else 1, edge_normalization=pc)
    net.set_mixing((PartialChannel if pc else WeightedSum)(fused=variant.endswith("fused")))
    return net


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _rss_bytes(field: str | None) -> int:
    """VmRSS / VmHWM from /proc; without it (field None) the getrusage high-water mark."""
    kib = _status_kib(field) if field else None
    return 1024 * (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class SearchStep:
    """One first-order search step of a variant on a fixed random batch (seeded: every variant sees the same)."""

    def __init__(self, variant: str, batch: int, device, layout: str = "nchw", layers: int = 8):
        import torch

        torch.manual_seed(0)
        self.device = torch.device(device)
        fmt = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}[layout]
        self.net = build(variant, layers).to(self.device, memory_format=fmt).train()
        self.x = torch.randn(batch, 3, 32, 32, device=self.device).contiguous(memory_format=fmt)  # (B, 3, 32, 32)
        self.y = torch.randint(0, 10, (batch,), device=self.device)

    def __call__(self, hooks=contextlib.nullcontext) -> None:
        import torch.nn.functional as F

        self.net.zero_grad(set_to_none=True)
        with hooks():  # the forward only: the fused backward's recomputation saves (and frees) its own
            loss = F.cross_entropy(self.net(self.x), self.y)
        loss.backward()

    def timed(self) -> tuple[float, float]:
        """(wall ms, process CPU ms) of one step; CUDA events on CUDA."""
        import torch

        c0 = time.process_time()
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self()
            end.record()
            torch.cuda.synchronize(self.device)
            wall = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            self()
            wall = 1e3 * (time.perf_counter() - t0)
        return wall, 1e3 * (time.process_time() - c0)


def measure(variant: str, batch: int, device: str, threads: int, layout: str, layers: int) -> dict:
    """One row's memory, in this process (run it in a fresh one: peak RSS and allocator state depend on history);
    the first step of the process, so it also compiles Triton kernels and lets cuDNN choose."""
    import torch

    from hwnas.kernels.backend import kernel_backend

    torch.set_num_threads(threads)
    step = SearchStep(variant, batch, device, layout, layers)
    dev, net = step.device, step.net
    param_storages = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_before = torch.cuda.memory_allocated(dev)
    precise = _reset_peak_rss()
    rss_before = _rss_bytes("VmRSS" if precise else None)
    step(lambda: torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
    if cuda:
        torch.cuda.synchronize(dev)
    peak = _rss_bytes("VmHWM" if precise else None)
    row = {
        "variant": variant,
        "batch": batch,
        "device": device,
        "backend": "none" if variant.endswith("naive") or variant == "discrete" else kernel_backend(dev),
        "threads": threads,
        "layout": layout,
        "layers": layers,
        "saved_bytes": sum(saved.values()),
        "saved_param_bytes": sum(n for p, n in saved.items() if p in param_storages),
        "peak_rss_bytes": peak - rss_before,
    }
    if cuda:
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(dev) - cuda_before
    return row


def time_backends(variant: str, backends: list[str], batch: int, device: str, rounds: int, threads: int,
                  layout: str, layers: int) -> dict:  # fmt: skip
    """Step times of one variant's network under each $HWNAS_KERNELS choice, in one process: a warm-up step per
    backend, then `rounds` rounds of one step per backend, the order rotating. Timings on a shared machine drift
    by several percent within minutes, as much as two backends may differ; a ratio taken within a round cancels
    it. (Variants are not interleaved so: a 2 GiB naive step between two small ones leaves them cold caches and
    unmapped pages that no search step meets.) Returns {kernels: {"wall_ms": [...], "cpu_ms": [...]}}."""
    import torch

    torch.set_num_threads(threads)
    step = SearchStep(variant, batch, device, layout, layers)
    times = {k: {"wall_ms": [], "cpu_ms": []} for k in backends}
    for r in range(rounds + 1):
        for i in [(r + j) % len(backends) for j in range(len(backends))]:
            os.environ["HWNAS_KERNELS"] = backends[i]
            wall, cpu = step.timed()
            if r:  # round 0 warms up
                times[backends[i]]["wall_ms"].append(wall)
                times[backends[i]]["cpu_ms"].append(cpu)
    return times


def max_batch(rows: list[dict]) -> int:
    """Batch whose saved bytes reach BUDGET, from a least-squares line through (batch, saved_bytes)."""
    xs, ys = [r["batch"] for r in rows], [r["saved_bytes"] for r in rows]
    if len(set(xs)) < 2:
        return int(BUDGET * xs[0] / ys[0])
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return int((BUDGET - (my - slope * mx)) / slope)


def run_worker(args, *worker: str, kernels: str = "auto"):
    """This script's worker mode in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, *worker, "--device", args.device, "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--layout", args.layout, "--layers", str(args.layers)]  # fmt: skip
    env = {**os.environ, "HWNAS_KERNELS": kernels}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(worker)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_times(rows: list[dict], cycles: list[dict], rounds: int) -> None:
    """Each row's median step time over every cycle's rounds; with several backends, its median ratio to the
    first backend's step of the same round; with naive timed, its median over cycles of its time over naive's.
    `cycles`: per cycle, {(variant, batch): time_backends' result}."""
    for r in rows:
        runs = [cycle[r["variant"], r["batch"]] for cycle in cycles]
        first = next(iter(runs[0]))
        wall = [t for run in runs for t in run[r["kernels"]]["wall_ms"]]
        cpu = [t for run in runs for t in run[r["kernels"]]["cpu_ms"]]
        r.update(timed_rounds=rounds, timed_cycles=len(cycles), step_ms=round(statistics.median(wall), 1),
                 cpu_ms=round(statistics.median(cpu), 1))  # fmt: skip
        if len(runs[0]) > 1:
            ratios = [a / b for run in runs for a, b in zip(run[r["kernels"]]["wall_ms"], run[first]["wall_ms"])]
            r["wall_x_first_backend"] = round(statistics.median(ratios), 3)
        if all(("naive", r["batch"]) in cycle for cycle in cycles):
            for key, name in (("wall_ms", "step_x_naive"), ("cpu_ms", "cpu_x_naive")):
                ratios = [
                    statistics.median(cycle[r["variant"], r["batch"]][r["kernels"]][key])
                    / statistics.median(cycle["naive", r["batch"]]["auto"][key])
                    for cycle in cycles
                ]
                r[name] = round(statistics.median(ratios), 3)


def _ratio(row: dict, ref: dict | None, key: str) -> str:
    return f"{row[key] / ref[key]:.2f}" if ref and ref[key] > 0 else "-"


def _optional(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "-"


def table(rows: list[dict]) -> str:
    mib = 2**20
    by = {(r["variant"], r["batch"]): r for r in rows}
    cuda = all("peak_cuda_bytes" in r for r in rows)
    head = f"{'variant':<9} {'backend':<9} {'batch':>5} {'saved MiB':>10} {'x discrete':>10} "
    head += f"{'peak CUDA MiB':>13} {'x discrete':>10} " if cuda else f"{'peak RSS MiB':>12} {'x discrete':>10} "
    head += f"{'step ms':>9} {'x naive':>8} {'cpu ms':>9} {'x naive':>8} {'x 1st backend':>13} {'max batch@4GiB':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        d = by.get(("discrete", r["batch"]))
        key, width = ("peak_cuda_bytes", 13) if cuda else ("peak_rss_bytes", 12)
        lines.append(
            f"{r['variant']:<9} {r['backend']:<9} {r['batch']:>5} "
            f"{r['saved_bytes'] / mib:>10.1f} {_ratio(r, d, 'saved_bytes'):>10} "
            f"{r[key] / mib:>{width}.1f} {_ratio(r, d, key):>10} {r['step_ms']:>9.1f} "
            f"{_optional(r, 'step_x_naive', 2):>8} {r['cpu_ms']:>9.0f} {_optional(r, 'cpu_x_naive', 2):>8} "
            f"{_optional(r, 'wall_x_first_backend', 3):>13} {r['max_batch_4gib']:>14}"
        )
    return "\n".join(lines)


def _backends(args, variant: str) -> list[str]:
    """The kernel backends a variant is measured under: the fused ones under each --backends choice."""
    return args.backends if variant in FUSED else ["auto"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int_at_least(1), nargs="+", default=[16, 32, 64])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--repeats", type=int_at_least(1), help="timed rounds, one step per backend each (default 5; 20 on CUDA)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("auto", "triton", "native", "reference"),
        default=["auto"],
        help="$HWNAS_KERNELS values the fused variants run under (default auto)",
    )
    parser.add_argument("--cycles", type=int_at_least(1), default=3, help="timing cycles over the variants (default 3)")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch intra-op threads")
    parser.add_argument(
        "--layers", type=int_at_least(1), default=8, help="cells of the networks (default 8, as DARTS searches)"
    )
    parser.add_argument(
        "--layout",
        choices=("auto", "nchw", "nhwc"),
        default="auto",
        help="memory format of the networks and batches (auto: the one searches use there, NHWC on the CPU)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--timing-worker", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 20 if args.device.startswith("cuda") else 5
    if args.layout == "auto":
        import torch

        from hwnas.device import memory_format

        args.layout = "nhwc" if memory_format(torch.device(args.device)) == torch.channels_last else "nchw"
    if args.worker:
        row = measure(args.worker[0], int(args.worker[1]), args.device, args.threads, args.layout, args.layers)
        print(json.dumps(row))
        return 0
    if args.timing_worker:
        variant, batch = args.timing_worker[0], int(args.timing_worker[1])
        backends = _backends(args, variant)
        times = time_backends(variant, backends, batch, args.device, args.repeats, args.threads, args.layout,
                              args.layers)  # fmt: skip
        print(json.dumps(times))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    rows = []
    for variant in args.variants:
        group = []
        for batch in args.batch_sizes:
            backends = _backends(args, variant)
            group += [{**run_worker(args, "--worker", variant, str(batch), kernels=k), "kernels": k} for k in backends]
            log.info("%s batch %d: %s", variant, batch, group[-len(backends) :])
        for kernels in {r["kernels"] for r in group}:
            same = [r for r in group if r["kernels"] == kernels]
            fit = max_batch(same)
            for r in same:
                r["max_batch_4gib"] = fit
        rows += group
    cycles = []
    for cycle in range(args.cycles):
        times = {}
        for batch in args.batch_sizes:
            for variant in args.variants:
                backends = _backends(args, variant)
                run = times[variant, batch] = run_worker(args, "--timing-worker", variant, str(batch),
                                                         "--backends", *backends)  # fmt: skip
                log.info("cycle %d, %s batch %d: %s", cycle + 1, variant, batch,
                         {k: round(statistics.median(t["wall_ms"]), 1) for k, t in run.items()})  # fmt: skip
        cycles.append(times)
    add_times(rows, cycles, args.repeats)
    print(table(rows))
    write_json_atomic(args.json, rows)
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
