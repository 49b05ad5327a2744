"""Text rendering: sparklines and the failure explanation.  Pure (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._floats import fmt as fmt  # re-exported

BARS = "▁▂▃▄▅▆▇█"
NONFINITE_MARK = "×"


def sparkline(values: Sequence[float] | np.ndarray, width: int = 32, *, log: bool | None = None) -> str:
    """A one-line unicode chart of ``values``.

    Long series are split into ``width`` bins and each bin shows its *maximum*,
    so a one-step spike stays visible.  Non-finite values show as ``×``.
    ``log`` (default: when all finite values are positive and span > 10x) plots
    on a log scale.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return ""
    n_bins = min(width, arr.size)
    edges = np.linspace(0, arr.size, n_bins + 1).astype(int)
    bins = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        chunk = arr[a : max(b, a + 1)]
        if not np.all(np.isfinite(chunk)):
            bins.append(np.nan)
        else:
            bins.append(float(np.max(chunk)))
    v = np.asarray(bins)
    finite = np.isfinite(v)
    if not finite.any():
        return NONFINITE_MARK * len(v)
    fv = v[finite]
    if log is None:
        log = bool(np.all(fv > 0) and fv.max() / fv.min() > 10)
    fv_t = np.log10(np.where(v > 0, v, np.nan)) if log else v
    lo, hi = np.nanmin(fv_t[finite]), np.nanmax(fv_t[finite])
    out = []
    for val, ok in zip(fv_t, finite, strict=True):
        if not ok or not np.isfinite(val):
            out.append(NONFINITE_MARK)
        elif hi == lo:
            out.append(BARS[0])
        else:
            out.append(BARS[int(round((val - lo) / (hi - lo) * (len(BARS) - 1)))])
    return "".join(out)


def window_sparkline(values: np.ndarray, step: int, radius: int = 50, width: int = 40) -> tuple[str, int, int]:
    """Sparkline of ``values[step-radius : step+radius]``; returns (line, first, last)."""
    first = max(0, step - radius)
    last = min(values.shape[0] - 1, step + radius)
    return sparkline(values[first : last + 1], width=width), first, last
