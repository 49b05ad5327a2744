"""Run-level state on the controller: collect every stability test's record; write files; print the summary.

Records (:class:`~pytest_stability.record.StabilityRecord`) arrive on teardown
reports as builtins (``report.stability``), so the same code aggregates a plain
run and a pytest-xdist run.  The session owns every controller-side side
effect:

* ``--stability-report=PATH``: the JSON document
  (:mod:`~pytest_stability.report.json_report`), built through the
  ``pytest_stability_generate_json`` / ``pytest_stability_update_json`` hooks
  (the default implementation of the first is here, ``trylast``) and written
  atomically after each stability test (throttled) and at the end of the run,
  also an interrupted one;
* ``--stability-plots=DIR``: one PNG per test (:mod:`~pytest_stability.report.plots`);
* ``--stability-html=PATH``: the self-contained HTML report
  (:mod:`~pytest_stability.report.html`), written atomically at the end of the run;
* ``--stability-save-baseline=PATH``: the baseline, merged into the one
  already at PATH (:mod:`~pytest_stability.report.baseline`);
* the ``stability report`` terminal section (:mod:`~pytest_stability.report.terminal`).

Only the controller writes files and prints (xdist workers must not: their
stdout carries execnet traffic, and N workers would write N times: pytest#10641).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest

from .. import __version__
from ..errors import StabilityWarning
from ..marker import MARKER_NAME
from ..options import RunFiles, cli_name
from ..record import SETUP_ERROR, StabilityRecord
from ..report import baseline as baseline_mod  # light: math only

# report.json_report (json, tempfile, platform, importlib.metadata), report.plots
# (matplotlib) and report.terminal (numpy) are imported where used: this module is
# on the plugin's load path, which every pytest run pays for.

SESSION_KEY = pytest.StashKey["StabilitySession"]()
#: The record the ``stability`` fixture leaves on its test item (set in its teardown).
RECORD_KEY = pytest.StashKey[StabilityRecord]()

PLOTS_MISSING_MESSAGE = "--stability-plots needs matplotlib: pip install 'pytest-stability[plots]'"


def is_worker(config: pytest.Config) -> bool:
    """True inside a pytest-xdist worker process."""
    return hasattr(config, "workerinput")


def check_outputs(files: RunFiles, *, worker: bool) -> tuple[dict[str, Any] | None, list[str]]:
    """Before the run: the baseline already at the save path (saving updates it), and every problem found.

    Problems: an invalid baseline at the save path, ``--stability-plots`` without
    matplotlib.  Workers write nothing, so they check nothing.
    """
    problems: list[str] = []
    previous = None
    if worker:
        return None, problems
    if files.save_baseline is not None and files.save_baseline.is_file():
        try:
            previous = baseline_mod.load_baseline(files.save_baseline)
        except baseline_mod.BaselineFileError as exc:
            problems.append(
                f"{cli_name('save_baseline')}: {exc.problem}; saving updates the baseline already "
                "at PATH, so remove that file (or give another PATH) to start a new baseline"
            )
    if files.plots is not None:
        try:
            import matplotlib  # noqa: F401  (checked now, so a run does not fail only at its end)
        except ImportError:
            problems.append(PLOTS_MISSING_MESSAGE)
    return previous, problems


def is_stability_item(item: pytest.Item) -> bool:
    """A stability test: marked ``stable_training`` or using the ``stability`` fixture."""
    return item.get_closest_marker(MARKER_NAME) is not None or "stability" in getattr(item, "fixturenames", ())


class StabilitySession:
    """Registered as a plugin for the run; see the module docstring."""

    def __init__(
        self, config: pytest.Config, files: RunFiles | None = None, previous: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.files = files or RunFiles()
        #: the baseline already at the --stability-save-baseline path (updated, not replaced)
        self.previous = previous
        #: nodeid -> record, in arrival order
        self.records: dict[str, StabilityRecord] = {}
        #: nodeids of collected stability tests (serial runs and workers; the xdist controller collects none)
        self._items: dict[str, pytest.Item] = {}
        #: node ids known to be stability tests from their reports (the xdist controller's view)
        self._seen_marked: set[str] = set()
        #: node ids started and not finished (what an interrupted run was running)
        self._running: set[str] = set()
        self._outcome: dict[str, str] = {}
        #: the last line of each setup failure (a bad marker says what is wrong there), for its record
        self._setup_failure: dict[str, list[str]] = {}
        self.footer: list[str] = []
        self.started: float | None = None
        self.finished: float | None = None
        self.exitstatus: int | None = None
        self.interrupted = False
        self._last_write = 0.0
        self._write_cost = 0.0
        self.write_error: str | None = None

    def _is_stability_test(self, nodeid: str) -> bool:
        return nodeid in self._items or nodeid in self._seen_marked

    # -- collecting ------------------------------------------------------------------

    def pytest_sessionstart(self) -> None:
        self.started = time.time()

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        f = self.files
        if config.get_verbosity() < 0 or not (f.report or f.save_baseline or f.plots or f.html):
            return None
        lines = []
        if f.report:
            lines.append(f"stability JSON report: {f.report}")
        if f.save_baseline:
            lines.append(
                f"stability baseline to save: {f.save_baseline}"
                + (" (updated: tests not run keep their entries)" if self.previous is not None else "")
            )
        if f.plots:
            lines.append(f"stability plots: {f.plots}")
        if f.html:
            lines.append(f"stability HTML report: {f.html}")
        return lines

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if is_stability_item(item):
                self._items[item.nodeid] = item

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._running.add(nodeid)
        # each attempt of a test starts its own (pytest-rerunfailures runs a failed test again under the same
        # node id): the record is the last attempt's, and so are its outcome and any setup failure
        self.records.pop(nodeid, None)
        self._outcome.pop(nodeid, None)
        self._setup_failure.pop(nodeid, None)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._running.discard(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if getattr(report, "stability_marked", False):
            self._seen_marked.add(nodeid)
        before = self.records.get(nodeid)
        self._collect(report)
        if self.records.get(nodeid) is not before and not is_worker(self.config):
            self.write_json(final=False)

    def _collect(self, report: pytest.TestReport) -> None:
        if runs_no_test(self.config):
            return  # --setup-only/--setup-plan: their setup and teardown reports are not a test that ran
        nodeid = report.nodeid
        if report.failed:
            self._outcome[nodeid] = "failed" if report.when == "call" else "error"
            if report.when == "setup":
                self._setup_failure[nodeid] = _setup_failure_line(report)
        elif report.skipped and nodeid not in self._outcome:
            self._outcome[nodeid] = "skipped"
        elif report.when == "call" and nodeid not in self._outcome:
            self._outcome[nodeid] = "passed"
        data = getattr(report, "stability", None)
        if data is None and not self._is_stability_test(nodeid):
            return
        if report.when == "teardown":
            if data is not None:
                self.records[nodeid] = StabilityRecord.from_dict(data).with_(
                    outcome=self._outcome.get(nodeid, "passed"), worker=getattr(report, "worker_id", None)
                )
            elif nodeid not in self.records:
                why = [line.removeprefix(f"{nodeid}: ") for line in self._setup_failure.pop(nodeid, [])]
                self.records[nodeid] = StabilityRecord.errored(
                    nodeid, SETUP_ERROR + (f": {why[0]}" if why else ""), outcome=self._outcome.get(nodeid, "error")
                )
        elif report.when == "setup" and report.skipped:
            # Skips happen in setup; a skipped test's teardown has no record.
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.records[nodeid] = StabilityRecord.skipped(nodeid, reason)
        elif report.when not in ("setup", "call") and report.failed:
            # pytest-xdist reports a test whose worker crashed with when="???" and no teardown.
            self.records[nodeid] = StabilityRecord.crashed(nodeid)

    def sorted_records(self) -> list[StabilityRecord]:
        return [self.records[k] for k in sorted(self.records)]

    def _add_interrupted(self) -> None:
        """Records for the stability tests an interrupted run was running."""
        for nodeid in sorted(self._running):
            if nodeid in self.records or not self._is_stability_test(nodeid):
                continue
            item = self._items.get(nodeid)
            stored = item.stash.get(RECORD_KEY, None) if item is not None else None
            self.records[nodeid] = StabilityRecord.interrupted(nodeid, stored)

    # -- the JSON document (default implementation of the hook) ------------------

    @pytest.hookimpl(trylast=True)
    def pytest_stability_generate_json(
        self, config: pytest.Config, records: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        from ..report import json_report

        # the hook passes the records' builtins (its documented form); the document is built from typed records
        return json_report.build_document(
            [StabilityRecord.from_dict(r) for r in records],
            plugin_version=__version__,
            started=self.started,
            finished=self.finished,
            now=time.time(),
            exitstatus=self.exitstatus,
            interrupted=self.interrupted,
            complete=self.finished is not None,
        )

    # -- controller-side writing ---------------------------------------------------

    def write_json(self, *, final: bool) -> bool:
        """Build the document through the hooks and write it atomically; False if it failed.

        While tests still run (``final`` False), writes are skipped when the
        last one was recent relative to its cost, so large reports cost at
        most ~10% extra time; a killed run still leaves what had run.
        """
        if self.files.report is None:
            return True
        from ..report import json_report

        now = time.monotonic()
        if not final and now - self._last_write < 10 * self._write_cost:
            return True
        hook = self.config.hook
        records = [r.to_dict() for r in self.sorted_records()]
        try:
            document = hook.pytest_stability_generate_json(config=self.config, records=records)
            if not isinstance(document, dict):
                raise TypeError(f"pytest_stability_generate_json returned {type(document).__name__}, not a dict")
            hook.pytest_stability_update_json(config=self.config, document=document)
            text = json_report.dumps(document)
            json_report.write_atomic(self.files.report, text)
        except Exception as exc:  # noqa: BLE001 - hooks are user code; a failed write must not be an INTERNALERROR
            self.write_error = f"{type(exc).__name__}: {exc}"
            return False
        self.write_error = None
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - now
        return True

    def _write_plots(self) -> tuple[str, bool]:
        """One PNG per test; a test whose plot fails is named in a warning, and the others are still written."""
        from ..report.plots import write_plots

        directory = self.files.plots
        assert directory is not None  # written only when the option is set
        try:
            written, failures = write_plots(self.sorted_records(), directory)
        except OSError as exc:  # e.g. the directory cannot be created
            return f"stability plots NOT written to {directory}: {type(exc).__name__}: {exc}", False
        for nodeid, error in failures:
            warnings.warn(StabilityWarning(f"stability plot of {nodeid} NOT written: {error}"), stacklevel=1)
        line = f"stability plots: {len(written)} PNG file{'s' if len(written) != 1 else ''} written to {directory}"
        if failures:
            line += f" ({len(failures)} NOT written: {', '.join(n for n, _ in failures)})"
        return line, True

    def _write_html(self) -> tuple[str, bool]:
        """The HTML report, written atomically; returns the footer line and whether it was written."""
        from ..report import html, json_report

        path = self.files.html
        assert path is not None  # written only when the option is set
        records = self.sorted_records()
        backends = sorted({run.backend for r in records for run in r.runs if run.backend is not None})
        meta = {
            "pytest-stability": __version__,
            "Keras backend": ", ".join(backends) or None,
            "finished": json_report.iso_time(self.finished),
            "interrupted": "yes" if self.interrupted else None,
        }
        try:
            json_report.write_atomic(path, html.render_report(records, meta=meta))
        except Exception as exc:  # noqa: BLE001 - a report that cannot be written must not be an INTERNALERROR
            return f"stability HTML NOT written to {path}: {type(exc).__name__}: {exc}", False
        return f"stability HTML report written to {path}", True

    def _save_baseline(self, *, interrupted: bool) -> tuple[str, bool]:
        """Write the baseline, updating the one already there; returns the footer line and whether it was saved.

        Not after an interrupted run: its last test may have stopped half-way.
        """
        from ..report import json_report

        path = self.files.save_baseline
        assert path is not None  # saved only when the option is set
        if interrupted:
            return f"stability baseline NOT saved to {path}: the run was interrupted", False
        doc = baseline_mod.build_baseline(
            self.sorted_records(),
            meta={
                "plugin_version": __version__,
                "environment": json_report.environment(),
                "created_at": json_report.iso_time(time.time()),
            },
        )
        written = sorted(doc["backends"])
        if not written:  # -m "not stable_training", -k, --collect-only, or every stability test stopped before training
            if option := runs_no_test(self.config):
                return f"stability baseline not saved to {path}: {option} ran no test", True
            if self.previous is not None:
                return f"stability baseline {path} left as it was: no stability test trained in this run", True
            return f"stability baseline not saved to {path}: no stability test trained in this run", True
        n_tests = sum(len(doc["backends"][b]["tests"]) for b in written)
        what = f"{n_tests} tests"
        if self.previous is not None:
            doc, counts = baseline_mod.merge_baseline(self.previous, doc)
            n_tests = sum(len(doc["backends"][b]["tests"]) for b in written)
            what = f"{n_tests} tests: {counts['updated']} updated, {counts['added']} added, {counts['kept']} kept"
        others = sorted(set(doc["backends"]) - set(written))
        if others:  # a file with several backends' sections: say which one this run wrote
            what += (
                f", in the {', '.join(written)} section; the {', '.join(others)} "
                f"section{'s' if len(others) > 1 else ''} kept"
            )
        try:
            # indented: a baseline is committed, and its changes are reviewed as diffs
            json_report.write_atomic(path, json_report.dumps(doc, indent=1))
        except (OSError, TypeError, ValueError) as exc:
            return f"stability baseline NOT saved to {path}: {type(exc).__name__}: {exc}", False
        return f"stability baseline saved to {path} ({what})", True

    def _finish(self) -> tuple[list[str], bool]:
        """Write plots, the baseline and the JSON report; returns footer lines and whether all went well."""
        f = self.files
        footer: list[str] = []
        ok = True
        # pytest --collect-only runs no test: nothing to compare with the baseline (nor to save: _save_baseline)
        if f.baseline is not None and not runs_no_test(self.config):
            compared = [c.baseline for r in self.records.values() for c in r.calls if c.baseline is not None]
            regressed = sum(c.status == "regressed" for c in compared)
            missing = sum(c.status == "missing" for c in compared)
            # the same word as the rows and the JSON ("missing"): not in the baseline, and why when it is the backend
            absent = sorted({str(c.backend) for c in compared if c.backend_in_baseline is False})
            why = "".join(f" ({baseline_mod.no_backend_note(b)})" for b in absent)
            footer.append(
                f"stability baseline {f.baseline}: {len(compared) - missing} compared, "
                f"{regressed} regressed, {missing} not in the baseline{why}"
            )
        if f.plots is not None:
            line, written = self._write_plots()
            footer.append(line)
            ok = ok and written
        if f.save_baseline is not None:
            line, saved = self._save_baseline(interrupted=self.interrupted)
            footer.append(line)
            ok = ok and (saved or self.interrupted)
        if f.html is not None:
            line, written = self._write_html()
            footer.append(line)
            ok = ok and written
        if f.report is not None:
            if self.write_json(final=True):
                footer.append(f"stability JSON written to {f.report}")
            else:
                footer.append(f"stability JSON NOT written to {f.report}: {self.write_error}")
                ok = False
        return footer, ok

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # trylast: after pytest's runner has torn down the fixtures of a test
        # interrupted by Ctrl-C, so its record (if any) is in item.stash.
        # Runs on KeyboardInterrupt too, so an interrupted run still writes.
        if is_worker(self.config):
            return
        self.finished = time.time()
        self.exitstatus = int(exitstatus)
        self.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if self.interrupted:
            self._add_interrupted()
        footer, ok = self._finish()
        self.footer.extend(footer)
        if not ok and session.exitstatus == pytest.ExitCode.OK:
            # A session-level failure fails the run, never the summary (pytest-cov).
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if is_worker(self.config) or self.config.get_verbosity() < -1:
            return
        if not self.records and not self.footer:
            return  # a run without stability tests pays nothing (render imports numpy)
        from ..report.terminal import write_summary

        write_summary(terminalreporter, self.sorted_records(), self.footer)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if config.pluginmanager.is_registered(self):
            config.pluginmanager.unregister(self)


__all__ = [
    "PLOTS_MISSING_MESSAGE",
    "RECORD_KEY",
    "SESSION_KEY",
    "StabilitySession",
    "check_outputs",
    "is_stability_item",
    "is_worker",
    "runs_no_test",
]


def runs_no_test(config: pytest.Config) -> str | None:
    """The option under which this session runs no test body (``--setup-only`` sets fixtures up and tears them
    down, the stability fixture with them; ``--setup-plan``, which sets ``setuponly`` too, reports both phases and
    sets nothing up), else None."""
    for dest, option in (
        ("collectonly", "--collect-only"),
        ("setupplan", "--setup-plan"),
        ("setuponly", "--setup-only"),
    ):
        if config.getoption(dest, False):
            return option
    return None


def _setup_failure_line(report: pytest.TestReport) -> list[str]:
    """What failed a test's setup, in one line: the exception and its message (``RuntimeError: ...``; a
    ``pytest.fail`` its message alone), else the report's last line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if message:
        return [message.strip().splitlines()[0].removeprefix("Failed: ")]  # pytest.fail's own "Failed: "
    return (report.longreprtext or "").strip().splitlines()[-1:]
