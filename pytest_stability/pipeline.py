"""The one pipeline: train -> judge (checks) -> diagnose -> what-if replay.

Used by the ``stability`` fixture and by ``benchmarks/`` alike, so that what
the benchmarks measure is what the fixture does.  Imports the training layer
lazily: importing this module imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .framework_types import Data, Model

if TYPE_CHECKING:  # the training layer imports Keras: at run time it is imported where it is used
    from .checks.base import CheckResult, Finding
    from .options import RunSpec
    from .thresholds import Thresholds
    from .trace import Trace
    from .training.batches import BatchPlan
    from .training.engine import RunResult, StoppedRun


@dataclass
class Outcome:
    """A trained run and its diagnosed check results."""

    result: RunResult
    results: list[CheckResult]  # with diagnosed findings (and the what-if note)


def judge(trace: Trace, thresholds: Thresholds, checks: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the checks on ``trace`` and diagnose every finding (pure: no framework)."""
    from .checks import run_checks
    from .diagnosis import rank_findings

    results = run_checks(trace, thresholds, checks) if checks is not None else run_checks(trace, thresholds)
    # one primary cause per run: the failed checks' findings are diagnosed once, with each other as context,
    # and ranked (evidence["rank"], 0 = the headline; see rank_findings); any other finding on its own
    failed = [r for r in results if r.status == "failed" and r.findings]
    ranked = {(f.check, f.kind, f.step): f for f in rank_findings(failed, trace, thresholds)} if failed else {}
    failed_ids = {id(r) for r in failed}
    return [
        type(r)(
            r.name, r.status, tuple(ranked.get((f.check, f.kind, f.step), f) for f in r.findings), r.detail, r.stats
        )
        if id(r) in failed_ids
        else type(r)(r.name, r.status, tuple(_diagnosed(r.findings, trace, thresholds)), r.detail, r.stats)
        if r.findings
        else r
        for r in results
    ]


def _diagnosed(findings: Sequence[Finding], trace: Trace, thresholds: Thresholds) -> list[Finding]:
    """Each finding diagnosed on the trace it was found in: a loss curve's (a GAN's ``d_loss``) or one
    optimizer's (see :func:`~pytest_stability.checks.curve_view`), else the run's; in the same order."""
    from .diagnosis import diagnose, finding_view, with_optimizer_named

    groups: dict[tuple[str, str], list[int]] = {}
    for i, f in enumerate(findings):
        key = (
            ("curve", f.evidence["curve"])
            if "curve" in f.evidence
            else (("optimizer", f.evidence["optimizer"]) if "optimizer" in f.evidence else ("", ""))
        )
        groups.setdefault(key, []).append(i)
    out = list(findings)
    for indices in groups.values():
        view, named = finding_view(findings[indices[0]], trace)
        for i, f in zip(indices, diagnose([findings[i] for i in indices], view, thresholds), strict=True):
            out[i] = with_optimizer_named(f, named)
    return out


