"""Kernels for supernet search: the fused mixed op and the PC-DARTS partial-channel shuffle, which cut its memory,
and the CPU backward of depthwise convolutions (`depthwise_conv`, which `hwnas.ops.depthwise` calls).

`mixed_op.fused_mixed_op` and `partial_channel.partial_channel_shuffle` are what `Mixing(fused=True)` calls;
`backend.backend_report()` says which implementation runs them (Triton, native library, PyTorch reference).
Importing this package needs neither triton nor the native library and touches no GPU.
"""

from .backend import backend_report

__all__ = ["backend_report"]
