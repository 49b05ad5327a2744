"""The terminal explanation leads with the one primary cause, its evidence, the ranked fixes, then the what-if.

Built from a trace judged by the pure pipeline (no framework): an early Adam blow-up whose NaN, gradient
burst and validation rise are one event.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pytest_stability.checks import Thresholds
from pytest_stability.diagnosis import FIX_SUCCESS
from pytest_stability.pipeline import judge
from pytest_stability.report.runs import RunReport
from pytest_stability.trace import Trace


def _report(whatif: dict | None = None) -> RunReport:
    rng = np.random.default_rng(0)
    n = 300
    loss = np.concatenate([[1.16, 1.66e3, 5e3, 1.5e3, 400.0], 0.7 * np.exp(0.05 * rng.normal(size=n - 5))])
    g = np.concatenate([[0.5, 1.2e3, 480.0, 270.0, 120.0], 0.2 * np.exp(0.3 * rng.normal(size=n - 5))])
    upd = np.concatenate([[16.0, 0.75, 0.43], np.full(n - 3, 1e-3)])
    val_steps = np.arange(0, n + 1, 25)
    val = np.concatenate([[0.7, 12.7, 9.2], np.full(val_steps.size - 3, 0.66)])
    trace = Trace(
        loss=loss,
        grad_norm=g,
        update_ratio=upd,
        lr=np.full(n, 3.0),
        steps_planned=n,
        val_steps=val_steps,
        val_loss=val,
        info={
            "optimizer": "Adam",
            "optimizer_config": {"learning_rate": 3.0, "epsilon": 1e-7, "beta_2": 0.999, "amsgrad": False},
        },
    )
    results = judge(trace, Thresholds())
    if whatif is not None:
        results = [
            dataclasses.replace(
                r,
                findings=tuple(
                    dataclasses.replace(f, evidence={**f.evidence, "whatif": whatif})
                    if f.evidence.get("rank") == 0
                    else f
                    for f in r.findings
                ),
            )
            for r in results
        ]
    return RunReport(seed=0, trace=trace, results=results, device="CPU", wall_time=1.0, replay="pytest x --replay")


def test_the_primary_cause_leads_with_its_evidence_then_its_ranked_fixes_then_the_what_if():
    note = {"text": "replayed steps 0-250 with Adam(learning_rate x 0.0001): no finding", "resolved": True}
    report = _report(note)
    lines = report.explain("t.py::test").splitlines()
    primary = report.findings[0]
    assert primary.evidence["rank"] == 0 and primary.evidence["cause_key"] == "lr_too_high"
    first = lines.index(next(ln for ln in lines if ln.startswith("[")))
    assert lines[first].startswith(f"[{primary.check}] step {primary.step}: ")
    body = lines[first:]
    cause = next(i for i, ln in enumerate(body) if ln.startswith("  cause (likely): "))
    fix = next(i for i, ln in enumerate(body) if ln.startswith("  fix to try: "))
    then = next(i for i, ln in enumerate(body) if ln.startswith("  then: "))
    what_if = next(i for i, ln in enumerate(body) if ln.startswith("  what-if: "))
    assert cause < fix < then < what_if
    # the primary's cause states its evidence: the first update's size, quoted with its step
    assert "16 (step 0)" in body[cause] and "second-moment" not in body[cause]
    # the first fix is the primary's first ranked fix, the learning rate with its magnitude from the run
    assert body[fix] == "  fix to try: " + primary.evidence["fixes"][0]["text"]
    assert body[fix].startswith("  fix to try: learning_rate=0.0003 (now 3 ")
    # with the share of the detection benchmark's runs of this cause that the first fix resolved
    done, runs = FIX_SUCCESS["lr_too_high"]
    assert body[fix + 1] == (
        f"    (this first fix resolved {done} of {runs} runs with this cause when the detection benchmark "
        "replayed them with it)"
    )
    # the validation rise of the same event comes after, named as a consequence, without a fix of its own
    later = [ln for ln in body[what_if:] if ln.startswith("[val_loss]")]
    if later:
        block = body[body.index(later[0]) :]
        assert block[2].startswith("  a consequence of [")
        assert not any(ln.startswith("  fix to try") for ln in block[:5])


def test_without_a_what_if_the_explanation_ends_with_the_replay_command():
    text = _report().explain()
    assert "what-if" not in text and text.splitlines()[-1] == "replay: pytest x --replay"


def test_a_train_step_that_leaves_its_own_loss_nan_is_shown_by_the_curve_each_finding_judged():
    """A GAN whose ``train_step`` reports ``d_loss`` and ``g_loss`` and never updates the model's loss tracker:
    the curve under a finding is the one it judged, never the all-NaN ``loss`` (which read as ``××××``)."""
    n = 120
    calm = np.exp(0.05 * np.random.default_rng(1).normal(size=n))
    d_loss = calm.copy()
    d_loss[80:] *= 50.0  # jumps and stays
    trace = Trace(
        loss=np.full(n, np.nan),
        nonfinite=np.zeros(n, dtype=np.int32),  # as the engine records it: the loss was never taken
        grad_norm=calm,
        steps_planned=n,
        curves={"d_loss": d_loss, "g_loss": 2.0 * calm},
        info={"loss_recorded": False},
    )
    results = judge(trace, Thresholds())
    report = RunReport(seed=0, trace=trace, results=results, device="CPU", wall_time=1.0, replay="pytest x")
    lines = report.explain().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("[loss_spike] step 80: d_loss"))
    assert lines[head + 1].startswith("  d_loss    ") and "×" not in lines[head + 1]
    assert not any(line.startswith("  loss ") for line in lines)


def test_the_batch_replay_command_points_at_the_step_a_spike_note_suspects():
    """A spike event that merged a jump after an ordinary update (step 50, a bad sample's batch) with what came of
    it names a later step's batch (80 here): the closing command replays the batch the note suspects, as the note
    says, not the later one."""
    rng = np.random.default_rng(0)
    loss = np.exp(0.05 * rng.normal(size=120))
    loss[50:56] = 30.0
    trace = Trace(loss=loss, grad_norm=np.ones(120), update_ratio=np.full(120, 1e-3), steps_planned=120)
    results = judge(trace, Thresholds())

    def named(f, quotes):
        return dataclasses.replace(
            f, evidence={**f.evidence, "batch": {"step": 80, "batch": 80, "indices": [3, 7]}, "quotes": quotes}
        )

    def command(strip):
        changed = [
            dataclasses.replace(
                r,
                findings=tuple(
                    named(f, {k: v for k, v in f.evidence["quotes"].items() if not (strip and k == "spike_start")})
                    if f.check == "loss_spike"
                    else f
                    for f in r.findings
                ),
            )
            for r in results
        ]
        report = RunReport(seed=0, trace=trace, results=changed, device="CPU", wall_time=1.0, replay="pytest x")
        return report.explain().splitlines()[-1]

    spike = next(f for r in results for f in r.findings if f.check == "loss_spike")
    assert spike.evidence["quotes"]["spike_start"]["value"] == 50  # the note fired
    assert command(strip=False) == "a bad sample or a bad update? pytest x --stability-replay-batch=50"
    assert command(strip=True) == "a bad sample or a bad update? pytest x --stability-replay-batch=80"