def run(
    model: Model,
    x: Data,
    y: Data,
    *,
    fit_kwargs: dict[str, Any],
    steps: int,
    seed: int,
    spec: RunSpec,
    thresholds: Thresholds,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_raise: Callable[[BaseException, str, StoppedRun | None], None] | None = None,
    replay_batch: int | None = None,
) -> Outcome:
    """Train ``model`` with its own fit (see :func:`~pytest_stability.training.engine.train`), judge and
    diagnose the trace, and with ``spec.whatif`` replay the suggested fixes of a failing run.

    With ``replay_batch`` (a step), train up to that step only and measure its batch around its update
    (:func:`~pytest_stability.training.batch_replay.probe`, in ``trace.info["batch_replay"]``); the run is
    judged on the steps before it."""
    from .training import engine

    train_kwargs: dict[str, Any] = dict(
        fit_kwargs=fit_kwargs,
        steps=steps,
        seed=seed,
        spec=spec,
        batch_size=batch_size,
        progress=progress,
        on_raise=on_raise,
    )
    if replay_batch is not None:
        return _replay_batch(model, x, y, step=int(replay_batch), thresholds=thresholds, **train_kwargs)
    result = engine.train(model, x, y, keep_initial_state=spec.whatif, **train_kwargs)
    # Keras' History of this run: the replays and probes below run fit again, and model.history must stay the run's
    history = getattr(model, "history", None)
    results = judge(result.trace, thresholds, spec.checks)
    if result.batches is not None:
        results = with_batches(results, result.batches)
    if spec.whatif and any(r.findings for r in results):
        from .training.whatif import attach_whatif

        results = attach_whatif(
            results, model, result, thresholds, spec, x=x, y=y, fit_kwargs=fit_kwargs, batch_size=batch_size, seed=seed
        )
    if getattr(spec, "margin", False):
        from .training.margin import lr_margin

        ok = not any(r.findings for r in results)
        margin = lr_margin(
            model, result, x=x, y=y, fit_kwargs=fit_kwargs, spec=spec, thresholds=thresholds, seed=seed, ok=ok
        )
        result.trace.info["margin"] = margin
        results = results + [margin_result(margin, getattr(spec, "min_margin", None), result.trace.steps)]
    curvature = (result.trace.info or {}).get("curvature")
    if curvature is not None:
        results = results + [curvature_result(curvature, getattr(spec, "max_eos_ratio", None))]
    if history is not None and getattr(model, "history", None) is not history:
        model.history = history
    return Outcome(result, results)


def names_batch(f: Finding) -> bool:
    """Whether ``f``'s step is named by its batch (``evidence["batch"]``): a loss spike, a non-finite loss,
    a non-finite input batch."""
    if f.check == "loss_spike":
        return f.kind in ("spike", "spike_no_recovery")
    if f.check == "nonfinite":
        return f.kind == "input" or (f.kind == "training" and "loss" in (f.evidence.get("quantities") or ()))
    return False


def with_batches(results: list[CheckResult], plan: BatchPlan) -> list[CheckResult]:
    """Each spike and non-finite finding with ``evidence["batch"]``: the batch its step trained on (see
    :func:`~pytest_stability.training.batches.locate`)."""
    import dataclasses

    from .training.batches import locate

    out = []
    for r in results:
        if r.status == "failed" and any(names_batch(f) for f in r.findings):
            findings = tuple(
                dataclasses.replace(f, evidence={**f.evidence, "batch": locate(plan, f.step)}) if names_batch(f) else f
                for f in r.findings
            )
            r = type(r)(r.name, r.status, findings, r.detail, r.stats)
        out.append(r)
    return out


def _replay_batch(model: Model, x: Data, y: Data, *, step: int, thresholds: Thresholds, **train_kwargs: Any) -> Outcome:
    from .errors import StabilityUsageError
    from .training import batch_replay, engine

    steps, spec, fit_kwargs = train_kwargs["steps"], train_kwargs["spec"], train_kwargs["fit_kwargs"]
    if not 1 <= step < steps:
        raise StabilityUsageError(
            f"--stability-replay-batch expects a step from 1 to {steps - 1} (this test trains {steps} steps), "
            f"received {step}"
        )
    result = engine.train(model, x, y, stop_after=step, **train_kwargs)
    if result.trace.steps < step:
        raise StabilityUsageError(
            f"--stability-replay-batch={step}: the run ended after {result.trace.steps} steps, before that step"
        )
    if result.data_kind != "arrays" or result.batches is None:
        raise StabilityUsageError(
            f"--stability-replay-batch replays a batch of array inputs; this test trains on {result.data_kind}"
            + (" under a distribution strategy" if result.batches is None else "")
        )
    keras = engine.import_keras()
    result.trace.info["batch_replay"] = batch_replay.probe(keras, model, result.batches, x, y, fit_kwargs, step)
    _drop_validation_at_the_stop(result.trace, step, int(spec.validate_every))
    return Outcome(result, judge(result.trace, thresholds, spec.checks))


