"""Data-parallel search over `torch.distributed`: the process group, rank queries, collectives, the launcher.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment, WORLD_SIZE > 1) `session` joins the process
group — gloo for CPU tensors, and NCCL for CUDA tensors where CUDA is present — with a timeout on every
collective. Without it nothing is initialised and every helper here returns at once, so the one-process search
runs exactly as before. A collective that fails (a process died, or did not answer within the timeout) raises
`HwnasError`, which the CLI prints as one line.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hwnas.errors import HwnasError, Interrupted, raise_if_ctrl_c

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 300.0
FAREWELL_TIMEOUT_S = 3600.0  # bounds the wait for rank 0 at the end where no launcher stops a job whose rank 0 died
LAUNCHED_BY_HWNAS = "HWNAS_LAUNCHED"  # set in the processes `launch` starts: their launcher speaks for them


def env_world_size() -> int:
    """The world size torchrun announced (WORLD_SIZE), 1 outside torchrun; known before the group is joined."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise HwnasError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def env_local_rank() -> int:
    """This process's index on its host (LOCAL_RANK, torchrun's), 0 outside torchrun: the GPU it takes."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise HwnasError(f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} is not an integer") from None


def reports_interrupt() -> bool:
    """Whether this process says it was interrupted: Ctrl-C reaches every process of a search, which say it once,
    through `hwnas search --nproc`'s launcher or through torchrun's rank 0."""
    return LAUNCHED_BY_HWNAS not in os.environ and os.environ.get("RANK", "0") == "0"


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, logs, checkpoints and progress bars."""
    return rank() == 0


def check_batch_size(batch_size: int, processes: int) -> None:
    """`batch_size` is the global batch: each of `processes` ranks takes batch_size / processes of it."""
    if batch_size % processes:
        raise HwnasError(f"--batch-size {batch_size} is the global batch and must divide evenly among "
                         f"{processes} processes")  # fmt: skip


@contextmanager
def session(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block (nothing to do outside torchrun)."""
    if env_world_size() <= 1 or _active():
        yield
        return
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if env_local_rank() < torch.cuda.device_count():  # else this process has no GPU and runs on --device cpu
            torch.cuda.set_device(env_local_rank())
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # for `leave_together`: rank 0 alone may spend minutes timing the derived network after the search
        _farewell.append(dist.new_group(backend="gloo", timeout=timedelta(seconds=max(timeout_s, FAREWELL_TIMEOUT_S))))
    except (RuntimeError, ValueError) as err:
        raise HwnasError(f"cannot join the process group: {_first_line(err)}") from None
    log.debug("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    try:
        yield
    finally:
        _farewell.clear()
        dist.destroy_process_group()


_farewell: list = []  # the group `leave_together` waits in, while a session is open


def leave_together() -> None:
    """Wait until every rank has finished its work before a successful run leaves the group: a rank that tore
    down its gloo connections while rank 0 still worked aborted now and then (SIGABRT, torch 2.13)."""
    if _active() and _farewell:
        with _collective("the last barrier"):
            dist.barrier(group=_farewell[0])


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextmanager
def _collective(what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:
        raise_if_ctrl_c()  # the others stopped for it (this process dropped its KeyboardInterrupt)
        raise HwnasError(f"process {rank()} of {world_size()} lost the others during {what}: a process died or did "
                         f"not answer within the timeout ({_first_line(err)})") from None  # fmt: skip


def _all_reduce_(tensors: Sequence[torch.Tensor], average: bool, what: str) -> None:
    """Sum (or average) `tensors` in place over the ranks, through one flat buffer: one collective per call."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    with _collective(what):
        dist.all_reduce(flat)
    if average:
        flat /= world_size()
    offset = 0
    for t in tensors:
        t.detach().copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def average_(tensors: Sequence[torch.Tensor], what: str = "a gradient all-reduce") -> None:
    """Replace each tensor by its mean over the ranks (each rank's shard holds the same number of examples)."""
    _all_reduce_(tensors, True, what)


def sum_(tensors: Sequence[torch.Tensor], what: str = "an all-reduce") -> None:
    _all_reduce_(tensors, False, what)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average `.grad` of `params` over the ranks: the gradient of the global batch's mean loss.

    Parameters without a gradient are skipped; which ones have none depends only on the sampled path, which every
    rank draws alike, so the buffers line up.
    """
    average_([p.grad for p in params if p.grad is not None])


def average_metrics(row: dict[str, float]) -> dict[str, float]:
    """A metrics row averaged over the ranks (every rank's row has the same keys)."""
    if world_size() == 1 or not row:
        return row
    keys = sorted(row)
    values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64)
    average_([values], "the metrics all-reduce")
    return dict(zip(keys, values.tolist()))


def broadcast_flags(flags: Sequence[bool]) -> list[bool]:
    """Rank 0's `flags` on every rank: one small int broadcast over gloo (none in a one-process run)."""
    if world_size() == 1:
        return list(flags)
    box = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    with _collective("a broadcast"):
        dist.broadcast(box, src=0)
    return [bool(v) for v in box.tolist()]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    with _collective("a broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


# -- starting local processes (`hwnas search --nproc N`) -------------------------------------------------------------
def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run `python ARGV` in `nproc` processes on this host through torch's elastic launcher, as
    `torchrun --standalone --nproc_per_node NPROC` does (c10d rendezvous on a free loopback port).

    The agent stops the other processes as soon as one fails; that failure is raised as one `HwnasError`.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)  # fmt: skip
    # the agent's modules set their own levels (WARNING): quiet each one it has, unless hwnas logs at debug level
    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL if log.getEffectiveLevel() > logging.DEBUG else logging.INFO)
    os.environ[LAUNCHED_BY_HWNAS] = "1"
    stopped_by = None
    try:
        elastic_launch(config, sys.executable)(*argv)
    except ChildFailedError as err:
        # the agent SIGTERMs the survivors and lists them too; signal deaths first (the others printed an error)
        failures = [(r, f.exitcode) for r, f in err.failures.items() if f.exitcode != -signal.SIGTERM]
        failures = sorted(failures or [(r, f.exitcode) for r, f in err.failures.items()], key=lambda f: (f[1] >= 0, f))
        reasons = ", ".join(f"process {r} of {nproc} {_exit_reason(code)}" for r, code in failures)
        raise HwnasError(f"{reasons}; the other processes were stopped") from None
    except SignalException as err:  # the agent stopped the processes on SIGINT / SIGTERM
        stopped_by = signal.Signals(err.sigval)
    finally:
        os.environ.pop(LAUNCHED_BY_HWNAS, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    if stopped_by is not None:
        _stop_abandoned_rendezvous()
        if stopped_by == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(reason=f"stopped by {stopped_by.name}", exit_code=128 + stopped_by)


def _stop_abandoned_rendezvous() -> None:
    """Stop the rendezvous heartbeat of an agent that a signal stopped. torch leaves its rendezvous open then (for
    a restart that `launch` never makes), and its keep-alive thread, a daemon calling the TCP store every few
    seconds, lived on into interpreter shutdown, where a call in flight aborted the process ("terminate called
    without an active exception", SIGABRT; once in 15 Ctrl-Cs of a 2-process search on a loaded VM). The agent,
    once its exception is gone, is garbage in reference cycles: collecting it runs the keep-alive timer's
    finalizer, which stops and joins the thread."""
    gc.collect()


def _exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
