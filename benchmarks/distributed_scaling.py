"""Step throughput of data-parallel search and training in 1 and 2 processes, with the scaling efficiency.

    python benchmarks/distributed_scaling.py [--work search train] [--procs 1 2] [--batch-per-proc 32]
                                             [--image-size 16] [--json PATH]

One search step = `Strategy.step` of first-order DARTS (an α step on a val batch, then a weight step on a train
batch, each with its gradient all-reduce) on the DARTS supernet of `hwnas search`'s defaults (C=8, 5 cells,
all 8 ops); one training step = `hwnas.train.train_step` on DARTS_V2 at `hwnas train`'s defaults (C=16, 8 cells;
one all-reduce of the gradients and BatchNorm statistics). Both over random 3 x 16 x 16 images (`--image-size`)
in 10 classes. Weak scaling: every process steps on `--batch-per-proc` examples, so the global batch is procs x
that. Each configuration runs in fresh processes
started through `hwnas.distributed.launch` (torch's elastic launcher, as `hwnas search --nproc` does; gloo over
loopback on CPU, NCCL on GPUs), and rank 0 reports

- step_ms: median wall time of the timed steps (after `--warmup` steps; ranks meet in every all-reduce, so rank
  0's step time is the job's);
- allreduce_ms: median time of one all-reduce of a buffer the size of the supernet's weights and α (what the two
  gradient all-reduces of a step move), 0 in one process;
- examples_per_s = global batch / step time; speedup = examples_per_s / that of 1 process with `--threads`
  threads on the same device; efficiency = speedup / (cores used relative to that baseline), i.e. speedup /
  procs for the process rows.

CPU rows default to one thread per process (`--threads`), so 2 processes use twice the cores of 1; the extra
row `1 proc x 2 threads` (`--reference-threads`) shows what one process makes of the same cores. GPU rows (one
GPU per process, as many processes as GPUs, up to the largest of --procs) are added when CUDA is present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hwnas.cli.common import int_at_least
from hwnas.run import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "distributed_scaling.json"
log = logging.getLogger("distributed_scaling")


def _search_step(world: int, place, batch_per_proc: int):
    """`step(batch, batch)` of a first-order DARTS search as `run_search` builds it, and its supernet."""
    import torch

    from hwnas.config import SearchConfig
    from hwnas.spaces import get_space
    from hwnas.strategies import STRATEGIES

    cfg = SearchConfig(batch_size=batch_per_proc * world)
    torch.manual_seed(cfg.seed)
    strategy = STRATEGIES.get(cfg.strategy)(cfg)
    strategy.placement = place
    supernet = place.module(get_space(cfg.space).build_supernet(cfg, 3, 10, **strategy.supernet_options()))
    strategy.prepare(supernet)
    strategy.start_epoch(0)
    return strategy.step, supernet


def _train_step(world: int, place, batch_per_proc: int):
    """`step(batch, _)` of `hwnas train` at its defaults (DARTS_V2), and its network."""
    import torch

    from hwnas.config import TrainConfig, grad_clip_for
    from hwnas.train import build_model, optimiser, train_step

    cfg = TrainConfig(batch_size=batch_per_proc * world)
    torch.manual_seed(cfg.seed)
    genotype, model = build_model(cfg, 3, 10)
    model = place.module(model)
    opt, scaler = optimiser(model, cfg, place.device)
    clip = grad_clip_for(genotype.space, cfg.grad_clip)
    return lambda train, _val: train_step(model, opt, scaler, train, cfg, clip), model


def worker(args: argparse.Namespace) -> None:
    """One rank: build what `--worker` names as its command does, then time steps on random shards."""
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist

    from hwnas import distributed
    from hwnas.device import Placement

    torch.set_num_threads(args.threads)
    with distributed.session():
        rank, world = distributed.rank(), distributed.world_size()
        device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.device == "cuda" else "cpu")
        place = Placement(device)  # as the commands place networks and batches: channels_last on the CPU
        build = {"search": _search_step, "train": _train_step}[args.worker]
        step, network = build(world, place, args.batch_per_proc)
        data = torch.Generator().manual_seed(1000 + rank)

        def batch():
            x = torch.randn(args.batch_per_proc, 3, args.image_size, args.image_size, generator=data)
            return place.batch((x, torch.randint(0, 10, (args.batch_per_proc,), generator=data)))

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step_ms = []
        for i in range(args.warmup + args.steps):
            train, val = batch(), batch()
            sync()
            t0 = time.perf_counter()
            step(train, val)
            sync()
            if i >= args.warmup:
                step_ms.append(1e3 * (time.perf_counter() - t0))
        buffer = torch.zeros(sum(p.numel() for p in network.parameters()), device=device)
        allreduce_ms = []
        for _ in range(args.steps if world > 1 else 0):
            sync()
            t0 = time.perf_counter()
            dist.all_reduce(buffer)
            sync()
            allreduce_ms.append(1e3 * (time.perf_counter() - t0))
        if rank == 0:
            row = {"work": args.worker, "device": args.device, "procs": world, "threads_per_proc": args.threads,
                   "batch_per_proc": args.batch_per_proc, "global_batch": args.batch_per_proc * world,
                   "image_size": args.image_size,
                   "timed_steps": args.steps,
                   "step_ms": round(statistics.median(step_ms), 1),
                   "allreduce_ms": round(statistics.median(allreduce_ms), 2) if allreduce_ms else 0.0,
                   "params": buffer.numel()}  # fmt: skip
            row["examples_per_s"] = round(1e3 * row["global_batch"] / row["step_ms"], 1)
            Path(args.out).write_text(json.dumps(row))


def measure(work: str, device: str, procs: int, threads: int, args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    from hwnas.distributed import launch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        os.environ["OMP_NUM_THREADS"] = str(threads)
        load_1m = os.getloadavg()[0]  # other work on the machine skews every figure: recorded with the row
        launch(procs, [__file__, "--worker", work, "--out", str(out), "--device", device,
                       "--threads", str(threads),
                       "--batch-per-proc", str(args.batch_per_proc), "--image-size", str(args.image_size),
                       "--steps", str(args.steps),
                       "--warmup", str(args.warmup)])  # fmt: skip
        row = {**json.loads(out.read_text()), "load_avg_1m_before": round(load_1m, 2)}
    log.info("%s", row)
    return row


def add_scaling(rows: list[dict], threads: int) -> None:
    """Speedup against 1 process with `threads` threads on the same device; efficiency per core used."""
    for row in rows:
        base = next(r for r in rows if r["work"] == row["work"] and r["device"] == row["device"] and r["procs"] == 1
                    and r["threads_per_proc"] == threads)  # fmt: skip
        cores = row["procs"] * (row["threads_per_proc"] / threads if row["device"] == "cpu" else 1)
        row["speedup"] = round(row["examples_per_s"] / base["examples_per_s"], 2)
        row["efficiency"] = round(row["speedup"] / cores, 2)


def table(rows: list[dict]) -> str:
    head = (f"{'work':<6} {'device':<6} {'procs':>5} {'threads/proc':>12} {'global batch':>12} {'step ms':>8} "
            f"{'allreduce ms':>12} {'examples/s':>10} {'speedup':>7} {'efficiency':>10} {'load 1m':>7}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['work']:<6} {r['device']:<6} {r['procs']:>5} {r['threads_per_proc']:>12} "
                     f"{r['global_batch']:>12} {r['step_ms']:>8.0f} {r['allreduce_ms']:>12.2f} "
                     f"{r['examples_per_s']:>10.1f} {r['speedup']:>7.2f} {r['efficiency']:>10.2f} "
                     f"{r['load_avg_1m_before']:>7.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", nargs="+", choices=["search", "train"], default=["search", "train"],
                        help="what steps (default: both)")  # fmt: skip
    parser.add_argument("--procs", type=int_at_least(1), nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--batch-per-proc", type=int_at_least(2), default=32, help="examples per process and step")
    parser.add_argument("--image-size", type=int_at_least(4), default=16, help="input resolution (default 16)")
    parser.add_argument("--steps", type=int_at_least(1), default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int_at_least(0), default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads per CPU process (default 1)")
    parser.add_argument("--reference-threads", type=int_at_least(0), default=2,
                        help="also time 1 CPU process with this many threads (0: no such row)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    parser.add_argument("--worker", choices=["search", "train"], help=argparse.SUPPRESS)  # one rank's work
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    rows = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for work in args.work:
        rows += [measure(work, "cpu", n, args.threads, args) for n in sorted(set(args.procs) | {1})]
        if args.reference_threads and args.reference_threads != args.threads:
            rows.append(measure(work, "cpu", 1, args.reference_threads, args))
        for n in sorted({1, *(p for p in args.procs if p <= gpus)} if gpus else ()):
            rows.append(measure(work, "cuda", n, args.threads, args))
    add_scaling(rows, args.threads)
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, {"cpu_count": os.cpu_count(), "torch": torch.__version__, "rows": rows})
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
