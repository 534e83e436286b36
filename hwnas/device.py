"""The device a search or training runs on: the config's `device` (and `sync_bn`) resolved in one place, and how
modules and batches are put there (in which memory format)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwnas import distributed
from hwnas.config import check_device_name
from hwnas.errors import HwnasError


def resolve_device(name: str, processes: int | None = None, local_rank: int | None = None) -> torch.device:
    """The device `name` stands for in process `local_rank` (default: LOCAL_RANK) of `processes` (WORLD_SIZE).

    "auto": this process's GPU when CUDA is available, else the CPU; "cpu"; "cuda": this process's GPU; "cuda:N": GPU
    N, one process only. This process's GPU is cuda:LOCAL_RANK, so each process of a torchrun job takes its own.
    """
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise HwnasError(f"device {name} needs CUDA, and torch {torch.__version__} sees no CUDA device here; "
                         f"use --device cpu or auto")  # fmt: skip
    processes = distributed.env_world_size() if processes is None else processes
    if name.startswith("cuda:") and processes > 1:
        raise HwnasError(f"device {name} would put all {processes} processes on one GPU; use cuda or auto, which "
                         f"give each process its own (cuda:LOCAL_RANK)")  # fmt: skip
    count = torch.cuda.device_count()
    if name.startswith("cuda:"):
        index = int(name.split(":")[1])
        if index >= count:
            raise HwnasError(f"no CUDA device {index}; this machine has {count}")
        return torch.device("cuda", index)
    index = distributed.env_local_rank() if local_rank is None else local_rank
    if index >= count:
        raise HwnasError(f"process {index} on this host has no GPU of its own (this machine has {count}); start at "
                         f"most {count} processes per host, or use --device cpu")  # fmt: skip
    return torch.device("cuda", index)


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout a run's 4-D tensors take on `device`: channels_last (NHWC) on the CPU, where oneDNN runs the
    small-channel and depthwise convolutions of both spaces several times faster than in NCHW (a 3×3 depthwise
    conv on (16, 4, 32, 32): 0.65 ms NCHW, 0.14 ms NHWC; a mobile supernet step at batch 64 took 0.41 s NCHW,
    0.21 s NHWC; a DARTS supernet step at batch 16, 4.7 s and 2.6 s: 2-core Xeon VM, one thread). On a GPU the
    layout stays as built."""
    return torch.channels_last if device.type == "cpu" else torch.preserve_format


def to_device(t: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
    """`t` on `device`, a 4-D one (a batch of images) in that device's memory format."""
    layout = memory_format(device) if t.dim() == 4 else torch.preserve_format
    return t.to(device, non_blocking=non_blocking, memory_format=layout)


@dataclass(frozen=True)
class Placement:
    """Where a run's modules and batches live, and whether its BatchNorm layers synchronise over the processes."""

    device: torch.device = torch.device("cpu")
    sync_bn: bool = False

    def module(self, module: nn.Module) -> nn.Module:
        """`module` on the device; with `sync_bn` its BatchNorm layers become SyncBatchNorm, which keeps the
        parameters and the state_dict keys (so checkpoints move between the two)."""
        if self.sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module.to(self.device, memory_format=memory_format(self.device))

    def batch(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """A loader's (inputs, labels) on the device, copied asynchronously from pinned memory (`pin_memory`)."""
        return tuple(to_device(t, self.device, non_blocking=True) for t in batch)

    @property
    def pin_memory(self) -> bool:
        """Whether loaders should pin their batches (only a GPU copies from pinned memory asynchronously)."""
        return self.device.type == "cuda"


def placement(device: str, sync_bn: bool | None = None, processes: int | None = None,
              local_rank: int | None = None) -> Placement:  # fmt: skip
    """`device` resolved (`resolve_device`), and SyncBatchNorm per `sync_bn`, None: when several processes run on
    CUDA. torch's SyncBatchNorm rejects CPU tensors, so on the CPU BatchNorm stays per process."""
    resolved = resolve_device(device, processes, local_rank)
    processes = distributed.env_world_size() if processes is None else processes
    sync = processes > 1 and resolved.type == "cuda" if sync_bn is None else sync_bn
    if sync and resolved.type != "cuda":
        raise HwnasError(f"--sync-bn needs CUDA (torch's SyncBatchNorm rejects CPU tensors), and this run is on "
                         f"{resolved}")  # fmt: skip
    return Placement(resolved, sync)
