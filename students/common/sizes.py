"""Human sizes at the CLI boundary: ``4.9M``, ``350k``, ``250M``, ``4900000``."""

from __future__ import annotations

import re

from .errors import UserError

__all__ = ["parse_count", "format_count"]

_UNITS = {"": 1, "k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6, "g": 10**9, "G": 10**9, "b": 10**9, "B": 10**9}
_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGbB]?)\s*$")


def parse_count(text: str | int, what: str = "size") -> int:
    """Parse ``4.9M`` / ``350k`` / ``4,900,000`` into an int; ``ValueError`` with a clear message otherwise."""
    if isinstance(text, int):
        value = text
    else:
        match = _COUNT_RE.match(str(text).replace(",", "").replace("_", ""))
        if not match:
            raise UserError(
                f"{what} {text!r} is not a size: write a positive number with an optional k, M or G suffix, "
                "e.g. 4.9M, 350k or 4900000"
            )
        value = round(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise UserError(f"{what} must be positive, got {text!r}")
    return value


def format_count(n: float, digits: int = 3) -> str:
    """``4935242 -> '4.94M'``; plain digits below a thousand."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}g}{unit}"
    return f"{n:g}"
