"""Float helpers that need no numpy: strict-JSON encoding of NaN/Inf, compact formatting.

Imported on the plugin's load path (JSON report, baselines), so kept numpy-free.
"""

from __future__ import annotations

import math


def encode_float(value: float) -> float | str:
    """A float for strict JSON: NaN and infinities become the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def decode_float(value: float | str | None) -> float:
    """Inverse of :func:`encode_float`."""
    if isinstance(value, str):
        return float(value)  # float("nan"), float("inf"), float("-inf")
    if value is None:
        return math.nan
    return float(value)


def fmt(value: float | str | None, digits: int = 4) -> str:
    """Compact number: ``0.00123``, ``3.4e+05``, ``nan``, ``-``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"