def _drop_validation_at_the_stop(trace: Trace, step: int, validate_every: int) -> None:
    """A run cut at ``step`` measures the validation loss once more at its end; the run it replays measured it
    there only on its schedule (every ``validate_every`` steps).  Off the schedule, that measurement is dropped:
    the replay is judged on what the original run saw before ``step`` (a 1-step replay of Adam at 0.5 had failed
    ``val_loss`` on it, a check the original run passed at that point)."""
    if trace.val_steps is None or trace.val_loss is None or step % validate_every == 0:
        return
    keep = trace.val_steps < step
    trace.val_steps, trace.val_loss = trace.val_steps[keep], trace.val_loss[keep]


def margin_result(margin: dict[str, Any], min_margin: float | None, steps: int) -> CheckResult:
    """The ``margin`` check: failed when the learning-rate margin is below ``min_margin`` (skipped without one)."""
    from .checks.base import CheckResult, Finding

    if min_margin is None:
        return CheckResult(
            "margin", "skipped", (), f"{margin['text']} (no min_margin set)", {"lr_margin": margin["value"]}
        )
    value = float(margin["value"])
    if value >= float(min_margin):
        return CheckResult("margin", "passed", (), margin["text"], {"lr_margin": value})
    finding = Finding(
        check="margin",
        kind="below_min",
        step=max(0, steps - 1),
        value=value,
        limit=float(min_margin),
        message=f"learning-rate stability margin {value:.3g}x is below min_margin "
        f"{float(min_margin):g}x: {margin['text']}",
        evidence={k: v for k, v in margin.items() if k != "probes"},
        cause="the run trains close to the edge: a somewhat larger learning rate (or a sharper region "
        "of the loss later in training) makes it unstable",
        fix="lower the learning rate or add warm-up / a decaying schedule, or clipnorm; then re-measure",
        confidence="likely",
    )
    return CheckResult("margin", "failed", (finding,), margin["text"], {"lr_margin": value})


def curvature_result(curvature: dict[str, Any], max_eos_ratio: float | None) -> CheckResult:
    """The ``curvature`` check: failed when the edge-of-stability ratio (``trace.info["curvature"]``, see
    :mod:`pytest_stability.training.curvature`) exceeds ``max_eos_ratio`` at a measurement; skipped without
    one, or when no ratio was measured (an optimizer without a known limit, a run it could not be measured on)."""
    from .checks.base import CheckResult, Finding

    ratio = curvature.get("max_ratio")
    stats = {"eos_ratio": ratio, "curvature_margin": curvature.get("margin")}
    if ratio is None:
        return CheckResult("curvature", "skipped", (), curvature["text"], stats)
    if max_eos_ratio is None:
        return CheckResult("curvature", "skipped", (), f"{curvature['text']} (no max_eos_ratio set)", stats)
    if ratio <= float(max_eos_ratio):
        return CheckResult("curvature", "passed", (), curvature["text"], stats)
    # the first measurement above the limit (the summary's text names the largest ratio)
    first, step = next(
        (r, s)
        for r, s in zip(curvature["ratio"], curvature["steps"], strict=True)
        if r is not None and r > float(max_eos_ratio)
    )
    what = "preconditioned sharpness" if curvature.get("kind") == "preconditioned" else "sharpness"
    finding = Finding(
        check="curvature",
        kind="above_max",
        step=max(0, int(step) - 1),
        value=float(first),
        limit=float(max_eos_ratio),
        message=f"edge-of-stability ratio {first:.3g} after {step} steps is above max_eos_ratio "
        f"{float(max_eos_ratio):g}: {curvature['text']}",
        evidence={k: v for k, v in curvature.items() if k != "text"},
        cause=f"the loss's {what} has reached the largest curvature the optimizer is stable at with "
        "this learning rate: training runs at the edge of stability, where a little more "
        "sharpening (or a larger learning rate) makes it oscillate or diverge",
        fix="lower the learning rate (the ratio scales with it), or add warm-up / a decaying schedule; then re-measure",
        confidence="likely",
    )
    return CheckResult("curvature", "failed", (finding,), curvature["text"], stats)


__all__ = ["Outcome", "curvature_result", "judge", "margin_result", "run"]
