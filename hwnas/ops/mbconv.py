"""MBConv, the inverted-residual block of MobileNetV2 (Sandler et al., CVPR 2018) as searched by ProxylessNAS
(Cai, Zhu, Han, ICLR 2019): 1x1 expand - BN - ReLU6, k x k depthwise - BN - ReLU6, 1x1 project - BN, with an
identity shortcut when stride is 1 and the channel count is unchanged.

Candidates are registered as ``mbconv_k{3,5,7}_e{3,6}`` plus ``zero`` (skip the block), each a factory
``(c_in, c_out, stride, shortcut) -> nn.Module``. In a supernet the shortcut sits outside the mixed op
(y = x + Σ_k w_k · body_k(x), as in ProxylessNAS), so candidates are built with ``shortcut=False`` and `zero`
outputs zeros; in a derived network a `zero` block is simply left out.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.ops.depthwise import DepthwiseConv2d
from hwnas.registry import Registry

MOBILE_OPS: Registry = Registry("mobile op")
MOBILE_PRIMITIVES = tuple(f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)) + ("zero",)
_MBCONV_NAME = re.compile(r"mbconv_k(\d+)_e(\d+)$")


def conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool = False) -> nn.Sequential:
    conv = (
        DepthwiseConv2d(c_in, kernel, stride, kernel // 2)
        if depthwise
        else nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
    )
    return nn.Sequential(
        conv,
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=False),
    )


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, shortcut: bool = True):
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.stride, self.expand = c_in, c_out, kernel, stride, expand
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(c_in, hidden, 1, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, kernel, stride, depthwise=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.identity = shortcut and stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        y = self.body(x)
        return x + y if self.identity else y


class ZeroBody(nn.Module):
    """`zero` inside a supernet block: the body contributes nothing, so the block's output is its shortcut x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def parse_mbconv(name: str) -> tuple[int, int]:
    """``mbconv_k5_e3`` -> (kernel 5, expand 3)."""
    match = _MBCONV_NAME.match(name)
    if not match:
        raise HwnasError(f"not an MBConv op name: {name!r} (expected mbconv_k<kernel>_e<expand>)")
    return int(match.group(1)), int(match.group(2))


def _register_mbconv(name: str) -> None:
    kernel, expand = parse_mbconv(name)
    MOBILE_OPS.register(name)(
        lambda c_in, c_out, stride, shortcut=True: MBConv(c_in, c_out, kernel, stride, expand, shortcut)
    )


for _name in MOBILE_PRIMITIVES[:-1]:
    _register_mbconv(_name)
MOBILE_OPS.register("zero")(lambda c_in, c_out, stride, shortcut=False: ZeroBody())
