"""Run-level state: collects every stability test's record; owns files and the summary.

Records arrive on teardown reports (``report.stability``, builtins only), so
the same code aggregates a plain run and a pytest-xdist run on the controller.
Only the controller writes files and prints (xdist workers must not: their
stdout carries execnet traffic, and N workers would write N times).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .fixtures import RECORD_KEY
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
        #: the collected stability items (serial runs and workers; the xdist controller collects none)
        self._items: dict[str, pytest.Item] = {}
        #: node ids known to be stability tests from their reports (the xdist controller's view)
        self._seen_marked: set[str] = set()
        #: node ids started and not finished (what an interrupted run was running)
        self._running: set[str] = set()
        self.started: float | None = None
        self.finished: float | None = None
        self.exitstatus: int | None = None
        self.interrupted = False

    def _is_stability_test(self, nodeid: str) -> bool:
        return nodeid in self.marked or nodeid in self._seen_marked

    def pytest_sessionstart(self) -> None:
        self.started = time.time()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if item.get_closest_marker(MARKER_NAME) is not None or "stability" in getattr(item, "fixturenames", ()):
                self.marked[item.nodeid] = item.nodeid
                self._items[item.nodeid] = item

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        # Under xdist the controller does not collect: this flag (a builtin, it
        # travels with the report) tells it which tests are stability tests,
        # for the records of tests skipped or errored before the fixture ran.
        if item.nodeid in self.marked:
            report.stability_marked = True
        return report

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._running.add(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._running.discard(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if getattr(report, "stability_marked", False):
            self._seen_marked.add(nodeid)
        before = len(self.records), self.records.get(nodeid)
        self._collect(report)
        if (len(self.records), self.records.get(nodeid)) != before and not is_worker(self.config):
            self._write_partial()

    def _collect(self, report: pytest.TestReport) -> None:
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
            elif self._is_stability_test(nodeid) and nodeid not in self.records:
                self.records[nodeid] = {"nodeid": nodeid, "verdict": "error", "outcome": self._outcome.get(nodeid, "error"),
                                        "error": "the test errored before the stability fixture was set up",
                                        "calls": [], "settings": {}}
        # Skips happen in setup; a skipped test's teardown has no record.
        if report.when not in ("setup", "call", "teardown") and report.failed and self._is_stability_test(nodeid):
            # pytest-xdist reports a test whose worker crashed with when="???" and no teardown.
            self.records[nodeid] = {"nodeid": nodeid, "verdict": "error", "outcome": "error", "calls": [],
                                    "settings": {}, "error": "the test crashed its pytest-xdist worker"}
        if report.when == "setup" and report.skipped and self._is_stability_test(nodeid):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.records[nodeid] = {"nodeid": nodeid, "verdict": "skipped", "outcome": "skipped", "error": None,
                                    "skip_reason": reason, "calls": [], "settings": {}}

    def sorted_records(self) -> list[dict[str, Any]]:
        return [self.records[k] for k in sorted(self.records)]

    def _write_partial(self) -> None:
        from .gating import GATING_KEY

        gating = self.config.stash.get(GATING_KEY, None)
        if gating is not None:
            gating.write_json(self.sorted_records(), final=False)

    def _add_interrupted(self) -> None:
        """Records for the stability tests an interrupted run was running."""
        for nodeid in sorted(self._running):
            if nodeid in self.records or not self._is_stability_test(nodeid):
                continue
            item = self._items.get(nodeid)
            stored = item.stash.get(RECORD_KEY, None) if item is not None else None
            record = dict(stored) if stored is not None else {
                "nodeid": nodeid, "verdict": "error", "calls": [], "settings": {},
                "error": "the run was interrupted while this test was running"}
            record["outcome"] = "interrupted"
            self.records[nodeid] = record

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # trylast: after pytest's runner has torn down the fixtures of a test
        # interrupted by Ctrl-C, so its record (if any) is in item.stash.
        # Runs on KeyboardInterrupt too, so an interrupted run still writes.
        if is_worker(self.config):
            return
        from .gating import GATING_KEY

        self.finished = time.time()
        self.exitstatus = int(exitstatus)
        self.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if self.interrupted:
            self._add_interrupted()
        gating = self.config.stash.get(GATING_KEY, None)
        if gating is None:
            return
        footer, ok = gating.finish(self.sorted_records(), interrupted=self.interrupted)
        self.footer.extend(footer)
        if not ok and session.exitstatus == pytest.ExitCode.OK:
            # A session-level failure fails the run, never the summary (pytest-cov).
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if is_worker(self.config) or self.config.get_verbosity() < -1:
            return
        if not self.records and not self.footer:
            return  # a run without stability tests pays nothing (render imports numpy)
        from .report.terminal import write_summary

        write_summary(terminalreporter, self.sorted_records(), self.footer)
