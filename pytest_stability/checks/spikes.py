"""``loss_spike``: no step whose loss stands far above its recent trend.

Minibatch losses are noisy and heavy-tailed, and a falling loss spans orders of
magnitude, so the comparison is robust and in log space.  For each step ``t``
(after ``warmup_steps``) against the trailing window ``loss[t-W:t]``, which
excludes ``t`` itself:

* ``m`` = median of ``log(loss)`` over the window, ``s`` = 1.4826 x MAD
  (floored at ``log(1.01)`` so a perfectly flat plateau does not make any wobble
  infinite);
* ``z = (log(loss[t]) - m) / s`` (the robust z-score) and
  ``ratio = loss[t] / exp(m)``.

Step ``t`` is a spike when **all three** hold: ``z > spike_zscore``,
``ratio > spike_ratio`` and ``loss[t] - exp(m) > spike_min_rise * L0``, where
``L0`` is the median loss of the first window (the initial loss level).  The
last condition keeps a jump from 1e-5 to 1e-4, harmless once a model has fit,
from counting.

When the loss is not strictly positive (some custom losses), the same rule runs
on the loss itself instead of its logarithm, without the ratio condition.

A loss that jumps to a new, higher level and stays there is caught even when
the steps before it were too noisy for the z-score: step ``t`` is also flagged
as a *level shift* when the median of the next ``spike_window // 5`` steps
(at least 5) is more than ``spike_ratio`` x the trailing median, every one of
those steps stands above the 90th percentile of the trailing window, and the
rise clears ``LEVEL_SHIFT_MIN_RISE * L0`` (10 % of the initial loss).

A run that ends stuck (a flat loss, or gradients that vanished) at a level
``spike_ratio`` x above its best (a rise too gradual, too early or too noisy
for either rule) is reported as a collapse (see :func:`_collapse`).

A loss that climbs back **slowly**, over tens or hundreds of steps, by orders
of magnitude (Adam's slingshot at minibatch size: the per-step noise hides the
climb from the z-score, and the trailing median follows it) is caught as a
*slow rise* (see :func:`_resurgence`): the rolling median over ``spike_window``
steps rises ``RESURGE_RATIO`` x (10x) above its best earlier value, by more
than ``RESURGE_MIN_RISE`` (1 %) of the initial loss.  A climb that came back
down after peaking under ``RESURGE_PEAK`` x (15x) its best counts only beside
another loss event: alone, it is within a healthy run's noise (PyTorch
``log_zero_fixed`` seed 9 peaked at 10.3x and came back), while every slingshot
that only this rule catches peaked at 21x or more (the detection benchmark's
stored traces).

A blow-up within the ``warmup_steps``, which the rules above do not judge (their trailing window would be
the blown-up steps themselves: a run chaotic from its first update calibrates every relative limit on its own
chaos), is caught as an *early blow-up* (see :func:`_early_blow_up`): an update among the warmup steps moved
the weights at least ``EARLY_UPDATE`` x (1x) their own norm (``trace.update_ratio``: the model changed, not
the batch), and the median loss over the ``spike_window`` steps after it stayed ``spike_ratio`` x above the
loss before it.  A large first update after which the loss falls (Adam's first step at a high but workable
rate) is not one; neither is a small-batch run whose first batch happened to be easy (its updates are small).

A run that the rules above do not fail, but whose loss *ended* ``spike_ratio`` x above where it started
(its median over the last ``spike_window`` steps against the median of its first ``START_STEPS`` (3), up to
an early blow-up's update when there was one: :func:`initial_steps`), fails too (see :func:`_ended_above_start`):
training made the loss worse and it stayed there, over a climb too gradual, too early or too noisy for the
rules above (SGD with momentum at 3 on a tanh classifier: 0.78 at the start, 8 at the end).  A healthy run
ends below where it started: over the detection benchmark's 347 healthy runs the largest ratio is 1.16.
After an early update as large as the weights (an early blow-up's evidence), a loss that never came back
below where it started fails at 1x (Adam at 1 on a tanh classifier: 0.78 at the start, 1.29 at the end).
Only the model's loss is judged so: a ``train_step``'s other loss curves may rise by design (a GAN's generator
loss as its discriminator improves, a VAE's KL term from near 0).

A spike must show that the model changed: a single hard batch at a small batch
size (one step far above its median, the next steps back to normal) is not
instability.  An event (below) starting at step ``t`` is *confirmed* when the
median of ``loss[t+1 : t+1+CONFIRM_STEPS]`` stays elevated: more than
``CONFIRM_RATIO`` x the trailing median and more than ``CONFIRM_Z`` robust
deviations above it (in log space; in linear space the z condition alone).
With fewer than ``CONFIRM_STEPS`` steps after it (a spike on the very last
steps), an event is confirmed when every step that follows is elevated, or
when it is *extreme*: ratio at least ``EXTREME_FACTOR`` x ``spike_ratio``
(30x by default) and z at least twice ``spike_zscore``.  An event whose next
``CONFIRM_STEPS`` are mixed is still confirmed when the median of the next
``spike_window`` steps stays ``CONFIRM_WINDOW_RATIO`` x (and ``CONFIRM_Z``
deviations) above the trailing median: the run did not settle (spike after
spike, as after a learning rate jump).  Unconfirmed events
are not findings; ``stats["outliers"]`` lists their steps.  A level shift
is confirmed by construction (its next steps are all high).

Consecutive spike steps less than one window apart form one *event*.  Its step is where it happened: the
first spike step at least halfway (geometrically) from the level before it to its peak (a jump that stays up
is reported where it jumped; the message adds the peak when it came later).  An event
whose following window keeps a median above ``spike_ratio`` x the pre-spike
level did not recover (``kind="spike_no_recovery"``); if training is then
also stuck (see :func:`stuck_after`: a flat loss, or gradients that vanished),
it is ``stuck`` (dead units, saturated outputs).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, TypedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..trace import OVERFLOW, Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds

NAME = "loss_spike"
_MAD_TO_SIGMA = 1.4826
_LOG_SCALE_FLOOR = float(np.log(1.01))
#: a level shift must rise by at least this fraction of the initial loss.  The first calibration
#: run's false alarms were shifts of up to 4 % of it near a ~1e-6 loss (on the amsgrad controls).
LEVEL_SHIFT_MIN_RISE = 0.10
#: relative std of the loss after an unrecovered spike at or below which it is "stuck" at a constant.
STUCK_RTOL = 0.01
#: median gradient norm after an event / 90th percentile before it at or below which the gradients "vanished"
#: (dead ReLUs or a saturated sigmoid give exactly 0; the loss can still vary from batch to batch).
VANISHED = 1e-3
#: steps after a spike whose median must stay elevated for the spike to count (the model changed).
CONFIRM_STEPS = 5
#: ...by this factor over the trailing median,
CONFIRM_RATIO = 1.5
#: ...and this many robust deviations (a single hard batch at batch size 2-8 comes straight back).
CONFIRM_Z = 3.0
#: ... or the median over the next spike_window steps is this x the trailing median (a run that stays chaotic)
CONFIRM_WINDOW_RATIO = 1.3
#: a spike with too few steps after it to confirm fails when its ratio is this x spike_ratio (and z 2x the limit).
EXTREME_FACTOR = 10.0
#: an early blow-up: an update among the warmup steps moved the weights at least this x their own norm
#: (healthy training moves them by 1e-4 to 1e-1 of it a step; Adam at learning rate 3 moves an MLP's 14x)
EARLY_UPDATE = 1.0
#: the loss's level at the start, for the rule that it ended spike_ratio x above it: the median of this many
#: first steps (over the detection benchmark's 347 healthy runs, the largest end / start ratio is 1.16 with 3
#: steps, 1.33 with step 0 alone)
START_STEPS = 3
#: an event's message names its peak when the peak came after its step and is at least this x its loss there
PEAK_SHOWN = 1.5
#: a slow rise: the rolling median loss (over spike_window steps) climbs this x above its best rolling median...
RESURGE_RATIO = 10.0
#: ...by more than this fraction of the initial loss level (a climb from 1e-9 to 1e-7 is harmless).
RESURGE_MIN_RISE = 0.01
#: ...and, when it came back down afterwards and no other loss event is beside it, peaked at least this x above
#: that best (see the module docstring)
RESURGE_PEAK = 15.0


def _times(ratio: float) -> str:
    """A ratio as a message shows it: one decimal, or three significant digits from 1e4 on (``"9.97e+16"``,
    not ``"99657115899597264.0"``: a loss that blew up to 1e21 from 1e4)."""
    return f"{ratio:.3g}" if abs(ratio) >= 1e4 else f"{ratio:.1f}"


def _over(ratio: float, limit: float) -> str:
    """``ratio``, over ``limit``, with the fewest decimals (up to 4) that keep it over: ``"10.01"``, not ``"10"``
    next to a limit of 10x."""
    if ratio >= 1e4 and ratio > 2 * limit:
        return _times(ratio)
    for digits in range(5):
        shown = f"{ratio:.{digits}f}"
        if float(shown) > limit:
            return shown
    return shown


def _trailing_windows(values: np.ndarray, window: int) -> np.ndarray:
    """``out[t] = values[t-window:t]`` (NaN-padded before step 0), a view of shape (n, window)."""
    padded = np.concatenate([np.full(window, np.nan), values])
    return sliding_window_view(padded, window)[: values.shape[0]]


def _trailing_median_mad(values: np.ndarray, window: int, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and MAD of ``values[t-window:t]`` for every ``t`` (NaN-aware).

    Returns (median, mad, count) arrays of ``len(values)``; entries with fewer
    than ``min_count`` finite values in their window are NaN.
    """
    n = values.shape[0]
    windows = _trailing_windows(values, window)
    count = np.sum(np.isfinite(windows), axis=1)
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    ok = count >= min_count
    if ok.any():
        with np.errstate(all="ignore"):
            w = windows[ok]
            m = np.nanmedian(w, axis=1)
            med[ok] = m
            mad[ok] = np.nanmedian(np.abs(w - m[:, None]), axis=1)
    return med, mad, count


