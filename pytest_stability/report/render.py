"""Text rendering: sparklines and the failure explanation.  Pure (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._floats import decode_float
from .._floats import fmt as fmt  # re-exported
from ..record import RunRecord, RunSummary

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


def val_change(summary: RunSummary) -> str | None:
    """The validation loss's change over the run, as the reports print it: relative (``"-57%"``), or, for a loss
    that ended at or below 0 (a cosine similarity's, a log-likelihood's), where a relative change means nothing
    (-0.15 to -0.97 read "-547%"), its final value (``"-0.97 at the end"``); a loss that ended 10x its start or
    more, as that factor (``"x4.35e+15"``, which had read "+434561560391018240%"); None without one."""
    final = decode_float(summary.final_val_loss) if summary.final_val_loss is not None else math.nan
    if math.isfinite(final) and final <= 0:
        return f"{fmt(final, 3)} at the end"
    trend = summary.val_trend
    if isinstance(trend, (int, float)) and not isinstance(trend, bool) and math.isfinite(trend):
        return f"x{fmt(1.0 + trend, 3)}" if trend >= 9 else f"{trend:+.0%}"
    return None


def expected_clause(expected: int) -> str:
    """What a report's title adds for unstable runs whose tests expected them (``" (1 as its test expects)"``),
    or nothing."""
    if not expected:
        return ""
    return f" ({expected} as {'its test expects' if expected == 1 else 'their tests expect'})"


def run_notes(run: RunRecord, *, speed: bool = False) -> list[str]:
    """The notes that qualify a run's verdict (``RunRecord.model["notes"]``, written by the training: a check
    not judged and why, a run that ended before its planned steps), in order; with ``speed``, then how its
    epochs and batches were presented for speed (``speed_notes``: a full batch as one long epoch, short epochs
    or single batches kept for what observes them)."""
    model = run.model or {}
    return [str(n) for n in model.get("notes") or ()] + (
        [str(n) for n in model.get("speed_notes") or ()] if speed else []
    )


def batch_text(where: Mapping[str, Any], max_indices: int = 12) -> str:
    """One line naming the batch a finding's step trained on (``evidence["batch"]``, see
    :func:`~pytest_stability.training.batches.locate`) and where it was saved."""
    step = int(where["step"])
    if where.get("full_batch"):
        text = f"batch: every step trained on the full batch ({len(where.get('indices') or ())} samples)"
    elif where.get("batches_per_epoch"):
        text = (
            f"batch: step {step} trained on batch {where['batch']} of {where['batches_per_epoch']} "
            f"(from 0) in epoch {where['epoch']}"
        )
    else:
        text = f"batch: step {step} trained on batch {where['batch']} of the data pipeline (from 0)"
    indices = where.get("indices")
    if indices is not None and not where.get("full_batch"):
        shown = ", ".join(str(i) for i in indices[:max_indices])
        more = f", ... {len(indices)} in all" if len(indices) > max_indices else ""
        text += f": samples [{shown}{more}]"
    elif where.get("why"):
        text += f" ({where['why']})"
    if where.get("file"):
        text += f"; saved to {where['file']}"
    elif where.get("not_saved"):
        text += f"; not saved: {where['not_saved']}"
    return text
