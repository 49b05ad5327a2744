"""The five stability checks: pure numpy functions over a :class:`~pytest_stability.trace.Trace`.

>>> import numpy as np
>>> from pytest_stability.checks import run_checks
>>> from pytest_stability.trace import Trace
>>> loss = np.exp(-np.linspace(0, 3, 200)); loss[150:156] = 10.0
>>> [r.status for r in run_checks(Trace(loss=loss))]
['failed', 'passed', 'skipped', 'skipped', 'passed']
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..trace import Trace
from .base import FAILED, PASSED, SKIPPED, CheckResult, Finding, Thresholds
from .gradients import check_grad_norm
from .nonfinite import check_nonfinite
from .spikes import check_loss_spike, spike_scores
from ..thresholds import CHECK_NAMES
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


def run_checks(trace: Trace, thresholds: Thresholds | None = None,
               checks: Iterable[str] | None = None) -> list[CheckResult]:
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
        else:
            results.append(fn(trace, thresholds))
    return results


__all__ = [
    "CHECKS", "FAILED", "PASSED", "SKIPPED", "CheckResult", "Finding", "Thresholds",
    "check_grad_norm", "check_loss_spike", "check_nonfinite", "check_stuck", "check_val_loss",
    "run_checks", "smooth", "spike_scores",
]
