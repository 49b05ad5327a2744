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
    is the mixed-precision optimizer doing its job and is not counted.  A batch
    whose *inputs* held NaN/Inf is reported even if the loss stayed finite.

    Returns:
        A failed result with one finding at the first bad step, else passed.
    """
    del thresholds  # no thresholds: any non-finite value fails
    mask = np.asarray(trace.nonfinite, dtype=np.int64)
    overflow = (mask & OVERFLOW) != 0
    effective = mask & (_TRAINING_BITS | INPUT)
    # Under dynamic loss scaling, non-finite *scaled* gradients are expected:
    # the optimizer skips that update and lowers the scale.
    effective[overflow] &= ~GRADS
    bad = effective != 0
    findings = []
    overflow_steps = int(np.count_nonzero(overflow))
    stats = {"overflow_steps": overflow_steps}
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
        inspected = (trace.info or {}).get("inputs_checked", True)
        if input_bad:
            parts.append("the input batch itself held NaN/Inf")
        elif inspected:
            parts.append("the input batch was finite (the NaN/Inf was produced by training)")
        else:
            parts.append(f"the input batches were not inspected (x is a {(trace.info or {}).get('data', 'pipeline')}:"
                         " check it for NaN/Inf too)")
        last_finite = np.flatnonzero(np.isfinite(trace.loss[:step]))
        evidence = {
            "quantities": what,
            "variable": variable,
            "input_nonfinite": input_bad,
            "loss": loss_value,
            "last_finite_loss": float(trace.loss[last_finite[-1]]) if last_finite.size else None,
            "grad_norm_before": None
            if trace.grad_norm is None or step == 0
            else [float(v) for v in trace.grad_norm[max(0, step - 5):step]],
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
    if trace.has_validation:
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
