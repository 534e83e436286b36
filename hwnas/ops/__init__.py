"""Candidate primitives, registered by name: DARTS cell ops (`OPS`) and mobile MBConv blocks (`MOBILE_OPS`)."""

from hwnas.ops.darts import DARTS_PRIMITIVES, OPS
from hwnas.ops.mbconv import MOBILE_OPS, MOBILE_PRIMITIVES, MBConv
from hwnas.ops.opconfig import OpConfig

__all__ = ["DARTS_PRIMITIVES", "MOBILE_OPS", "MOBILE_PRIMITIVES", "OPS", "MBConv", "OpConfig"]
