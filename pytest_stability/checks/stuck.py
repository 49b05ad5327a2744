"""``stuck``: training that never got going, or stopped, from the first step on; and parts of the model that never
learn.

Judged on the last ``spike_window`` finite steps (the *tail*; at least 10, at
most half the run) against the initial level ``L0`` (the median loss of the
first ``warmup_steps``, at least 5 steps; of the steps up to an early blow-up's
update when one of them made one, :func:`initial_steps`).  The run is stuck when the loss
has **not fallen** by more than ``STUCK_MIN_FALL`` (50 %) of ``L0``
(``median(tail) > (1 - STUCK_MIN_FALL) x L0``; but see the network that
died after learning, below) **and** one of:

* ``collapsed``: the tail is flat (relative std <= ``STUCK_RTOL``, 1 %) and
  not falling (its linear trend loses < 1 % across it): a constant output;
* ``stuck``: the gradients vanished: the tail's median norm is at most
  ``VANISHED`` (1e-3) x the 90th percentile of the norms before it, or exactly
  0 (a net dead from step 0 has no earlier norm to compare with);
* ``stuck``: the updates are too small to move anything: the tail's median
  global ``|dw|/|w|`` (``trace.update_ratio``) is at most ``UPDATE_TOO_SLOW``
  (1e-6).

* ``stuck``: the model's output cannot reach the targets: a regression loss on an output activation that
  bounds it (a sigmoid, a tanh), with at least half of the (array) targets outside its range, as the engine
  records it (``trace.info["output_wiring"]``, key ``targets_out_of_range``).

* ``stuck``: the network is dead but for its biases: every variable that is not a bias (``.../bias``,
  ``.../beta``) has had a gradient of exactly 0 on most of the tail's steps, after receiving gradients
  before (``trace.var_grad_norms``), and at least one of them did (``dead_network``).  Dead ReLUs pass no
  gradient, so only the output's bias still learns: the model outputs the targets' mean (a classifier the
  class prior), its loss varies with each batch's labels, and the global gradient norm, the output bias's,
  neither vanishes nor is 0 (Adam at a learning rate of 1 on a small convnet, a warm-up to 3).

A loss that fell more than half is still stuck when the network *died* after it
had learned (a collapse after a jump: dead ReLUs, a saturated output): the
tail's level is at least ``DEAD_MIN_LEVEL`` (5 %) of ``L0`` (not converged to
zero; any level when the network is dead but for its biases, which cannot be a
converged fit: its output no longer depends on the input) and either the
gradients are exactly 0 on most of the tail's steps (its
median norm is 0, or the network is dead but for its biases), or they vanished
(as above) while the level is at least ``DEAD_RISE`` (1.5x) the lowest 10-step
median of the loss before the tail (it went back up), or weights that are not biases died (a gradient of
exactly 0 on most of the tail, after gradients before) while the level sits within ``PRIOR_RTOL`` of ``ln K``,
the loss of predicting the prior of K balanced classes (``died_at_prior``, at any level too: a second layer's
bias can keep a few units on, so the network is not dead but for its biases, and the kernel after them gets a
gradient for features that no longer depend on the input).  A run converging to zero, or at its best level with small
gradients, is not stuck.

The finding's step is where the stuck stretch began (0 for a run dead from
the start).  Needs ``warmup_steps + 20`` steps.

Coverage, per trainable variable (only when the trace has the arrays; traces
from a user's own loop without them are not judged): a variable whose gradient
norm is exactly 0 at every finite step never receives a gradient
(``kind="no_gradient"``: disconnected from the loss, or fed only by dead
units), except a bias whose layer's other variables receive gradients (the loss
does not depend on it: a Wasserstein critic's output bias); one whose
``var_update_ratio`` adds up to less than ``NO_UPDATE_TOTAL`` (1e-6) over the run never changes
(``kind="no_update"``: a learning rate of 0, an optimizer that skips it, updates that round away on the
weights because their gradients vanished through the layers).
One finding per kind, naming the variables.  Needs 10 steps.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds
from .spikes import STUCK_RTOL, VANISHED, early_update, initial_steps

NAME = "stuck"
#: the loss must have fallen by more than this fraction of its initial level to be "going somewhere".
STUCK_MIN_FALL = 0.5
#: median global |dw|/|w| per step at or below which training does not move.
UPDATE_TOO_SLOW = 1e-6
#: steps needed for the per-variable coverage rule.
COVERAGE_MIN_STEPS = 10
#: a variable whose relative updates |dw|/|w| add up to less than this over the whole run never changed: exactly
#: 0 where an update rounds away on the weights, or rounding noise of about 1e-11 a step where the backend computes
#: the difference in another order (a 12-layer sigmoid stack's first kernels on JAX and PyTorch); a variable that
#: learns moves 1e-5 to 1e-2 of its norm a step
NO_UPDATE_TOTAL = 1e-6
#: a loss that fell more than STUCK_MIN_FALL but sits at least this fraction of its initial level, with gradients
#: that died, is a network that died after learning (a loss near zero with tiny gradients has converged).
DEAD_MIN_LEVEL = 0.05
#: ...and, when the gradients vanished rather than being exactly 0, at least this many times the lowest
#: ``DEAD_BEST_STEPS``-step median of the loss before the tail: it went back up.
DEAD_RISE = 1.5
DEAD_BEST_STEPS = 10
#: the fraction of the targets outside a bounded output's range from which a run that did not fall by half is
#: stuck for it (the note says so from 10 %; a tanh on standardised targets leaves 32 % of them outside, by a
#: little: such a model still fits most of their variance, and a noisy regression may not halve its loss)
OUT_OF_REACH = 0.5
#: the last part of a variable's path that names a bias (Keras' Dense/Conv ``bias``, BatchNormalization's ``beta``)
BIAS_NAMES = ("bias", "beta")
#: steps of the rolling window in which the dead variables' gradients must be mostly 0 for their death to start
DEAD_WINDOW = 10
#: a loss within this fraction of ln K (K = 2..PRIOR_MAX_CLASSES) is the cross-entropy of predicting the prior of K
#: balanced classes: a classifier that learned nothing from its inputs (the diagnosis' labels rule reads these too)
PRIOR_RTOL = 0.01
PRIOR_MAX_CLASSES = 1000


def _is_bias(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in BIAS_NAMES


def _dead_network(trace: Trace, n: int, w: int) -> dict[str, Any] | None:
    """The variables that died (a gradient of exactly 0 on most of the last ``w`` steps, after gradients before)
    when every variable still learning is a bias, and at least one that died is not: the network is dead but
    for its biases (see the module docstring); None otherwise, or without per-variable norms."""
    vg, names = trace.var_grad_norms, list(trace.var_names)
    if vg is None or vg.ndim != 2 or vg.shape[1] == 0 or len(names) != vg.shape[1] or n - w < DEAD_WINDOW:
        return None
    tail, before = np.asarray(vg[n - w : n], dtype=np.float64), np.asarray(vg[: n - w], dtype=np.float64)
    if not np.isfinite(tail).all():
        return None
    zero = np.median(tail, axis=0) == 0
    died = zero & np.any(before > 0, axis=0)
    live = np.flatnonzero(~zero)
    if not any(not _is_bias(names[i]) for i in np.flatnonzero(died)) or any(not _is_bias(names[i]) for i in live):
        return None
    return {
        "died": [names[i] for i in np.flatnonzero(died)],
        "live": [names[i] for i in live],
        "start": _death_start(trace, n, list(np.flatnonzero(died))),
    }


def _death_start(trace: Trace, n: int, died: list[int]) -> int:
    """Where the variables ``died`` (columns of ``trace.var_grad_norms``) died: after the last 10-step window in
    which they mostly had gradients (it may lie in the tail's first steps: most of the tail is dead, not all of
    it)."""
    assert trace.var_grad_norms is not None  # the callers found the variables there
    alive = np.any(np.asarray(trace.var_grad_norms[:n, died], dtype=np.float64) > 0, axis=1).astype(np.float64)
    share = np.convolve(alive, np.ones(DEAD_WINDOW) / DEAD_WINDOW, mode="valid")
    mostly = np.flatnonzero(share > 0.5)
    return int(mostly[-1]) + DEAD_WINDOW if mostly.size else 0


def _died(trace: Trace, n: int, w: int) -> list[int]:
    """The variables (their columns) that are not biases and have had a gradient of exactly 0 on most of the last
    ``w`` steps, after gradients before (without per-variable norms, none)."""
    vg, names = trace.var_grad_norms, list(trace.var_names)
    if vg is None or vg.ndim != 2 or vg.shape[1] == 0 or len(names) != vg.shape[1] or n - w < DEAD_WINDOW:
        return []
    tail, before = np.asarray(vg[n - w : n], dtype=np.float64), np.asarray(vg[: n - w], dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite value: no median, not dead
        died = (np.nanmedian(np.where(np.isfinite(tail), tail, np.nan), axis=0) == 0) & np.any(before > 0, axis=0)
    return [int(i) for i in np.flatnonzero(died) if not _is_bias(names[i])]


def _prior_classes(level: float) -> int | None:
    """K when ``level`` is within ``PRIOR_RTOL`` of ln K, the loss of predicting the prior of K balanced classes."""
    if not (math.isfinite(level) and level > 0):
        return None
    k = round(math.exp(min(level, 50.0)))
    return k if 2 <= k <= PRIOR_MAX_CLASSES and abs(level / math.log(k) - 1) <= PRIOR_RTOL else None


def _stuck_run(trace: Trace, t: Thresholds) -> Finding | None:
    loss = trace.loss
    n = loss.shape[0]
    if n < t.warmup_steps + 20:
        return None
    w = max(10, min(int(t.spike_window), n // 2))
    tail_idx = np.arange(n - w, n)
    tail = loss[tail_idx]
    if not np.all(np.isfinite(tail)):
        return None  # the nonfinite check owns that
    head = loss[: initial_steps(trace, t)]
    head = head[np.isfinite(head)]
    if not head.size:
        return None
    l0 = float(np.median(head))
    level = float(np.median(tail))
    if np.all(loss == 0) and (trace.grad_norm is None or np.all(trace.grad_norm == 0)):
        # nothing to learn from: every sample weight 0, the targets masked out, a loss that ignores the outputs
        return Finding(
            check=NAME,
            kind="stuck",
            step=0,
            value=0.0,
            limit=0.0,
            message=(
                f"the loss is exactly 0 at every one of the {n} steps"
                + ("" if trace.grad_norm is None else ", and so is the gradient norm")
                + ": nothing trained; the loss does not depend on the model's outputs"
            ),
            evidence={"zero_loss": True, "start": 0, "level": 0.0, "initial_loss": 0.0, "tail_steps": w},
        )
    # a loss that fell more than half is stuck only when the network died after learning (see the module doc)
    fell_far = not level > l0 - STUCK_MIN_FALL * abs(l0)
    # below DEAD_MIN_LEVEL of L0 a run may have converged (its gradients exactly 0 at a perfect, saturated fit), but
    # not one dead but for its biases: its output no longer depends on the input (an L0 that a blow-up inflated,
    # 35 then 1,133 on pixels of 0-255, puts the class prior's 0.69 below any share of it)
    below_level = fell_far and not level >= DEAD_MIN_LEVEL * abs(l0)
    # parts of the network died and the loss sits at the class prior: it learns nothing from the inputs, wherever it
    # began (a second layer's bias can keep a few units on, so the network is not dead but for its biases, and the
    # kernel after them still gets a gradient: for features that no longer depend on the input)
    died = _died(trace, n, w) if fell_far else []
    classes = _prior_classes(level) if died else None
    died_at_prior = classes is not None
    dead_but_biases = _dead_network(trace, n, w)
    if below_level and not ((dead_but_biases or {}).get("live") or died_at_prior):
        return None  # (every gradient 0, a bias's too: a saturated fit, which may have converged)
    scale = max(abs(level), 1e-12)
    rel_std = float(np.std(tail) / scale)
    slope = float(np.polyfit(np.arange(w), tail, 1)[0])
    flat = rel_std <= STUCK_RTOL and -slope * w <= STUCK_RTOL * scale
    ev: dict[str, Any] = {
        "initial_loss": l0,
        "initial_steps": initial_steps(trace, t),
        "early_update_step": early_update(trace, t),
        "level": level,
        "rel_std": rel_std,
        "tail_steps": w,
        "flat": flat,
        "vanished": False,
        "zero_grad": False,
        "slow_updates": False,
    }
    start = None
    how = []
    g = trace.grad_norm
    if g is not None:
        g_tail = g[tail_idx]
        g_before = g[: n - w]
        g_before = g_before[np.isfinite(g_before)]
        if np.all(np.isfinite(g_tail)):
            med = float(np.median(g_tail))
            ev["grad_norm_tail"] = med
            if np.all(g_tail == 0):
                ev["zero_grad"] = True
                alive = np.flatnonzero(~(g[: n - w] == 0))
                start = int(alive[-1]) + 1 if alive.size else 0
                how.append(f"the gradient norm is exactly 0 from step {start} on")
            elif g_before.size:
                p90 = float(np.percentile(g_before, 90))
                ev["grad_norm_p90_before"] = p90
                if p90 > 0 and med <= VANISHED * p90:
                    ev["vanished"] = True
                    alive = np.flatnonzero(~(g[: n - w] <= VANISHED * p90))
                    start = int(alive[-1]) + 1 if alive.size else 0
                    how.append(
                        f"the gradients vanished: median norm {med:.3g} over the last {w} steps, "
                        f"<= {VANISHED:g}x their earlier 90th percentile {p90:.3g}"
                    )
    # a global norm that is 0 on most steps is the rules' above (vanished, or a network that died after learning)
    dead = None if ev["zero_grad"] or ev.get("grad_norm_tail") == 0.0 else dead_but_biases
    if dead is not None:
        ev.update(dead_network=True, dead_variables=dead["died"], live_variables=dead["live"])
        start = dead["start"] if start is None else min(start, dead["start"])
        shown = ", ".join(dead["died"][:4]) + (f" and {len(dead['died']) - 4} more" if len(dead["died"]) > 4 else "")
        how.append(
            f"the network is dead but for its biases: {len(dead['died'])} of {len(trace.var_names)} variables "
            f"({shown}) have had a gradient of exactly 0 on most of the last {w} steps, after gradients before, "
            + (
                f"and only {', '.join(dead['live'])} still learn{'s' if len(dead['live']) == 1 else ''}"
                if dead["live"]
                else "and none learns any more"
            )
            + ": the output no longer depends on the input"
        )
    if fell_far:
        best = _best_before(loss, n - w)
        ev["best_before"] = best
        went_back_up = math.isfinite(best) and best > 0 and level >= DEAD_RISE * best
        # exactly 0 on most steps (the median) is a dead network wherever its loss sits; merely small
        # gradients are, when the loss went back up from its best
        mostly_zero = ev["zero_grad"] or ev.get("grad_norm_tail") == 0.0 or dead is not None
        if not (mostly_zero or (ev["vanished"] and went_back_up) or died_at_prior):
            return None
        if died_at_prior and not mostly_zero:
            assert classes is not None  # died_at_prior says so
            names = [trace.var_names[i] for i in died]
            ev.update(died_at_prior=True, dead_variables=names, prior_classes=classes)
            s = _death_start(trace, n, died)
            start = s if start is None else min(start, s)
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            how.append(
                f"{len(died)} of {len(trace.var_names)} variables ({shown}) have had a gradient of exactly 0 on most "
                f"of the last {w} steps, after gradients before, and the loss sits at the cross-entropy of predicting "
                f"the class prior of {classes} classes (ln {classes} = {math.log(classes):.4g}): the network died "
                "and learns nothing from the inputs"
            )
        # the gradients died after the run had learned: the only reasons that count here
        how.append(
            f"the loss had come down to {best:.4g} (lowest {DEAD_BEST_STEPS}-step median before the last {w} steps)"
            + (f" and went back up to {level:.4g}" if went_back_up else "")
        )
        flat = False
        ev["flat"] = False
        ev["died"] = True
    u = trace.update_ratio
    if u is not None and not fell_far:
        u_tail = u[tail_idx]
        u_tail = u_tail[np.isfinite(u_tail)]
        if u_tail.size:
            um = float(np.median(u_tail))
            ev["update_ratio_tail"] = um
            if um <= UPDATE_TOO_SLOW:
                ev["slow_updates"] = True
                # where the updates were last larger; a step without one (NaN: between the updates of gradient
                # accumulation) says nothing either way
                head = u[: n - w]
                fast = np.flatnonzero(np.isfinite(head) & (head > UPDATE_TOO_SLOW))
                s = int(fast[-1]) + 1 if fast.size else 0
                start = s if start is None else min(start, s)
                how.append(
                    f"the updates are too small to move the weights: median |dw|/|w| {um:.2g} per step "
                    f"(<= {UPDATE_TOO_SLOW:g})"
                )
    reach = (trace.info or {}).get("output_wiring")
    if (
        not fell_far
        and isinstance(reach, dict)
        and reach.get("key") == "targets_out_of_range"
        and float(reach.get("outside", 0.0)) >= OUT_OF_REACH
    ):
        # the model's bounded output cannot reach the targets: it never got going, whatever its gradients do
        ev["targets_out_of_range"] = True
        start = 0
        how.append(
            f"{reach['outside']:.0%} of the targets lie outside ({reach['low']:g}, {reach['high']:g}), the range of "
            f"the model's {reach['activation']} output"
        )
    if flat:
        far = np.flatnonzero(~(np.abs(loss[: n - w] - level) <= max(3 * STUCK_RTOL * scale, 3 * float(np.std(tail)))))
        s = int(far[-1]) + 1 if far.size else 0
        start = s if start is None else min(start, s)
        how.insert(0, f"the loss is flat at {level:.4g} (relative std {rel_std:.1e} over the last {w} steps)")
    if not how:
        return None
    assert start is not None  # each reason in ``how`` set it
    kind = "collapsed" if flat else "stuck"
    fell = (l0 - level) / abs(l0) if l0 else 0.0
    what = "training collapsed to a constant loss" if flat else "training is stuck"
    if flat and start == 0:  # flat from the first step: it never collapsed, it never moved
        what = "the loss has stayed at a constant level"
    if below_level:
        # a network that died, far below an initial level that the first steps inflated
        limit = float(DEAD_MIN_LEVEL * abs(l0))
        tail_note = (
            f"; the loss {level:.4g} is {fell:.1%} below its initial level {l0:.4g}, which the first steps inflated, "
            "but a network that died has not converged: it learns nothing from the inputs any more"
        )
    elif fell_far:
        # the loss is below half its start: the network died after learning, still far from converged
        limit = float(DEAD_MIN_LEVEL * abs(l0))
        tail_note = (
            f"; the loss {level:.4g} is {fell:.0%} below its initial level {l0:.4g} but not near zero "
            f"(at least {DEAD_MIN_LEVEL:.0%} of it), and nothing learns any more"
        )
    else:
        limit = float(l0 - STUCK_MIN_FALL * abs(l0))
        tail_note = (
            f"; the loss {level:.4g} is {'above' if fell < 0 else f'only {fell:.0%} below'} its initial level "
            f"{l0:.4g} (stuck unless it fell more than {STUCK_MIN_FALL:.0%})"
        )
    msg = f"{what} from step {start}: " + "; ".join(how) + tail_note
    ev["fell"] = fell
    ev["start"] = start
    return Finding(
        check=NAME,
        kind=kind,
        step=int(start),
        value=level,
        limit=limit,
        message=msg,
        evidence=ev,
    )


def _best_before(loss: np.ndarray, end: int) -> float:
    """The lowest ``DEAD_BEST_STEPS``-step median of the finite loss before ``end`` (nan without enough steps)."""
    x = np.asarray(loss[:end], dtype=np.float64)
    if x.size < DEAD_BEST_STEPS:
        return math.nan
    from numpy.lib.stride_tricks import sliding_window_view

    with np.errstate(all="ignore"):
        med = np.median(sliding_window_view(x, DEAD_BEST_STEPS), axis=1)
    med = med[np.isfinite(med)]
    return float(np.min(med)) if med.size else math.nan


def _invariant_biases(grad_norms: np.ndarray, names: list[str], zero: np.ndarray) -> np.ndarray:
    """Which of the variables ``zero`` marks (a gradient of exactly 0 at every step) are biases whose layer's
    other variables did receive gradients: the loss does not depend on them, so they have nothing to learn.

    A bias's gradient is the sum of the gradients of its layer's outputs, which no input to the layer can make 0;
    when that sum is exactly 0 at every step while the layer's kernel gets gradients, shifting the layer's outputs
    changes nothing: a Wasserstein critic's output bias (``mean(D(fake)) - mean(D(real))``), a bias that a
    normalisation subtracts again.  A layer cut off from the loss, or fed only by dead units, has a kernel without
    gradient too.
    """
    out = np.zeros(zero.shape, dtype=bool)
    live = np.any(np.isfinite(grad_norms) & (grad_norms != 0), axis=0)
    for i in np.flatnonzero(zero):
        if i >= len(names) or not _is_bias(names[i]) or "/" not in names[i]:
            continue
        layer = names[i].rsplit("/", 1)[0] + "/"
        out[i] = any(live[j] for j, other in enumerate(names[: live.shape[0]]) if j != i and other.startswith(layer))
    return out


def _coverage(trace: Trace) -> list[Finding]:
    out = []
    names = list(trace.var_names)
    for kind, arr, what in (
        ("no_gradient", trace.var_grad_norms, "never received a gradient (norm exactly 0 at every step)"),
        (
            "no_update",
            trace.var_update_ratio,
            f"never changed (|dw|/|w| added up to less than {NO_UPDATE_TOTAL:g} of their norm)",
        ),
    ):
        if arr is None or arr.shape[0] < COVERAGE_MIN_STEPS or arr.shape[1] == 0:
            continue
        finite = np.isfinite(arr)
        if kind == "no_gradient":
            zero = np.all(np.where(finite, arr == 0, True), axis=0) & np.any(finite, axis=0)
        else:
            zero = (np.sum(np.where(finite, np.abs(arr), 0.0), axis=0) < NO_UPDATE_TOTAL) & np.any(finite, axis=0)
        if kind == "no_update" and trace.var_grad_norms is not None and trace.var_grad_norms.shape == arr.shape:
            # a variable without gradient is already reported as such
            g = trace.var_grad_norms
            zero &= ~np.all(np.where(np.isfinite(g), g == 0, True), axis=0)
        if kind == "no_gradient":
            zero &= ~_invariant_biases(arr, names, zero)
        idx = np.flatnonzero(zero)
        if not idx.size:
            continue
        vars_ = [names[i] if i < len(names) else f"var{i}" for i in idx]
        shown = ", ".join(vars_[:5]) + (f" and {len(vars_) - 5} more" if len(vars_) > 5 else "")
        out.append(
            Finding(
                check=NAME,
                kind=kind,
                step=0,
                value=float(len(vars_)),
                limit=0.0,
                message=f"{len(vars_)} of {arr.shape[1]} trainable variables {what} over {arr.shape[0]} steps: {shown}",
                evidence={"variables": vars_, "n_variables": int(arr.shape[1]), "steps": int(arr.shape[0])},
            )
        )
    return out


def check_stuck(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail when training is stuck or collapsed (even from step 0), or a variable never learns.

    Returns:
        Findings in step order: ``collapsed`` / ``stuck`` (the run) and
        ``no_gradient`` / ``no_update`` (variables); ``skipped`` when the
        trace is too short for both rules.
    """
    t = thresholds or Thresholds()
    n = trace.steps
    has_vars = trace.var_grad_norms is not None or trace.var_update_ratio is not None
    if n < t.warmup_steps + 20 and not (has_vars and n >= COVERAGE_MIN_STEPS):
        return CheckResult(NAME, SKIPPED, detail=f"needs at least {t.warmup_steps + 20} steps, ran {n}")
    findings = []
    run = _stuck_run(trace, t)
    if run is not None:
        findings.append(run)
    # a loss that is 0 at every step gives every variable a zero gradient: that finding says all there is
    if run is None or not run.evidence.get("zero_loss"):
        findings += _coverage(trace)
    findings.sort(key=lambda f: f.step)
    stats: dict[str, Any] = {"n_findings": len(findings)}
    if trace.update_ratio is not None and np.isfinite(trace.update_ratio).any():
        stats["update_ratio_median"] = float(np.nanmedian(trace.update_ratio))
    return CheckResult(NAME, FAILED if findings else PASSED, tuple(findings), stats=stats)
