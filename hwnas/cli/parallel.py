"""What the data-parallel commands (`hwnas search`, `hwnas train`) share: the distributed flags, the run under
torchrun (rank 0 writes the run directory, every rank works), and `--nproc N`, which starts the processes itself."""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwnas import distributed
from hwnas.cli.common import default_run_dir
from hwnas.data import check_batch
from hwnas.device import placement
from hwnas.errors import HwnasError, resumable_by
from hwnas.run import RunDir

log = logging.getLogger(__name__)

# (args, processes) -> (config, run directory or None): every check a run needs, made before anything is written
Configure = Callable[[argparse.Namespace, int], tuple[Any, str | None]]


def add_arguments(parser: argparse.ArgumentParser, command: str, work: str) -> None:
    """The distributed flags of `hwnas COMMAND`, whose `work` (search, training) they spread over processes."""
    group = parser.add_argument_group(f"distributed {work} (also: torchrun --nproc_per_node N -m hwnas {command} "
                                      "...)")  # fmt: skip
    group.add_argument("--nproc", type=int, metavar="N",
                       help=f"data-parallel {work} in N processes on this host (torch's elastic launcher); "
                            "--batch-size stays the global batch")  # fmt: skip
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                       help="synchronise BatchNorm statistics over the processes (SyncBatchNorm; CUDA only). "
                            "Default: on when several processes run on CUDA")  # fmt: skip
    group.add_argument("--dist-timeout", type=_positive_seconds, default=distributed.DEFAULT_TIMEOUT_S,
                       metavar="SECONDS", help="how long a process waits for the others before the job fails "
                                               "(default %(default)g)")  # fmt: skip


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def check_processes(cfg, processes: int) -> None:
    """That `cfg`'s global batch divides among `processes`, into batches of at least 2, and that each has its
    device: under torchrun this process's own; for `--nproc N` the last process's, so that every one has a GPU."""
    check_batch(cfg.batch_size, processes)
    placement(cfg.device, cfg.sync_bn, processes, None if distributed.env_world_size() > 1 else processes - 1)


def run(command: str, args: argparse.Namespace, configure: Configure, work: Callable[[Any, RunDir], Any]):
    """Run `work(config, run_dir)` in this process, one rank of torchrun's job, or in `--nproc` new ones.

    Returns (config, run directory, what `work` returned) to the process that reports the run (one process, or
    torchrun's rank 0), None to the others and to `--nproc`'s launcher, whose rank 0 reported.
    """
    if args.nproc is not None:
        _launch(command, args, configure)
        return None
    cfg, path = configure(args, distributed.env_world_size())
    with distributed.session(args.dist_timeout):
        main = distributed.is_main()
        if not main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for the job
        path = distributed.broadcast_object(path or default_run_dir(command))  # one timestamp for all ranks
        run_dir = _write_run(command, args, cfg, path) if main else RunDir(path, command)
        under_torchrun = " (under torchrun, as before)" if distributed.world_size() > 1 else ""
        with resumable_by(f"hwnas {command} --resume {shlex.quote(str(run_dir.path))}{under_torchrun}"):
            result = work(cfg, run_dir)
        distributed.leave_together()
    return (cfg, run_dir, result) if main else None


def _write_run(command: str, args: argparse.Namespace, cfg, path: str | Path) -> RunDir:
    """Create the run directory (or record the resumed run's config); rank 0 or the launcher only."""
    if args.resume:
        run_dir, _stored = RunDir.open(path, command)
        run_dir.write_json("config.json", {"kind": command, "config": cfg.to_json()})
        return run_dir
    return RunDir.create(path, command, cfg.to_json())


def _launch(command: str, args: argparse.Namespace, configure: Configure) -> None:
    """`--nproc N`: write the run directory here, then start N processes that continue it (`--resume`)."""
    if distributed.env_world_size() > 1:
        raise HwnasError("--nproc starts the processes itself; leave it out under torchrun")
    if args.nproc < 1:
        raise HwnasError(f"--nproc must be >= 1, got {args.nproc}")
    cfg, path = configure(args, args.nproc)
    run_dir = _write_run(command, args, cfg, path or default_run_dir(command))
    log.info("starting %d processes for %s", args.nproc, run_dir.path)
    argv = ["-m", "hwnas", *(["-v"] if args.verbose else []), command, "--resume", str(run_dir.path),
            "--dist-timeout", str(args.dist_timeout), *(["--no-progress"] if args.no_progress else []),
            *(["--no-plots"] if args.no_plots else [])]  # fmt: skip
    resume = f"hwnas {command} --resume {shlex.quote(str(run_dir.path))} --nproc {args.nproc}"
    try:
        with resumable_by(resume):
            distributed.launch(args.nproc, argv)
    except HwnasError as err:
        raise HwnasError(f"{err}; continue from the last checkpoint with: {resume}") from None
