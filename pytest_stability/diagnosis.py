"""Name the likely cause of each finding, the evidence for it, and the fix to try.

Pure: reads findings and a :class:`~pytest_stability.trace.Trace` (including
``trace.info``, the optimizer and model facts the engine records, and
``trace.opt_stats``, Adam's slot statistics when ``diagnostics=True``); knows
nothing of pytest or TensorFlow.

Every diagnosed finding gets

* ``cause``: one sentence naming the cause, with the numbers that point to it;
* ``fix``: a concrete change to try (``Adam(epsilon=1e-3)``, ``clipnorm=2.3``);
* ``confidence``: ``"likely"`` when the evidence is specific to the cause,
  ``"uncertain"`` when it is only consistent with it;
* ``evidence["cause_key"]``: a machine-readable key from :data:`CAUSES`, and
  ``evidence["diagnosis"]``: the numbers the rule used;
* ``evidence["fix_configs"]``: the fixes as optimizer settings, in the order
  the message gives them (``[{"clipnorm": 2.3}, {"learning_rate_factor": 0.1}]``,
  ``[{"epsilon": 1e-3}, {"amsgrad": True}, ...]``), empty when the fix is
  not an optimizer change (data, loss, BatchNorm); the what-if replay
  (:mod:`pytest_stability.training.whatif`) applies them.

The rules, in the order they are tried:

``nonfinite``
    input batch non-finite -> ``nan_in_data``; loss or gradient norms grew
    at least :data:`GROWTH_BEFORE_NAN` x over their earlier level in the
    steps before the NaN -> ``lr_too_high``; a finite, steady loss that turns
    NaN/Inf in one step -> ``unsafe_loss_op`` (log(0), 0/0, sqrt at 0).
``loss_spike``
    Adam-family optimizer and any of: the loss had fallen at least
    :data:`NEAR_ZERO` x below its initial level; Adam's state shows the
    collapse (``g^2/v`` just before the spike :data:`G2V_JUMP` x above its
    median, or the gradient norm had fallen :data:`GRAD_COLLAPSE` x); at least
    :data:`PERIODIC_EVENTS` separate spikes after the loss fell
    :data:`PERIODIC_FELL` x -> ``adam_second_moment`` ("likely" only when
    the loss was near zero and the slot statistics confirm it);
    loss stuck at a constant after the spike -> ``collapse_constant``;
    gradient norm at the spike above :data:`EXPLOSION_FACTOR` x the 90th
    percentile before it -> ``gradient_explosion``; else ``lr_too_high``
    (uncertain).
``grad_norm``
    the loss is stuck at a constant after the explosion ->
    ``collapse_constant``; otherwise ``gradient_explosion``.
``grad_norm`` (Adam family)
    the loss and gradient norm fell by orders of magnitude before the burst
    -> ``adam_second_moment`` (the burst is v's collapse, not a clipnorm case).
``stuck``
    ``no_gradient`` / ``no_update`` variables; updates <= 1e-6 of the weights
    -> ``updates_too_small``; a flat loss -> ``collapsed_output``; vanished or
    zero gradients -> ``vanished_gradients``.
``nonfinite`` at step 0
    -> ``nonfinite_at_start`` (op, data or initialisation; never the learning rate).
``val_loss``
    the training loss rose :data:`TRAIN_RISE` x between the validation best and
    the rise -> ``training_loss_rise`` (not overfitting);
    BatchNorm layers and an erratic validation curve (or a measured
    train/inference gap ``trace.info["bn_train_infer_gap"]`` of at least
    :data:`BN_GAP`) -> ``batchnorm_mismatch``; otherwise ``overfitting``.

A spike whose median update ``|dw|/|w|`` (``trace.update_ratio``) around it is
above :data:`UPDATE_TOO_FAST` says so, and makes ``lr_too_high`` likely.

:func:`rank_findings` (and :func:`primary_finding`) choose one primary cause
per run across all checks: the earliest root event.
"""

from __future__ import annotations

import contextvars

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from .checks.base import Finding
from .checks.spikes import stuck_after  # "stuck" means the same in the check and here
from .trace import Trace
from .checks.validation import BN_GAP  # one threshold: the check waives the noise allowance, the diagnosis names it

#: cause key -> short title (used by reports and the detection benchmark).
CAUSES = {
    "adam_second_moment": "Adam second-moment collapse",
    "gradient_explosion": "gradient explosion",
    "collapse_constant": "collapse to a constant loss after an explosion",
    "lr_too_high": "learning rate too high",
    "unsafe_loss_op": "numerically unsafe op in the loss or model",
    "nan_in_data": "NaN/Inf in the input data",
    "batchnorm_mismatch": "BatchNorm train/inference mismatch",
    "overfitting": "overfitting or late-training drift",
    "nonfinite_at_start": "NaN/Inf from the first step: an op, the data or the initialisation",
    "training_loss_rise": "validation rise that follows a rising training loss (not overfitting)",
    "collapsed_output": "collapsed to a constant output",
    "vanished_gradients": "gradients vanished (dead units, saturated outputs)",
    "updates_too_small": "updates too small to learn (learning rate too low)",
    "no_gradient": "a variable never receives a gradient",
    "no_update": "a variable never changes",
    "unknown": "unknown",
}

