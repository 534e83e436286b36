"""Test harness around `hwnas search` and `hwnas train`, run directly (one process) or under torchrun (several).

    python tests/distributed/worker.py OUT [--isolate-bn] [--stall RANK EPOCH] [--exit-at STEP]
                                       -- COMMAND ARGS [-- COMMAND ARGS ...]

Joins the process group once, then runs `hwnas COMMAND ARGS` (search or train) for each group of arguments and
records, per rank, into OUT:

- `rank{r}-run{i}.pt`: the gradients every optimiser step of run i used (a global optimiser step pre-hook, so
  after the all-reduce and the clipping) and the final weights of rank r's network (a search's supernet, with α;
  the network a training run trains);
- `rank{r}-writes.json`: every file rank r opened for writing, created, renamed or removed below OUT's parent
  other than in OUT (only rank 0 may write the run directory).

`--isolate-bn` makes every BatchNorm normalise by its running statistics (mean 0, variance 1, never updated)
instead of the batch's, so a shard and the whole batch are normalised alike; `--stall RANK EPOCH` makes rank RANK
sleep at the first step of EPOCH (0-based), as a process that hangs without dying until the launcher's SIGTERM;
`--exit-at STEP` makes rank 0 exit (code 3, at once) as it starts the last run's STEP-th step (0-based, counted
over epochs), as a job killed there after rank 0 saved what it had done (the launcher then stops the others).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import register_optimizer_step_pre_hook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hwnas import distributed  # noqa: E402
from hwnas import train as train_module  # noqa: E402
from hwnas.cli import main  # noqa: E402
from hwnas.strategies import STRATEGIES  # noqa: E402
from hwnas.strategies.base import Strategy  # noqa: E402

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _fixed_statistics(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _audit_writes(watched: Path, out: Path, writes: list[str]) -> None:
    def hook(event: str, args) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
            path, writing = args[1] if event == "os.rename" else args[0], True
        else:
            return
        if not writing or path is None or isinstance(path, int):
            return
        target = Path(os.path.abspath(os.fsdecode(path)))
        if target.is_relative_to(watched) and not target.is_relative_to(out):
            writes.append(f"{event} {target}")

    sys.addaudithook(hook)


def _stall_at(rank: int, epoch: int) -> None:
    step = Strategy.step

    def stalling_step(self, train_batch, val_batch):
        if distributed.rank() == rank and self.epoch == epoch:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not hwnas's stop-at-the-next-step
            time.sleep(3600)
        return step(self, train_batch, val_batch)

    Strategy.step = stalling_step


def _exit_at(step_index: int) -> list[int]:
    """Every strategy's step and every training step counts (once, where one calls another's); rank 0 exits at
    the `step_index`-th. Counting starts when the returned list's item is set to 0 (it starts at -1: not yet)."""
    started = [-1, False]  # steps started (-1: not counting), inside one

    def counting(step):
        def counted_step(*args):
            if started[1] or started[0] < 0:
                return step(*args)
            if started[0] == step_index and distributed.rank() == 0:
                os._exit(3)
            started[0], started[1] = started[0] + 1, True
            try:
                return step(*args)
            finally:
                started[1] = False

        return counted_step

    for cls in {STRATEGIES.get(name) for name in STRATEGIES} | {Strategy}:
        if "step" in vars(cls):
            cls.step = counting(cls.step)
    train_module.augment = counting(train_module.augment)  # once per training step, as it starts
    return started


def _record(records: list[torch.Tensor], networks: list) -> None:
    """Every optimiser step's gradients into `records`; every supernet a strategy prepares and every network a
    training run builds into `networks`."""

    def hook(optimizer, args, kwargs) -> None:
        grads = [p.grad.reshape(-1) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        records.append(torch.cat(grads).clone() if grads else torch.zeros(0))

    register_optimizer_step_pre_hook(hook)
    prepare = Strategy.prepare

    def remembering_prepare(self, supernet) -> None:
        networks.append(supernet)
        prepare(self, supernet)

    Strategy.prepare = remembering_prepare
    build_model = train_module.build_model

    def remembering_build_model(*args, **kwargs):
        genotype, model = build_model(*args, **kwargs)
        networks.append(model)  # moved to its device in place
        return genotype, model

    train_module.build_model = remembering_build_model


def run(argv: list[str]) -> int:
    groups: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--":
            groups.append([])
        else:
            groups[-1].append(arg)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--isolate-bn", action="store_true")
    parser.add_argument("--stall", type=int, nargs=2, metavar=("RANK", "EPOCH"))
    parser.add_argument("--exit-at", type=int, metavar="STEP")
    parser.add_argument("--timeout", type=float, default=60.0, help="--dist-timeout of the runs")
    args = parser.parse_args(groups[0])
    out = args.out.resolve()
    if args.isolate_bn:
        _BatchNorm.forward = _fixed_statistics
    if args.stall:
        _stall_at(*args.stall)
    exit_count = _exit_at(args.exit_at) if args.exit_at is not None else None
    records: list[torch.Tensor] = []
    networks: list = []
    _record(records, networks)
    writes: list[str] = []
    _audit_writes(out.parent, out, writes)
    code = 0
    with distributed.session(args.timeout):
        rank = distributed.rank()
        for i, command in enumerate(groups[1:]):
            records.clear()
            if exit_count is not None and i == len(groups) - 2:
                exit_count[0] = 0
            code = main([*command, "--dist-timeout", str(args.timeout)]) or code
            final = {k: v.detach().clone() for k, v in networks[-1].state_dict().items()}
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"grads": list(records), "final": final}, out / f"rank{rank}-run{i}.pt")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}-writes.json").write_text(json.dumps(writes))
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
