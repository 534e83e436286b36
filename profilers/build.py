"""Build the PyTorch module an OpConfig describes, so a profiler times exactly that op in a model of its own.

DARTS kinds come from `hwnas.ops.darts.OPS` (affine BatchNorm, as in a derived network); ``expanded_conv`` is
`MBConv` (identity shortcut when the key says ``idskip:1``); ``Conv`` is the 3x3 stem conv-BN-ReLU6,
``Conv_1`` the 1x1 head conv-BN-ReLU6 and ``Logits`` global average pooling plus the classifier, as in
MobileNetV2 / ProxylessNAS. Modules are returned in eval mode, so exporters fold BatchNorm.
"""

from __future__ import annotations

from torch import nn

from hwnas.errors import HwnasError
from hwnas.ops.darts import OPS
from hwnas.ops.mbconv import MBConv, conv_bn_relu6
from hwnas.ops.opconfig import OpConfig

_MBCONV_ATTRS = {"expand", "kernel", "stride", "idskip"}


def build_op(op: OpConfig) -> nn.Module:
    """The module for `op`, in eval mode; input (B, C, H, W) as `input_shape(op)` gives."""
    return _build(op).eval()


def input_shape(op: OpConfig, batch: int = 1) -> tuple[int, int, int, int]:
    """NCHW input of `op` (keys store H x W x C)."""
    if len(op.input_shape) != 3:
        raise HwnasError(f"op key {op.key()!r}: expected an HxWxC input")
    h, w, c = op.input_shape
    return (batch, c, h, w)


def _stride(op: OpConfig) -> int:
    h_in, h_out = op.input_shape[0], op.output_shape[0]
    return op.attr("stride") or max(1, round(h_in / h_out))


def _build(op: OpConfig) -> nn.Module:
    c_in = input_shape(op)[1]
    c_out = op.output_shape[-1]
    if op.kind == "expanded_conv":
        extra = {name for name, _ in op.attrs} - _MBCONV_ATTRS
        if extra:
            raise HwnasError(
                f"cannot build {op.key()!r}: attributes {sorted(extra)} (e.g. Once-for-All se/hs) have no module here"
            )
        return MBConv(c_in, c_out, op.attr("kernel"), _stride(op), op.attr("expand"), bool(op.attr("idskip")))
    if op.kind == "Conv":
        return conv_bn_relu6(c_in, c_out, 3, _stride(op))
    if op.kind == "Conv_1":
        return conv_bn_relu6(c_in, c_out, 1, 1)
    if op.kind == "Logits":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c_in, c_out))
    if op.kind in OPS:
        if c_in != c_out:
            raise HwnasError(f"cannot build {op.key()!r}: DARTS ops keep the channel count")
        return OPS.get(op.kind)(c_in, _stride(op), True)
    raise HwnasError(f"cannot build op kind {op.kind!r} (key {op.key()!r})")