class SpikeScores(TypedDict):
    """What :func:`spike_scores` returns: per-step arrays, and two facts about the whole curve."""

    z: np.ndarray
    ratio: np.ndarray
    baseline: np.ndarray
    rise: np.ndarray
    flag: np.ndarray
    shift: np.ndarray
    log_space: bool
    initial_level: float
    median: np.ndarray
    scale: np.ndarray
    values: np.ndarray


def spike_scores(loss: np.ndarray, thresholds: Thresholds) -> SpikeScores:
    """Per-step spike statistics (used by the check, the diagnosis and the calibration).

    Returns a dict with ``z`` (robust z-score), ``ratio`` (loss / trailing
    median), ``baseline`` (trailing median loss), ``rise``, ``flag`` (bool per
    step), ``log_space`` and ``initial_level``.
    """
    loss = np.asarray(loss, dtype=np.float64)
    n = loss.shape[0]
    window = int(thresholds.spike_window)
    min_count = max(5, window // 2)
    finite = np.isfinite(loss)
    log_space = bool(finite.any() and np.all(loss[finite] > 0))
    with np.errstate(all="ignore"):
        values = np.where(finite, np.log(loss) if log_space else loss, np.nan)
    med, mad, _ = _trailing_median_mad(values, window, min_count)
    first = loss[:window][finite[:window]]
    initial_level = float(np.median(np.abs(first))) if first.size else float("nan")
    with np.errstate(all="ignore"):
        if log_space:
            scale = np.maximum(_MAD_TO_SIGMA * mad, _LOG_SCALE_FLOOR)
            z = (values - med) / scale
            baseline = np.exp(med)
            ratio = loss / baseline
        else:
            floor = 0.01 * max(initial_level, 1e-12)
            scale = np.maximum(_MAD_TO_SIGMA * mad, floor)
            z = (values - med) / scale
            baseline = med
            ratio = np.full(n, np.inf)
        rise = loss - baseline
        judged = finite & np.isfinite(z) & (np.arange(n) >= thresholds.warmup_steps)
        big_enough = rise > thresholds.spike_min_rise * initial_level
        flag = judged & (z > thresholds.spike_zscore) & (ratio > thresholds.spike_ratio) & big_enough
        shift = (
            judged
            & (rise > LEVEL_SHIFT_MIN_RISE * initial_level)
            & _level_shift(values, med, window, log_space, thresholds.spike_ratio, initial_level)
        )
    return {
        "z": z,
        "ratio": ratio,
        "baseline": baseline,
        "rise": rise,
        "flag": flag | shift,
        "shift": shift,
        "log_space": log_space,
        "initial_level": initial_level,
        "median": med,
        "scale": scale,
        "values": values,
    }


def _level_shift(
    values: np.ndarray, med: np.ndarray, window: int, log_space: bool, ratio: float, initial_level: float
) -> np.ndarray:
    """Steps where the loss moves to a new level (see the module docstring).

    ``values`` are the (log) losses, ``med`` their trailing medians.
    """
    n = values.shape[0]
    ahead = max(5, window // 5)
    out = np.zeros(n, dtype=bool)
    if n < ahead + 1:
        return out
    # next[t] = values[t : t + ahead]; the last steps have too few to judge.
    nxt = sliding_window_view(values, ahead)
    trailing = _trailing_windows(values, window)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at the start
        nxt_med = np.nanmedian(nxt, axis=1)
        nxt_min = np.nanmin(nxt, axis=1)
        high = np.nanpercentile(trailing[: nxt.shape[0]], 90, axis=1)
    m = med[: nxt.shape[0]]
    up = nxt_med - m > (np.log(ratio) if log_space else (ratio - 1.0) * max(abs(initial_level), 1e-12))
    ok = np.isfinite(nxt_med) & np.isfinite(m) & np.isfinite(high) & np.all(np.isfinite(nxt), axis=1)
    out[: nxt.shape[0]] = ok & up & (nxt_min > high)
    return out


def stuck_after(loss: np.ndarray, grad_norm: np.ndarray | None, step: int, window: int) -> dict[str, Any]:
    """Whether training is stuck after ``step``: the one definition the check and the diagnosis share.

    Over the last ``window`` finite steps from ``step + 5`` on, while the loss
    stays above twice its lowest value before ``step`` (a run that came back
    down is not stuck), training is

    * ``flat`` when the loss's relative std is at most :data:`STUCK_RTOL`
      (stuck at a constant), or
    * ``vanished`` when the median gradient norm is at most :data:`VANISHED` x
      the 90th percentile of the norms before ``step`` (dead units: the loss
      still varies from batch to batch, but nothing learns).

    Returns a dict with ``stuck``, ``flat``, ``vanished``, ``level`` (median
    loss), ``rel_std`` and ``n`` (steps judged); ``stuck`` is False with fewer
    than 10 steps to judge.
    """
    loss = np.asarray(loss, dtype=np.float64)
    tail = loss[step + 5 :]
    tail = tail[np.isfinite(tail)][-max(int(window), 10) :]
    out: dict[str, Any] = {
        "stuck": False,
        "flat": False,
        "vanished": False,
        "level": float("nan"),
        "rel_std": float("nan"),
        "n": int(tail.size),
    }
    if tail.size < 10:
        return out
    level = float(np.median(tail))
    rel = float(np.std(tail) / max(abs(level), 1e-12))
    out.update(level=level, rel_std=rel)
    best = loss[:step]
    best = best[np.isfinite(best)]
    if best.size:
        low = float(np.min(best))
        if not level > low + max(abs(low), 1e-12):
            return out
    out["flat"] = rel <= STUCK_RTOL
    if grad_norm is not None:
        g = np.asarray(grad_norm, dtype=np.float64)
        after = g[step + 5 :]
        after = after[np.isfinite(after)][-max(int(window), 10) :]
        before = g[:step]
        before = before[np.isfinite(before)]
        if after.size >= 10 and before.size:
            p90 = float(np.percentile(before, 90))
            out["vanished"] = bool(p90 > 0 and float(np.median(after)) <= VANISHED * p90)
    out["stuck"] = bool(out["flat"] or out["vanished"])
    return out


def _collapse(
    loss: np.ndarray, grad_norm: np.ndarray | None, t: Thresholds, log_space: bool, initial_level: float
) -> Finding | None:
    """A run that ends stuck at a level ``spike_ratio`` x above its best: collapsed.

    Catches the rise that is too gradual, too early or too noisy for a spike:
    the last ``spike_window`` steps are flat (relative std at most
    :data:`STUCK_RTOL`) or their gradients vanished (median norm at most
    :data:`VANISHED` x the 90th percentile of the norms before them), and
    their median loss is more than ``spike_ratio`` x the best rolling median
    before them (rolling over ``spike_window // 5`` steps), by more than
    ``spike_min_rise * L0``.
    """
    n, w = loss.shape[0], t.spike_window
    k = max(5, w // 5)
    if not log_space or n < w + k + t.warmup_steps:
        return None
    tail = loss[n - w :]
    if not np.all(np.isfinite(tail)):
        return None
    level = float(np.median(tail))
    flat = float(np.std(tail)) <= STUCK_RTOL * abs(level)
    dead_from = None
    if grad_norm is not None:
        g = np.asarray(grad_norm, dtype=np.float64)
        before = g[t.warmup_steps : n - w]
        before = before[np.isfinite(before)]
        g_tail = g[n - w :]
        if before.size and np.all(np.isfinite(g_tail)):
            limit = VANISHED * float(np.percentile(before, 90))
            if limit > 0 and float(np.median(g_tail)) <= limit:
                alive = np.flatnonzero(~(g[: n - w] <= limit))
                dead_from = int(alive[-1]) + 1 if alive.size else 0
    if not flat and dead_from is None:
        return None
    head = loss[t.warmup_steps : n - w]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rolling = np.nanmedian(sliding_window_view(head, k), axis=1)
    if not np.isfinite(rolling).any():
        return None
    best = float(np.nanmin(rolling))
    if not (best > 0 and level > t.spike_ratio * best and level - best > t.spike_min_rise * initial_level):
        return None
    jb = int(t.warmup_steps) + int(np.nanargmin(rolling))
    if dead_from is not None:
        step = dead_from
        rel = float(np.std(tail) / level)
        how = (
            f"and training stopped: from step {step} the gradient norm stayed at or below {VANISHED:g}x its "
            f"90th percentile before (median {float(np.median(g[n - w :])):.3g} over the last {w} steps): "
            "dead units or saturated outputs"
        )
    else:
        # where it entered the level: after the last step below the midpoint (in log space)
        mid = float(np.sqrt(best * level))
        below = np.flatnonzero(~(loss[: n - w] >= mid))
        step = int(below[-1]) + 1 if below.size else 0
        rel = float(np.std(tail) / level)
        how = (
            f"and stayed flat there (relative std {rel:.1e} over the last {w} steps): training collapsed to a constant"
        )
    return Finding(
        check=NAME,
        kind="spike_no_recovery",
        step=step,
        value=level,
        limit=t.spike_ratio * best,
        message=(
            f"the loss rose from its best level {best:.4g} to {level:.4g} ({_times(level / best)}x, limit "
            f"{t.spike_ratio:g}x = {t.spike_ratio * best:.4g}) by step {step} {how}"
        ),
        evidence=_level_evidence(
            step,
            step,
            level / best,
            best,
            False,
            initial_level,
            float(np.nanmin(loss[:step])) if step else None,
            stuck=True,
            flat=flat,
            vanished=dead_from is not None,
            collapse=True,
            # the steps whose medians the message compares: the best window, and the last spike_window steps
            best_steps=[jb, jb + k - 1],
            level_steps=[n - w, n - 1],
        ),
    )


def _level_evidence(
    start: int,
    end: int,
    ratio: float,
    trailing: float,
    recovered: bool | None,
    initial_level: float,
    min_before: float | None,
    **kind: Any,
) -> dict[str, Any]:
    """The evidence of a finding that compares loss *levels* (a collapse, a slow rise, an early blow-up, an end
    above the start), not one step against its trailing window: no z-score, no level shift; ``kind`` adds the
    rule's own keys (and overrides ``stuck``, ``flat`` and ``vanished`` for a collapse)."""
    base: dict[str, Any] = {
        "start": start,
        "end": end,
        "ratio": ratio,
        "zscore": None,
        "trailing_median": trailing,
        "recovered": recovered,
        "stuck": False,
        "flat": False,
        "vanished": False,
        "level_shift": False,
        "initial_loss": initial_level,
        "min_loss_before": min_before,
    }
    return {**base, **kind}


def rolling_rise(loss: np.ndarray, window: int, warmup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log of the rolling median loss over ``window`` steps and of its running best.

    Returns ``(roll, best, end)``: ``roll[i]`` is the median of ``log(loss[i:i+window])``
    (NaN-aware; windows starting before ``warmup`` are left out), ``best[i]`` the
    smallest ``roll`` up to ``i`` and ``end[i] = i + window - 1`` the window's last step.
    """
    loss = np.asarray(loss, dtype=np.float64)
    n = loss.shape[0]
    if n < warmup + window:
        empty = np.zeros(0)
        return empty, empty, empty.astype(np.int64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        vals = np.where(np.isfinite(loss) & (loss > 0), np.log(np.where(loss > 0, loss, 1.0)), np.nan)
        roll = np.nanmedian(sliding_window_view(vals[warmup:], window), axis=1)
    best = np.fmin.accumulate(roll)
    return roll, best, np.arange(roll.shape[0]) + warmup + window - 1


def _resurgence(
    loss: np.ndarray,
    t: Thresholds,
    log_space: bool,
    initial_level: float,
    rolling: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Finding | None:
    """A slow climb back: the rolling median rises ``RESURGE_RATIO`` x above its best (see the module docstring).

    ``rolling`` is :func:`rolling_rise` of ``loss``.  The step reported is the middle of the first window
    whose median passed the geometric midpoint between the best level and the level that failed.
    """
    w = int(t.spike_window)
    if not log_space or not np.isfinite(initial_level):
        return None
    roll, best, end = rolling
    if roll.size == 0:
        return None
    with np.errstate(all="ignore"):
        over = (roll - best > np.log(RESURGE_RATIO)) & (np.exp(roll) - np.exp(best) > RESURGE_MIN_RISE * initial_level)
    hits = np.flatnonzero(over)
    if hits.size == 0:
        return None
    i = int(hits[0])
    jb = int(np.nanargmin(roll[: i + 1]))
    low, level = float(np.exp(best[i])), float(np.exp(roll[i]))
    mid = 0.5 * (float(best[i]) + float(roll[i]))
    crossed = np.flatnonzero(roll[jb : i + 1] > mid)
    step = int(jb + (crossed[0] if crossed.size else i - jb) + t.warmup_steps + w // 2)
    later = roll[i:]
    recovered = bool(np.any(later - best[i] <= np.log(t.spike_ratio))) if later.size > w else None
    peak = i + int(np.nanargmax(later))
    peak_level = float(np.exp(roll[peak]))
    msg = (
        f"the loss climbed back slowly: its median over {w} steps rose from its best {low:.4g} (steps "
        f"{int(end[jb]) - w + 1}-{int(end[jb])}) to {level:.4g} by step {int(end[i])} "
        f"({_over(level / low, RESURGE_RATIO)}x, limit "
        f"{RESURGE_RATIO:g}x = {RESURGE_RATIO * low:.4g}), peaking at {peak_level:.4g}; the climb is too gradual "
        "and too noisy for a single-step spike"
    )
    if recovered:
        msg += "; it came back down afterwards"
    return Finding(
        check=NAME,
        kind="spike" if recovered is not False else "spike_no_recovery",
        step=step,
        value=level,
        limit=RESURGE_RATIO * low,
        message=msg,
        evidence=_level_evidence(
            step,
            int(end[i]),
            level / low,
            low,
            recovered,
            initial_level,
            float(np.nanmin(loss[:step])) if step else None,
            slow_rise=True,
            # back down after a peak under RESURGE_PEAK: within a healthy run's noise, so not an event by itself
            weak_climb=bool(recovered) and peak_level < RESURGE_PEAK * low,
            # the windows whose medians the message compares: the best one, and the first 10x above it
            low_steps=[int(end[jb]) - w + 1, int(end[jb])],
            level_steps=[int(end[i]) - w + 1, int(end[i])],
        ),
    )


def _confirm(sc: SpikeScores, start: int, peak: int, t: Thresholds) -> dict[str, Any]:
    """Whether the loss stayed up after the event starting at ``start`` (see the module docstring)."""
    values, med, scale = sc["values"], sc["median"], sc["scale"]
    m, sd = float(med[start]), float(scale[start])
    nxt = values[start + 1 : start + 1 + CONFIRM_STEPS]
    nxt = nxt[np.isfinite(nxt)]
    log_space = sc["log_space"]

    def elevated(x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        up = (x - m) / sd > CONFIRM_Z
        return up & (x - m > np.log(CONFIRM_RATIO)) if log_space else up

    out: dict[str, Any] = {"confirmed": False, "how": None, "after_ratio": None, "after_z": None}
    if nxt.size:
        mid = float(np.median(nxt))
        out["after_z"] = (mid - m) / sd
        out["after_ratio"] = float(np.exp(mid - m)) if log_space else None
    if nxt.size >= CONFIRM_STEPS:
        if bool(elevated(float(np.median(nxt)))):
            out.update(confirmed=True, how="elevated")
            return out
        # Chaotic after the spike (more spikes, no settling): the median over the next window stays up
        # by CONFIRM_WINDOW_RATIO, far beyond the pre-spike noise.  A lone hard batch leaves it where it was.
        win = values[start + 1 : start + 1 + max(CONFIRM_STEPS, int(t.spike_window))]
        win = win[np.isfinite(win)]
        if win.size >= 2 * CONFIRM_STEPS:
            wmid = float(np.median(win))
            up = (wmid - m) / sd > CONFIRM_Z
            if (up and wmid - m > np.log(CONFIRM_WINDOW_RATIO)) if log_space else up:
                out.update(confirmed=True, how="unsettled", window_ratio=float(np.exp(wmid - m)) if log_space else None)
        return out
    # too few steps after it to tell: every one of them elevated, or an extreme spike
    if nxt.size and bool(np.all(elevated(nxt))):
        out.update(confirmed=True, how="elevated")
        return out
    z, ratio = float(sc["z"][peak]), float(sc["ratio"][peak])
    extreme = z >= 2 * t.spike_zscore and (not log_space or ratio >= EXTREME_FACTOR * t.spike_ratio)
    if extreme:
        out.update(confirmed=True, how="extreme")
    return out


def initial_steps(trace: Trace, t: Thresholds) -> int:
    """How many steps from the start make the initial level ``L0``: the ``warmup_steps`` (at least 5), or,
    when one of their updates blew the loss up (at least ``EARLY_UPDATE`` x the weights' norm, the early
    blow-up above), the steps up to that update: the level of the blown-up steps after it is not
    where training started (a convnet at 0.8 whose loss jumped to 541 and sits at the class prior 0.7
    afterwards has not fallen by half)."""
    u = early_update(trace, t)
    return max(5, int(t.warmup_steps)) if u is None else u + 1


def early_update(trace: Trace, t: Thresholds) -> int | None:
    """The first of the ``warmup_steps`` whose update moved the weights at least ``EARLY_UPDATE`` x their norm
    (``trace.update_ratio``), or None."""
    if trace.update_ratio is None:
        return None
    head = np.asarray(trace.update_ratio[: max(int(t.warmup_steps), 1)], dtype=np.float64)
    large = np.flatnonzero(np.isfinite(head) & (head >= EARLY_UPDATE))
    return int(large[0]) if large.size else None


def _early_blow_up(trace: Trace, t: Thresholds, initial_level: float) -> Finding | None:
    """The loss blown up by an update among the warmup steps (see the module docstring), or None.  Levels are
    compared as ratios to a positive loss before the update, so a loss that reaches 0 exactly afterwards (a
    cross-entropy of logits blown up to +-1e3) is judged too.  A run that went NaN/Inf by the end of the window
    is the nonfinite check's (its diagnosis tells the divergence before it)."""
    loss = np.asarray(trace.loss, dtype=np.float64)
    warm = max(int(t.warmup_steps), 1)
    u = early_update(trace, t)  # the update made at step u; the loss from step u + 1 on shows it
    if u is None or trace.update_ratio is None:
        return None
    moved = float(trace.update_ratio[u])
    head = loss[: u + 1]
    head = head[np.isfinite(head)]
    w = int(t.spike_window)
    after = loss[u + 1 : u + 1 + w]
    flags = trace.nonfinite[: u + 1 + w] if trace.nonfinite is not None else np.zeros(0, dtype=np.int64)
    went_nonfinite = bool(np.any(np.asarray(flags, dtype=np.int64) & ~OVERFLOW)) or not np.isfinite(after).all()
    if head.size == 0 or went_nonfinite or after.size < max(5, w // 5):
        return None  # a NaN is the nonfinite check's; too few steps to tell a level
    before = float(np.median(head))
    level = float(np.median(after))
    if not (before > 0 and level > t.spike_ratio * before):
        return None
    jump = u + 1 + int(np.flatnonzero(after > t.spike_ratio * before)[0])
    later = loss[u + 1 + w : u + 1 + 2 * w]
    later = later[np.isfinite(later)]
    recovered = bool(np.median(later) <= t.spike_ratio * before) if later.size >= max(5, w // 5) else None
    msg = (
        f"an early blow-up: the update at step {u} moved the weights {moved:.3g}x their own norm (limit "
        f"{EARLY_UPDATE:g}x), the loss jumped from {before:.4g} to {loss[jump]:.4g} at step {jump}, and its median "
        f"over the next {after.size} steps, {level:.4g}, stayed {_times(level / before)}x above {before:.4g} (limit "
        f"{t.spike_ratio:g}x = {t.spike_ratio * before:.4g}); within the {warm} warmup steps that the other spike "
        "rules do not judge"
        + (
            ""
            if recovered is None
            else "; it came back down over the next steps"
            if recovered
            else "; it had not come back down 2 windows later"
        )
    )
    return Finding(
        check=NAME,
        kind="spike" if recovered is not False else "spike_no_recovery",
        step=jump,
        value=float(loss[jump]),
        limit=float(t.spike_ratio * before),
        message=msg,
        evidence=_level_evidence(
            jump,
            jump,
            float(loss[jump] / before),
            before,
            recovered,
            initial_level,
            float(np.min(head)),
            confirmed_by="early",
            after_ratio=level / before,
            after_z=None,
            early=True,
            update_step=u,
            update_ratio=moved,
            level_after=level,
        ),
    )


def _ended_above_start(trace: Trace, t: Thresholds) -> Finding | None:
    """The loss ended ``spike_ratio`` x above where it started and stayed there (see the module docstring), or
    None: its median over the last ``spike_window`` steps against its level at the start (the median of its
    first ``START_STEPS``, or fewer: up to an early blow-up's update, :func:`initial_steps`; a blow-up inside
    the warm-up must not raise the start it is compared with).  Training made the loss worse, whatever the
    path: a climb too gradual for the spike rules, inside their warm-up, or from a level they had already taken
    as the norm."""
    loss = np.asarray(trace.loss, dtype=np.float64)
    n, w = loss.shape[0], int(t.spike_window)
    k = min(START_STEPS, initial_steps(trace, t))
    head, tail = loss[:k], loss[max(k, n - w) :]
    head = head[np.isfinite(head)]
    if head.size == 0 or tail.size < max(5, w // 5) or not np.isfinite(tail).all():
        return None  # too short to tell; a NaN is the nonfinite check's
    start, level = float(np.median(head)), float(np.median(tail))
    # after an update as large as the weights (the early blow-up's evidence; no healthy run of the detection
    # benchmark came within 5x of it), a loss that never came back below where it started is enough
    blown = early_update(trace, t)
    factor = 1.0 if blown is not None else float(t.spike_ratio)
    limit = factor * start
    if not (start > 0 and level > limit):
        return None
    # where it went above for good: after the last rolling median (over spike_window // 5 steps) at or below it
    r = max(5, w // 5)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        roll = np.nanmedian(sliding_window_view(loss, r), axis=1) if n >= r else np.full(1, np.nan)
    below = np.flatnonzero(~(roll > limit))
    s0 = int(below[-1]) + 1 if below.size else 0
    over = np.flatnonzero(loss[s0:] > limit)
    above = min(s0 + (int(over[0]) if over.size else 0), n - 1)
    # after an early update as large as the weights, the event is that update (its step is the first it shows in)
    step = above if blown is None else min(blown + 1, n - 1)
    return Finding(
        check=NAME,
        kind="spike_no_recovery",
        step=step,
        value=level,
        limit=float(limit),
        message=(
            f"the loss ended {_times(level / start)}x above where it started: its median over the last {tail.size} "
            f"steps, {level:.4g}, against {start:.4g} over the first {head.size} (limit {factor:g}x = {limit:.4g}"
            + ("" if blown is None else f", as the update at step {blown} moved the weights their own norm or more")
            + f"); above the limit for good since step {above}: training made the loss worse, over a climb the "
            "spike rules did not single out"
        ),
        evidence=_level_evidence(
            step,
            step,
            level / start,
            start,
            False,
            start,
            float(np.nanmin(loss[: max(step, 1)])),
            confirmed_by="ended_above_start",
            after_ratio=level / start,
            after_z=None,
            ended_above_start=True,
            # the steps whose medians are compared, and the step from which it stayed above the limit
            start_steps=[0, k - 1],
            end_steps=[n - tail.size, n - 1],
            above_since=above,
        ),
    )


def _onset(loss: np.ndarray, flag: np.ndarray, base: float, start: int, peak: int, log_space: bool) -> int:
    """The step an event happened: its first flagged step whose loss is at least halfway from the level before
    it (``base``, the trailing median at its start) to its peak, geometrically in log space.  A jump that stays
    up is reported where it jumped, not at the highest of the noisy steps on its plateau (up to a window later);
    a spike that builds over a few steps, at its top."""
    top = float(loss[peak])
    mid = math.sqrt(base * top) if log_space and base > 0 and top > 0 else base + (top - base) / 2
    for s in range(start, peak):
        if flag[s] and np.isfinite(loss[s]) and loss[s] >= mid:
            return s
    return peak


def _events(flag: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Group flagged steps into (start, end) events separated by more than ``gap``."""
    steps = np.flatnonzero(flag)
    if steps.size == 0:
        return []
    events = []
    start = prev = int(steps[0])
    for s in steps[1:]:
        s = int(s)
        if s - prev > gap:
            events.append((start, prev))
            start = s
        prev = s
    events.append((start, prev))
    return events


def check_loss_spike(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail when the raw minibatch loss spikes (see the module docstring for the rule).

    Returns:
        A result whose findings hold one entry per spike event, in step order;
        ``stats["max_ratio"]`` is the largest loss / trailing-median ratio seen
        (the "largest spike factor" of the report), spike or not.
    """
    t = thresholds or Thresholds()
    loss = trace.loss
    n = loss.shape[0]
    min_steps = max(5, t.spike_window // 2) + t.warmup_steps + 1
    if n < min_steps:
        return CheckResult(
            NAME,
            SKIPPED,
            detail=f"needs at least {min_steps} steps (warmup_steps + half a spike_window), ran {n}",
        )
    sc = spike_scores(loss, t)
    ratio, z, baseline, flag = sc["ratio"], sc["z"], sc["baseline"], sc["flag"]
    judged = np.isfinite(z) & (np.arange(n) >= t.warmup_steps) & np.isfinite(loss)
    max_ratio = float(np.nanmax(np.where(judged, ratio, np.nan))) if judged.any() and sc["log_space"] else None
    max_z = float(np.nanmax(np.where(judged, z, np.nan))) if judged.any() else None
    findings = []
    outliers = []
    for start, end in _events(flag, t.spike_window):
        seg = slice(start, end + 1)
        peak = start + int(np.nanargmax(np.where(flag[seg], loss[seg], -np.inf)))
        confirm = _confirm(sc, start, peak, t)
        if not (confirm["confirmed"] or bool(sc["shift"][seg].any())):
            outliers.append(int(peak))
            continue
        base = float(baseline[start])
        after = loss[end + 1 : end + 1 + t.spike_window]
        after = after[np.isfinite(after)]
        if after.size < max(5, t.spike_window // 5):
            recovered = None
        else:
            after_med = float(np.median(after))
            recovered = (
                after_med <= base * t.spike_ratio if sc["log_space"] else after_med <= base + (loss[peak] - base) / 2
            )
        step = _onset(loss, flag, base, start, peak, sc["log_space"])
        state = stuck_after(loss, trace.grad_norm, int(peak), t.spike_window)
        stuck = bool(recovered is False and state["stuck"])
        shifted = bool(sc["shift"][seg].any())
        kind = "spike" if recovered is not False else "spike_no_recovery"
        if sc["log_space"]:
            what = (
                f"loss {loss[step]:.4g} at step {step} is {_times(ratio[step])}x its trailing median "
                f"{baseline[step]:.4g} (limit {t.spike_ratio:g}x = {baseline[step] * t.spike_ratio:.4g}; "
                f"robust z {z[step]:.1f}, limit {t.spike_zscore:g})"
            )
        else:
            what = (
                f"loss {loss[step]:.4g} at step {step} is {z[step]:.1f} robust deviations above its trailing "
                f"median {baseline[step]:.4g} (limit {t.spike_zscore:g})"
            )
        if peak != step and (loss[peak] >= PEAK_SHOWN * loss[step] if sc["log_space"] else loss[peak] > loss[step]):
            what += f", and peaked at {loss[peak]:.4g} (step {peak})"
        if shifted:
            what += f"; a level shift: the next {max(5, t.spike_window // 5)} steps all stayed above the recent range"
        if recovered is None:
            what += "; too few steps after it to tell whether it recovers"
        elif not recovered:
            what += "; the loss did not recover" + (
                ""
                if not stuck
                else " and is stuck at a constant"
                if state["flat"]
                else " and the gradients vanished (training stopped)"
            )
        findings.append(
            Finding(
                check=NAME,
                kind=kind,
                step=int(step),
                value=float(loss[step]),
                limit=float(baseline[step] * t.spike_ratio) if sc["log_space"] else float(base),
                message=what,
                evidence={
                    "start": int(start),
                    "end": int(end),
                    "peak": int(peak),
                    "ratio": float(ratio[step]) if sc["log_space"] else None,
                    "zscore": float(z[step]),
                    "trailing_median": base,
                    "recovered": recovered,
                    "stuck": stuck,
                    "flat": bool(stuck and state["flat"]),
                    "vanished": bool(stuck and state["vanished"]),
                    "level_shift": shifted,
                    "initial_loss": sc["initial_level"],
                    "min_loss_before": float(np.nanmin(loss[:start])) if start else None,
                    "confirmed_by": confirm["how"],
                    "after_ratio": confirm["after_ratio"],
                    "after_z": confirm["after_z"],
                },
            )
        )
    early = _early_blow_up(trace, t, sc["initial_level"])
    if early is not None:  # the same event as the findings in the window after it (judged against its chaos)
        findings = [f for f in findings if f.evidence["start"] > early.step + t.spike_window]
        findings.insert(0, early)
    collapse = _collapse(loss, trace.grad_norm, t, sc["log_space"], sc["initial_level"])
    if collapse is not None and not any(
        f.evidence["start"] <= collapse.step <= f.evidence["end"] + t.spike_window for f in findings
    ):
        findings.append(collapse)
        findings.sort(key=lambda f: f.step)
    rolling = rolling_rise(loss, int(t.spike_window), int(t.warmup_steps))
    slow = _resurgence(loss, t, sc["log_space"], sc["initial_level"], rolling)
    # the same event as a finding near it, or the climb into a collapse (which names it already); a weak climb
    # counts only beside another loss event
    if (
        slow is not None
        and not (slow.evidence["weak_climb"] and not findings)
        and not any(
            f.evidence.get("collapse")
            or f.evidence["start"] - t.spike_window <= slow.step <= f.evidence["end"] + t.spike_window
            for f in findings
        )
    ):
        findings.append(slow)
        findings.sort(key=lambda f: f.step)
    # the other rules name any spike, climb or collapse that ended the run above its start; a loss curve of a
    # train_step's own other than "loss" may rise by design (a GAN's generator loss, a VAE's KL term)
    if not findings and (trace.info or {}).get("loss_curve", "loss") == "loss":
        ended = _ended_above_start(trace, t)
        if ended is not None:
            findings.append(ended)
    if len(findings) >= 3:
        starts = np.array([f.evidence["start"] for f in findings])
        gaps = np.diff(starts)
        cv = float(np.std(gaps) / np.mean(gaps)) if gaps.size and np.mean(gaps) > 0 else None
        for i, f in enumerate(findings):
            ev = dict(f.evidence)
            ev.update(n_events=len(findings), mean_interval=float(np.mean(gaps)), interval_cv=cv)
            findings[i] = Finding(**{**f.__dict__, "evidence": ev})
    roll, best, _ = rolling
    with np.errstate(all="ignore"):
        rise = np.where(np.exp(roll) - np.exp(best) > RESURGE_MIN_RISE * sc["initial_level"], roll - best, 0.0)
    stats = {
        "max_ratio": max_ratio,
        "max_zscore": max_z,
        "n_spikes": len(findings),
        "outliers": outliers,
        "max_slow_rise": float(np.exp(np.nanmax(rise))) if rise.size and np.isfinite(rise).any() else None,
    }
    return CheckResult(NAME, FAILED if findings else PASSED, tuple(findings), stats=stats)
