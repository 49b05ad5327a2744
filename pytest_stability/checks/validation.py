"""``val_loss``: the smoothed validation loss does not rise beyond a tolerance.

The validation losses ``v_j`` are smoothed with an exponential moving average,
``s_0 = v_0``, ``s_j = a * s_{j-1} + (1 - a) * v_j`` with ``a = val_smoothing``
(0 = no smoothing).  With ``best_j = min(s_0..s_j)``, measurement ``j`` fails
when

    s_j - best_j > max(val_min_delta, val_tolerance * |best_j|)

i.e. like Keras ``EarlyStopping``'s ``min_delta`` plus a relative tolerance.
Without validation data the check is *skipped*, never passed.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds

NAME = "val_loss"


def smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with weight ``smoothing`` on the previous value."""
    out = np.empty_like(values, dtype=np.float64)
    acc = None
    for i, v in enumerate(values):
        acc = v if acc is None else smoothing * acc + (1.0 - smoothing) * v
        out[i] = acc
    return out


def check_val_loss(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail at the first validation measurement whose smoothed loss rose too far.

    Returns:
        ``skipped`` without validation data or with fewer than 2 finite
        measurements; ``stats["trend"]`` is the relative change of the smoothed
        loss from its first to its last value.
    """
    t = thresholds or Thresholds()
    if not trace.has_validation:
        return CheckResult(NAME, SKIPPED, detail="no validation data was given")
    finite = np.isfinite(trace.val_loss)
    steps = trace.val_steps[finite]
    v = trace.val_loss[finite]
    if v.shape[0] < 2:
        return CheckResult(NAME, SKIPPED, detail="fewer than 2 finite validation measurements")
    s = smooth(v, t.val_smoothing)
    best = np.minimum.accumulate(s)
    allowed = np.maximum(t.val_min_delta, t.val_tolerance * np.abs(best))
    rise = s - best
    trend = float((s[-1] - s[0]) / abs(s[0])) if s[0] != 0 else None
    stats = {"trend": trend, "final_smoothed": float(s[-1]), "best_smoothed": float(best[-1]),
             "max_rise": float(np.max(rise / np.maximum(np.abs(best), 1e-12)))}
    over = rise > allowed
    if not over.any():
        return CheckResult(NAME, PASSED, stats=stats)
    j = int(np.argmax(over))
    jb = int(np.argmin(s[:j + 1]))
    peak_j = j + int(np.argmax(s[j:]))
    msg = (f"smoothed validation loss {s[j]:.4g} after {int(steps[j])} steps rose "
           f"{rise[j]:.4g} above its best {best[j]:.4g} (after {int(steps[jb])} steps); "
           f"limit {allowed[j]:.4g} (val_tolerance={t.val_tolerance:g}, val_min_delta={t.val_min_delta:g})")
    finding = Finding(
        check=NAME,
        kind="rise",
        step=int(steps[j]),
        value=float(s[j]),
        limit=float(best[j] + allowed[j]),
        message=msg,
        evidence={
            "best": float(best[j]),
            "best_step": int(steps[jb]),
            "raw": float(v[j]),
            "peak_smoothed": float(s[peak_j]),
            "final_smoothed": float(s[-1]),
            "recovered": bool(s[-1] - best[-1] <= allowed[-1]),
        },
    )
    return CheckResult(NAME, FAILED, (finding,), stats=stats)
