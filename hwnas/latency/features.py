"""Analytic cost of an op configuration (multiply-accumulates per layer type, parameters, bytes moved) and the
feature vector the latency predictor reads (in the spirit of nn-Meter's kernel features: Zhang et al., MobiSys
2021: FLOPs, params, input/output shape, kernel, stride, expand).

Costs are split by layer type (matrix multiplies, depthwise per kernel size, dense, fully connected, pooling,
elementwise) because runtimes differ far more between layer types than within one: LiteRT's XNNPACK, for
instance, runs a 7x7 depthwise ~20x slower than a 3x3 one at the same shape on this machine, where MACs say 5.4x.
A dense k×k convolution also counts as the matrix multiply runtimes lower it to (im2col + GEMM: k²·C_in-deep, with
the im2col buffer in its bytes), so a table whose only dense conv is the stem still predicts one it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwnas.errors import HwnasError
from hwnas.ops.opconfig import OpConfig

COST_TERMS = (
    "dense_macs",  # the dense k×k convs' share of gemm_macs: what they cost beyond a 1x1 GEMM
    "gemm_macs",  # 1x1 convs, and dense convs as im2col + GEMM
    "dw_macs_k3",
    "dw_macs_k5",
    "dw_macs_k7",
    "dwdil_macs_k3",
    "dwdil_macs_k5",
    "fc_macs",
    "pool_elems",
    "elementwise",
    "gemm_bytes",
    "dw_bytes",
    "bytes",
    "layers",
)
# what each term costs, for a predictor's refusal to price a layer type its table never measured
TERM_LAYERS = {
    "dense_macs": "dense k×k convolution",
    "gemm_macs": "1x1 or dense convolution",
    "dw_macs_k3": "3x3 depthwise convolution",
    "dw_macs_k5": "5x5 depthwise convolution",
    "dw_macs_k7": "7x7 depthwise convolution",
    "dwdil_macs_k3": "dilated 3x3 depthwise convolution",
    "dwdil_macs_k5": "dilated 5x5 depthwise convolution",
    "fc_macs": "fully connected layer",
    "pool_elems": "pooling",
    "elementwise": "elementwise op (ReLU, residual add)",
    "gemm_bytes": "1x1 or dense convolution",
    "dw_bytes": "depthwise convolution",
}
BYTES_PER_VALUE = 4  # float32


@dataclass
class OpCost:
    """Per-term costs of one op (see COST_TERMS), plus its parameter count and total MACs."""

    terms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COST_TERMS, 0.0))
    params: float = 0.0

    @property
    def macs(self) -> float:
        return sum(v for k, v in self.terms.items() if "_macs" in k and k != "dense_macs")  # counted in gemm_macs

    def conv(self, hw_in: int, hw_out: int, c_in: int, c_out: int, kernel: int, groups: int = 1, dilation: int = 1):
        macs = hw_out * hw_out * c_out * (c_in // groups) * kernel * kernel
        written = hw_out * hw_out * c_out
        if groups == c_in and c_in > 1:
            term = f"{'dwdil' if dilation > 1 else 'dw'}_macs_k{kernel}"
            if term not in self.terms:
                raise HwnasError(f"no cost term for a {kernel}x{kernel} depthwise convolution")
            self.terms[term] += macs
            self.terms["dw_bytes"] += BYTES_PER_VALUE * (hw_in * hw_in * c_in + written)
        else:
            self.terms["gemm_macs"] += macs
            gemm_input = hw_in * hw_in * c_in if kernel == 1 else hw_out * hw_out * c_in * kernel * kernel  # im2col
            self.terms["gemm_bytes"] += BYTES_PER_VALUE * (gemm_input + written)
            if kernel > 1:
                self.terms["dense_macs"] += macs
        self.params += c_out * (c_in // groups) * kernel * kernel
        self.terms["layers"] += 1
        self.move(written)

    def move(self, values: float):
        """Count `values` written (reads are counted as the previous layer's writes plus the op input)."""
        self.terms["bytes"] += BYTES_PER_VALUE * values


def op_cost(op: OpConfig) -> OpCost:
    """The analytic cost of `op`, for every op kind hwnas tables hold (mobile, Once-for-All, DARTS), whose feature
    maps are square (the spaces' inputs are; a key with H != W is refused, not costed as H x H)."""
    for shape in (op.input_shape, op.output_shape):
        if len(shape) == 3 and shape[0] != shape[1]:
            h, w = shape[:2]
            raise HwnasError(f"op key {op.key()!r}: the cost model takes square feature maps, got {h}x{w}")
    (h_in, _w, c_in), cost = op.input_shape, OpCost()
    cost.move(h_in * h_in * c_in)  # reading the input
    h_out = op.output_shape[0]
    c_out = op.output_shape[-1]
    kind = op.kind
    if kind == "expanded_conv":
        _mbconv_cost(op, cost, h_in, c_in, h_out, c_out)
    elif kind == "Conv":
        cost.conv(h_in, h_out, c_in, c_out, 3)
    elif kind in ("Conv_1", "Conv_2"):
        cost.conv(h_in, h_out, c_in, c_out, 1)
    elif kind == "Logits":
        cost.terms["pool_elems"] += h_in * h_in * c_in
        cost.terms["fc_macs"] += c_in * c_out
        cost.params += c_in * c_out + c_out
        cost.terms["layers"] += 2
        cost.move(c_in + c_out)
    elif kind == "AvgPool2D":
        cost.terms["pool_elems"] += h_in * h_in * c_in
        cost.terms["layers"] += 1
        cost.move(c_out)
    else:
        _darts_cost(op, cost, h_in, h_out, c_in)
    cost.terms["bytes"] += BYTES_PER_VALUE * cost.params
    return cost


def _mbconv_cost(op, cost, h_in, c_in, h_out, c_out):
    kernel, expand = op.attr("kernel"), op.attr("expand")
    if kernel is None or expand is None:
        raise HwnasError(f"op key {op.key()!r} lacks kernel: or expand:")
    # Once-for-All keys (with se:/hs:) give the expanded width itself; ProxylessNAS keys give the ratio
    hidden = expand if op.attr("se") is not None else expand * c_in
    if hidden != c_in:
        cost.conv(h_in, h_in, c_in, hidden, 1)
    cost.conv(h_in, h_out, hidden, hidden, kernel, groups=hidden)
    if op.attr("se"):
        squeezed = max(8, hidden // 4)
        cost.terms["pool_elems"] += h_out * h_out * hidden
        cost.terms["fc_macs"] += 2 * hidden * squeezed
        cost.params += 2 * hidden * squeezed
        cost.terms["elementwise"] += h_out * h_out * hidden
        cost.terms["layers"] += 3
    if op.attr("hs"):
        cost.terms["elementwise"] += (h_in * h_in if hidden != c_in else 0) * hidden + h_out * h_out * hidden
    cost.conv(h_out, h_out, hidden, c_out, 1)
    if op.attr("idskip"):
        cost.terms["elementwise"] += h_out * h_out * c_out
        cost.terms["layers"] += 1


def _darts_cost(op, cost, h_in, h_out, c):
    kind = op.kind
    stride = op.attr("stride", 1)
    if kind.startswith(("sep_conv_", "dil_conv_")):
        kernel = int(kind.rsplit("_", 1)[1].split("x")[0])
        dilation = 2 if kind.startswith("dil") else 1
        repeats = 2 if kind.startswith("sep") else 1
        cost.terms["elementwise"] += h_in * h_in * c  # ReLU
        for r in range(repeats):
            cost.conv(h_in if r == 0 else h_out, h_out, c, c, kernel, groups=c, dilation=dilation)
            cost.conv(h_out, h_out, c, c, 1)
            if r + 1 < repeats:
                cost.terms["elementwise"] += h_out * h_out * c
    elif kind in ("max_pool_3x3", "avg_pool_3x3"):
        cost.terms["pool_elems"] += 9 * h_out * h_out * c
        cost.terms["layers"] += 1
        cost.move(h_out * h_out * c)
    elif kind == "skip_connect":
        if stride > 1:  # FactorizedReduce: ReLU, two 1x1 stride-2 convs on offset inputs, concat, BN
            cost.terms["elementwise"] += h_in * h_in * c
            cost.conv(h_in, h_out, c, c // 2, 1)
            cost.conv(h_in, h_out, c, c // 2, 1)
            cost.move(h_out * h_out * c)
    elif kind == "none":
        cost.terms["elementwise"] += h_out * h_out * c
        cost.terms["layers"] += 1
        cost.move(h_out * h_out * c)
    else:
        raise HwnasError(f"no cost model for op kind {kind!r} (key {op.key()!r})")


RAW_FEATURES = (
    "h_in",
    "c_in",
    "h_out",
    "c_out",
    "kernel",
    "expand_ratio",
    "stride",
    "idskip",
    "se",
    "hs",
    "macs",
    "params",
    "bytes",
)


def raw_features(op: OpConfig, cost: OpCost | None = None) -> list[float]:
    """Shape, kernel, expansion, stride and cost figures of `op` (the op type is encoded by the predictor)."""
    cost = cost or op_cost(op)
    c_in = op.input_shape[-1]
    expand = op.attr("expand", 0)
    ratio = expand / c_in if op.attr("se") is not None else expand  # Once-for-All keys give the width
    h_out = op.output_shape[0] if len(op.output_shape) == 3 else 1
    kernel = op.attr("kernel") or _kernel_of(op.kind)
    return [
        op.input_shape[0],
        c_in,
        h_out,
        op.output_shape[-1],
        kernel,
        ratio,
        op.attr("stride", 1),
        op.attr("idskip", 0),
        op.attr("se", 0),
        op.attr("hs", 0),
        cost.macs,
        cost.params,
        cost.terms["bytes"],
    ]


def cost_matrix(ops: list[OpConfig]) -> tuple[np.ndarray, np.ndarray]:
    """(per-term costs, raw features) of `ops` as two float arrays."""
    costs = [op_cost(op) for op in ops]
    terms = np.array([[c.terms[t] for t in COST_TERMS] for c in costs], dtype=float).reshape(len(ops), -1)
    raw = np.array([raw_features(op, c) for op, c in zip(ops, costs)], dtype=float).reshape(len(ops), -1)
    return terms, raw


def _kernel_of(kind: str) -> int:
    digits = kind.rsplit("_", 1)[-1].split("x")[0]
    return int(digits) if digits.isdigit() else 1 if kind.startswith("Conv_") else 3 if kind == "Conv" else 0