LIKELY = "likely"
UNCERTAIN = "uncertain"

ADAM_FAMILY = ("Adam", "AdamW", "Nadam", "Adamax", "Lamb", "Lion")
#: the loss fell this many times below its initial level: "near zero".
NEAR_ZERO = 100.0
#: g^2/v just before a spike vs its run median that signals a collapsed v.
G2V_JUMP = 100.0
#: early gradient norm / gradient norm before the spike that signals a collapsed v.
GRAD_COLLAPSE = 100.0
#: spike events (with the loss fallen at least PERIODIC_FELL x) that make Adam's repeated spikes.
PERIODIC_EVENTS = 3
PERIODIC_FELL = 10.0
#: growth of loss or gradient norm in the steps before a NaN that means divergence.
GROWTH_BEFORE_NAN = 10.0
#: gradient norm at a spike / 90th percentile before it that means explosion.
EXPLOSION_FACTOR = 10.0
#: relative train/inference loss gap of one batch that confirms a BatchNorm mismatch.
#: gradient norms within this factor of the first window's median are "healthy" (the clipnorm suggested).
HEALTHY_GROWTH = 10.0
#: median global |dw|/|w| per step around a spike above which the updates are too large for the weights.
UPDATE_TOO_FAST = 1e-1
#: the training loss grew at least this much between the validation best and the rise: not overfitting.
TRAIN_RISE = 1.5
#: findings this many steps apart or closer are one event when ranking (the earliest root event leads).
EVENT_GAP = 10
#: steps after an event over which "stuck" is judged: the run's spike_window (diagnose(..., thresholds=...)),
#: else the default one
_STUCK_STEPS = contextvars.ContextVar("stuck_steps", default=50)


