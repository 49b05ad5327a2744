"""Run-level state: collects every stability test's record; owns files and the summary.

Records arrive on teardown reports (``report.stability``, builtins only), so
the same code aggregates a plain run and a pytest-xdist run on the controller.
Only the controller writes files and prints (xdist workers must not: their
stdout carries execnet traffic, and N workers would write N times).
"""

from __future__ import annotations

from typing import Any

import pytest

from .marker import MARKER_NAME

SESSION_KEY = pytest.StashKey["StabilitySession"]()


def is_worker(config: pytest.Config) -> bool:
    """True inside a pytest-xdist worker process."""
    return hasattr(config, "workerinput")


class StabilitySession:
    """Registered as a plugin for the run; see the module docstring."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        #: nodeid -> record (builtins), in arrival order
        self.records: dict[str, dict[str, Any]] = {}
        #: nodeids of collected stable_training tests, for tests that never ran the fixture
        self.marked: dict[str, str] = {}
        self._outcome: dict[str, str] = {}
        self.footer: list[str] = []

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if item.get_closest_marker(MARKER_NAME) is not None or "stability" in getattr(item, "fixturenames", ()):
                self.marked[item.nodeid] = item.nodeid

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if report.failed:
            self._outcome[nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped and nodeid not in self._outcome:
            self._outcome[nodeid] = "skipped"
        elif report.when == "call" and nodeid not in self._outcome:
            self._outcome[nodeid] = "passed"
        record = getattr(report, "stability", None)
        if report.when == "teardown":
            if record is not None:
                record = dict(record)
                record["outcome"] = self._outcome.get(nodeid, "passed")
                record["worker"] = getattr(report, "worker_id", None)
                self.records[nodeid] = record
            elif nodeid in self.marked and nodeid not in self.records:
                self.records[nodeid] = {"nodeid": nodeid, "verdict": "error", "outcome": self._outcome.get(nodeid, "error"),
                                        "error": "the test errored before the stability fixture was set up",
                                        "calls": [], "settings": {}}
        # Skips happen in setup; a skipped test's teardown has no record.
        if report.when == "setup" and report.skipped and nodeid in self.marked:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.records[nodeid] = {"nodeid": nodeid, "verdict": "skipped", "outcome": "skipped", "error": None,
                                    "skip_reason": reason, "calls": [], "settings": {}}

    def sorted_records(self) -> list[dict[str, Any]]:
        return [self.records[k] for k in sorted(self.records)]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if is_worker(self.config) or self.config.get_verbosity() < -1:
            return
        from .report.terminal import write_summary

        write_summary(terminalreporter, self.sorted_records(), self.footer)
