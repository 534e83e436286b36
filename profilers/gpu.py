"""PyTorch on a CUDA GPU, timed with CUDA events after warm-up (cudnn.benchmark on, so cuDNN picks its
algorithms during warm-up rather than during timing). CUDA is touched only when the profiler is created."""

from __future__ import annotations

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.profilers.base import Profiler, RunBatch, example_input


class GpuProfiler(Profiler):
    device = "gpu"
    runtime = "pytorch-cuda"

    def __init__(self, threads: int = 1, batch: int = 1, protocol=None, gpu_index: int = 0):
        super().__init__(threads, batch, protocol)
        if not torch.cuda.is_available():
            raise HwnasError(f"--device gpu needs CUDA, and torch {torch.__version__} sees no CUDA device here")
        if gpu_index >= torch.cuda.device_count():
            raise HwnasError(f"no CUDA device {gpu_index}; this machine has {torch.cuda.device_count()}")
        self.cuda = torch.device("cuda", gpu_index)
        torch.backends.cudnn.benchmark = True

    def versions(self) -> dict[str, str]:
        return {
            "pytorch-cuda": f"{torch.__version__} (CUDA {torch.version.cuda})",
            "cudnn": str(torch.backends.cudnn.version()),
        }

    def clock_name(self) -> str:
        return "cuda-events"

    def gpu_name(self) -> str:
        return torch.cuda.get_device_name(self.cuda)

    def device_name(self) -> str:
        return self.gpu_name()

    @property
    def label(self) -> str:
        return str(self.cuda)

    def device_info(self) -> dict:
        return {"gpu_index": self.cuda.index, "model": self.gpu_name()}

    def prepare(self, module: nn.Module, shape: tuple[int, ...]) -> RunBatch:
        module = module.to(self.cuda)
        x = example_input(shape).to(self.cuda)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        @torch.inference_mode()
        def run_batch(n: int) -> float:
            torch.cuda.synchronize(self.cuda)
            start.record()
            for _ in range(n):
                module(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return run_batch
