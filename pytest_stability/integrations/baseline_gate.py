"""The baseline gate: fail a test whose stability regressed against ``--stability-baseline``.

Runs in the process that trains the test (under pytest-xdist, a worker), so the
test itself fails: an implementation of ``pytest_stability_run_finished``
compares each ``train()`` call with its baseline entry
(:func:`pytest_stability.report.baseline.compare_call`) and calls
``pytest.fail`` on a regression.  The comparisons of the running test are kept
until its teardown report, where the plugin's one ``pytest_runtest_makereport``
wrapper takes them (:meth:`BaselineGate.pop_comparisons`) into the test's
record; the session, on the controller, only reads them.

The tolerances are ordinary settings (:data:`pytest_stability.options.OPTIONS`),
resolved per test: marker > command line > ini > default.  This module writes
no file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ..marker import spec_for_node
from ..options import TOLERANCE_NAMES, RunFiles, RunSpec, cli_name
from ..record import BaselineComparison
from ..report import baseline as baseline_mod  # light: math only
from ..report import json_report  # light: package metadata

if TYPE_CHECKING:
    from ..report.runs import StabilityReport

GATE_KEY = pytest.StashKey["BaselineGate"]()


def load_for(files: RunFiles) -> tuple[dict[str, Any] | None, list[str]]:
    """The ``--stability-baseline`` document (None without the option) and the problems reading it."""
    if files.baseline is None:
        return None, []
    try:
        return baseline_mod.load_baseline(files.baseline), []
    except baseline_mod.BaselineFileError as exc:
        return None, [f"{cli_name('baseline')}: {exc}"]


def _run_inputs(report: StabilityReport) -> list[dict[str, Any]]:
    """What the baseline comparison reads of a StabilityReport's runs (builtins)."""
    return [
        {
            "seed": int(r.seed),
            "summary": r.summary(),
            "findings": [f.to_dict() for f in r.findings],
            "backend": (r.trace.info or {}).get("backend"),
        }
        for r in report.runs
    ]


class BaselineGate:
    """Registered for the run when ``--stability-baseline`` is given; see the module docstring."""

    def __init__(self, baseline: dict[str, Any], files: RunFiles, defaults: RunSpec) -> None:
        self.baseline = baseline
        self.path = files.baseline
        self.strict = files.baseline_strict
        #: the run-wide settings (CLI > ini > default); a test's marker is laid over them
        self.defaults = defaults
        #: nodeid -> the comparison of each train() call of the running test
        self._comparisons: dict[str, list[BaselineComparison]] = {}
        self._items: dict[str, pytest.Item] = {}

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        if config.get_verbosity() < 0:
            return None
        tol = ", ".join(f"{k}={v}" for k, v in sorted(self.tolerances_for(None).items()))
        return [f"stability baseline: {self.path}" + (" (strict)" if self.strict else "") + f"; {tol}"]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._comparisons.pop(item.nodeid, None)
        self._items[item.nodeid] = item

    def tolerances_for(self, nodeid: str | None) -> dict[str, Any]:
        """The baseline tolerances of a test (marker > CLI > ini > default); run-wide for None or an unknown id."""
        item = self._items.get(nodeid) if nodeid is not None else None
        # markers were validated at collection, so this does not raise
        spec = spec_for_node(item, self.defaults) if item is not None else self.defaults
        return {name: getattr(spec, name) for name in TOLERANCE_NAMES}

    @pytest.hookimpl(trylast=True)  # a user's implementation sees every run, also one failed here
    def pytest_stability_run_finished(self, nodeid: str, report: StabilityReport) -> None:
        __tracebackhide__ = True
        done = self._comparisons.setdefault(nodeid, [])
        runs = _run_inputs(report)
        # the section of the backend this process trains on: another backend's runs are no baseline for it
        backend = runs[0]["backend"] or baseline_mod.UNKNOWN_BACKEND
        tests = baseline_mod.section_tests(self.baseline, backend)
        comparison = baseline_mod.compare_call(
            (tests or {}).get(nodeid),
            len(done),
            runs,
            self.tolerances_for(nodeid),
            strict=self.strict,
            backend=backend,
            backend_in_baseline=tests is not None,
            path=str(self.path),
        )
        done.append(comparison)
        if comparison.failed:
            changed = []
            if comparison.status == baseline_mod.REGRESSED:
                changed = baseline_mod.environment_changes(
                    baseline_mod.section_environment(self.baseline, backend), json_report.environment()
                )
            message = baseline_mod.explain_regression(nodeid, str(self.path), comparison, changed)
            if not report.ok:
                message += "\n\n" + report.explain()
            # pytrace=False: the message is the explanation; a traceback would
            # only show pluggy's frames between train() and this hook.
            pytest.fail(message, pytrace=False)

    def pop_comparisons(self, nodeid: str) -> list[BaselineComparison]:
        """The comparisons of a finished test's train() calls, in call order (forgotten here)."""
        self._items.pop(nodeid, None)
        return self._comparisons.pop(nodeid, None) or []


__all__ = ["BaselineGate", "GATE_KEY", "load_for"]
