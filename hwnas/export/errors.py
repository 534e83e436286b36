"""Converter and runtime failures as one-line user errors."""

from __future__ import annotations

from hwnas.errors import HwnasError


def conversion_error(what: str, err: BaseException) -> HwnasError:
    """`what` failed, with the exception's type and the first line of its message (converters' are long)."""
    lines = str(err).strip().splitlines()
    return HwnasError(f"{what}: {type(err).__name__}: {lines[0] if lines else 'no message'}")