def diagnose(findings: Sequence[Finding], trace: Trace, thresholds: Any = None) -> list[Finding]:
    """Return ``findings`` with ``cause``, ``fix``, ``confidence`` and a cause key filled in.

    Args:
        findings: findings from :func:`~pytest_stability.checks.run_checks`.
        trace: the trace they were found in.
        thresholds: the run's :class:`~pytest_stability.checks.Thresholds`; its ``spike_window`` is the
            window over which "stuck" is judged (default: the default window).

    Returns:
        New findings (the inputs are frozen), in the same order.

    Raises:
        TypeError: when an element of ``findings`` is not a :class:`Finding`.

    Example:
        >>> fs = [f for r in run_checks(trace) for f in r.findings]
        >>> [f.evidence["cause_key"] for f in diagnose(fs, trace)]
        ['adam_second_moment']
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"diagnose() expects a Trace, received {type(trace).__name__}")
    token = _STUCK_STEPS.set(int(getattr(thresholds, "spike_window", None) or _STUCK_STEPS.get()))
    try:
        return _diagnose(findings, trace)
    finally:
        _STUCK_STEPS.reset(token)


def _diagnose(findings: Sequence[Finding], trace: Trace) -> list[Finding]:
    out = []
    for f in findings:
        if not isinstance(f, Finding):
            raise TypeError(f"diagnose() expects Finding objects, received {type(f).__name__}")
        rule = _RULES.get(f.check, _unknown)
        key, cause, fix, confidence, numbers = rule(f, trace)
        fix_configs = list(numbers.pop("fix_configs", ()))
        evidence = {**dict(f.evidence), "cause_key": key, "diagnosis": _clean(numbers), "fix_configs": fix_configs}
        out.append(dataclasses.replace(f, cause=cause, fix=fix, confidence=confidence, evidence=evidence))
    return out


# -- helpers -------------------------------------------------------------------


def _clean(numbers: dict[str, Any]) -> dict[str, Any]:
    """Builtins only: numpy scalars become floats, non-finite floats None."""
    out: dict[str, Any] = {}
    for k, v in numbers.items():
        if isinstance(v, (bool, str)) or v is None:
            out[k] = v
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        else:
            v = float(v)
            out[k] = v if math.isfinite(v) else None
    return out


def _finite(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        return np.zeros(0)
    a = np.asarray(a, dtype=np.float64)
    return a[np.isfinite(a)]


def _median(a: np.ndarray | None) -> float:
    a = _finite(a)
    return float(np.median(a)) if a.size else math.nan


def _g(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _round_clip(x: float) -> str:
    """A clipnorm value people can paste: two significant digits."""
    return f"{float(f'{x:.2g}'):g}"


def _optimizer(trace: Trace) -> tuple[str, dict[str, Any]]:
    info = trace.info or {}
    return str(info.get("optimizer") or ""), dict(info.get("optimizer_config") or {})


def _lr(trace: Trace, step: int, cfg: dict[str, Any]) -> float:
    if trace.lr is not None and trace.lr.size:
        vals = _finite(trace.lr[: max(step, 1)])
        if vals.size:
            return float(vals[-1])
    lr = cfg.get("learning_rate")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else math.nan


def _window(trace: Trace) -> int:
    return max(10, min(50, trace.steps // 10))


def _initial_loss(trace: Trace) -> float:
    return _median(trace.loss[: _window(trace)])


def _p90_before(trace: Trace, step: int, warmup: int = 0) -> float:
    """90th percentile of the finite gradient norms before ``step`` (a clipnorm to try)."""
    if trace.grad_norm is None:
        return math.nan
    g = _finite(trace.grad_norm[min(warmup, max(step - 5, 0)):step])
    return float(np.percentile(g, 90)) if g.size else math.nan


def _healthy_p90(trace: Trace, step: int) -> float:
    """The clipnorm to suggest: the 90th percentile of the *healthy* gradient norms before ``step``.

    Healthy: within :data:`HEALTHY_GROWTH` x the median norm of the first
    window, so the norms of an explosion already under way (a learning rate
    too high from step 1) do not make the suggested clipnorm as large as the
    explosion itself.
    """
    if trace.grad_norm is None:
        return math.nan
    g = _finite(trace.grad_norm[:step])
    if not g.size:
        return math.nan
    early = _median(g[: _window(trace)])
    healthy = g[g <= HEALTHY_GROWTH * early] if early > 0 else g
    return float(np.percentile(healthy if healthy.size else g, 90))


def _clip_fix(clip: float, what: str) -> str:
    if math.isfinite(clip) and clip > 0:
        return (f"clipnorm={_round_clip(clip)} on the optimizer (the 90th percentile of this run's healthy "
                f"gradient norms {what})")
    return "clipnorm on the optimizer (about the 90th percentile of the healthy gradient norms)"


def _clip_configs(clip: float) -> list[dict[str, Any]]:
    """``clipnorm=clip`` as optimizer settings (what the what-if replay applies), when there is a value."""
    return [{"clipnorm": float(_round_clip(clip))}] if math.isfinite(clip) and clip > 0 else []


def _clip_or_lower(clip: float) -> list[dict[str, Any]]:
    """The fixes of an explosion, in the order the message gives them: clipnorm, then a 10x lower rate."""
    return _clip_configs(clip) + [{"learning_rate_factor": 0.1}]


def _lower_lr(lr: float, factor: float = 10.0) -> str:
    return f"learning_rate={lr / factor:.2g} (now {lr:.2g})" if math.isfinite(lr) and lr > 0 else "a lower learning rate"


def _stuck_after(trace: Trace, step: int, f: Finding | None = None) -> tuple[bool, float, float, int]:
    """Whether training is stuck after ``step``: (stuck, level, rel_std, n_steps).

    The check's definition (:func:`~pytest_stability.checks.spikes.stuck_after`):
    a flat loss, or gradients that vanished while the loss stayed up.  A
    ``loss_spike`` finding has already judged it (``evidence["stuck"]``); its
    verdict wins, so the message and the diagnosis never disagree.
    """
    st = stuck_after(trace.loss, trace.grad_norm, step, _STUCK_STEPS.get())
    stuck = st["stuck"]
    if f is not None and isinstance(f.evidence.get("stuck"), bool):
        stuck = f.evidence["stuck"]
    return stuck, st["level"], st["rel_std"], st["n"]


# -- rules ---------------------------------------------------------------------

Diagnosis = tuple[str, str, str, str, dict[str, Any]]


def _nonfinite(f: Finding, trace: Trace) -> Diagnosis:
    _, cfg = _optimizer(trace)
    step = int(f.step)
    if f.kind == "input" or f.evidence.get("input_nonfinite"):
        return ("nan_in_data",
                f"the input batch of step {step} already held NaN/Inf before the model saw it: the data, "
                "not training, produced it",
                "clean the data pipeline: drop or impute non-finite rows (np.isfinite(x).all(axis=1)), or "
                "add ds.filter(lambda x, y: tf.reduce_all(tf.math.is_finite(x))) / tf.debugging.check_numerics "
                "to the tf.data pipeline",
                LIKELY, {"step": step})
    if f.kind == "validation":
        return ("nan_in_data",
                f"the validation loss became non-finite after {step} steps while every training quantity "
                "stayed finite: most likely NaN/Inf in the validation data (or an op that only the inference "
                "path runs)",
                "check the validation data for NaN/Inf (np.isfinite(x_val).all())",
                UNCERTAIN, {"step": step})
    lr = _lr(trace, step, cfg)
    loss = trace.loss[:step]
    finite_loss = _finite(loss)
    w = _window(trace)
    numbers: dict[str, Any] = {"step": step, "learning_rate": lr}
    if step == 0:
        what = ", ".join((f.evidence or {}).get("quantities") or []) or "a training quantity"
        return ("nonfinite_at_start",
                f"{what} was NaN/Inf at step 0, before any update: the learning rate cannot have caused it; "
                "the forward pass or the loss produced it from the initial weights and the first batch",
                "check the initialisation (a custom initializer, weights loaded from a file), the data "
                "(np.isfinite on inputs and targets; the input check only sees the inputs) and unsafe ops "
                "(log(0), 0/0, sqrt of a negative) in the model or the loss",
                LIKELY if f.evidence.get("source") in (None, "loss", "gradients") else UNCERTAIN,
                {"step": step, "learning_rate": lr})
    if finite_loss.size < 3:
        return ("lr_too_high" if step > 0 else "unsafe_loss_op",
                f"the loss became NaN/Inf at step {step}, only {finite_loss.size} finite steps after the start "
                + ("with a finite input batch: " if (trace.info or {}).get("inputs_checked", True)
                   else "(the input batches were not inspected): NaN/Inf in the data, ")
                + "a learning rate far too high, a bad initialisation, or an unsafe op (log(0), 0/0) in the loss",
                f"try {_lower_lr(lr)}; guard log/division in custom losses with an epsilon",
                UNCERTAIN, {**numbers, "fix_configs": [{"learning_rate_factor": 0.1}] if step > 0 else []})
    ref_loss = float(np.min(finite_loss[: max(3, finite_loss.size - 5)]))
    last = finite_loss[-5:]
    loss_growth = float(np.max(last) / ref_loss) if ref_loss > 0 else math.nan
    grad_growth = math.nan
    if trace.grad_norm is not None:
        g = trace.grad_norm[:step]
        gref = _median(g[: max(3, min(w, g.size - 5))])
        glast = _finite(g[-5:])
        if glast.size and gref > 0:
            grad_growth = float(np.max(glast) / gref)
    numbers.update(loss_growth=loss_growth, grad_growth=grad_growth, last_finite_loss=float(finite_loss[-1]),
                   initial_loss=_initial_loss(trace))
    clip = _healthy_p90(trace, max(step - 5, 1))
    numbers["clipnorm_suggested"] = clip
    diverged = (math.isfinite(loss_growth) and loss_growth >= GROWTH_BEFORE_NAN) or (
        math.isfinite(grad_growth) and grad_growth >= GROWTH_BEFORE_NAN)
    if diverged:
        return ("lr_too_high",
                f"training diverged before the NaN at step {step}: in the last 5 steps the loss reached "
                f"{_g(loss_growth)}x its lowest earlier value and the gradient norm {_g(grad_growth)}x its early "
                f"median, at learning rate {_g(lr)}",
                f"{_lower_lr(lr)}, or {_clip_fix(clip, 'before the divergence')}",
                LIKELY, {**numbers, "fix_configs": [{"learning_rate_factor": 0.1}] + _clip_configs(clip)})
    src = (trace.first_nonfinite or {}).get("source")
    numbers["source"] = src
    return ("unsafe_loss_op",
            f"the loss was finite and steady ({_g(float(finite_loss[-1]))}, at most {_g(loss_growth)}x its "
            f"lowest value; gradient norm {_g(grad_growth)}x its early median) and turned NaN/Inf in one step "
            f"({src or 'loss'} first): a numerically unsafe op such as log(0), 0/0 or sqrt(0) in the loss or "
            "model, hit once predictions saturate",
            "guard the op: keras.ops.log(keras.ops.clip(p, 1e-7, 1.0)) instead of log(p), add an epsilon to "
            "denominators, or use the built-in loss with from_logits=True",
            LIKELY if src in (None, "loss", "gradients") else UNCERTAIN, numbers)


def _adam_numbers(trace: Trace, start: int) -> dict[str, Any]:
    """Evidence of a collapsed Adam second moment just before ``start``."""
    w = _window(trace)
    out: dict[str, Any] = {}
    g2v = trace.opt_stats.get("g2_over_v_max")
    if g2v is not None and start > 2:
        # Step 0 divides by v = 0: skip the first window.
        base = _median(g2v[min(w, start // 2):start])
        pre = _finite(g2v[max(0, start - 5):start + 1])
        out["g2_over_v_before"] = float(np.max(pre)) if pre.size else math.nan
        out["g2_over_v_median"] = base
        out["g2_over_v_jump"] = out["g2_over_v_before"] / base if base > 0 else math.nan
    v = trace.opt_stats.get("v_rms")
    if v is not None and start > 1:
        peak = _finite(v[:start])
        out["v_rms_peak"] = float(np.max(peak)) if peak.size else math.nan
        out["v_rms_before"] = float(v[start - 1])
        out["v_decay"] = out["v_rms_peak"] / out["v_rms_before"] if out["v_rms_before"] > 0 else math.nan
    if trace.grad_norm is not None and start > w:
        early = _median(trace.grad_norm[:w])
        pre = _median(trace.grad_norm[max(0, start - w):start])
        out["grad_norm_early"] = early
        out["grad_norm_before"] = pre
        out["grad_collapse"] = early / pre if pre > 0 else math.nan
    return out


def _ok(x: Any, limit: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x >= limit


def _update_ratio_around(trace: Trace, start: int, end: int) -> float:
    """Median global |dw|/|w| over ``[start - 2, end + 3)`` (NaN when the trace has no update ratios)."""
    if trace.update_ratio is None:
        return math.nan
    return _median(trace.update_ratio[max(0, start - 2):end + 3])


def _loss_spike(f: Finding, trace: Trace) -> Diagnosis:
    opt, cfg = _optimizer(trace)
    start = int(f.evidence.get("start", f.step))
    step = int(f.step)
    lr = _lr(trace, start, cfg)
    l0 = _initial_loss(trace)
    before = _finite(trace.loss[:start])
    min_before = float(np.min(before)) if before.size else math.nan
    fell = l0 / min_before if min_before > 0 and math.isfinite(l0) else math.nan
    stuck, level, rel_std, n_tail = _stuck_after(trace, step, f)
    p90 = _p90_before(trace, start, warmup=_window(trace) // 5)
    clip = _healthy_p90(trace, start)
    gn_spike = math.nan
    if trace.grad_norm is not None:
        seg = _finite(trace.grad_norm[max(0, start - 3):step + 1])
        gn_spike = float(np.max(seg)) if seg.size else math.nan
    numbers: dict[str, Any] = {"initial_loss": l0, "min_loss_before": min_before, "loss_fell": fell,
                               "learning_rate": lr, "grad_norm_p90_before": p90, "clipnorm_suggested": clip,
                               "grad_norm_at_spike": gn_spike,
                               "stuck": stuck, "stuck_level": level if stuck else math.nan}
    upd = _update_ratio_around(trace, start, int(f.evidence.get("end", step)))
    numbers["update_ratio"] = upd
    too_fast = _ok(upd, UPDATE_TOO_FAST)
    fast_note = (f"; the updates were {_g(upd)} of the weights per step (median |dw|/|w|, above {UPDATE_TOO_FAST:g}): "
                 "the learning rate is too high for these weights") if too_fast else ""
    periodic = ""
    if f.evidence.get("n_events"):
        periodic = (f"; {f.evidence['n_events']} spikes about every {_g(f.evidence.get('mean_interval'))} steps "
                    f"(interval CV {_g(f.evidence.get('interval_cv'))})")
    if opt in ADAM_FAMILY:
        ad = _adam_numbers(trace, start)
        numbers.update(ad)
        eps = cfg.get("epsilon")
        beta_2 = cfg.get("beta_2")
        amsgrad = bool(cfg.get("amsgrad"))
        near_zero = _ok(fell, NEAR_ZERO)
        state = _ok(ad.get("g2_over_v_jump"), G2V_JUMP) or _ok(ad.get("grad_collapse"), GRAD_COLLAPSE)
        # Repeated spikes once the loss has flattened are Adam's signature too
        # (each spike refills v, which then decays again until the next one).
        repeated = int(f.evidence.get("n_events") or 0) >= PERIODIC_EVENTS and _ok(fell, PERIODIC_FELL)
        numbers["repeated_spikes"] = repeated
        if near_zero or state or repeated:
            parts = [f"the loss had fallen {_g(fell)}x (from {_g(l0)} to {_g(min_before)}) before jumping to "
                     f"{_g(f.value)} at step {step}"]
            if "grad_collapse" in ad:
                parts.append(f"the gradient norm had fallen {_g(ad['grad_collapse'])}x "
                             f"({_g(ad['grad_norm_early'])} -> {_g(ad['grad_norm_before'])}), so Adam's v followed")
            if "g2_over_v_jump" in ad:
                parts.append(f"max g^2/v just before the spike was {_g(ad['g2_over_v_before'])}, "
                             f"{_g(ad['g2_over_v_jump'])}x its run median")
            if "v_decay" in ad and _ok(ad["v_decay"], 3.0):
                parts.append(f"sqrt(mean v) had decayed {_g(ad['v_decay'])}x from its peak")
            cause = ("Adam second-moment collapse: " + "; ".join(parts)
                     + f"{periodic}; a tiny v makes m/(sqrt(v)+epsilon) explode (epsilon={eps})")
            if stuck:
                cause += f"; afterwards the loss is stuck at {_g(level)} (dead units)"
            fixes, configs = [], []
            if not (isinstance(eps, (int, float)) and eps >= 1e-3):
                fixes.append(f"{opt}(epsilon=1e-3) (now {eps})")
                configs.append({"epsilon": 1e-3})
            if not amsgrad and opt in ("Adam", "AdamW"):
                fixes.append(f"{opt}(amsgrad=True)")
                configs.append({"amsgrad": True})
            if isinstance(beta_2, (int, float)) and beta_2 > 0.99:
                fixes.append(f"beta_2=0.99 (now {beta_2})")
                configs.append({"beta_2": 0.99})
            fixes.append(_lower_lr(lr))
            configs.append({"learning_rate_factor": 0.1})
            numbers["fix_configs"] = configs
            confident = near_zero and state and "g2_over_v_jump" in ad
            return ("adam_second_moment", cause, ", or ".join(fixes), LIKELY if confident else UNCERTAIN, numbers)
    if stuck:
        return ("collapse_constant",
                f"the loss jumped to {_g(f.value)} at step {step} and then stayed at {_g(level)} (relative std "
                f"{rel_std:.1e} over {n_tail} steps): an explosion pushed units dead or outputs into saturation"
                f" (gradient norm {_g(gn_spike)} vs a 90th percentile of {_g(p90)} before)",
                f"{_clip_fix(clip, 'before the spike')} or clipvalue, or {_lower_lr(lr)}",
                LIKELY, {**numbers, "fix_configs": _clip_or_lower(clip)})
    if _ok(gn_spike, 0.0) and _ok(p90, 1e-30) and gn_spike >= EXPLOSION_FACTOR * p90:
        return ("gradient_explosion",
                f"the gradient norm reached {_g(gn_spike)} at the spike, {_g(gn_spike / p90)}x the 90th "
                f"percentile {_g(p90)} of the norms before it{periodic}{fast_note}",
                f"{_clip_fix(clip, 'before the spike')}, or {_lower_lr(lr)}",
                LIKELY, {**numbers, "fix_configs": _clip_or_lower(clip)})
    return ("lr_too_high",
            f"the loss jumped to {_g(f.value)} at step {step}{periodic} without a matching gradient explosion "
            f"(gradient norm {_g(gn_spike)}, 90th percentile before {_g(p90)}): a learning rate of {_g(lr)} may be "
            f"too high for this point of training, or the batch was unusual{fast_note}",
            f"{_lower_lr(lr, 3)} or a decaying schedule; {_clip_fix(clip, 'before the spike')}",
            LIKELY if too_fast else UNCERTAIN, {**numbers, "fix_configs": [{"learning_rate_factor": 1 / 3}] + _clip_configs(clip)})


def _grad_norm(f: Finding, trace: Trace) -> Diagnosis:
    opt, cfg = _optimizer(trace)
    step = int(f.step)
    if opt in ADAM_FAMILY:
        # A burst of the gradient norm after the loss and the norm fell by orders of magnitude is Adam's v
        # collapsing (the burst is its consequence), not an explosion that clipnorm would fix.
        as_spike = dataclasses.replace(f, evidence={**dict(f.evidence), "start": step, "end": step})
        d = _loss_spike(as_spike, trace)
        if d[0] == "adam_second_moment":
            key, cause, fix, conf, numbers = d
            loss_at = trace.loss[step] if step < trace.steps else math.nan
            cause = cause.replace(f"before jumping to {_g(f.value)}", f"before the gradient norm burst to {_g(f.value)} "
                                  f"(loss {_g(float(loss_at))})")
            return key, cause, fix, conf, numbers
    lr = _lr(trace, step, cfg)
    p90 = _p90_before(trace, step, warmup=_window(trace) // 5)
    clip = _healthy_p90(trace, step)
    ref = f.evidence.get("reference")
    growth = f.value / ref if isinstance(ref, (int, float)) and ref and ref > 0 else math.nan
    stuck, level, rel_std, n_tail = _stuck_after(trace, step)
    numbers = {"learning_rate": lr, "grad_norm_p90_before": p90, "clipnorm_suggested": clip, "growth": growth,
               "stuck": stuck,
               "stuck_level": level if stuck else math.nan}
    var = f.evidence.get("variable")
    where = f" (largest in {var})" if var else ""
    if stuck:
        return ("collapse_constant",
                f"the gradient norm exploded to {_g(f.value)} at step {step} ({_g(growth)}x its early-training reference)"
                f"{where}, then the loss stayed at {_g(level)} (relative std {rel_std:.1e} over {n_tail} steps): "
                "units died or outputs saturated",
                f"{_clip_fix(clip, 'before the explosion')} or clipvalue, or {_lower_lr(lr)}",
                LIKELY, {**numbers, "fix_configs": _clip_or_lower(clip)})
    return ("gradient_explosion",
            f"the gradient norm grew to {_g(f.value)} at step {step}, {_g(growth)}x its early-training reference"
            f"{where}",
            f"{_clip_fix(clip, 'before the explosion')}, or {_lower_lr(lr)}",
            LIKELY if _ok(growth, 100.0) else UNCERTAIN, {**numbers, "fix_configs": _clip_or_lower(clip)})


def _val_loss(f: Finding, trace: Trace) -> Diagnosis:
    info = trace.info or {}
    n_bn = int(info.get("batchnorm_layers") or 0)
    v = trace.val_loss if trace.val_loss is not None else np.zeros(0)
    v = v[np.isfinite(v)]
    # Erratic curve: count direction reversals with a relative move of >= 20 %.
    reversals = 0
    if v.size >= 3:
        with np.errstate(all="ignore"):
            rel = np.diff(v) / np.maximum(np.abs(v[:-1]), 1e-12)
        big = np.sign(rel[np.abs(rel) >= 0.2])
        reversals = int(np.count_nonzero(np.diff(big) != 0)) if big.size > 1 else 0
    train_trend = math.nan
    loss = _finite(trace.loss)
    if loss.size >= 20:
        q = loss.size // 4
        train_trend = float(np.median(loss[-q:]) / np.median(loss[:q]))
    gap = info.get("bn_train_infer_gap")
    numbers = {"batchnorm_layers": n_bn, "val_reversals": reversals, "train_loss_trend": train_trend,
               "bn_train_infer_gap": gap if isinstance(gap, (int, float)) else None}
    rise = f"the smoothed validation loss rose to {_g(f.value)} from its best {_g(f.evidence.get('best'))}"
    best_step = int(f.evidence.get("best_step", 0) or 0)
    w = max(5, _window(trace) // 2)
    at_best = _median(trace.loss[max(0, best_step - w):best_step + w])
    at_rise = _median(trace.loss[max(0, int(f.step) - w):int(f.step) + 1])
    train_rise = at_rise / at_best if at_best > 0 else math.nan
    numbers["train_loss_rise"] = train_rise
    if _ok(train_rise, TRAIN_RISE):
        return ("training_loss_rise",
                f"{rise}, but the training loss rose too, {_g(train_rise)}x (median {_g(at_best)} around step "
                f"{best_step} -> {_g(at_rise)} around step {int(f.step)}): training itself went wrong; this is not "
                "overfitting. See the training-side finding (spike, explosion, collapse) for the cause",
                "fix the training instability first (see the other findings); then re-check validation",
                LIKELY, numbers)
    if n_bn:
        moms = info.get("batchnorm_momentum") or []
        mom = f" (now {moms[0]:g})" if moms else ""
        fix = (f"BatchNormalization(momentum=0.9){mom} so the moving statistics keep up, and a larger batch "
               "size (>= 32) so batch statistics are less noisy")
        if isinstance(gap, (int, float)) and math.isfinite(gap):
            conf = LIKELY if gap >= BN_GAP else UNCERTAIN
            return ("batchnorm_mismatch",
                    f"{rise}; the same batch's loss differs by {gap:.0%} between training and inference mode "
                    f"across {n_bn} BatchNorm layer(s): the moving statistics do not match the batch statistics",
                    fix, conf, numbers)
        return ("batchnorm_mismatch",
                f"{rise}, with {reversals} up/down swings of >= 20% in the raw validation curve, in a model with "
                f"{n_bn} BatchNorm layer(s): pits and peaks like these come from moving statistics that do not "
                "match the batch statistics (not measured: no train/inference gap in the trace)",
                fix, LIKELY if reversals >= 2 else UNCERTAIN, numbers)
    return ("overfitting",
            f"{rise} while the training loss went to {_g(train_trend)}x its early level: overfitting, or a "
            "learning rate too high for late training",
            "regularisation (dropout, weight decay), more data, a decaying learning rate, or early stopping",
            LIKELY if _ok(-train_trend + 1, 0.5) else UNCERTAIN, numbers)


def _stuck(f: Finding, trace: Trace) -> Diagnosis:
    _, cfg = _optimizer(trace)
    ev = f.evidence
    lr = _lr(trace, max(int(f.step), 1), cfg)
    numbers: dict[str, Any] = {"learning_rate": lr, "update_ratio": ev.get("update_ratio_tail")}
    if f.kind == "no_gradient":
        names = ", ".join(ev.get("variables", [])[:5])
        return ("no_gradient",
                f"{names} never received a gradient: not connected to the loss (a layer built but not used in call(), "
                "an output without a loss), or fed only by dead units (all-zero activations)",
                "check that the layer is used on the path to the loss (model.summary(), keras.utils.plot_model); "
                "if its inputs are dead ReLUs, use LeakyReLU/GELU or he_normal initialisation; if it is meant to be "
                "fixed, set layer.trainable = False",
                LIKELY, numbers)
    if f.kind == "no_update":
        names = ", ".join(ev.get("variables", [])[:5])
        return ("no_update",
                f"{names} received gradients but never changed: a learning rate of 0 (now {_g(lr)}), a schedule at 0, "
                "or an optimizer/train_step that skips these variables",
                "check the learning rate and schedule, and that the optimizer is given all trainable variables",
                LIKELY, numbers)
    if ev.get("slow_updates") and not (ev.get("zero_grad") or ev.get("vanished")):
        return ("updates_too_small",
                f"the weights hardly move: median |dw|/|w| {_g(ev.get('update_ratio_tail'))} per step while the "
                f"loss stays at {_g(f.value)} (initially {_g(ev.get('initial_loss'))}): the learning rate "
                f"{_g(lr)} is too low for this model",
                f"a larger learning rate: learning_rate={lr * 10:.2g} (now {lr:.2g})" if _ok(lr, 1e-30)
                else "a larger learning rate",
                LIKELY, {**numbers, "fix_configs": [{"learning_rate_factor": 10.0}]})
    if f.kind == "collapsed":
        return ("collapsed_output",
                f"the loss sits at {_g(f.value)} (relative std {_g(ev.get('rel_std'))}) from step {f.step}, "
                f"never below {100 * (1 - 0.5):.0f} % of its initial {_g(ev.get('initial_loss'))}: the model outputs "
                "a constant (a saturated sigmoid/softmax, dead units, or a loss that rewards a constant such as an "
                "empty segmentation mask)",
                "pair the output and the loss (from_logits=True with a linear last layer), initialise the last "
                "layer's bias near the label prior, scale the inputs to ~unit range, and lower the learning rate if "
                "it collapsed after a blow-up",
                LIKELY if ev.get("zero_grad") or ev.get("vanished") else UNCERTAIN, numbers)
    return ("vanished_gradients",
            f"the gradients {'are exactly 0' if ev.get('zero_grad') else 'vanished'} from step {f.step} while the loss "
            f"stays at {_g(f.value)} (initially {_g(ev.get('initial_loss'))}): dead ReLUs or saturated outputs, "
            "nothing learns",
            "LeakyReLU/GELU or kernel_initializer='he_normal' for ReLU layers, normalised inputs, a lower learning "
            "rate (a blow-up kills units), from_logits=True instead of a saturated sigmoid/softmax",
            LIKELY, numbers)


def _unknown(f: Finding, trace: Trace) -> Diagnosis:
    del trace
    return ("unknown", f"no diagnosis rule for check {f.check!r}", "", UNCERTAIN, {})


_RULES = {"nonfinite": _nonfinite, "loss_spike": _loss_spike, "grad_norm": _grad_norm, "val_loss": _val_loss,
          "stuck": _stuck}



# -- one primary cause per run -------------------------------------------------

#: within one event, which check's finding leads (lower first): the data, then divergence to NaN, then the
#: loss, the gradient, a stuck run, variables that never learn, and validation last.
_CHECK_ORDER = {"nonfinite": 0, "loss_spike": 1, "grad_norm": 2, "stuck": 3, "val_loss": 5}
#: findings about the model's structure, not an event of training: they lead only when nothing else happened.
_STRUCTURAL = ("no_gradient", "no_update")


def rank_findings(findings: Sequence[Any], trace: Trace) -> list[Finding]:
    """Order a run's findings so the first one is its primary cause: the earliest root event.

    Args:
        findings: :class:`Finding` objects, or :class:`~pytest_stability.checks.CheckResult` objects
            (their findings are used); diagnosed or not (undiagnosed ones are diagnosed here).
        trace: the trace they were found in.

    Returns:
        The diagnosed findings, primary first, each with ``evidence["rank"]`` (0 = primary),
        ``evidence["primary"]``, and, on findings that are consequences of an earlier root event,
        ``evidence["consequence_of"]`` (``"loss_spike@148"``).  The primary also carries
        ``evidence["alternative_causes"]``: the other cause keys named for the same event (empty when the
        findings agree); its ``confidence`` says whether the cause is certain.

    The rules:

    * training events (``nonfinite``, ``loss_spike``, ``grad_norm``, a ``stuck`` run) are roots, ordered
      by step; findings within :data:`EVENT_GAP` steps of the earliest are the same event, and the one
      whose cause is ``likely`` leads it (then the earliest, then the check earlier in ``nonfinite,
      loss_spike, grad_norm, stuck``);
    * a ``val_loss`` finding measured at or after a training event is its consequence (a blow-up
      outranks the validation rise it causes); one measured before every training event is a root;
    * variables that never learn (``no_gradient``, ``no_update``) lead only when nothing else was found.

    Example:
        >>> primary = rank_findings(run_checks(trace), trace)[0]
        >>> primary.check, primary.evidence["cause_key"], primary.confidence
        ('loss_spike', 'adam_second_moment', 'likely')
    """
    flat: list[Finding] = []
    for item in findings:
        if isinstance(item, Finding):
            flat.append(item)
        elif hasattr(item, "findings"):
            flat.extend(item.findings)
        else:
            raise TypeError(f"rank_findings() expects Finding or CheckResult objects, received {type(item).__name__}")
    todo = [f for f in flat if "cause_key" not in f.evidence]
    done = iter(diagnose(todo, trace)) if todo else iter(())
    flat = [next(done) if "cause_key" not in f.evidence else f for f in flat]
    if not flat:
        return []

    def order(f: Finding) -> tuple[int, int]:
        return (0 if f.confidence == LIKELY else 1, _CHECK_ORDER.get(f.check, 4))

    training = sorted((f for f in flat if f.check != "val_loss" and f.kind not in _STRUCTURAL),
                      key=lambda f: (f.step, order(f)))
    first = training[0].step if training else math.inf
    val = [f for f in flat if f.check == "val_loss"]
    roots = sorted(training + [f for f in val if f.step < first], key=lambda f: (f.step, order(f)))
    structural = [f for f in flat if f.kind in _STRUCTURAL]
    if not roots:
        roots, structural = structural, []
    event = [f for f in roots if f.step <= roots[0].step + EVENT_GAP]
    primary = min(event, key=lambda f: (order(f)[0], f.step, order(f)[1]))
    rest = [f for f in roots if f is not primary] + structural + [f for f in val if f not in roots]
    alternatives = sorted({f.evidence["cause_key"] for f in event if f is not primary}
                          - {primary.evidence["cause_key"]})
    out = []
    for rank, f in enumerate([primary] + rest):
        ev = {**dict(f.evidence), "rank": rank, "primary": rank == 0}
        if rank == 0:
            ev["alternative_causes"] = alternatives
        elif f.check == "val_loss" and training and f.step >= first:
            root = training[0] if training[0] in event else min(training, key=lambda x: x.step)
            ev["consequence_of"] = f"{primary.check}@{primary.step}" if primary in training else \
                f"{root.check}@{root.step}"
        elif f in event:
            ev["consequence_of"] = f"{primary.check}@{primary.step}"
        out.append(dataclasses.replace(f, evidence=ev))
    return out


def primary_finding(findings: Sequence[Any], trace: Trace) -> Finding | None:
    """The run's primary finding (the headline), or None when there is none; see :func:`rank_findings`."""
    ranked = rank_findings(findings, trace)
    return ranked[0] if ranked else None
