"""``grad_norm``: the global gradient norm stays bounded.

With ``max_grad_norm`` set, any step whose global norm (before clipping)
exceeds it fails.  Otherwise the limit is relative to the early-training
norms, ``grad_growth`` x a reference that is robust to how training starts:

* the reference is the larger of the median norm over the warmup steps
  ``[0, warmup_steps)`` (the norms at initialisation) and the median over the
  window after them ``[warmup_steps, warmup_steps + spike_window)``.  Taking
  the larger keeps a run whose gradients fade early (a saturated output, a
  loss that flattens in a few steps) from getting a near-zero reference that
  any later, healthy norm would exceed 100 times;
* steps from ``warmup_steps`` on are judged against ``grad_growth`` x that
  reference;
* the warmup steps themselves are judged against ``grad_growth`` x the norm of
  step 0, so an explosion in the first few steps (a learning rate far too
  high) is caught at the step it happens, not missed because the reference
  window comes after it.

When the optimizer clips by norm (``clipnorm`` or ``global_clipnorm`` in
``trace.info["optimizer_config"]``, as the engine records it), the growth rule
judges the norm of the update's gradients *after* clipping: the user has
already bounded them, and a raw excursion that clipping absorbs (a SimpleRNN's
gradients through time, measured on the benchmark's clipped controls) is not
instability; a loss that suffers anyway still fails ``loss_spike``.  Keras'
``clipnorm`` clips each variable's gradient, so the clipped global norm is
``sqrt(sum(min(norm_i, clipnorm)^2))`` over the per-variable norms.  The raw
norms stay in ``stats`` (``max``, ``p99``) and in the report.  An absolute
``max_grad_norm`` is always compared with the raw norm.

Under a distribution strategy (TensorFlow's ``MirroredStrategy``) each replica's own gradient norm, before
the all-reduce, is in ``trace.curves`` (``grad_norm/replica_<i>``): the replicas train one model on shards
of the same batches, so their norms agree up to the shards' noise.  Replicas whose largest and smallest
norms differ more than ``REPLICA_FACTOR`` x in most steps after the warmup (``REPLICA_SHARE``) disagree
(kind ``replica_disagree``, naming the replica farthest from the others' median, of two the larger: an
unbalanced shard, a replica-dependent ``train_step``); replicas whose copies of the weights differ after
training (``trace.info["replica_weight_drift"]`` above ``REPLICA_WEIGHT_RTOL``) drifted apart (kind
``replica_drift``: an update applied on one replica only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds

NAME = "grad_norm"
#: the replicas' largest gradient norm this many times their smallest...
REPLICA_FACTOR = 10.0
#: ...over at least this share of the steps after the warmup drifts
REPLICA_SHARE = 0.5
#: the replicas' copies of a weight may differ by this much relative to its largest value (mirrored: equal)
REPLICA_WEIGHT_RTOL = 1e-4


def replica_findings(trace: Trace, thresholds: Thresholds | None = None) -> list[Finding]:
    """The replicas' findings (see the module docstring): ``replica_disagree``, ``replica_drift``."""
    t = thresholds or Thresholds()
    findings = []
    names = sorted(
        (n for n in trace.curves if n.startswith("grad_norm/replica_")), key=lambda n: int(n.rsplit("_", 1)[1])
    )
    if len(names) > 1:
        g = np.stack([np.asarray(trace.curves[n], np.float64) for n in names], axis=1)[t.warmup_steps :]
        usable = np.all(np.isfinite(g) & (g > 0), axis=1)
        g = g[usable]
        steps = np.flatnonzero(usable) + t.warmup_steps
        if g.shape[0]:
            spread = g.max(axis=1) / g.min(axis=1)
            off = spread > REPLICA_FACTOR
            share = float(off.mean())
            if share >= REPLICA_SHARE:
                step = int(steps[int(np.argmax(off))])
                typical = float(np.median(spread))
                # the replica farthest from the others' median (of two, the one with the larger norm)
                log_g = np.log(g)
                others = np.stack([np.median(np.delete(log_g, i, axis=1), axis=1) for i in range(g.shape[1])], axis=1)
                dev = np.median(log_g - others, axis=0)
                worst = max(range(g.shape[1]), key=lambda i: (round(float(dev[i]) ** 2, 9), float(dev[i])))
                findings.append(
                    Finding(
                        check=NAME,
                        kind="replica_disagree",
                        step=step,
                        value=typical,
                        limit=REPLICA_FACTOR,
                        message=f"the replicas' gradient norms differ {typical:.3g}x (largest / smallest, median over "
                        f"steps {int(steps[0])}-{int(steps[-1])}), beyond {REPLICA_FACTOR:g}x in {share:.0%} of "
                        f"those steps; replica {worst} is the farthest from the others: the replicas do not train "
                        "alike",
                        evidence={
                            "replica": worst,
                            "share": share,
                            "replicas": len(names),
                            "check_cause": "replica_disagree",
                        },
                        cause=f"replica {worst}'s gradients are not like the others': its shard of each batch differs "
                        "(data sharded unevenly, sorted data) or the train_step depends on the replica",
                        fix="shuffle the data before sharding it, or make the train_step the same on every replica",
                        confidence="likely",
                    )
                )
    drift = (trace.info or {}).get("replica_weight_drift")
    if isinstance(drift, dict) and float(drift.get("value") or 0.0) > REPLICA_WEIGHT_RTOL:
        step = max(0, trace.steps - 1)
        findings.append(
            Finding(
                check=NAME,
                kind="replica_drift",
                step=step,
                value=float(drift["value"]),
                limit=REPLICA_WEIGHT_RTOL,
                message=f"the replicas' copies of {drift.get('variable')} differ by {float(drift['value']):.3g} of its "
                f"largest value after training (limit {REPLICA_WEIGHT_RTOL:g}): the replicas drifted apart",
                evidence={**drift, "check_cause": "replica_drift"},
                cause="an update reached some replicas only (a variable created outside the strategy's scope, a "
                "train_step that assigns per replica)",
                fix="create the model and optimizer inside strategy.scope() and update variables through the optimizer",
                confidence="likely",
            )
        )
    return findings


