"""The one pipeline: train -> judge (checks) -> diagnose -> what-if replay.

Used by the ``stability`` fixture and by ``benchmarks/`` alike, so that what
the benchmarks measure is what the fixture does.  Imports the training layer
lazily: importing this module imports no framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Outcome:
    """A trained run and its diagnosed check results."""

    result: Any  # training.engine.RunResult
    results: list[Any]  # checks.base.CheckResult, with diagnosed findings (and the what-if note)


def judge(trace: Any, thresholds: Any, checks: Any = None) -> list[Any]:
    """Run the checks on ``trace`` and diagnose every finding (pure: no framework)."""
    from .checks import run_checks
    from .diagnosis import diagnose

    results = run_checks(trace, thresholds, checks) if checks is not None else run_checks(trace, thresholds)
    return [type(r)(r.name, r.status, tuple(diagnose(r.findings, trace)), r.detail, r.stats) if r.findings else r
            for r in results]


def run(model: Any, x: Any, y: Any, *, fit_kwargs: dict[str, Any], steps: int, seed: int, spec: Any,
        thresholds: Any, batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> Outcome:
    """Train ``model`` with its own fit (see :func:`~pytest_stability.training.engine.train`), judge and
    diagnose the trace, and with ``spec.whatif`` replay the suggested fixes of a failing run."""
    from .training import engine

    result = engine.train(model, x, y, fit_kwargs=fit_kwargs, steps=steps, seed=seed, spec=spec,
                          batch_size=batch_size, progress=progress, keep_initial_state=spec.whatif)
    results = judge(result.trace, thresholds, spec.checks)
    if spec.whatif and any(r.findings for r in results):
        from .training.whatif import attach_whatif

        results = attach_whatif(results, model, result, thresholds, spec, x=x, y=y, fit_kwargs=fit_kwargs,
                                batch_size=batch_size, seed=seed)
    return Outcome(result, results)


__all__ = ["Outcome", "judge", "run"]
