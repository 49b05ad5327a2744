"""``nonfinite``: no NaN/Inf in loss, gradients, weights or optimizer state."""

from __future__ import annotations

import numpy as np

from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, OVERFLOW, WEIGHTS, Trace, describe_flags
from .base import FAILED, PASSED, CheckResult, Finding, Thresholds

NAME = "nonfinite"
_TRAINING_BITS = LOSS | GRADS | WEIGHTS | OPTIMIZER


def check_nonfinite(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail at the first step where a training quantity is NaN or Inf.

    A step flagged only as a loss-scale overflow (:data:`~pytest_stability.trace.OVERFLOW`)
    is the mixed-precision optimizer doing its job and is not counted, unless the optimizer skipped
    more than ``max_skipped_fraction`` of the steps that way: then the updates mostly did not happen,
    and the run fails with that as its cause.  The overflow steps that open the run are the dynamic loss
    scale coming down to a scale that fits (it starts high and halves on each overflow): they are counted
    only when the scale never comes to fit.  A batch whose *inputs* held NaN/Inf is reported even
    if the loss stayed finite.

    Returns:
        A failed result with one finding at the first bad step, else passed.
    """
    limit = (thresholds or Thresholds()).max_skipped_fraction
    mask = np.asarray(trace.nonfinite, dtype=np.int64)
    overflow = (mask & OVERFLOW) != 0
    effective = mask & (_TRAINING_BITS | INPUT)
    # Under dynamic loss scaling, non-finite *scaled* gradients are expected:
    # the optimizer skips that update and lowers the scale.
    effective[overflow] &= ~GRADS
    bad = effective != 0
    findings = []
    overflow_steps = int(np.count_nonzero(overflow))
    calibration = _calibration(trace, overflow)
    stats = {"overflow_steps": overflow_steps, "calibration_steps": calibration}
    if bad.any():
        step = int(np.argmax(bad))
        flags = int(mask[step])
        what = [n for n in describe_flags(flags) if n != "loss-scale overflow"]
        first = dict(trace.first_nonfinite or {})
        variable = first.get("variable") if first.get("step", step) == step else None
        input_bad = bool(flags & INPUT)
        loss_value = float(trace.loss[step]) if step < trace.steps else float("nan")
        parts = [f"non-finite {', '.join(what)} at step {step}"]
        if variable:
            parts.append(f"first variable affected: {variable}")
        # a trace the plugin recorded says whether it checked the inputs; one recorded elsewhere did not
        info = trace.info or {}
        inspected = bool(info.get("inputs_checked", False))
        if input_bad:
            parts.append("the input batch itself held NaN/Inf")
        elif inspected:
            parts.append("the input batch was finite (the NaN/Inf was produced by training)")
        elif "data" in info:
            parts.append(f"the input batches were not inspected (x is a {info['data']}: check it for NaN/Inf too)")
        else:
            parts.append("the trace records no check of the input batches: check them for NaN/Inf too")
        last_finite = np.flatnonzero(np.isfinite(trace.loss[:step]))
        evidence = {
            "quantities": what,
            "variable": variable,
            "input_nonfinite": input_bad,
            "loss": loss_value,
            "last_finite_loss": float(trace.loss[last_finite[-1]]) if last_finite.size else None,
            "grad_norm_before": None
            if trace.grad_norm is None or step == 0
            else [float(v) for v in trace.grad_norm[max(0, step - 5) : step]],
        }
        findings.append(
            Finding(
                check=NAME,
                kind="input" if input_bad else "training",
                step=step,
                value=loss_value,
                limit=float("inf"),
                message="; ".join(parts),
                evidence=evidence,
            )
        )
    if overflow_steps and not findings and trace.steps and _skipped_share(overflow, calibration) > limit:
        findings.append(_skipped_steps(trace, overflow, calibration, limit))
    if trace.has_validation:
        assert trace.val_loss is not None and trace.val_steps is not None  # has_validation: both are given
        vbad = ~np.isfinite(trace.val_loss)
        if vbad.any() and not findings:
            j = int(np.argmax(vbad))
            step = int(trace.val_steps[j])
            findings.append(
                Finding(
                    check=NAME,
                    kind="validation",
                    step=step,
                    value=float(trace.val_loss[j]),
                    limit=float("inf"),
                    message=f"validation loss is {trace.val_loss[j]} after {step} steps "
                    "while training quantities stayed finite",
                    evidence={"val_step": step},
                )
            )
    return CheckResult(NAME, FAILED if findings else PASSED, tuple(findings), stats=stats)


def _calibration(trace: Trace, overflow: np.ndarray) -> int:
    """How many opening steps were the loss scale coming down to one that fits: the overflow steps the run opens
    with, when the scale that then fitted is at least 1 (the gradients themselves fit float16).  A scale that
    had to fall below 1 means the unscaled gradients overflow: those steps are not calibration, they are the
    model overflowing (0).  ``overflow.size`` when no scale ever fitted."""
    lead = int(overflow.size if overflow.all() else np.argmax(~overflow))
    if lead >= overflow.size:
        return lead
    scale = trace.opt_stats.get("loss_scale")
    if scale is not None and lead < len(scale) and np.isfinite(scale[lead]) and scale[lead] < 1.0:
        return 0
    return lead


def _skipped_share(overflow: np.ndarray, lead: int) -> float:
    """The share of skipped steps after the ``lead`` calibration steps (1.0 when the scale never fitted)."""
    if lead >= overflow.size:
        return 1.0
    return float(np.count_nonzero(overflow[lead:]) / (overflow.size - lead))


def _skipped_steps(trace: Trace, overflow: np.ndarray, lead: int, limit: float) -> Finding:
    """The loss-scale optimizer skipped more than ``limit`` of the steps after its scale first fitted (each an
    overflow of the scaled gradients), or never found a scale that fits: the run looks healthy and learns
    little.  At the step where the share of skipped steps so far first passed the limit for good."""
    n = trace.steps
    skipped = np.flatnonzero(overflow)
    base = lead if lead < n else 0  # a scale that never fitted: every step counts
    share = np.zeros(n)
    share[base:] = np.cumsum(overflow[base:]) / np.arange(1, n - base + 1)
    above = share > limit
    step = int(n - np.argmax(~above[::-1])) if not above.all() else 0  # from here on, always above
    step = min(step, n - 1)
    scale = trace.opt_stats.get("loss_scale")
    last_scale = float(scale[np.isfinite(scale)][-1]) if scale is not None and np.isfinite(scale).any() else None
    fraction = _skipped_share(overflow, lead)
    if lead >= n:
        message = (
            f"the loss-scale optimizer skipped all {n} steps on overflowing scaled gradients (no loss scale "
            f"it tried fitted, limit {limit:.0%} of the steps): those updates did not happen"
        )
    else:
        after = f" after its scale first fitted at step {lead}" if lead else ""
        message = (
            f"the loss-scale optimizer skipped {int(overflow[lead:].sum())} of the {n - lead} steps{after} "
            f"({fraction:.0%}, limit {limit:.0%}) on overflowing scaled "
            "gradients: those updates did not happen"
        )
    if last_scale is not None:
        message += f"; the loss scale ended at {last_scale:.3g}"
    return Finding(
        check=NAME,
        kind="skipped_steps",
        step=step,
        value=fraction,
        limit=limit,
        message=message,
        evidence={
            "check_cause": "loss_scale_overflow",
            "skipped": int(len(skipped)),
            "steps": int(n),
            "first_skipped": int(skipped[0]),
            "last_skipped": int(skipped[-1]),
            "last_loss_scale": last_scale,
        },
        cause="the gradients overflow the float16 range at every loss scale the optimizer tries: values grow too "
        "large in the forward or backward pass (a learning rate or initialisation that blows activations up, "
        "a loss summed instead of averaged), or float16 cannot hold them at all",
        fix="lower the learning rate or normalise the inputs; keep the loss a mean; train the layers that overflow "
        "in float32 (dtype='float32' on them) or use mixed_bfloat16, whose range is float32's",
        confidence="likely",
    )
