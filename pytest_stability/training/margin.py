"""Learning-rate stability margin: how far a run is from the edge, as one number a short CI run can gate on.

From the state the run ended in, the same ``fit`` continues for ``margin_steps``
steps with the learning rate (or the schedule) multiplied by a factor, and the
checks judge the continuation (``loss_spike``, ``nonfinite``, ``grad_norm``,
with the run's last ``spike_window`` steps as their history).  Factors double
from 2 up to ``margin_max_factor`` until one fails, then two geometric
bisections narrow the edge.  The margin is the largest factor that stayed
stable: "stability margin 3.4x (at 4.8x: loss_spike at step 212)".  Every
probe starts from the same end state (restored from a host copy) and the model
is put back afterwards.

A run that was already unstable has margin < 1 (reported as 0, "unstable at
1x"): its end state is past the edge, so no probe from it means anything.

Cost: one recompile plus ``margin_steps`` steps per probe (at most
``log2(margin_max_factor) + 2`` probes); the report gives the wall time.
Probes run without validation data and without the user's callbacks (an
epoch-based learning-rate callback would override the factor being probed).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..framework_types import Data, Model
from ..trace import Trace
from . import engine
from .state import restore_state, take_state
from .whatif import apply_fix, optimizer_settings, restore_optimizer_settings

if TYPE_CHECKING:
    from ..options import RunSpec
    from ..thresholds import Thresholds
    from .engine import RunResult

#: geometric bisection steps between the last stable and the first unstable factor
BISECTIONS = 2
#: the checks that judge a probe (no validation runs during it)
PROBE_CHECKS = ("loss_spike", "nonfinite", "grad_norm")


def _tail_plus(trace: Trace, probe: Trace, window: int) -> tuple[Trace, int]:
    """The run's last ``window`` steps followed by the probe's, as one trace (the checks' history)."""
    k = min(window, trace.steps)

    def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return None
        return np.concatenate([a[trace.steps - k :], b])

    info = dict(trace.info or {})
    joined = Trace(
        loss=np.concatenate([trace.loss[trace.steps - k :], probe.loss]),
        grad_norm=cat(trace.grad_norm, probe.grad_norm),
        nonfinite=cat(trace.nonfinite, probe.nonfinite),
        lr=cat(trace.lr, probe.lr),
        steps_planned=k + probe.steps,
        info=info,
    )
    return joined, k


def lr_margin(
    model: Model,
    result: RunResult,
    *,
    x: Data,
    y: Data,
    fit_kwargs: dict[str, Any],
    spec: RunSpec,
    thresholds: Thresholds,
    seed: int,
    ok: bool,
) -> dict[str, Any]:
    """Search the learning-rate margin of a finished run (see the module docstring); builtins only."""
    from ..checks import run_checks

    started = time.perf_counter()
    trace = result.trace
    if not ok:
        return {
            "value": 0.0,
            "stable_at_1x": False,
            "probes": [],
            "seconds": 0.0,
            "text": "stability margin < 1x: the run is already unstable at its own learning rate",
        }
    keras = engine.import_keras()
    kwargs = {
        k: v
        for k, v in fit_kwargs.items()
        if k
        not in (
            "validation_data",
            "validation_split",
            "validation_freq",
            "validation_steps",
            "validation_batch_size",
            "callbacks",
            "epochs",
            "initial_epoch",
        )
    }
    steps = int(spec.margin_steps)
    probe_spec = spec.replace(whatif=False, margin=False, curvature=False)
    window = int(thresholds.spike_window)
    final = take_state(model)
    probes: list[dict[str, Any]] = []

    def probe(factor: float) -> bool:
        try:
            restore_state(model, final)
            apply_fix(keras, model, {"learning_rate_factor": factor})
            with warnings.catch_warnings():  # the probe's warnings are the run's again (the plugin's own extra run)
                warnings.simplefilter("ignore")
                run = engine.train(model, x, y, fit_kwargs=dict(kwargs), steps=steps, seed=seed, spec=probe_spec)
        finally:
            restore_optimizer_settings(model, saved)
            restore_state(model, final)
        joined, k = _tail_plus(trace, run.trace, window)
        findings = sorted(
            (f for r in run_checks(joined, thresholds, PROBE_CHECKS) for f in r.findings if f.step >= k),
            key=lambda f: f.step,
        )
        first = findings[0] if findings else None
        probes.append(
            {
                "factor": factor,
                "stable": first is None,
                "steps": run.trace.steps,
                "check": first.check if first else None,
                "step": (trace.steps + first.step - k) if first else None,
            }
        )
        return first is None

    saved = optimizer_settings(keras, model)
    good, bad = 1.0, None
    factor = 2.0
    while factor <= float(spec.margin_max_factor) + 1e-9:
        if probe(factor):
            good = factor
            factor *= 2.0
        else:
            bad = factor
            break
    if bad is not None:
        for _ in range(BISECTIONS):
            mid = math.sqrt(good * bad)
            if probe(mid):
                good = mid
            else:
                bad = mid
    seconds = time.perf_counter() - started
    value = good
    if bad is None:
        text = (
            f"stability margin >= {value:.3g}x (stable up to the largest factor searched, "
            f"margin_max_factor={spec.margin_max_factor:g})"
        )
    else:
        failed = next(p for p in probes if p["factor"] == bad)
        text = f"stability margin {value:.3g}x (at {bad:.3g}x: {failed['check']} at step {failed['step']})"
    return {
        "value": float(value),
        "stable_at_1x": True,
        "upper": float(bad) if bad is not None else None,
        "capped": bad is None,
        "probes": probes,
        "seconds": float(seconds),
        "steps_per_probe": steps,
        "text": f"{text}; {len(probes)} probes of {steps} steps in {seconds:.1f} s",
    }


__all__ = ["lr_margin", "BISECTIONS", "PROBE_CHECKS"]
