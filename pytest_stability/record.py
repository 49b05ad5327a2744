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

Data flows one way: fixture -> record (worker side, on the teardown report) ->
session (controller: collect, write, summarise).  Records cross the xdist
boundary as builtins: :meth:`to_dict` on the way out, :meth:`from_dict` on the
way in.  The dict form is the JSON report's per-test entry before
:func:`pytest_stability.report.json_report.entry_for` flattens it (every key of
:data:`RECORD_KEYS` is always present, so the schema does not depend on how
the record was built).

Pure builtins; imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

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
NO_TRAIN = "the test did not complete a stability.train() call"
#: prefix of ``error`` when the test failed after its training was judged stable.
FAILED_AFTER = "the test failed after stability.train()"


@dataclass(frozen=True)
class StabilityRecord:
    """One stability test's result, builtins only (it travels on xdist reports).

    Attributes:
        nodeid: the test's node id.
        verdict: ``stable`` / ``unstable`` / ``error`` / ``skipped`` (training stability).
        outcome: the pytest outcome (``passed`` / ``failed`` / ``error`` /
            ``skipped`` / ``interrupted``), filled in by the session.
        error: why the test has no verdict, or what failed besides training
            (exception type and message), else None.
        skip_reason: why it was skipped, else None.
        settings: the resolved ``stable_training`` settings (builtins).
        calls: one ``StabilityReport.to_dict()`` per ``train()`` call (with a
            ``baseline`` comparison under ``--stability-baseline``).
        worker: the xdist worker that ran it (not written to JSON).
    """

    nodeid: str
    verdict: str
    outcome: str | None = None
    error: str | None = None
    skip_reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    worker: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, received {self.verdict!r}")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be None or one of {OUTCOMES}, received {self.outcome!r}")

    # -- constructors ------------------------------------------------------------

    @classmethod
    def trained(
        cls, nodeid: str, *, settings: Mapping[str, Any], calls: list[dict[str, Any]], error: str | None = None
    ) -> StabilityRecord:
        """The fixture's record: stable / unstable from ``calls``; error when ``error`` is set or nothing trained."""
        if error is not None:
            verdict = ERROR
        elif not calls:
            verdict, error = ERROR, NO_TRAIN
        else:
            verdict = STABLE if all(c.get("verdict") == STABLE for c in calls) else UNSTABLE
        return cls(nodeid, verdict, error=error, settings=dict(settings), calls=list(calls))

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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StabilityRecord:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_(self, **changes: Any) -> StabilityRecord:
        """A copy with ``changes`` (the record is frozen)."""
        return replace(self, **changes)

    # -- reading -------------------------------------------------------------------

    @property
    def regressed(self) -> bool:
        """Whether a ``train()`` call failed its ``--stability-baseline`` comparison."""
        return any((c.get("baseline") or {}).get("failed") for c in self.calls)

    @property
    def failed_otherwise(self) -> bool:
        """The test failed although its training was judged stable (and did not regress)."""
        return self.verdict == STABLE and self.outcome in ("failed", "error") and not self.regressed


#: The keys of :meth:`StabilityRecord.to_dict`.
RECORD_KEYS = tuple(f.name for f in fields(StabilityRecord))


#: the label every report gives a verdict (the terminal row, the HTML report; REGR for a regressed baseline)
VERDICT_LABELS: dict[str, str] = {"stable": "PASS", "unstable": "FAIL", "error": "ERROR", "skipped": "SKIP"}


def primary_run(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The run a report shows for several (one per seed): the first that is not stable, else the first; None
    for none.  The one rule every report uses (the terminal row and GitHub per ``train()`` call, the JSON and
    HTML reports over all of a test's runs, JUnit's properties over its first call)."""
    return next((r for r in runs if r.get("verdict") != "stable"), runs[0] if runs else None)


def all_runs(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every run of a record (as builtins), call after call."""
    return [run for call in record.get("calls") or [] for run in call.get("runs") or []]


def worst_baseline(record: Mapping[str, Any]) -> str | None:
    """The worst ``--stability-baseline`` status of a record's calls (``regressed`` > ``missing`` > ``ok``), None
    when no call was compared.  The one rule the JSON, HTML and JUnit reports use."""
    statuses = [c["baseline"]["status"] for c in record.get("calls") or [] if c.get("baseline")]
    return next((s for s in ("regressed", "missing", "ok") if s in statuses), None)


__all__ = [
    "VERDICT_LABELS",
    "all_runs",
    "primary_run",
    "worst_baseline",
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
