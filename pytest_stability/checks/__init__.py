"""The five stability checks: pure numpy functions over a :class:`~pytest_stability.trace.Trace`.

>>> import numpy as np
>>> from pytest_stability.checks import run_checks
>>> from pytest_stability.trace import Trace
>>> loss = np.exp(-np.linspace(0, 3, 200)); loss[150:156] = 10.0
>>> [r.status for r in run_checks(Trace(loss=loss))]
['failed', 'passed', 'skipped', 'skipped', 'passed']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ..thresholds import CHECK_NAMES
from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds
from .gradients import check_grad_norm
from .nonfinite import check_nonfinite
from .spikes import check_loss_spike, spike_scores
from .stuck import check_stuck
from .validation import check_val_loss, smooth

CheckFn = Callable[[Trace, Thresholds], CheckResult]

#: name -> function, in report order.  Names are used everywhere (messages,
#: JSON, marker ``checks=``) and never change.
_FUNCTIONS: dict[str, CheckFn] = {
    "loss_spike": check_loss_spike,
    "nonfinite": check_nonfinite,
    "grad_norm": check_grad_norm,
    "val_loss": check_val_loss,
    "stuck": check_stuck,
}
#: in thresholds.CHECK_NAMES' order: the one list of check names (a name without a function fails here, at import)
CHECKS: dict[str, CheckFn] = {name: _FUNCTIONS[name] for name in CHECK_NAMES}


def run_checks(
    trace: Trace, thresholds: Thresholds | None = None, checks: Iterable[str] | None = None
) -> list[CheckResult]:
    """Run the named checks (all by default) over ``trace``.

    Checks not selected are returned as skipped ("not selected") so reports
    always list all of them.  When training stopped early at a non-finite value,
    the other checks judge only the steps before it.
    """
    thresholds = thresholds or Thresholds()
    selected = set(CHECKS if checks is None else checks)
    unknown = selected - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; expected names from {list(CHECKS)}")
    results = []
    for name, fn in CHECKS.items():
        if name not in selected:
            results.append(CheckResult(name, SKIPPED, detail="not selected"))
        elif name == "loss_spike" and set(trace.loss_curves) != {"loss"}:
            results.append(
                _per_view(
                    name, fn, [(curve, curve_view(trace, curve)) for curve in trace.loss_curves], thresholds, "curve"
                )
            )
        elif name == "grad_norm" and len(trace.optimizers) > 1:
            results.append(
                _per_view(
                    name, fn, [(opt, optimizer_view(trace, opt)) for opt in trace.optimizers], thresholds, "optimizer"
                )
            )
        else:
            results.append(fn(trace, thresholds))
    return results


def curve_view(trace: Trace, curve: str) -> Trace:
    """``trace`` with the loss curve ``curve`` (``trace.loss_curves``) as its loss, and, when one optimizer's
    name shares the curve's prefix (``d_loss`` and ``d_optimizer``), that optimizer's statistics as its own."""
    view = replace(trace, loss=trace.loss_curves[curve], curves={}, info={**trace.info, "loss_curve": curve})
    if curve != "loss":
        opt = matching_optimizer(trace, curve)
        if opt is not None:
            view = optimizer_view(view, opt)
    return view


def matching_optimizer(trace: Trace, curve: str) -> str | None:
    """The optimizer a loss curve belongs to by name (``d_loss``: ``d_optimizer``; ``generator_loss``:
    ``generator_optimizer``), when exactly one shares its prefix."""
    prefix = curve[: -len("loss")].rstrip("_") if curve.endswith("loss") else curve
    if not prefix:
        return None
    found = [name for name in trace.optimizers if name.startswith(prefix)]
    return found[0] if len(found) == 1 else None


def optimizer_view(trace: Trace, name: str) -> Trace:
    """``trace`` with optimizer ``name``'s gradient norms, updates and learning rate (``trace.optimizers``)
    as its own, and its variables' columns only."""
    stats = trace.optimizers[name]
    start, stop = (trace.info.get("optimizer_columns") or {}).get(name, (0, len(trace.var_names)))
    cols = slice(int(start), int(stop))
    info = dict(
        trace.info,
        optimizer=(trace.info.get("optimizers") or {}).get(name, trace.info.get("optimizer")),
        optimizer_name=name,
        optimizer_config=(trace.info.get("optimizer_configs") or {}).get(name, trace.info.get("optimizer_config")),
    )
    return replace(
        trace,
        grad_norm=stats["grad_norm"],
        update_ratio=stats["update_ratio"],
        lr=stats["lr"],
        var_grad_norms=None if trace.var_grad_norms is None else trace.var_grad_norms[:, cols],
        var_update_ratio=None if trace.var_update_ratio is None else trace.var_update_ratio[:, cols],
        var_names=trace.var_names[cols],
        optimizers={},
        info=info,
    )


def _per_view(name: str, fn: CheckFn, views: list[tuple[str, Trace]], thresholds: Thresholds, key: str) -> CheckResult:
    """One check run on each view (each loss curve, each optimizer), as one result: failed when any view
    fails, each finding naming its view (``evidence[key]``, and its message's first word)."""
    results = [(label, fn(view, thresholds)) for label, view in views]
    findings = []
    for label, r in results:
        for f in r.findings:
            findings.append(replace(f, message=f"{label}: {f.message}", evidence={**f.evidence, key: label}))
    findings.sort(key=lambda f: f.step)
    ran = [(label, r) for label, r in results if r.status != SKIPPED]
    status = FAILED if findings else (PASSED if ran else SKIPPED)
    detail = "; ".join(f"{label}: {r.detail}" for label, r in results if r.detail)
    stats: dict[str, Any] = {}
    for _label, r in ran:  # the headline statistics: the largest of the views'
        for k, v in r.stats.items():
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (not isinstance(stats.get(k), (int, float)) or v > stats[k])
            ):
                stats[k] = v
            else:
                stats.setdefault(k, v)
    stats[f"{key}s"] = [label for label, _ in views]
    return CheckResult(name, status, tuple(findings), detail, stats)


__all__ = [
    "CHECKS",
    "FAILED",
    "PASSED",
    "SKIPPED",
    "CheckResult",
    "Finding",
    "Thresholds",
    "check_grad_norm",
    "check_loss_spike",
    "check_nonfinite",
    "check_stuck",
    "check_val_loss",
    "curve_view",
    "matching_optimizer",
    "optimizer_view",
    "run_checks",
    "smooth",
    "spike_scores",
]
