"""The per-test record: what one stability test's row in the terminal report, JSON and baseline is made of.

One :class:`StabilityRecord` per stability test, built in exactly one of these
ways (the constructors say which):

* :meth:`StabilityRecord.trained`: the ``stability`` fixture's teardown, from
  the ``train()`` calls of the test (verdict stable / unstable, or error when a
  call was rejected or none completed);
* :meth:`StabilityRecord.errored`: the test errored before the fixture was set
  up, or the fixture could not summarise it;
* :meth:`StabilityRecord.skipped`: skipped at setup;
* :meth:`StabilityRecord.crashed`: it crashed its pytest-xdist worker;
* :meth:`StabilityRecord.interrupted`: the run was interrupted (Ctrl-C) while
  it ran.

The record is typed all the way down: a :class:`CallRecord` per ``train()``
call, a :class:`RunRecord` per seed (its :class:`CheckRecord` results,
:class:`FindingRecord` findings, :class:`RunSummary` metrics and :class:`Curve`
curves) and the call's :class:`BaselineComparison`.  Every report reads it by
attribute, and the rules the reports share are written here once:
:attr:`StabilityRecord.primary`, :attr:`CallRecord.primary`,
:attr:`StabilityRecord.runs`, :attr:`StabilityRecord.worst_baseline`,
:attr:`StabilityRecord.regressed`.

Data flows one way: fixture -> record (worker side, on the teardown report) ->
session (controller: collect, write, summarise).  Records cross the xdist
boundary as builtins: :meth:`~StabilityRecord.to_dict` on the way out,
:meth:`~StabilityRecord.from_dict` on the way in (each class has the pair).
The dict form is the JSON report's per-test entry before
:func:`pytest_stability.report.json_report.entry_for` flattens it (every key of
:data:`RECORD_KEYS` is always present, so the schema does not depend on how
the record was built), and what the ``pytest_stability_generate_json`` hook
receives.

Frozen, slotted dataclasses of builtins; imports nothing heavy (no numpy).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar

STABLE, UNSTABLE, ERROR, SKIPPED = "stable", "unstable", "error", "skipped"
VERDICTS = (STABLE, UNSTABLE, ERROR, SKIPPED)
#: Test outcomes (pytest's, plus ``interrupted``); None until the session knows it.
OUTCOMES = ("passed", "failed", "error", "skipped", "interrupted")

#: ``error`` of a test that errored before the fixture ran (at setup).
SETUP_ERROR = "the test errored before the stability fixture was set up"
#: ``error`` of a test whose xdist worker crashed.
CRASHED_WORKER = "the test crashed its pytest-xdist worker"
#: ``error`` of a test interrupted before its fixture finished.
INTERRUPTED = "the run was interrupted while this test was running"
#: ``error`` of a test that never completed a ``train()`` call.
NO_TRAIN = "the test did not complete a stability.fit() call"
#: prefix of ``error`` when the test failed after its training was judged stable.
FAILED_AFTER = "the test failed after stability.fit()"


#: A float as records hold it: NaN and the infinities encoded as the strings ``"nan"``, ``"inf"``, ``"-inf"``
#: (strict JSON; :func:`pytest_stability._floats.decode_float` reads it back).
Encoded = float | str

_T = TypeVar("_T")


def _copy(value: _T) -> _T:
    """A deep copy of an open-ended builtins value (the dict form never shares state with the record)."""
    return copy.deepcopy(value)


@dataclass(frozen=True, slots=True)
class Curve:
    """One recorded curve, downsampled: the steps and the value at each (NaN/Inf encoded)."""

    step: tuple[int, ...] = ()
    value: tuple[Encoded, ...] = ()

    def to_dict(self) -> dict[str, list[int] | list[Encoded]]:
        return {"step": list(self.step), "value": list(self.value)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> Curve:
        return cls(tuple(data.get("step") or ()), tuple(data.get("value") or ()))


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """One finding of a check (:meth:`pytest_stability.checks.Finding.to_dict` form, typed).

    ``evidence`` stays a read-only mapping of builtins: what supports a finding is open-ended by design (each
    check and the diagnosis add their own keys: ``batch``, ``whatif``, ``fixes``, ``rank``...).
    """

    check: str
    kind: str
    step: int
    value: Encoded
    limit: Encoded
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    cause: str = ""
    fix: str = ""
    confidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "kind": self.kind,
            "step": self.step,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
            "evidence": _copy(self.evidence),
            "cause": self.cause,
            "fix": self.fix,
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FindingRecord:
        return cls(
            check=data["check"],
            kind=data.get("kind", ""),
            step=data["step"],
            value=data.get("value", "nan"),
            limit=data.get("limit", "nan"),
            message=data.get("message", ""),
            evidence=data.get("evidence") or {},
            cause=data.get("cause", ""),
            fix=data.get("fix", ""),
            confidence=data.get("confidence", ""),
        )


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One check's result on a run: its status, why, its statistics (open-ended builtins) and findings."""

    name: str
    status: str
    detail: str = ""
    stats: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[FindingRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "stats": _copy(self.stats),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckRecord:
        return cls(
            name=data["name"],
            status=data["status"],
            detail=data.get("detail", ""),
            stats=data.get("stats") or {},
            findings=tuple(FindingRecord.from_dict(f) for f in data.get("findings") or ()),
        )


#: The margins of a run's summary: present in its dict form only when measured.
_OPTIONAL_SUMMARY = ("lr_margin", "eos_ratio", "curvature_margin")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run's headline metrics (:meth:`pytest_stability.report.RunReport.summary`); None when not measured.

    ``lr_margin`` (``margin=True``), ``eos_ratio`` and ``curvature_margin`` (``curvature=True``) are left out of
    the dict form when not measured.
    """

    steps_run: int = 0
    steps_planned: int | None = None
    final_loss: Encoded | None = None
    min_loss: Encoded | None = None
    largest_spike: Encoded | None = None
    spikes: int = 0
    max_grad_norm: Encoded | None = None
    p99_grad_norm: Encoded | None = None
    val_trend: Encoded | None = None
    final_val_loss: Encoded | None = None
    findings: int = 0
    lr_margin: Encoded | None = None
    eos_ratio: Encoded | None = None
    curvature_margin: Encoded | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if k not in _OPTIONAL_SUMMARY or v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One seed's training run of a ``train()`` call (:meth:`pytest_stability.report.RunReport.to_record`).

    Attributes:
        seed, verdict, device, wall_time, steps_planned, steps_run: what they say.
        data: how the data was given (``arrays``, ``dataset``...).
        replay: the command that re-runs this seed.
        checks: every check's result; findings: the failed checks' findings, the primary cause first.
        summary: the headline metrics; metrics: the final Keras metrics (NaN encoded).
        first_nonfinite: where NaN/Inf first appeared (``source``, ``step``, ``variable``), else None.
        model: the facts about the run the trace recorded (``Trace.info``: backend, optimizer, model, margins);
            an open-ended mapping of builtins.
        curves: the recorded curves by name (``loss``, ``grad_norm``, ``lr``, ``val_loss``...), downsampled.
    """

    seed: int
    verdict: str
    device: str = ""
    wall_time: float = 0.0
    steps_planned: int | None = None
    steps_run: int = 0
    data: str = ""
    replay: str = ""
    checks: tuple[CheckRecord, ...] = ()
    findings: tuple[FindingRecord, ...] = ()
    summary: RunSummary = field(default_factory=RunSummary)
    metrics: Mapping[str, Encoded] = field(default_factory=dict)
    first_nonfinite: Mapping[str, Any] | None = None
    model: Mapping[str, Any] | None = None
    curves: Mapping[str, Curve] = field(default_factory=dict)

    @property
    def backend(self) -> str | None:
        """The Keras backend the run trained on, as its trace recorded it."""
        backend = (self.model or {}).get("backend")
        return str(backend) if backend else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "verdict": self.verdict,
            "device": self.device,
            "wall_time": self.wall_time,
            "steps_planned": self.steps_planned,
            "steps_run": self.steps_run,
            "data": self.data,
            "replay": self.replay,
            "checks": [c.to_dict() for c in self.checks],
            "findings": [f.to_dict() for f in self.findings],
            "summary": self.summary.to_dict(),
            "metrics": dict(self.metrics),
            "first_nonfinite": _copy(self.first_nonfinite),
            "model": _copy(self.model),
            "curves": {name: curve.to_dict() for name, curve in self.curves.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(
            seed=data["seed"],
            verdict=data["verdict"],
            device=data.get("device", ""),
            wall_time=data.get("wall_time", 0.0),
            steps_planned=data.get("steps_planned"),
            steps_run=data.get("steps_run", 0),
            data=data.get("data", ""),
            replay=data.get("replay", ""),
            checks=tuple(CheckRecord.from_dict(c) for c in data.get("checks") or ()),
            findings=tuple(FindingRecord.from_dict(f) for f in data.get("findings") or ()),
            summary=RunSummary.from_dict(data.get("summary") or {}),
            metrics=data.get("metrics") or {},
            first_nonfinite=data.get("first_nonfinite"),
            model=data.get("model"),
            curves={name: Curve.from_dict(c) for name, c in (data.get("curves") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of a seed's baseline comparison: the baseline's value, now, the limit (None: no limit)."""

    baseline: int | Encoded | None
    now: int | Encoded | None
    limit: int | Encoded | None
    regressed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "now": self.now, "limit": self.limit, "regressed": self.regressed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricComparison:
        return cls(data.get("baseline"), data.get("now"), data.get("limit"), bool(data.get("regressed")))


@dataclass(frozen=True, slots=True)
class SeedComparison:
    """One seed's comparison (:func:`pytest_stability.report.baseline.compare_run`); a seed missing from the
    baseline has only its status (``metrics`` and ``regressions`` None, left out of the dict form)."""

    status: str
    metrics: Mapping[str, MetricComparison] | None = None
    regressions: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.metrics is not None:
            out["metrics"] = {k: m.to_dict() for k, m in self.metrics.items()}
        if self.regressions is not None:
            out["regressions"] = list(self.regressions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeedComparison:
        metrics = data.get("metrics")
        regressions = data.get("regressions")
        return cls(
            status=data["status"],
            metrics=None if metrics is None else {k: MetricComparison.from_dict(m) for k, m in metrics.items()},
            regressions=None if regressions is None else tuple(regressions),
        )


@dataclass(frozen=True, slots=True)
class BaselineComparison:
    """A ``train()`` call compared with ``--stability-baseline``
    (:func:`pytest_stability.report.baseline.compare_call`).

    Attributes:
        status: ``ok`` / ``regressed`` / ``missing``; failed: whether the test must fail.
        strict: ``--stability-baseline-strict``; backend: the Keras backend the runs trained on.
        tolerances: the tolerances compared with; seeds: per seed (its string) the comparison.
        regressions: the messages (prefixed with the seed); lines: baseline against now, for the terminal.
        backend_in_baseline: False when the baseline holds no run on ``backend`` at all (set for a missing
            test only; None otherwise, and left out of the dict form then).
        path: the baseline file (None, and left out of the dict form, when not known).
    """

    status: str
    failed: bool = False
    strict: bool = False
    backend: str | None = None
    tolerances: Mapping[str, float | int] = field(default_factory=dict)
    seeds: Mapping[str, SeedComparison] = field(default_factory=dict)
    regressions: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    backend_in_baseline: bool | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "failed": self.failed,
            "strict": self.strict,
            "backend": self.backend,
            "tolerances": dict(self.tolerances),
            "seeds": {seed: s.to_dict() for seed, s in self.seeds.items()},
            "regressions": list(self.regressions),
            "lines": list(self.lines),
        }
        if self.backend_in_baseline is not None:
            out["backend_in_baseline"] = self.backend_in_baseline
        if self.path is not None:
            out["path"] = self.path
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineComparison:
        return cls(
            status=data["status"],
            failed=bool(data.get("failed")),
            strict=bool(data.get("strict")),
            backend=data.get("backend"),
            tolerances=data.get("tolerances") or {},
            seeds={seed: SeedComparison.from_dict(s) for seed, s in (data.get("seeds") or {}).items()},
            regressions=tuple(data.get("regressions") or ()),
            lines=tuple(data.get("lines") or ()),
            backend_in_baseline=data.get("backend_in_baseline"),
            path=data.get("path"),
        )


class _Judged(Protocol):
    @property
    def verdict(self) -> str: ...


_Run = TypeVar("_Run", bound=_Judged)


def primary_run(runs: Sequence[_Run]) -> _Run | None:
    """The run a report shows for several (one per seed): the first that is not stable, else the first; None
    for none.  The one rule every report uses, on records and on the live report alike."""
    return next((r for r in runs if r.verdict != STABLE), runs[0] if runs else None)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One ``stability.train()`` call (:meth:`pytest_stability.report.StabilityReport.to_record`): a run per
    seed, the spread of their metrics (min / median / max; empty for one seed), and the
    ``--stability-baseline`` comparison (None without one, and left out of the dict form then)."""

    verdict: str
    seeds: tuple[int, ...] = ()
    failed_seeds: tuple[int, ...] = ()
    runs: tuple[RunRecord, ...] = ()
    spread: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    baseline: BaselineComparison | None = None

    @property
    def primary(self) -> RunRecord:
        """The run the terminal row and GitHub show for this call: the first unstable run, else the first."""
        run = primary_run(self.runs)
        if run is None:
            raise IndexError("a train() call without runs has no primary run")
        return run

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict": self.verdict,
            "seeds": list(self.seeds),
            "failed_seeds": list(self.failed_seeds),
            "runs": [r.to_dict() for r in self.runs],
            "spread": {k: dict(v) for k, v in self.spread.items()},
        }
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        baseline = data.get("baseline")
        return cls(
            verdict=data["verdict"],
            seeds=tuple(data.get("seeds") or ()),
            failed_seeds=tuple(data.get("failed_seeds") or ()),
            runs=tuple(RunRecord.from_dict(r) for r in data.get("runs") or ()),
            spread=data.get("spread") or {},
            baseline=None if baseline is None else BaselineComparison.from_dict(baseline),
        )


@dataclass(frozen=True, slots=True)
class StabilityRecord:
    """One stability test's result (it travels on xdist reports as :meth:`to_dict`'s builtins).

    Attributes:
        nodeid: the test's node id.
        verdict: ``stable`` / ``unstable`` / ``error`` / ``skipped`` (training stability).
        outcome: the pytest outcome (``passed`` / ``failed`` / ``error`` /
            ``skipped`` / ``interrupted``), filled in by the session.
        error: why the test has no verdict, or what failed besides training
            (exception type and message), else None.
        skip_reason: why it was skipped, else None.
        settings: the resolved ``stable_training`` settings (builtins).
        calls: one :class:`CallRecord` per ``train()`` call (with its ``baseline``
            comparison under ``--stability-baseline``).
        worker: the xdist worker that ran it (not written to JSON).
    """

    nodeid: str
    verdict: str
    outcome: str | None = None
    error: str | None = None
    skip_reason: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    calls: tuple[CallRecord, ...] = ()
    worker: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, received {self.verdict!r}")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be None or one of {OUTCOMES}, received {self.outcome!r}")

    # -- constructors ------------------------------------------------------------

    @classmethod
    def trained(
        cls, nodeid: str, *, settings: Mapping[str, Any], calls: Sequence[CallRecord], error: str | None = None
    ) -> StabilityRecord:
        """The fixture's record: stable / unstable from ``calls``; error when ``error`` is set or nothing trained."""
        if error is not None:
            verdict = ERROR
        elif not calls:
            verdict, error = ERROR, NO_TRAIN
        else:
            verdict = STABLE if all(c.verdict == STABLE for c in calls) else UNSTABLE
        return cls(nodeid, verdict, error=error, settings=dict(settings), calls=tuple(calls))

    @classmethod
    def errored(cls, nodeid: str, message: str, *, outcome: str | None = None) -> StabilityRecord:
        """No verdict: ``message`` says why (e.g. :data:`SETUP_ERROR`)."""
        return cls(nodeid, ERROR, outcome=outcome, error=message)

    @classmethod
    def skipped(cls, nodeid: str, reason: str) -> StabilityRecord:
        """Skipped before training (a skip mark, or ``device='gpu'`` without a GPU)."""
        return cls(nodeid, SKIPPED, outcome="skipped", skip_reason=reason)

    @classmethod
    def crashed(cls, nodeid: str, detail: str = "") -> StabilityRecord:
        """The test crashed its pytest-xdist worker (no teardown report ever came)."""
        return cls(nodeid, ERROR, outcome="error", error=CRASHED_WORKER + (f": {detail}" if detail else ""))

    @classmethod
    def interrupted(cls, nodeid: str, partial: StabilityRecord | None = None) -> StabilityRecord:
        """The run was interrupted while the test ran: what its fixture recorded, if anything."""
        if partial is not None:
            return replace(partial, outcome="interrupted")
        return cls(nodeid, ERROR, outcome="interrupted", error=INTERRUPTED)

    # -- builtins at the boundary --------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Builtins (for xdist reports and the JSON report); every field always present."""
        return {
            "nodeid": self.nodeid,
            "verdict": self.verdict,
            "outcome": self.outcome,
            "error": self.error,
            "skip_reason": self.skip_reason,
            "settings": _copy(self.settings),
            "calls": [c.to_dict() for c in self.calls],
            "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StabilityRecord:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(
            nodeid=data["nodeid"],
            verdict=data["verdict"],
            outcome=data.get("outcome"),
            error=data.get("error"),
            skip_reason=data.get("skip_reason"),
            settings=data.get("settings") or {},
            calls=tuple(CallRecord.from_dict(c) for c in data.get("calls") or ()),
            worker=data.get("worker"),
        )

    def with_(self, **changes: Any) -> StabilityRecord:
        """A copy with ``changes`` (the record is frozen)."""
        return replace(self, **changes)

    # -- reading -------------------------------------------------------------------

    @property
    def runs(self) -> tuple[RunRecord, ...]:
        """Every run of the test, call after call."""
        return tuple(run for call in self.calls for run in call.runs)

    @property
    def primary(self) -> RunRecord | None:
        """The run the JSON and HTML reports show for the test: the first unstable run over all its calls, else
        the first run; None when it never trained."""
        return primary_run(self.runs)

    @property
    def regressed(self) -> bool:
        """Whether a ``train()`` call failed its ``--stability-baseline`` comparison."""
        return any(c.baseline is not None and c.baseline.failed for c in self.calls)

    @property
    def worst_baseline(self) -> str | None:
        """The worst ``--stability-baseline`` status of the calls (``regressed`` > ``missing`` > ``ok``), None
        when no call was compared.  The one rule the JSON, HTML and JUnit reports use."""
        statuses = [c.baseline.status for c in self.calls if c.baseline is not None]
        return next((s for s in ("regressed", "missing", "ok") if s in statuses), None)

    @property
    def failed_otherwise(self) -> bool:
        """The test failed although its training was judged stable (and did not regress)."""
        return self.verdict == STABLE and self.outcome in ("failed", "error") and not self.regressed

    @property
    def expected_unstable(self) -> bool:
        """The training was judged unstable and the test passed: the test judged the run itself and expected it
        (``stability.fit(..., check=False)`` then an assertion, or ``pytest.raises(StabilityError)``)."""
        return self.verdict == UNSTABLE and self.outcome == "passed"


#: The keys of :meth:`StabilityRecord.to_dict`.
RECORD_KEYS = tuple(f.name for f in fields(StabilityRecord))


#: the label every report gives a verdict (the terminal row, the HTML report; REGR for a regressed baseline)
VERDICT_LABELS: dict[str, str] = {"stable": "PASS", "unstable": "FAIL", "error": "ERROR", "skipped": "SKIP"}
#: the label of an unstable run whose test passed (:attr:`StabilityRecord.expected_unstable`): as pytest's xfail,
#: a failure the test expects, not a failure of the suite
EXPECTED_LABEL = "XFAIL"


__all__ = [
    "EXPECTED_LABEL",
    "VERDICT_LABELS",
    "BaselineComparison",
    "CallRecord",
    "CheckRecord",
    "Curve",
    "Encoded",
    "FindingRecord",
    "MetricComparison",
    "RunRecord",
    "RunSummary",
    "SeedComparison",
    "CRASHED_WORKER",
    "ERROR",
    "FAILED_AFTER",
    "INTERRUPTED",
    "NO_TRAIN",
    "OUTCOMES",
    "RECORD_KEYS",
    "SETUP_ERROR",
    "SKIPPED",
    "STABLE",
    "StabilityRecord",
    "UNSTABLE",
    "VERDICTS",
]
