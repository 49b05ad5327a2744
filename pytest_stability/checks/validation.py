"""``val_loss``: the smoothed validation loss does not rise beyond a tolerance.

The validation losses ``v_j`` are smoothed with an exponential moving average,
``s_0 = v_0``, ``s_j = a * s_{j-1} + (1 - a) * v_j`` with ``a = val_smoothing``
(0 = no smoothing).  With ``best_j = min(s_0..s_j)``, measurement ``j`` fails
when

    s_j - best_j > max(val_min_delta, val_tolerance * |best_j|)

i.e. like Keras ``EarlyStopping``'s ``min_delta`` plus a relative tolerance,
and, on top of both, by more than the curve's own noise: ``best_j x
(exp(VAL_NOISE_K x sigma) - 1)``, where ``sigma`` is the robust noise of one
measurement of ``log(v)``, from its second differences (1.4826 x their MAD /
sqrt(6), which a U-shaped trend does not inflate; 0 with fewer than
``VAL_NOISE_MIN`` = 8 measurements or a non-positive loss).  A small validation set (32-64 samples)
makes the curve wiggle 13-33 %, which the relative tolerance alone mistook for
a rise.

A rise over that limit fails only when it **persists** (``VAL_PERSIST``
consecutive measurements over it) or is **unmistakable** (``VAL_JUMP`` x the
limit, caught at once, even on the last measurement).  A shorter, smaller
excursion that comes back is not a failure; it is reported in ``stats``
(``transient``: after how many steps, how far).  A failure that came back
down afterwards (a BatchNorm pit, a late recovery) is ``kind="excursion"``,
one that did not is ``kind="rise"``.  The step reported is the first
measurement of the stretch over the limit.

A model with BatchNorm whose train/inference gap (``trace.info["bn_train_infer_gap"]``:
the same batch's loss in training vs inference mode, measured by the engine)
reached ``BN_GAP`` (10 %) gets no noise allowance and no persistence
requirement: its inference-mode curve wiggles *because* the moving statistics
do not match the batch statistics, so the wiggle is the pathology (validation
pits), not measurement noise, and a pit that comes back at the next
measurement fails as an excursion.  A pit must still rise ``BN_PIT_MIN_RISE`` (5 %) of the
first validation loss: a 10 % rise of a validation loss that already fell tenfold (0.062 -> 0.068 on a
healthy full-batch BatchNorm U-Net) is 1 % of where the curve started, not a pit.  On the detection benchmark's stored
traces this took the BatchNorm-pit scenario from 3/10 to 10/10 detected with
no new false alarm (no healthy run's smoothed validation loss rose more than
9.6 %, under the 10 % tolerance: ``benchmarks/results/detection.md``).

A stretch over the limit that **came back down** while the training loss rose at least as much (its
median over the ``spike_window`` steps before each measurement, against its level at the best
measurement) is the training's own noise reaching validation -- a healthy run at batch 10 whose training
loss wandered 0.32 -> 0.54 and back -- not a generalisation problem: it is reported in ``stats["transient"]``
(``follows_training``), and the training checks judge the training loss itself.

Without validation data the check is *skipped*, never passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds

NAME = "val_loss"
#: a rise must exceed this many noise sigmas (of one log-measurement) above the best smoothed value.
VAL_NOISE_K = 2.5
#: consecutive measurements over the limit that make a rise persistent.
VAL_PERSIST = 3
#: a rise this many times the limit fails without waiting for persistence.
VAL_JUMP = 2.0
#: fewer measurements than this: the noise cannot be measured (the jumps would be their own noise).
VAL_NOISE_MIN = 8
#: a BatchNorm train/inference gap (relative) at or above this: the curve's wiggle is the mismatch, not noise.
BN_GAP = 0.10
#: with the noise allowance waived (BN_GAP), a pit must still rise this fraction of the first validation loss.
BN_PIT_MIN_RISE = 0.05


def noise_sigma(values: np.ndarray) -> float:
    """Robust noise of one measurement of a positive curve, in log space (0 when it cannot be measured).

    From the second differences of ``log(values)``: a falling-then-rising
    (U-shaped) trend has second differences near 0 except at its bend, so
    only the wiggles count as noise.  For independent noise of std ``sigma``
    a second difference has std ``sqrt(6) sigma``: ``sigma = 1.4826 x MAD /
    sqrt(6)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.shape[0] < VAL_NOISE_MIN or not np.all(v > 0):
        return 0.0
    dd = np.diff(np.log(v), n=2)
    return float(1.4826 * np.median(np.abs(dd - np.median(dd))) / np.sqrt(6.0))


def smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with weight ``smoothing`` on the previous value."""
    out = np.empty_like(values, dtype=np.float64)
    acc = None
    for i, v in enumerate(values):
        acc = v if acc is None else smoothing * acc + (1.0 - smoothing) * v
        out[i] = acc
    return out


def _train_levels(trace: Trace, steps: np.ndarray, t: Thresholds) -> np.ndarray:
    """The training loss level at each validation measurement: the median raw loss over the ``spike_window``
    steps (or the spacing of the measurements, if larger) before it, the first step's loss for a measurement
    before training (NaN when there is none)."""
    loss = np.asarray(trace.loss, dtype=np.float64)
    spacing = int(np.median(np.diff(steps))) if steps.shape[0] > 1 else 0
    w = max(int(t.spike_window), spacing, 1)
    out = np.full(steps.shape[0], np.nan)
    for j, step in enumerate(steps):
        # before the first update (step 0) the first batch's loss is the model's
        seg = loss[max(0, int(step) - w) : max(int(step), 1)]
        seg = seg[np.isfinite(seg)]
        if seg.size:
            out[j] = float(np.median(seg))
    return out


def _follows_training(s: np.ndarray, best: np.ndarray, train: np.ndarray, i: int, k: int, n: int) -> bool:
    """A stretch ``[i, k)`` over the limit that came back down (``k < n``) while the training loss rose at least
    as much (relative to its level at the best measurement): training noise reaching validation, not a
    generalisation problem.  The training checks judge the training loss itself."""
    if k >= n:
        return False
    jb = int(np.argmin(s[: i + 1]))
    base = train[jb]
    if not (np.isfinite(base) and base > 0 and best[i] > 0):
        return False
    train_rise = float(np.nanmax(train[i:k])) / base if np.isfinite(train[i:k]).any() else np.nan
    val_rise = float(np.max(s[i:k])) / float(best[i])
    return bool(np.isfinite(train_rise) and train_rise >= val_rise)


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
    assert trace.val_loss is not None and trace.val_steps is not None  # has_validation: both are given
    finite = np.isfinite(trace.val_loss)
    steps = trace.val_steps[finite]
    v = trace.val_loss[finite]
    if v.shape[0] < 2:
        return CheckResult(NAME, SKIPPED, detail="fewer than 2 finite validation measurements")
    s = smooth(v, t.val_smoothing)
    best = np.minimum.accumulate(s)
    gap = (trace.info or {}).get("bn_train_infer_gap")
    bn_mismatch = isinstance(gap, (int, float)) and np.isfinite(gap) and gap >= BN_GAP
    sigma = 0.0 if bn_mismatch else noise_sigma(v)
    noise = np.abs(best) * np.expm1(VAL_NOISE_K * sigma)
    allowed = np.maximum(np.maximum(t.val_min_delta, t.val_tolerance * np.abs(best)), noise)
    if bn_mismatch:
        # no noise allowance, but a pit must be large against the curve's own scale
        allowed = np.maximum(allowed, BN_PIT_MIN_RISE * abs(float(v[0])))
    train_level = _train_levels(trace, steps, t)
    rise = s - best
    trend = float((s[-1] - s[0]) / abs(s[0])) if s[0] != 0 else None
    stats: dict[str, Any] = {
        "trend": trend,
        "final_smoothed": float(s[-1]),
        "best_smoothed": float(best[-1]),
        "max_rise": float(np.max(rise / np.maximum(np.abs(best), 1e-12))),
        "noise_sigma": sigma,
        "noise_waived": "batchnorm_gap" if bn_mismatch else None,
        "transient": [],
    }
    over = rise > allowed
    n = v.shape[0]
    j = None
    i = 0
    while i < n:
        if not over[i]:
            i += 1
            continue
        k = i
        while k < n and over[k]:
            k += 1
        failing = k - i >= VAL_PERSIST or bool(np.any(rise[i:k] > VAL_JUMP * allowed[i:k])) or bn_mismatch
        follows = _follows_training(s, best, train_level, i, k, n)
        if failing and not follows:
            j = i
            break
        stats["transient"].append(
            {
                "step": int(steps[i]),
                "steps": int(steps[k - 1] - steps[i]),
                "rise": float(np.max(rise[i:k]) / max(abs(float(best[i])), 1e-12)),
                "recovered": k < n,
                **({"follows_training": follows} if follows else {}),
            }
        )
        i = k
    if j is None:
        return CheckResult(NAME, PASSED, stats=stats)
    k = j
    while k < n and over[k]:
        k += 1
    jb = int(np.argmin(s[: j + 1]))
    peak_j = j + int(np.argmax(s[j:k]))
    recovered = k < n and bool(s[-1] - best[-1] <= allowed[-1])
    persisted = k - j >= VAL_PERSIST
    why = (
        f"for {k - j} consecutive measurements"
        if persisted
        else f"by more than {VAL_JUMP:g}x the limit"
        if bool(np.any(rise[j:k] > VAL_JUMP * allowed[j:k]))
        else f"for {k - j} measurement(s), a BatchNorm pit (train/inference gap {gap:.0%})"
    )
    msg = (
        f"smoothed validation loss {s[j]:.4g} after {int(steps[j])} steps rose "
        f"{rise[j]:.4g} above its best {best[j]:.4g} (after {int(steps[jb])} steps) and stayed over the limit "
        f"{best[j] + allowed[j]:.4g} (best + {allowed[j]:.4g}) {why}, peaking at {s[peak_j]:.4g} "
        f"(limit: the largest of val_tolerance={t.val_tolerance:g} "
        f"x best, val_min_delta={t.val_min_delta:g}, and {VAL_NOISE_K:g} noise sigmas of the curve, "
        + (
            f"sigma {sigma:.3g} in log space)"
            if not bn_mismatch
            else f"waived: a BatchNorm train/inference gap of {gap:.0%} >= {BN_GAP:.0%} makes the wiggle the "
            f"mismatch itself, not noise; a pit must still rise {BN_PIT_MIN_RISE:.0%} of the first validation "
            f"loss {float(v[0]):.4g})"
        )
    )
    if recovered:
        msg += "; it came back down afterwards (a pit that recovered)"
    finding = Finding(
        check=NAME,
        kind="excursion" if recovered else "rise",
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
            "recovered": recovered,
            "persisted": persisted,
            "measurements_over": int(k - j),
            "noise_sigma": sigma,
            "noise_limit": float(noise[j]),
            "noise_waived": "batchnorm_gap" if bn_mismatch else None,
        },
    )
    return CheckResult(NAME, FAILED, (finding,), stats=stats)
