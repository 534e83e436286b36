"""An exported model loaded in its host runtime: run on NumPy batches, timed under the profilers' protocol."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwnas.profilers.protocol import Measurement, Protocol, measure, timed


class ExportedModel:
    """Subclasses load one model (ONNX Runtime session, LiteRT interpreter) and run batches of `batch`."""

    batch: int | None  # the model's fixed batch size; None when the batch dimension is dynamic
    threads: int

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        """Float32 outputs for one batch of float32 inputs in the model's layout."""
        raise NotImplementedError

    def invoker(self, x: np.ndarray) -> Callable[[], object]:
        """One inference on `x` (fed once, up front), as the profilers time it."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch is None:
            return self.run_batch(x)
        return np.concatenate([self.run_batch(x[i : i + self.batch]) for i in range(0, len(x), self.batch)])

    def measure(self, x: np.ndarray, protocol: Protocol) -> Measurement:
        """Latency of one inference on `x` under `protocol` (the clock follows the model's thread count)."""
        return measure(timed(self.invoker(x), protocol.resolve_clock(self.threads)), protocol)