def check_grad_norm(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail at the first step whose gradient norm crosses the limit, or when replicas disagree.

    The norm's result (:func:`check_norms`), with the replicas' findings (:func:`replica_findings`) after its
    own: failed when either has one.
    """
    result = check_norms(trace, thresholds)
    extra = replica_findings(trace, thresholds)
    if not extra:
        return result
    return CheckResult(NAME, FAILED, tuple(result.findings) + tuple(extra), result.detail, result.stats)


def check_norms(trace: Trace, thresholds: Thresholds | None = None) -> CheckResult:
    """Fail at the first step whose gradient norm crosses the limit.

    Returns:
        A result with at most one finding (the first crossing); its evidence
        names the variable with the largest gradient norm at that step and the
        90th percentile of the norms before it (a ``clipnorm`` to try).
        ``stats`` holds ``max`` and ``p99`` of the finite raw norms, and
        ``max_judged``, the largest norm compared with the limit.
    """
    t = thresholds or Thresholds()
    if trace.grad_norm is None:
        return CheckResult(NAME, SKIPPED, detail="the trace has no gradient norms")
    g = trace.grad_norm
    finite = np.isfinite(g)
    stats: dict[str, Any] = {
        "max": float(np.max(g[finite])) if finite.any() else None,
        "p99": float(np.percentile(g[finite], 99)) if finite.any() else None,
    }
    steps = np.arange(g.shape[0])
    ref = None
    clipped_by = None
    if t.max_grad_norm is None:
        g, clipped_by = clipped_norms(trace)
        finite = np.isfinite(g)
        stats["clipped_by"] = clipped_by
    # the largest norm the limit is compared with (after clipping, when the optimizer clips)
    stats["max_judged"] = float(np.max(g[finite])) if finite.any() else None
    if t.max_grad_norm is not None:
        limits = np.full(g.shape[0], float(t.max_grad_norm))
        stats.update(reference=None, limit=float(t.max_grad_norm))
    else:
        ref = reference_norm(g, t)
        first = float(g[0]) if g.size and finite[0] else 0.0
        in_warmup = steps < t.warmup_steps
        limits = np.where(
            in_warmup, t.grad_growth * first if first > 0 else np.inf, t.grad_growth * ref if ref else np.inf
        )
        stats.update(reference=ref, limit=float(t.grad_growth * ref) if ref else None)
        if ref is None and not (in_warmup & finite & (g > limits)).any():
            detail = (
                f"needs at least {t.warmup_steps + 5} steps for an early-training reference norm (or set max_grad_norm)"
                if g.shape[0] < t.warmup_steps + 5
                else "early-training gradient norms are zero; set max_grad_norm"
            )
            return CheckResult(NAME, SKIPPED, stats=stats, detail=detail)
    over = finite & (g > limits)
    if not over.any():
        return CheckResult(NAME, PASSED, stats=stats)
    step = int(np.argmax(over))
    limit = float(limits[step])
    if t.max_grad_norm is not None:
        basis = f"max_grad_norm={limit:g}"
    elif step < t.warmup_steps:
        basis = f"{t.grad_growth:g}x the norm at step 0, {first:.4g}; step {step} is a warmup step"
    else:
        basis = f"{t.grad_growth:g}x the early-training reference {ref:.4g}"
    top_var, top_norm = None, None
    if trace.var_grad_norms is not None and trace.var_names:
        row = np.where(np.isfinite(trace.var_grad_norms[step]), trace.var_grad_norms[step], -np.inf)
        k = int(np.argmax(row))
        top_var, top_norm = trace.var_names[k], float(trace.var_grad_norms[step, k])
    before = g[:step][finite[:step]]
    p90 = float(np.percentile(before, 90)) if before.size else None
    n_over = int(np.count_nonzero(over))
    what = f"gradient norm after {clipped_by}" if clipped_by else "gradient norm"
    msg = f"{what} {g[step]:.4g} at step {step} exceeds {limit:.4g} ({basis})"
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
            "reference": limit / t.grad_growth if t.max_grad_norm is None else None,
            "p90_before": p90,
            "steps_over": n_over,
            "peak": float(np.max(g[over])),
            "clipped_by": clipped_by,
        },
    )
    return CheckResult(NAME, FAILED, (finding,), stats=stats)


def clipped_norms(trace: Trace) -> tuple[np.ndarray, str | None]:
    """The global gradient norm after the optimizer's norm clipping, and what clipped it.

    Returns ``(trace.grad_norm, None)`` when the optimizer does not clip by
    norm (or clips per variable and the trace has no per-variable norms).
    """
    g = np.asarray(trace.grad_norm, dtype=np.float64)
    cfg = (trace.info or {}).get("optimizer_config") or {}
    glob, per_var = cfg.get("global_clipnorm"), cfg.get("clipnorm")
    if isinstance(glob, (int, float)) and not isinstance(glob, bool) and glob > 0:
        return np.minimum(g, float(glob)), f"global_clipnorm={glob:g}"
    if (
        isinstance(per_var, (int, float))
        and not isinstance(per_var, bool)
        and per_var > 0
        and trace.var_grad_norms is not None
        and trace.var_grad_norms.shape == (g.shape[0], len(trace.var_names))
        and trace.var_names
    ):
        with np.errstate(invalid="ignore"):
            clipped = np.sqrt(np.sum(np.minimum(trace.var_grad_norms, float(per_var)) ** 2, axis=1))
        return np.where(np.isfinite(g), clipped, g), f"clipnorm={per_var:g}"
    return g, None


def reference_norm(g: np.ndarray, thresholds: Thresholds) -> float | None:
    """The early-training reference norm (see the module docstring), or None
    when there are fewer than 5 finite norms after the warmup or all are zero.
    """
    t = thresholds
    g = np.asarray(g, dtype=np.float64)
    after = g[t.warmup_steps : t.warmup_steps + t.spike_window]
    after = after[np.isfinite(after)]
    if after.size < 5:
        return None
    initial = g[: t.warmup_steps]
    initial = initial[np.isfinite(initial)]
    ref = max(float(np.median(after)), float(np.median(initial)) if initial.size else 0.0)
    return ref if ref > 0 else None
