"""OpConfig: one candidate op at one input shape — what latency tables are keyed by.

The key grammar is the one the published mobile tables use (ProxylessNAS, Once-for-All), so tables interoperate:

    expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0
    Conv-input:224x224x3-output:112x112x32
    Logits-input:7x7x1280-output:1000

DARTS ops use the same style: ``sep_conv_3x3-input:32x32x16-output:16x16x16-stride:2``.
This module is the one place keys are written and parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hwnas.errors import HwnasError


@dataclass(frozen=True)
class OpConfig:
    kind: str  # "expanded_conv", "Conv", "Conv_1", "Logits", or a DARTS op name such as "sep_conv_3x3"
    input_shape: tuple[int, ...]  # (H, W, C) as in the published keys
    output_shape: tuple[int, ...]  # (H, W, C), or (classes,) for Logits
    attrs: tuple[tuple[str, int], ...] = field(default=())  # ordered, e.g. (("expand", 3), ("kernel", 5), ...)

    def key(self) -> str:
        parts = [
            self.kind,
            "input:" + "x".join(map(str, self.input_shape)),
            "output:" + "x".join(map(str, self.output_shape)),
        ]
        parts += [f"{name}:{value}" for name, value in self.attrs]
        return "-".join(parts)

    def attr(self, name: str, default: int | None = None) -> int | None:
        return dict(self.attrs).get(name, default)

    @classmethod
    def from_key(cls, key: str) -> OpConfig:
        kind, *fields_ = key.split("-")
        values: dict[str, str] = {}
        for item in fields_:
            name, sep, value = item.partition(":")
            if not sep or not value:
                raise HwnasError(f"malformed op key {key!r}: field {item!r} is not name:value")
            if name in values:
                raise HwnasError(f"malformed op key {key!r}: field {name!r} given twice")
            values[name] = value
        if "input" not in values or "output" not in values:
            raise HwnasError(f"malformed op key {key!r}: needs input: and output: fields")
        try:
            shapes = {k: tuple(int(v) for v in values.pop(k).split("x")) for k in ("input", "output")}
            attrs = tuple((name, int(value)) for name, value in values.items())
        except ValueError:
            raise HwnasError(f"malformed op key {key!r}: non-integer field") from None
        logits = kind == "Logits"  # its output is the class scores
        if len(shapes["input"]) != 3 or len(shapes["output"]) != (1 if logits else 3):
            output = "CLASSES" if logits else "HxWxC"
            raise HwnasError(f"malformed op key {key!r}: {kind} needs input:HxWxC and output:{output}")
        if any(d < 1 for d in (*shapes["input"], *shapes["output"])):
            raise HwnasError(f"malformed op key {key!r}: input and output dimensions must be positive")
        if any(value < 1 for name, value in attrs if name in ("kernel", "stride", "expand")):
            raise HwnasError(f"malformed op key {key!r}: kernel, stride and expand must be positive")
        return cls(kind, shapes["input"], shapes["output"], attrs)
