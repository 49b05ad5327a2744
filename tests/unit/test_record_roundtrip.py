"""The typed record and its builtins form: ``from_dict(to_dict())`` gives the same record and the same dict.

Built from the committed recordings of real training (tests/plugin/recorded/*.json, see
tests/plugin/recorded_runs.py): each recorded run's trace is judged and diagnosed as the fixture does it, and
its report's records go through the xdist / JSON boundary.  Framework-free: only the traces are decoded (the
batch plans, which name a finding's batch, need the training layer and are left out here).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_stability import pipeline
from pytest_stability.checks import Thresholds
from pytest_stability.record import BaselineComparison, CallRecord, RunRecord, StabilityRecord
from pytest_stability.report import RunReport, StabilityReport
from pytest_stability.report import baseline as baseline_mod
from pytest_stability.trace import Trace

RECORDINGS = sorted((Path(__file__).resolve().parents[1] / "plugin" / "recorded").glob("*.json"))


def _decode(value: Any) -> Any:
    """A recording's value: numpy arrays from their ``{"ndarray", "dtype"}`` form, the rest as it is."""
    if isinstance(value, dict):
        if set(value) == {"ndarray", "dtype"}:
            return np.asarray(value["ndarray"], dtype=value["dtype"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _report(name: str, seeds: dict[str, Any]) -> StabilityReport:
    runs = []
    for seed in sorted(seeds, key=int):
        entry = seeds[seed]
        trace = Trace(**{k: _decode(v) for k, v in entry["trace"].items()})
        runs.append(
            RunReport(
                seed=int(seed),
                trace=trace,
                results=pipeline.judge(trace, Thresholds.from_mapping({})),
                device=entry["device"],
                wall_time=float(entry["wall_time"]),
                replay=f"pytest t.py::{name} --stability-replay={seed}",
                data_kind=entry["data_kind"],
                final_metrics=dict(entry["final_metrics"]),
            )
        )
    return StabilityReport(f"t.py::{name}", runs)


def _records(path: Path) -> list[StabilityRecord]:
    tests = json.loads(path.read_text(encoding="utf-8"))["tests"]
    out = []
    for name in sorted(tests):
        calls = [_report(name, seeds).to_record() for seeds in tests[name]]
        record = StabilityRecord.trained(f"t.py::{name}", settings={"steps": 5, "checks": ["loss_spike"]}, calls=calls)
        out.append(record.with_(outcome="passed" if record.verdict == "stable" else "failed", worker="gw1"))
    return out


def _with_baselines(records: list[StabilityRecord]) -> list[StabilityRecord]:
    """Each record compared with a baseline of the same runs (ok) and, for its last call, with none (missing)."""
    document = baseline_mod.build_baseline(records, meta={})
    out = []
    for record in records:
        calls = []
        for i, call in enumerate(record.calls):
            backend = baseline_mod.run_backend(call.runs[0])
            tests = baseline_mod.section_tests(document, backend)
            entry = None if i == len(record.calls) - 1 and i > 0 else (tests or {}).get(record.nodeid)
            runs = [
                {"seed": r.seed, "summary": r.summary.to_dict(), "findings": [f.to_dict() for f in r.findings]}
                for r in call.runs
            ]
            comparison = baseline_mod.compare_call(
                entry, i, runs, baseline_mod.TOLERANCE_DEFAULTS, strict=False, backend=backend, path="base.json"
            )
            calls.append(dataclasses.replace(call, baseline=comparison))
        out.append(record.with_(calls=tuple(calls)))
    return out


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_records_of_recorded_runs_round_trip_through_builtins(path):
    records = _records(path)
    assert records and all(r.calls for r in records)
    for record in records + _with_baselines(records):
        data = record.to_dict()
        back = StabilityRecord.from_dict(data)
        assert back == record
        assert back.to_dict() == data
        # builtins only: the JSON report (NaN encoded) and xdist's execnet carry them unchanged
        assert StabilityRecord.from_dict(json.loads(json.dumps(data, allow_nan=False))) == record
        for call, call_data in zip(record.calls, data["calls"], strict=True):
            assert CallRecord.from_dict(call_data) == call
            for run, run_data in zip(call.runs, call_data["runs"], strict=True):
                assert RunRecord.from_dict(run_data) == run
                assert list(run_data) == [
                    "seed",
                    "verdict",
                    "device",
                    "wall_time",
                    "steps_planned",
                    "steps_run",
                    "data",
                    "replay",
                    "checks",
                    "findings",
                    "summary",
                    "metrics",
                    "first_nonfinite",
                    "model",
                    "curves",
                ]


def test_the_dict_form_is_the_reports_own():
    """A report's record gives the dict the report gives (one conversion, in one place)."""
    path = next(p for p in RECORDINGS if p.stem == "seeds")
    tests = json.loads(path.read_text(encoding="utf-8"))["tests"]
    report = _report("test_three_seeds", tests["test_three_seeds"][0])
    assert report.to_record().to_dict() == report.to_dict()
    assert [r.to_record() for r in report.runs] == list(report.to_record().runs)
    for run in report.runs:
        assert run.to_record().summary.to_dict() == run.summary()
    assert list(report.to_dict()) == ["verdict", "seeds", "failed_seeds", "runs", "spread"]


def test_the_primary_run_and_the_worst_baseline_are_the_reports_rules():
    unstable = RunRecord(seed=1, verdict="unstable")
    first, later = RunRecord(seed=0, verdict="stable"), RunRecord(seed=2, verdict="unstable")
    stable_call = CallRecord("stable", seeds=(0,), runs=(first,))
    mixed = CallRecord("unstable", seeds=(0, 1, 2), failed_seeds=(1, 2), runs=(first, unstable, later))
    assert stable_call.primary is first and mixed.primary is unstable
    record = StabilityRecord.trained("t", settings={}, calls=[stable_call, mixed])
    assert record.primary is unstable and record.runs == (first, first, unstable, later)
    assert StabilityRecord.skipped("t", "why").primary is None
    assert record.worst_baseline is None and not record.regressed
    ok, missing = BaselineComparison("ok"), BaselineComparison("missing")
    compared = record.with_(
        calls=(dataclasses.replace(stable_call, baseline=ok), dataclasses.replace(mixed, baseline=missing))
    )
    assert compared.worst_baseline == "missing" and not compared.regressed
    regressed = BaselineComparison("regressed", failed=True)
    worse = compared.with_(calls=(compared.calls[0], dataclasses.replace(mixed, baseline=regressed)))
    assert worse.worst_baseline == "regressed" and worse.regressed


def test_a_run_an_exception_stopped_is_an_error_its_curves_kept_and_no_baseline():
    """The steps a run recorded before an exception stopped it (a timeout, the user's callback): no check judged
    them, so the run and its call are errors, not stable; the record keeps its curves and steps for the report,
    and the baseline keeps the calls that completed only."""
    path = next(p for p in RECORDINGS if p.stem == "seeds")
    tests = json.loads(path.read_text(encoding="utf-8"))["tests"]
    completed = _report("test_three_seeds", tests["test_three_seeds"][0])
    first = completed.runs[0]
    seen = first.trace.steps // 2
    t = first.trace
    partial = Trace(loss=t.loss[:seen], grad_norm=t.grad_norm[:seen], steps_planned=t.steps_planned, info=t.info)
    error = f"training raised Failed: Timeout (>60.0s) from pytest-timeout. (during fit, after {seen} of ...)"
    stopped = RunReport(seed=0, trace=partial, results=[], device="CPU", wall_time=60.0, stopped=error)
    assert (stopped.verdict, stopped.ok, stopped.findings) == ("error", False, [])
    call = StabilityReport("t.py::test_x", [stopped])
    assert (call.verdict, call.ok, call.failed_seeds) == ("error", False, [0])
    run = call.to_record().runs[0]
    assert (run.verdict, run.steps_run, run.steps_planned, run.checks) == ("error", seen, t.steps_planned, ())
    assert run.curves["loss"].step[-1] == seen - 1 and "grad_norm" in run.curves
    # a later seed stopped after an earlier one completed: the call is an error all the same
    assert StabilityReport("t.py::test_x", [first, stopped]).verdict == "error"
    record = StabilityRecord.trained(
        "t.py::test_x", settings={}, calls=[completed.to_record(), call.to_record()], error=error
    )
    assert record.verdict == "error" and StabilityRecord.from_dict(record.to_dict()) == record
    tests_of = baseline_mod.section_tests(baseline_mod.build_baseline([record], meta={}), "tensorflow")
    assert tests_of is not None and len(tests_of["t.py::test_x"]["calls"]) == 1  # the completed call alone
    only_stopped = StabilityRecord.trained("t.py::test_y", settings={}, calls=[call.to_record()], error=error)
    assert baseline_mod.build_baseline([only_stopped], meta={})["backends"] == {}


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_a_report_prints_as_one_short_line_that_names_its_verdict(path):
    """``print(report)`` in a test, a REPL or pytest's ``-vv`` output: one line with the verdict, the seeds, the
    steps and the first finding, not every value of the trace (the dataclasses' own repr printed thousands of
    lines for a run of a few hundred steps)."""
    tests = json.loads(path.read_text(encoding="utf-8"))["tests"]
    for name in sorted(tests):
        for seeds in tests[name]:
            report = _report(name, seeds)
            text = repr(report)
            assert "\n" not in text and len(text) < 250 * len(report.runs)
            assert text.startswith(f"StabilityReport('t.py::{name}', {report.verdict}, seeds={report.seeds}")
            for run in report.runs[:3]:
                t = run.trace
                assert repr(run) in text and repr(run).startswith(f"RunReport(seed={run.seed}, {run.verdict}, ")
                assert f"steps={t.steps} of {t.steps_planned}" in repr(run)
                if run.findings:
                    first = run.findings[0]
                    assert f"[{first.check}] step {first.step}" in repr(run)
                    assert first.message in repr(first) and "evidence" not in repr(first)
                assert repr(t).startswith(f"Trace(steps={t.steps} of {t.steps_planned}") and "\n" not in repr(t)
                assert ("grad_norm" in repr(t)) == (t.grad_norm is not None)
