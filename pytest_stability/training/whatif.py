"""What-if replay: re-run the same fit with the suggested fix applied before the failure.

When a check fails, the diagnosis names fixes and, where a fix is a change
to the optimizer, a machine-readable form of it (``evidence["fix_configs"]``,
see :mod:`pytest_stability.diagnosis`):

* ``{"epsilon": 1e-3}``, ``{"beta_2": 0.99}``, ``{"clipnorm": 0.33}``: the same
  setting on the optimizer (``{"amsgrad": True}`` is not replayed: it needs
  optimizer state the run did not have);
* ``{"learning_rate_factor": 0.1}``: the learning rate (or the schedule) x 0.1;
* ``{"learning_rate_cap": 0.01}``: the learning rate (or the schedule) at most 0.01.

:func:`replay` puts the model and optimizer back to their state before the
run's first step (kept by the engine with ``keep_initial_state``), sets the
same seed and runs the same ``fit`` again (same data, arguments, callbacks).
At the last read-back at or before ``spike_window`` steps before the failure
it changes the optimizer in place (:func:`apply_fix`) and recompiles the step;
it stops ``4 x spike_window`` steps past the failure.  The model ends in the
state it had after the original run.  The checks judge the replayed trace.

A replay with an empty fix reproduces the original run exactly (tested): that
is what makes "no spike after the fix" evidence rather than noise.
:func:`attach_whatif` tries the findings' fixes, one of each kind, in step
order and in the order the message gives them (at most :data:`MAX_ATTEMPTS`),
and stops at the first that resolves the run.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..framework_types import Data, Model, Optimizer, Tensor
from ..trace import Trace
from . import engine
from .recorders import host_numpy
from .state import restore_state, take_state

if TYPE_CHECKING:
    from ..checks.base import CheckResult, Finding
    from ..options import RunSpec
    from ..thresholds import Thresholds

#: steps replayed after the failure (in units of spike_window), so a spike that is only delayed still shows.
AFTER_WINDOWS = 4
#: fixes that change the learning rate (or its schedule), not a setting of the same name
LEARNING_RATE_KEYS = frozenset({"learning_rate_factor", "learning_rate_cap"})
#: distinct fixes replayed at most, per run (a fix that cannot be replayed is reported and not counted).
MAX_ATTEMPTS = 2


class NotReplayable(Exception):
    """The replay cannot be done faithfully; the message says why (reported, never raised to the test)."""


@dataclass
class Replay:
    """What a replay did: the fix, the steps replayed and the spliced trace."""

    fix: dict[str, Any]
    fix_text: str
    start: int
    end: int
    trace: Trace


def describe_fix(optimizer_name: str, fix: dict[str, Any]) -> str:
    """``Adam(epsilon=0.001)``, ``SGD(clipnorm=0.33)``, ``SGD(learning_rate x 0.1)``."""
    parts = []
    for k, v in fix.items():
        if k == "learning_rate_factor":
            parts.append(f"learning_rate x {v:.3g}")
        elif k == "learning_rate_cap":
            parts.append(f"learning_rate at most {v:.3g}")
        else:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return f"{optimizer_name}({', '.join(parts)})"


def replay_window(failure_step: int, steps_planned: int, window: int) -> int:
    """The step the replay runs to: :data:`AFTER_WINDOWS` spike windows past the failure."""
    return min(steps_planned, failure_step + AFTER_WINDOWS * max(int(window), 1) + 1)


def apply_fix(keras: ModuleType, model: Model, fix: dict[str, Any]) -> None:
    """Change the model's optimizer *in place* as ``fix`` says (mid-``fit``; the caller recompiles the step).

    Raises:
        NotReplayable: a fix that needs new optimizer state (``amsgrad``), or a
            setting the optimizer does not have.
    """
    opt = model.optimizer
    inner = opt.inner_optimizer if isinstance(opt, keras.optimizers.LossScaleOptimizer) else opt
    for key, value in fix.items():
        if key in LEARNING_RATE_KEYS:
            # x factor, or at most cap: a schedule through a wrapper, a constant rate now
            factor = float(value) if key == "learning_rate_factor" else 1.0
            cap = float(value) if key == "learning_rate_cap" else None
            schedule = getattr(inner, "_learning_rate", None)
            if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
                inner._learning_rate = _changed_schedule(keras, schedule, factor=factor, cap=cap)
            else:
                rate = float(host_numpy(inner.learning_rate)) * factor
                inner.learning_rate = rate if cap is None else min(rate, cap)
        elif key == "amsgrad":
            raise NotReplayable("amsgrad=True needs optimizer state the run did not have (the maximum of v)")
        elif not hasattr(inner, key):
            raise NotReplayable(f"{type(inner).__name__} has no {key!r} setting")
        else:
            setattr(inner, key, value)
            if key == "clipnorm":  # Keras allows one of clipnorm / global_clipnorm / clipvalue
                inner.global_clipnorm = None
                inner.clipvalue = None


def _changed_schedule(
    keras: Any, schedule: Callable[[Tensor], Tensor], factor: float = 1.0, cap: float | None = None
) -> Callable[[Tensor], Tensor]:
    """``schedule`` x ``factor``, at most ``cap``."""

    class Changed(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]  # Keras is untyped
        def __call__(self, step: Tensor) -> Tensor:
            rate = schedule(step) * factor if factor != 1.0 else schedule(step)
            return rate if cap is None else keras.ops.minimum(rate, cap)

        def get_config(self) -> dict[str, Any]:  # pragma: no cover - never serialised
            return {"factor": factor, "cap": cap}

    return Changed()


def _fixable(keras: ModuleType, model: Model, fix: dict[str, Any]) -> None:
    opt = model.optimizer
    inner = opt.inner_optimizer if isinstance(opt, keras.optimizers.LossScaleOptimizer) else opt
    for key in fix:
        if key == "amsgrad":
            raise NotReplayable("amsgrad=True needs optimizer state the run did not have (the maximum of v)")
        if key not in LEARNING_RATE_KEYS and not hasattr(inner, key):
            raise NotReplayable(f"{type(inner).__name__} has no {key!r} setting")


def replay(
    model: Model,
    result: engine.RunResult,
    *,
    fix: dict[str, Any],
    failure_step: int,
    window: int,
    x: Data,
    y: Data,
    fit_kwargs: dict[str, Any],
    batch_size: int | None,
    seed: int,
    spec: RunSpec,
) -> Replay:
    """Re-run the same training from its first step, with ``fix`` applied from ``window`` steps before the failure.

    The model and optimizer are put back to their state before the original
    run's first step, the seed is set again, and the user's ``fit`` runs with
    the same arguments: a deterministic run retraces the same steps, so the
    replay differs from the original only from the step the fix is applied
    (an empty fix reproduces the run bit for bit, tested).  The model ends in
    the state it had after the original run.

    Raises:
        NotReplayable: one-shot data, no initial state, a fix the optimizer has no setting for.
    """
    keras = engine.import_keras()
    trace = result.trace
    if result.initial_state is None:
        raise NotReplayable("the state before the first step was not kept")
    if result.data_kind == "generator":
        raise NotReplayable("a generator can be read only once, so its batches cannot be replayed")
    _fixable(keras, model, fix)
    start = max(0, failure_step - window)
    until = replay_window(failure_step, trace.steps_planned or trace.steps, window)
    final = take_state(model)
    saved_config = optimizer_settings(keras, model)
    try:
        restore_state(model, result.initial_state)
        kwargs = dict(fit_kwargs)
        # shorter chunks, so that an execution boundary falls close before `start`: the fix goes in at the
        # last one at or before it (chunking does not change the numbers: same steps, same order)
        spec = spec.replace(readback_every=max(1, min(int(spec.readback_every), max(1, window // 2))), curvature=False)
        # the replay's warnings are the original run's again: it is the plugin's own extra run, not the user's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rerun = engine.train(
                model,
                x,
                y,
                fit_kwargs=kwargs,
                steps=trace.steps_planned or trace.steps,
                seed=seed,
                spec=spec,
                batch_size=batch_size,
                stop_after=until,
                random_start=result.random_start,
                fix_at=(start, lambda m: apply_fix(keras, m, fix)) if fix else None,
            )
    finally:
        restore_optimizer_settings(model, saved_config)
        restore_state(model, final)
    new = rerun.trace
    info = dict(trace.info or {})
    info.update({k: v for k, v in (new.info or {}).items() if k == "fix_applied_at"})
    # the checks judge the replayed steps with the optimizer they ran with (clipnorm: the clipped norm)
    config = dict(info.get("optimizer_config") or {})
    config.update({k: v for k, v in fix.items() if k not in LEARNING_RATE_KEYS})
    if "clipnorm" in fix:
        config["global_clipnorm"] = None
    info["optimizer_config"] = config
    new.info = info
    # the fix goes in at the latest read-back at or before `start` (a chunk boundary)
    applied_at = int(rerun.trace.info.get("fix_applied_at", start)) if fix else start
    new.info["fix_applied_at"] = applied_at
    return Replay(
        dict(fix), describe_fix(info.get("optimizer", "optimizer"), fix), min(applied_at, new.steps), new.steps, new
    )


def optimizer_settings(keras: ModuleType, model: Model) -> tuple[Optimizer, dict[str, Any]]:
    """The optimizer settings :func:`apply_fix` may change (the learning-rate schedule object included), to put
    back with :func:`restore_optimizer_settings`; variable values (the learning rate) go back with the state."""
    opt = model.optimizer
    inner = opt.inner_optimizer if isinstance(opt, keras.optimizers.LossScaleOptimizer) else opt
    keys = ("epsilon", "beta_2", "clipnorm", "global_clipnorm", "clipvalue", "weight_decay", "_learning_rate")
    return inner, {k: getattr(inner, k) for k in keys if hasattr(inner, k)}


def restore_optimizer_settings(model: Model, saved: tuple[Optimizer, dict[str, Any]]) -> None:
    inner, values = saved
    for k, v in values.items():
        object.__setattr__(inner, k, v) if k == "_learning_rate" else setattr(inner, k, v)


def verdict(rep: Replay, check_results: list[CheckResult]) -> dict[str, Any]:
    """Builtins summary of a replay judged by ``check_results`` (run on ``rep.trace``)."""
    after = [f for r in check_results for f in r.findings if f.step >= rep.start]
    after.sort(key=lambda f: f.step)
    head = f"replayed steps {rep.start}-{rep.end - 1} with {rep.fix_text}"
    if after:
        first = after[0]
        text = f"{head}: still unstable: [{first.check}] step {first.step}: {first.message}"
    else:
        judged = ", ".join(r.name for r in check_results if r.status != "skipped")
        text = f"{head}: no finding ({judged} pass on the replayed steps)"
    loss = rep.trace.loss[rep.start : rep.end]
    loss = loss[np.isfinite(loss)]
    return {
        "fix": rep.fix,
        "fix_text": rep.fix_text,
        "start": rep.start,
        "end": rep.end - 1,
        "resolved": not after,
        "still_failing": sorted({f.check for f in after}),
        "first_left": [after[0].check, after[0].kind, int(after[0].step)] if after else None,
        "final_loss": float(loss[-1]) if loss.size else math.nan,
        "text": text,
    }


#: a learning rate this many times lower that leaves the same failure at the same step did not cause it
RATE_REFUTED = 0.1


def rate_refuted(attempt: dict[str, Any], target: Finding) -> bool:
    """Whether ``attempt`` (:func:`verdict`'s) lowered the learning rate :data:`RATE_REFUTED` x or more and the
    replay still failed first with ``target``'s check and kind, no later than ``target``: a failure the rate does
    not even delay is not the rate's (a NaN at step 1 from a loss unsafe on the saturated outputs of the first
    batches fails at step 1 at a hundredth of the rate too)."""
    factor = (attempt.get("fix") or {}).get("learning_rate_factor")
    first = attempt.get("first_left")
    return (
        isinstance(factor, (int, float))
        and 0 < factor <= RATE_REFUTED
        and first is not None
        and (first[0], first[1]) == (target.check, target.kind)
        and first[2] <= target.step
    )


def rate_not_held(rep: Replay, original: Trace) -> tuple[int, float] | None:
    """The first replayed step at which a learning-rate fix did not hold, with the rate that step ran at: above
    the cap, or (a factor) the original run's own rate again, as a callback that sets the rate each epoch
    (``LearningRateScheduler``) or the ``train_step`` makes it; None when it held, or for another fix."""
    lr = rep.trace.lr
    if lr is None or not set(rep.fix) & LEARNING_RATE_KEYS:
        return None
    a, b = rep.start, min(rep.end, lr.shape[0])
    with np.errstate(invalid="ignore"):
        if "learning_rate_cap" in rep.fix:
            bad = np.flatnonzero(lr[a:b] > float(rep.fix["learning_rate_cap"]) * (1 + 1e-5))
        else:
            if original.lr is None:
                return None
            b = min(b, original.lr.shape[0])
            own, factor = original.lr[a:b], float(rep.fix["learning_rate_factor"])
            bad = np.flatnonzero(np.isclose(lr[a:b], own, rtol=1e-5) & ~np.isclose(own * factor, own, rtol=1e-5))
    if not bad.size:
        return None
    k = a + int(bad[0])
    return k, float(lr[k])


def attach_whatif(
    results: list[CheckResult],
    model: Model,
    result: engine.RunResult,
    thresholds: Thresholds,
    spec: RunSpec,
    **data: Any,
) -> list[CheckResult]:
    """Replay the suggested optimizer fixes; attach the outcome to the first finding as ``evidence["whatif"]``.

    The findings' ``fix_configs`` are tried primary finding first (``evidence["rank"]``), then in step order,
    one per kind
    (``clipnorm``, ``learning_rate_factor``, ``epsilon``...), each from a
    snapshot before its own finding, at most :data:`MAX_ATTEMPTS` of them,
    stopping at the first that resolves the run.  ``results`` are
    diagnosed check results of ``result`` (the run of ``model``); ``data`` are
    :func:`replay`'s data keywords.  Returns the results with the first
    finding replaced.  A replay that cannot be done says why in the note
    (``resolved`` None) instead of raising.
    """
    from ..checks import run_checks

    # the primary finding first (its first fix is the first suggested fix), then the others in step order
    findings = sorted(
        (f for r in results for f in r.findings), key=lambda f: (f.evidence.get("rank", 1_000_000), f.step)
    )
    if not findings:
        return results
    tries: list[tuple[dict[str, Any], int]] = []
    kinds: set[tuple[str, ...]] = set()
    for f in findings:
        for fix in f.evidence.get("fix_configs") or ():
            kind = tuple(sorted(fix))
            if kind not in kinds:
                kinds.add(kind)
                # before the root event the diagnosis names (fix_from), else the finding's own start
                tries.append((fix, int(f.evidence.get("fix_from", f.evidence.get("start", f.step)))))
    attempts: list[dict[str, Any]] = []
    replayed = 0
    for fix, start in tries:
        if replayed == MAX_ATTEMPTS:
            break
        try:
            rep = replay(model, result, fix=fix, failure_step=start, window=thresholds.spike_window, spec=spec, **data)
        except NotReplayable as exc:
            attempts.append({"fix": fix, "resolved": None, "text": f"not replayed with {fix}: {exc}"})
            continue
        except Exception as exc:  # the replay is advice: a failure in it must not fail or hide the run's verdict
            replayed += 1
            attempts.append(
                {
                    "fix": fix,
                    "resolved": None,
                    "text": f"the replay with {fix} failed: {type(exc).__name__}: {str(exc)[:300]}",
                }
            )
            continue
        replayed += 1
        overwritten = rate_not_held(rep, result.trace)
        if overwritten is not None:  # the replay did not run the fix: no verdict on it either way
            step, rate = overwritten
            attempts.append(
                {
                    "fix": fix,
                    "resolved": None,
                    "text": f"not judged with {rep.fix_text}: the learning rate was {rate:.3g} again at step {step} "
                    "of the replay (a callback or the train_step sets it): apply the fix there",
                }
            )
            continue
        # val_loss needs validation during the replay, which it does not run
        names = tuple(c for c in spec.checks if c != "val_loss")
        attempts.append(verdict(rep, run_checks(rep.trace, thresholds, names)))
        if attempts[-1]["resolved"]:
            break
        if rate_refuted(attempts[-1], findings[0]):
            attempts[-1]["rate_refuted"] = True
            attempts[-1]["text"] += (
                f" (the same failure, no later, at {fix['learning_rate_factor']:g} x the rate: the learning rate did "
                "not cause it; look at the data, the loss and the initialisation)"
            )
    if not attempts:
        note: dict[str, Any] = {
            "resolved": None,
            "attempts": [],
            "text": "nothing to replay: the suggested fix is not an optimizer setting (data, loss, model or callbacks)",
        }
    else:
        done = [a["resolved"] for a in attempts if a["resolved"] is not None]
        note = {
            "resolved": any(done) if done else None,
            "attempts": attempts,
            "text": "; then ".join(a["text"] for a in attempts),
        }
    target = findings[0]
    fix = target.fix
    if any(f.check in ("loss_spike", "grad_norm") for f in findings):
        # would a skip-step guard (the rule large-model trainers run) have saved the run?
        guard = guard_verdict(model, result, thresholds, spec, **data)
        note["guard"] = guard
        note["text"] += "; " + guard["text"]
        if guard["resolved"]:
            fix = (fix + "; or " if fix else "") + guard["fix"]
    evidence = {**target.evidence, "whatif": note}
    if fix != target.fix and "fixes" in evidence:  # the guard saved the run: offered after the others
        evidence["fixes"] = [*evidence["fixes"], {"text": note["guard"]["fix"], "config": None, "note": False}]
    out = []
    for r in results:
        if target in r.findings:
            fs = tuple(dataclasses.replace(f, evidence=evidence, fix=fix) if f is target else f for f in r.findings)
            r = type(r)(r.name, r.status, fs, r.detail, r.stats)
        out.append(r)
    return out


def guard_replay(
    model: Model,
    result: engine.RunResult,
    *,
    window: int,
    sigmas: float,
    x: Data,
    y: Data,
    fit_kwargs: dict[str, Any],
    batch_size: int | None,
    seed: int,
    spec: RunSpec,
) -> engine.RunResult:
    """The same run again from its first step, its optimizer wrapped in a :class:`~.guard.SkipStepGuard`.  The
    model ends as the original run left it.

    Raises:
        NotReplayable: one-shot data, no initial state, a loss-scale optimizer (its overflows are not outliers
            to skip), several optimizers.
    """
    from .guard import SkipStepGuard

    keras = engine.import_keras()
    if result.initial_state is None:
        raise NotReplayable("the state before the first step was not kept")
    if result.data_kind == "generator":
        raise NotReplayable("a generator can be read only once, so its batches cannot be replayed")
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotReplayable("the optimizer is a loss-scale optimizer, whose overflows are skipped already")
    if result.trace.optimizers:
        raise NotReplayable("the model is trained by several optimizers")
    trace = result.trace
    final = take_state(model)
    original = model.optimizer
    try:
        restore_state(model, result.initial_state)
        guarded = SkipStepGuard(original, window=window, sigmas=sigmas)
        guarded.build(model.trainable_variables)
        model.optimizer = guarded
        with warnings.catch_warnings():  # the plugin's own extra run: its warnings are the original's again
            warnings.simplefilter("ignore")
            return engine.train(
                model,
                x,
                y,
                fit_kwargs=dict(fit_kwargs),
                steps=trace.steps_planned or trace.steps,
                seed=seed,
                spec=spec.replace(curvature=False),
                batch_size=batch_size,
                random_start=result.random_start,
            )
    finally:
        model.optimizer = original
        model.train_function = None
        restore_state(model, final)


def guard_verdict(
    model: Model, result: engine.RunResult, thresholds: Thresholds, spec: RunSpec, **data: Any
) -> dict[str, Any]:
    """Whether the run passes with a skip-step guard, which steps it skipped, and the fix to offer; builtins."""
    from ..checks import run_checks

    window, sigmas = int(spec.skip_step_window), float(spec.skip_step_sigmas)
    rule = f"a skip-step guard ({sigmas:g} standard deviations over {window} steps)"
    try:
        rerun = guard_replay(model, result, window=window, sigmas=sigmas, spec=spec, **data)
    except NotReplayable as exc:
        return {"resolved": None, "skipped": [], "text": f"not replayed with {rule}: {exc}"}
    except Exception as exc:  # advice: never fail or hide the run's verdict
        return {
            "resolved": None,
            "skipped": [],
            "text": f"the replay with {rule} failed: {type(exc).__name__}: {str(exc)[:300]}",
        }
    trace = rerun.trace
    # a skipped step applied no update although its gradients were finite and not zero
    ratio, gnorm = trace.update_ratio, trace.grad_norm
    skipped = (
        []
        if ratio is None or gnorm is None
        else [int(k) for k in np.flatnonzero((ratio == 0) & np.isfinite(gnorm) & (gnorm > 0))]
    )
    names = tuple(c for c in spec.checks if c != "val_loss")
    # a finding at a step the guard skipped is the guard doing its job: that batch's loss and gradients were
    # seen, its update was not applied
    absorbed = set(skipped)
    left = sorted(
        (f for r in run_checks(trace, thresholds, names) for f in r.findings if f.step not in absorbed),
        key=lambda f: f.step,
    )
    where = ", ".join(str(k) for k in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
    head = f"with {rule} from the first step, {len(skipped)} step(s) skipped" + (f" ({where})" if skipped else "")
    # a run that passes because most of its updates were skipped did not train: not saved
    most = len(skipped) > thresholds.max_skipped_fraction * max(trace.steps, 1)
    if left:
        text = f"{head}: still unstable: [{left[0].check}] step {left[0].step}: {left[0].message}"
    elif most:
        text = (
            f"{head}: no finding left, but more than {thresholds.max_skipped_fraction:.0%} of the "
            f"{trace.steps} updates did not happen, so the guard does not save this run"
        )
    else:
        text = f"{head}: the run passes"
    optimizer = (result.trace.info or {}).get("optimizer", "optimizer")
    return {
        "resolved": not left and not most,
        "skipped": skipped,
        "window": window,
        "sigmas": sigmas,
        "text": text,
        "fix": f"guard the optimizer: SkipStepGuard({optimizer}(...), window={window}, sigmas={sigmas:g}) "
        f"(from pytest_stability import SkipStepGuard; it skipped {len(skipped)} step(s) in the replay)",
    }
