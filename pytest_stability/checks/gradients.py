"""``grad_norm``: the global gradient norm stays bounded.

With ``max_grad_norm`` set, any step whose global norm (before clipping)
exceeds it fails.  Otherwise the limit is relative: ``grad_growth`` x the
median norm over the early-training reference window
``[warmup_steps, warmup_steps + spike_window)``; steps before the reference
window ends are judged too, except the warmup.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds

NAME = "grad_norm"


def check_grad_norm(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail at the first step whose gradient norm crosses the limit.

    Returns:
        A result with at most one finding (the first crossing); its evidence
        names the variable with the largest gradient norm at that step and the
        90th percentile of the norms before it (a ``clipnorm`` to try).
        ``stats`` holds ``max`` and ``p99`` of the finite norms.
    """
    t = thresholds or Thresholds()
    if trace.grad_norm is None:
        return CheckResult(NAME, SKIPPED, detail="the trace has no gradient norms")
    g = trace.grad_norm
    finite = np.isfinite(g)
    stats = {
        "max": float(np.max(g[finite])) if finite.any() else None,
        "p99": float(np.percentile(g[finite], 99)) if finite.any() else None,
    }
    if t.max_grad_norm is not None:
        limit = float(t.max_grad_norm)
        judged = np.arange(g.shape[0]) >= 0
        basis = f"max_grad_norm={limit:g}"
        ref = None
    else:
        ref_slice = g[t.warmup_steps:t.warmup_steps + t.spike_window]
        ref_vals = ref_slice[np.isfinite(ref_slice)]
        if ref_vals.size < 5:
            return CheckResult(
                NAME, SKIPPED, stats=stats,
                detail=f"needs at least {t.warmup_steps + 5} steps for an early-training reference "
                "norm (or set max_grad_norm)",
            )
        ref = float(np.median(ref_vals))
        if ref <= 0:
            return CheckResult(NAME, SKIPPED, stats=stats,
                               detail="early-training gradient norms are zero; set max_grad_norm")
        limit = t.grad_growth * ref
        judged = np.arange(g.shape[0]) >= t.warmup_steps
        basis = f"{t.grad_growth:g}x the early-training median {ref:.4g}"
    stats["reference"] = ref
    stats["limit"] = limit
    over = judged & finite & (g > limit)
    if not over.any():
        return CheckResult(NAME, PASSED, stats=stats)
    step = int(np.argmax(over))
    top_var, top_norm = None, None
    if trace.var_grad_norms is not None and trace.var_names:
        row = np.where(np.isfinite(trace.var_grad_norms[step]), trace.var_grad_norms[step], -np.inf)
        k = int(np.argmax(row))
        top_var, top_norm = trace.var_names[k], float(trace.var_grad_norms[step, k])
    before = g[:step][finite[:step]]
    p90 = float(np.percentile(before, 90)) if before.size else None
    n_over = int(np.count_nonzero(over))
    msg = f"gradient norm {g[step]:.4g} at step {step} exceeds {limit:.4g} ({basis})"
    if top_var:
        msg += f"; largest in {top_var} ({top_norm:.4g})"
    if n_over > 1:
        msg += f"; {n_over} steps over the limit, peak {float(np.max(g[over])):.4g}"
    finding = Finding(
        check=NAME,
        kind="absolute" if t.max_grad_norm is not None else "growth",
        step=step,
        value=float(g[step]),
        limit=limit,
        message=msg,
        evidence={
            "variable": top_var,
            "variable_norm": top_norm,
            "reference": ref,
            "p90_before": p90,
            "steps_over": n_over,
            "peak": float(np.max(g[over])),
        },
    )
    return CheckResult(NAME, FAILED, (finding,), stats=stats)
