"""Run reports: what :meth:`stability.train() <pytest_stability.fixtures.Stability.train>` returns.

A :class:`RunReport` is one seed's training run: the trace, every check's
result (diagnosed), and summary metrics.  A :class:`StabilityReport` gathers
the runs of one ``train()`` call (one per seed) and gives the verdict.

Pure numpy: importing this module does not import TensorFlow.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import FAILED, SKIPPED, CheckResult, Finding
from ..checks.validation import smooth
from ..record import CallRecord, CheckRecord, Curve, FindingRecord, RunRecord, RunSummary, primary_run
from ..trace import Trace, encode_float
from .render import batch_text, fmt, sparkline, window_sparkline

SCHEMA_CURVE_POINTS = 500

STABLE, UNSTABLE, ERROR, SKIPPED_VERDICT = "stable", "unstable", "error", "skipped"


def downsample(
    values: np.ndarray, steps: np.ndarray | None = None, max_points: int = SCHEMA_CURVE_POINTS
) -> tuple[list[int], list[Any]]:
    """At most ``max_points`` (step, value) pairs, keeping each bin's extreme so spikes survive.

    The first and the last point are always kept (a curve starts at its first step and ends at its last, where
    training stopped); between them, each bin contributes the point farthest from the bin median; non-finite
    points always win their bin.
    """
    values = np.asarray(values, dtype=np.float64)
    steps = np.arange(values.shape[0]) if steps is None else np.asarray(steps)
    if values.shape[0] <= max_points:
        return steps.tolist(), [encode_float(v) for v in values.tolist()]
    n = values.shape[0]
    edges = np.linspace(1, n - 1, max(max_points - 2, 1) + 1).astype(int)
    out_s, out_v = [int(steps[0])], [encode_float(float(values[0]))]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        seg = values[a:b]
        bad = ~np.isfinite(seg)
        k = int(np.argmax(bad)) if bad.any() else int(np.argmax(np.abs(seg - np.median(seg))))
        out_s.append(int(steps[a + k]))
        out_v.append(encode_float(float(seg[k])))
    out_s.append(int(steps[n - 1]))
    out_v.append(encode_float(float(values[n - 1])))
    return out_s, out_v


@dataclass
class RunReport:
    """One training run (one seed) and what the checks made of it."""

    seed: int
    trace: Trace
    results: list[CheckResult]
    device: str
    wall_time: float
    replay: str = ""
    data_kind: str = ""
    final_metrics: dict[str, float] = field(default_factory=dict)
    #: what stopped the run before its planned steps (the user's exception, Ctrl-C, a timeout): no check judged
    #: the steps it recorded, and its verdict is ``error``; None for a run that ended as planned
    stopped: str | None = None

    @property
    def findings(self) -> list[Finding]:
        """Findings of the failed checks, the primary cause first (``evidence["rank"]``, see
        :func:`~pytest_stability.diagnosis.rank_findings`), then in step order."""
        found = [f for r in self.results if r.status == FAILED for f in r.findings]
        return sorted(found, key=lambda f: (f.evidence.get("rank", 1_000_000), f.step))

    @property
    def ok(self) -> bool:
        return self.stopped is None and not any(r.status == FAILED for r in self.results)

    @property
    def verdict(self) -> str:
        if self.stopped is not None:
            return ERROR
        return STABLE if self.ok else UNSTABLE

    def __repr__(self) -> str:
        # One line: the dataclass' own repr printed the whole trace and every check's statistics
        t = self.trace
        planned = f" of {t.steps_planned}" if t.steps_planned is not None else ""
        found = self.findings
        first = f": [{found[0].check}] step {found[0].step}" if found else ""
        many = f", {len(found)} finding{'s' if len(found) != 1 else ''}{first}" if found else ""
        return f"RunReport(seed={self.seed}, {self.verdict}, steps={t.steps}{planned}, device={self.device!r}{many})"

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; checks are {[r.name for r in self.results]}")

    def summary(self) -> dict[str, Any]:
        """Headline metrics (builtins; NaN encoded as strings)."""
        t = self.trace
        loss = t.loss[np.isfinite(t.loss)]
        tail = loss[-max(1, min(20, loss.size // 10)) :] if loss.size else loss
        g = t.grad_norm[np.isfinite(t.grad_norm)] if t.grad_norm is not None else np.zeros(0)
        spike = self.result("loss_spike").stats if any(r.name == "loss_spike" for r in self.results) else {}
        val = self.result("val_loss").stats if any(r.name == "val_loss" for r in self.results) else {}
        out = {
            "steps_run": t.steps,
            "steps_planned": t.steps_planned,
            "final_loss": float(np.median(tail)) if tail.size else None,
            "min_loss": float(loss.min()) if loss.size else None,
            "largest_spike": spike.get("max_ratio"),
            "spikes": spike.get("n_spikes", 0),
            "max_grad_norm": float(g.max()) if g.size else None,
            "p99_grad_norm": float(np.percentile(g, 99)) if g.size else None,
            "val_trend": val.get("trend"),
            "final_val_loss": val.get("final_smoothed"),
            "findings": len(self.findings),
        }
        margin = (t.info or {}).get("margin")
        if margin is not None:
            out["lr_margin"] = float(margin["value"])
        curvature = (t.info or {}).get("curvature")
        if curvature is not None and curvature.get("max_ratio") is not None:
            out["eos_ratio"] = float(curvature["max_ratio"])
            if curvature.get("margin") is not None:
                out["curvature_margin"] = float(curvature["margin"])
        return {k: (encode_float(v) if isinstance(v, float) else v) for k, v in out.items()}

    def _loss_curve(self, f: Finding) -> tuple[np.ndarray, str]:
        """The loss curve shown around a finding: the one it judged (a GAN's ``d_loss``), else the model's own
        loss, else (a ``train_step`` that reports other losses and leaves its own NaN) the first it reports."""
        curves = self.trace.loss_curves
        name = f.evidence.get("curve")
        if not (isinstance(name, str) and name in curves):
            name = "loss" if "loss" in curves or not curves else next(iter(curves))
        return (curves[name], name) if name in curves else (self.trace.loss, "loss")

    def explain(self, nodeid: str = "") -> str:
        """The failure explanation, the primary cause first.

        The primary finding (:func:`~pytest_stability.diagnosis.rank_findings`): its check, step and
        message, the curve around it, the cause with its evidence, the fixes in the order this run's
        evidence ranks them (with the share of the detection benchmark's runs of that cause that the first
        fix resolved in the what-if replay, where measured), then the what-if outcome when it ran.  Then
        the other findings, each saying whose consequence it is, and the replay command.
        """
        from ..diagnosis import measured_first_fix

        t = self.trace
        failed = [r for r in self.results if r.status == FAILED]
        head = (
            f"stable_training: {len(failed)} of {sum(r.status != SKIPPED for r in self.results)} checks "
            f"failed ({', '.join(r.name for r in failed)}) - seed {self.seed}, "
            f"{t.steps}/{t.steps_planned} steps on {self.device}"
        )
        if nodeid:
            head = f"{nodeid}: {head}"
        lines = [head]
        for i, f in enumerate(self.findings[:5]):
            lines.append("")
            lines.append(f"[{f.check}] step {f.step}: {f.message}")
            curve, label = self._loss_curve(f)
            if f.check == "grad_norm" and t.grad_norm is not None:
                curve, label = t.grad_norm, "grad norm"
            if f.check == "val_loss" and t.val_loss is not None and t.val_steps is not None and t.has_validation:
                lines.append(
                    f"  val loss (smoothed)  {sparkline(smooth(t.val_loss, 0.0), 40)}  "
                    f"steps {int(t.val_steps[0])}-{int(t.val_steps[-1])}"
                )
            elif curve.size:
                line, a, b = window_sparkline(curve, min(f.step, curve.size - 1))
                lines.append(f"  {label:<9} {line}  steps {a}-{b}")
            where = f.evidence.get("batch")
            if isinstance(where, dict):
                lines.append(f"  {batch_text(where)}")
            consequence = f.evidence.get("consequence_of")
            if i > 0 and consequence:
                lines.append(f"  a consequence of [{consequence.replace('@', '] at step ')}")
            if f.cause:
                conf = f" ({f.confidence})" if f.confidence else ""
                lines.append(f"  cause{conf}: {f.cause}")
            fixes = [x["text"] for x in f.evidence.get("fixes") or () if x.get("text") and not x.get("note")]
            notes = [x["text"] for x in f.evidence.get("fixes") or () if x.get("text") and x.get("note")]
            fixes = fixes or ([f.fix] if f.fix and not notes else [])
            if fixes and not (i > 0 and consequence):
                lines.append(f"  fix to try: {fixes[0]}")
                first_config = (f.evidence.get("fixes") or [{}])[0].get("config")
                measured = measured_first_fix(str(f.evidence.get("cause_key")), first_config)
                if measured and first_config:
                    done, runs, of_what = measured
                    lines.append(
                        f"    (this first fix resolved {done} of {runs} {of_what} when the detection "
                        "benchmark replayed them with it)"
                    )
                if len(fixes) > 1:
                    lines.append("  then: " + "; or ".join(fixes[1:]))
                for note in notes:
                    lines.append(f"  ({note})")
            whatif = f.evidence.get("whatif")
            if isinstance(whatif, dict) and whatif.get("text"):
                lines.append(f"  what-if: {whatif['text']}")
        if len(self.findings) > 5:
            lines.append(f"... and {len(self.findings) - 5} more finding(s)")
        if self.replay:
            lines.append("")
            lines.append(f"replay: {self.replay}")
            # the first finding whose batch is known by its samples (a spike, a non-finite loss)
            where = next(
                (
                    b
                    for b in (f.evidence.get("batch") for f in self.findings)
                    if isinstance(b, dict) and b.get("indices") and not b.get("full_batch")
                ),
                None,
            )
            # ... or the step a spike's note suspects of a bad sample, where the event it began was named later
            suspect = next(
                (
                    int(q["spike_start"]["value"])
                    for q in (f.evidence.get("quotes") for f in self.findings)
                    if isinstance(q, dict) and isinstance(q.get("spike_start"), dict)
                ),
                None,
            )
            step = suspect if suspect else (where["step"] if where is not None else None)
            if step:
                lines.append(f"a bad sample or a bad update? {self.replay} --stability-replay-batch={step}")
        return "\n".join(lines)

    def to_record(self, max_points: int = SCHEMA_CURVE_POINTS) -> RunRecord:
        """The run as the test's record holds it (builtins, typed; curves downsampled to ``max_points``)."""
        t = self.trace
        curves: dict[str, Curve] = {}

        def add(name: str, values: np.ndarray, steps: np.ndarray | None = None) -> None:
            s, v = downsample(values, steps, max_points=max_points)
            curves[name] = Curve(tuple(s), tuple(v))

        if t.loss_recorded:  # a loss never recorded is no curve of NaN
            add("loss", t.loss)
        if t.grad_norm is not None:
            add("grad_norm", t.grad_norm)
        if t.lr is not None and np.isfinite(t.lr).any():
            # the learning rate in effect at each step: a jump in it is a common cause of a spike
            add("lr", t.lr)
        for name, values in t.curves.items():  # a GAN's d_loss and g_loss, metrics
            add(name, values)
        if "loss_scale" in t.opt_stats:  # mixed precision: the loss scale each step's gradients carried
            add("loss_scale", t.opt_stats["loss_scale"])
        for name, stats in t.optimizers.items():  # per optimizer, when the train_step applies several
            add(f"grad_norm/{name}", stats["grad_norm"])
        if t.val_loss is not None and t.has_validation:
            add("val_loss", t.val_loss, t.val_steps)
        curvature = (t.info or {}).get("curvature")
        if curvature is not None and any(r is not None for r in curvature.get("ratio") or ()):
            curves["eos_ratio"] = Curve(
                tuple(curvature["steps"]), tuple("nan" if r is None else float(r) for r in curvature["ratio"])
            )
        return RunRecord(
            seed=int(self.seed),
            verdict=self.verdict,
            device=self.device,
            wall_time=float(self.wall_time),
            steps_planned=t.steps_planned,
            steps_run=t.steps,
            data=self.data_kind,
            replay=self.replay,
            checks=tuple(CheckRecord.from_dict(r.to_dict()) for r in self.results),
            findings=tuple(FindingRecord.from_dict(f.to_dict()) for f in self.findings),
            summary=RunSummary(**self.summary()),  # every key a field: a new metric cannot be left out silently
            metrics={k: encode_float(v) for k, v in self.final_metrics.items()},
            first_nonfinite=copy.deepcopy(t.first_nonfinite),
            model=copy.deepcopy(t.info),
            curves=curves,
        )

    def to_dict(self, max_points: int = SCHEMA_CURVE_POINTS) -> dict[str, Any]:
        """Builtins-only form for the JSON report and xdist (curves downsampled): :meth:`to_record`'s dict."""
        return self.to_record(max_points).to_dict()


@dataclass
class StabilityReport:
    """The result of one ``stability.train()`` call: one :class:`RunReport` per seed.

    Convenience properties (``trace``, ``findings``, ``summary()``...) refer to
    the first unstable run, or to the first run when all are stable.  ``history`` is what plain
    ``model.fit`` returns, Keras' ``History`` of the model given (its first seed), so that
    ``stability.fit`` stands where ``model.fit`` stood: ``report.history.history["val_loss"]``.
    """

    nodeid: str
    runs: list[RunReport]
    history: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        failed = f", unstable under seeds {self.failed_seeds}" if self.failed_seeds and len(self.runs) > 1 else ""
        runs = ", ".join(map(repr, self.runs[:3])) + (f", ... {len(self.runs) - 3} more" if len(self.runs) > 3 else "")
        return f"StabilityReport({self.nodeid!r}, {self.verdict}, seeds={self.seeds}{failed}, runs=[{runs}])"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def verdict(self) -> str:
        if any(r.stopped is not None for r in self.runs):
            return ERROR  # an exception stopped a run: the call has no verdict of stability
        return STABLE if self.ok else UNSTABLE

    @property
    def failed_seeds(self) -> list[int]:
        return [r.seed for r in self.runs if not r.ok]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def primary(self) -> RunReport:
        run = primary_run(self.runs)
        if run is None:
            raise IndexError("a train() call without runs has no primary run")
        return run

    @property
    def trace(self) -> Trace:
        return self.primary.trace

    @property
    def results(self) -> list[CheckResult]:
        return self.primary.results

    @property
    def findings(self) -> list[Finding]:
        return self.primary.findings

    @property
    def device(self) -> str:
        return self.primary.device

    def result(self, name: str) -> CheckResult:
        return self.primary.result(name)

    def summary(self) -> dict[str, Any]:
        return self.primary.summary()

    def spread(self) -> dict[str, dict[str, Any]]:
        """min / median / max of each numeric summary metric across seeds."""
        out: dict[str, dict[str, Any]] = {}
        sums = [r.summary() for r in self.runs]
        for key in sums[0]:
            vals = [s[key] for s in sums if isinstance(s[key], (int, float)) and not isinstance(s[key], bool)]
            if vals:
                out[key] = {"min": float(np.min(vals)), "median": float(np.median(vals)), "max": float(np.max(vals))}
        return out

    def explain(self) -> str:
        if self.ok:
            return f"{self.nodeid}: stable over seeds {self.seeds}"
        text = self.primary.explain(self.nodeid)
        if len(self.runs) > 1:
            extra = [f"unstable under {len(self.failed_seeds)} of {len(self.runs)} seeds: {self.failed_seeds}"]
            for r in self.runs:
                if not r.ok and r is not self.primary:
                    first = r.findings[0]
                    extra.append(
                        f"  seed {r.seed}: [{first.check}] step {first.step}: {first.message}  (replay: {r.replay})"
                    )
            text += "\n" + "\n".join(extra)
        return text

    def to_record(self) -> CallRecord:
        """The call as the test's record holds it (builtins, typed; no baseline comparison yet)."""
        return CallRecord(
            verdict=self.verdict,
            seeds=tuple(self.seeds),
            failed_seeds=tuple(self.failed_seeds),
            runs=tuple(r.to_record() for r in self.runs),
            spread=self.spread() if len(self.runs) > 1 else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """Builtins: :meth:`to_record`'s dict."""
        return self.to_record().to_dict()


__all__ = ["RunReport", "StabilityReport", "downsample", "fmt", "sparkline"]
