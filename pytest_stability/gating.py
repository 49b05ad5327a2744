"""CI gating: the JSON report, baselines across commits, and plots (options, wiring, side effects).

* ``--stability-report=PATH``: one strict-JSON document per run
  (:mod:`~pytest_stability.report.json_report`), rewritten atomically after
  each stability test and at the end of the run, also an interrupted one.
* ``--stability-save-baseline=PATH`` records each test's summary metrics per
  seed, merged into the baseline already at PATH (tests that did not run keep
  their entries); ``--stability-baseline=PATH`` fails a test whose stability
  regressed (:mod:`~pytest_stability.report.baseline`).  The comparison runs in
  the process that trains the test, from the ``pytest_stability_run_finished``
  hook, so the test itself fails; its builtins result rides on the teardown
  report's ``stability`` record to the (xdist) controller.  Its tolerances are
  ordinary settings (:data:`pytest_stability.options.OPTIONS`), resolved per
  test: marker > command line > ini > default.
* ``--stability-plots=DIR``: one PNG per test (:mod:`~pytest_stability.report.plots`).

The path options and ``--stability-baseline-strict`` are run-wide only, so they
are registered here rather than in the options table.  Only the controller
writes files (xdist workers must not: pytest#10641).  Every option has an ini
twin; a command-line value wins over the ini value.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from . import __version__
from .marker import spec_for_node
from .options import TOLERANCE_NAMES, RunSpec, cli_name, ini_name
from .report import baseline as baseline_mod  # light: math only
from .session import SESSION_KEY, is_worker

# report.json_report (json, tempfile, platform, importlib.metadata) and
# report.plots (matplotlib) are imported where used: this module is on the
# plugin's load path, which every pytest run pays for.

GATING_KEY = pytest.StashKey["GatingPlugin"]()

REPORT_HELP = "write the JSON stability report (strict JSON, schema-versioned, written atomically) to PATH"
SAVE_BASELINE_HELP = ("save each stability test's summary metrics (per seed) as a baseline file at PATH; an "
                      "existing baseline there is updated: tests not run keep their entries")
BASELINE_HELP = ("compare each stability test with the baseline file at PATH and fail it when its stability "
                 "regressed beyond the baseline_* tolerances")
BASELINE_STRICT_HELP = ("with --stability-baseline: fail a stability test (or seed) that is not in the baseline "
                        "(default: report it)")
PLOTS_HELP = ("write one PNG per stability test (loss, gradient norm, validation loss, findings) into DIR; "
              "needs matplotlib")
PLOTS_MISSING_MESSAGE = "--stability-plots needs matplotlib: pip install 'pytest-stability[plots]'"

#: (name, metavar, help) of the path settings: --stability-NAME and ini stability_NAME.
PATH_SETTINGS = (
    ("report", "PATH", REPORT_HELP),
    ("save_baseline", "PATH", SAVE_BASELINE_HELP),
    ("baseline", "PATH", BASELINE_HELP),
    ("plots", "DIR", PLOTS_HELP),
)


def addoption(parser: pytest.Parser, group: Any) -> None:
    """Register the report / baseline / plot options and their ini twins (the tolerances are in OPTIONS)."""
    for name, metavar, help_text in PATH_SETTINGS:
        group.addoption(cli_name(name), dest="stability_" + name, default=None, metavar=metavar,
                        help=f"{help_text} (ini: {ini_name(name)})")
        parser.addini(ini_name(name), help=help_text + " (a relative path is relative to the rootdir)", default=None)
    group.addoption(cli_name("baseline_strict"), dest="stability_baseline_strict", action="store_true",
                    default=None, help=f"{BASELINE_STRICT_HELP} (ini: {ini_name('baseline_strict')})")
    parser.addini(ini_name("baseline_strict"), help=BASELINE_STRICT_HELP, type="bool", default=False)


@dataclass(frozen=True)
class GatingSettings:
    """The resolved run-wide gating settings (paths absolute)."""

    report: Path | None = None
    save_baseline: Path | None = None
    baseline: Path | None = None
    baseline_strict: bool = False
    plots: Path | None = None


def resolve_settings(config: pytest.Config) -> tuple[GatingSettings, list[str]]:
    """CLI > ini > default for every gating setting; returns the settings and the problems found."""
    problems: list[str] = []
    paths: dict[str, Path | None] = {}
    for name, _, _ in PATH_SETTINGS:
        cli, ini = config.getoption("stability_" + name), config.getini(ini_name(name))
        paths[name] = None
        if cli is not None:
            if not str(cli).strip():
                problems.append(f"{cli_name(name)}: expected a path, received an empty string")
            else:
                paths[name] = Path(config.invocation_params.dir, os.path.expanduser(cli))
        elif ini not in (None, ""):
            paths[name] = Path(config.rootpath, os.path.expanduser(str(ini)))
    strict = config.getoption("stability_baseline_strict")
    if strict is None:
        strict = bool(config.getini(ini_name("baseline_strict")))
    settings = GatingSettings(report=paths["report"], save_baseline=paths["save_baseline"],
                              baseline=paths["baseline"], baseline_strict=bool(strict), plots=paths["plots"])
    for name in ("report", "save_baseline"):
        path = getattr(settings, name)
        if path is not None and path.is_dir():
            problems.append(f"{cli_name(name)}: {path} is a directory; give a file path")
    if settings.plots is not None and settings.plots.exists() and not settings.plots.is_dir():
        problems.append(f"{cli_name('plots')}: {settings.plots} exists and is not a directory")
    if settings.baseline_strict and settings.baseline is None:
        problems.append(f"{cli_name('baseline_strict')} needs {cli_name('baseline')}=PATH "
                        f"(or ini {ini_name('baseline')})")
    return settings, problems


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and validate a baseline file; raises BaselineFileError with a message naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise baseline_mod.BaselineFileError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None

    import json

    def no_constants(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    try:
        document = json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise baseline_mod.BaselineFileError(f"the baseline {path} is not valid JSON: {exc}") from None
    return baseline_mod.validate_baseline(document, str(path))


class Prepared(NamedTuple):
    """What :func:`prepare` found: the settings, the baseline files they name, and every problem."""

    settings: GatingSettings
    #: the --stability-baseline document
    baseline: dict[str, Any] | None
    #: the baseline already at the --stability-save-baseline path, which saving updates
    previous: dict[str, Any] | None
    problems: list[str]


def prepare(config: pytest.Config) -> Prepared:
    """Resolve the gating settings and read the baseline files; every problem is returned, none raised.

    Problems: a bad value, an unreadable or invalid baseline (also one already
    at the save path: saving merges into it), --stability-plots without matplotlib.
    """
    settings, problems = resolve_settings(config)
    baseline = previous = None
    if settings.baseline is not None:
        try:
            baseline = load_baseline(settings.baseline)
        except baseline_mod.BaselineFileError as exc:
            problems.append(f"{cli_name('baseline')}: {exc}")
    if settings.save_baseline is not None and settings.save_baseline.is_file() and not is_worker(config):
        try:
            previous = load_baseline(settings.save_baseline)
        except baseline_mod.BaselineFileError as exc:
            problems.append(f"{cli_name('save_baseline')}: {exc.problem}; saving updates the baseline already "
                            "at PATH, so remove that file (or give another PATH) to start a new baseline")
    if settings.plots is not None and not is_worker(config):
        try:
            import matplotlib  # noqa: F401  (checked now, so a run does not fail only at its end)
        except ImportError:
            problems.append(PLOTS_MISSING_MESSAGE)
    return Prepared(settings, baseline, previous, problems)


def register(config: pytest.Config, prepared: Prepared, defaults: RunSpec) -> "GatingPlugin":
    """Register the run's :class:`GatingPlugin` (after :func:`prepare` found no problem)."""
    plugin = GatingPlugin(config, prepared.settings, prepared.baseline, defaults=defaults, previous=prepared.previous)
    config.stash[GATING_KEY] = plugin
    config.pluginmanager.register(plugin, "stability-gating")
    return plugin


def _run_inputs(report: Any) -> list[dict[str, Any]]:
    """What the baseline comparison reads of a StabilityReport's runs (builtins)."""
    return [{"seed": int(r.seed), "summary": r.summary(), "findings": [f.to_dict() for f in r.findings]}
            for r in report.runs]


class GatingPlugin:
    """Registered for the run: baseline comparison (in the process that trains) and the default JSON hook."""

    def __init__(self, config: pytest.Config, settings: GatingSettings, baseline: dict[str, Any] | None = None, *,
                 defaults: RunSpec | None = None, previous: dict[str, Any] | None = None) -> None:
        self.config = config
        self.settings = settings
        self.baseline = baseline
        #: the run-wide settings (CLI > ini > default); a test's marker is laid over them
        self.defaults = defaults
        #: the baseline already at the --stability-save-baseline path (updated, not replaced)
        self.previous = previous
        #: nodeid -> the baseline comparison of each train() call of the running test
        self._comparisons: dict[str, list[dict[str, Any]]] = {}
        self._items: dict[str, pytest.Item] = {}
        self._last_write = 0.0
        self._write_cost = 0.0
        self.write_error: str | None = None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if config.pluginmanager.is_registered(self):
            config.pluginmanager.unregister(self)

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        s = self.settings
        if config.get_verbosity() < 0 or not (s.report or s.save_baseline or s.baseline or s.plots):
            return None
        lines = []
        if s.report:
            lines.append(f"stability JSON report: {s.report}")
        if s.baseline:
            tol = ", ".join(f"{k}={v}" for k, v in sorted(self.tolerances_for(None).items()))
            lines.append(f"stability baseline: {s.baseline}" + (" (strict)" if s.baseline_strict else "")
                         + f"; {tol}")
        if s.save_baseline:
            lines.append(f"stability baseline to save: {s.save_baseline}"
                         + (" (updated: tests not run keep their entries)" if self.previous is not None else ""))
        if s.plots:
            lines.append(f"stability plots: {s.plots}")
        return lines

    # -- baseline comparison, in the process that runs the test -------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._comparisons.pop(item.nodeid, None)
        self._items[item.nodeid] = item

    def tolerances_for(self, nodeid: str | None) -> dict[str, Any]:
        """The baseline tolerances of a test (marker > CLI > ini > default); run-wide for None or an unknown id."""
        defaults = self.defaults
        item = self._items.get(nodeid) if nodeid is not None else None
        if defaults is None:
            values: Any = baseline_mod.TOLERANCE_DEFAULTS
        else:
            # markers were validated at collection, so this does not raise
            values = (spec_for_node(item, defaults) if item is not None else defaults).values
        return {name: values[name] for name in TOLERANCE_NAMES}

    @pytest.hookimpl(trylast=True)  # a user's implementation sees every run, also one failed here
    def pytest_stability_run_finished(self, nodeid: str, report: Any) -> None:
        __tracebackhide__ = True
        if self.baseline is None:
            return
        done = self._comparisons.setdefault(nodeid, [])
        comparison = baseline_mod.compare_call(
            self.baseline["tests"].get(nodeid), len(done), _run_inputs(report), self.tolerances_for(nodeid),
            strict=self.settings.baseline_strict,
        )
        comparison["path"] = str(self.settings.baseline)
        done.append(comparison)
        if comparison["failed"]:
            message = baseline_mod.explain_regression(nodeid, str(self.settings.baseline), comparison)
            if not report.ok:
                message += "\n\n" + report.explain()
            # pytrace=False: the message is the explanation; a traceback would
            # only show pluggy's frames between train() and this hook.
            pytest.fail(message, pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        # tryfirst makes this the outermost wrapper: plugin.py has attached
        # report.stability when the code after the yield runs.
        report = yield
        if call.when == "teardown":
            self._items.pop(item.nodeid, None)
            comparisons = self._comparisons.pop(item.nodeid, None)
            record = getattr(report, "stability", None)
            if comparisons and record is not None:
                for call_record, comparison in zip(record.get("calls") or [], comparisons):
                    call_record["baseline"] = comparison
                statuses = [c["status"] for c in comparisons]
                worst = next((s for s in ("regressed", "missing") if s in statuses), "ok")
                report.user_properties.append(("stability_baseline", worst))
        return report

    # -- the JSON document (default implementation of the hook) ------------------

    @pytest.hookimpl(trylast=True)
    def pytest_stability_generate_json(self, config: pytest.Config, records: list) -> dict | None:
        from .report import json_report

        state = config.stash[SESSION_KEY]
        return json_report.build_document(
            records, plugin_version=__version__, started=state.started, finished=state.finished, now=time.time(),
            exitstatus=state.exitstatus, interrupted=state.interrupted, complete=state.finished is not None,
        )

    # -- controller-side writing ---------------------------------------------------

    def write_json(self, records: list[dict[str, Any]], *, final: bool) -> bool:
        """Build the document through the hooks and write it atomically; False if it failed.

        While tests still run (``final`` False), writes are skipped when the
        last one was recent relative to its cost, so large reports cost at
        most ~10% extra time; a killed run still leaves what had run.
        """
        if self.settings.report is None:
            return True
        from .report import json_report

        now = time.monotonic()
        if not final and now - self._last_write < 10 * self._write_cost:
            return True
        hook = self.config.hook
        try:
            document = hook.pytest_stability_generate_json(config=self.config, records=records)
            if not isinstance(document, dict):
                raise TypeError(f"pytest_stability_generate_json returned {type(document).__name__}, not a dict")
            hook.pytest_stability_update_json(config=self.config, document=document)
            text = json_report.dumps(document)
            json_report.write_atomic(self.settings.report, text)
        except Exception as exc:  # noqa: BLE001 - hooks are user code; a failed write must not be an INTERNALERROR
            self.write_error = f"{type(exc).__name__}: {exc}"
            return False
        self.write_error = None
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - now
        return True

    def finish(self, records: list[dict[str, Any]], *, interrupted: bool) -> tuple[list[str], bool]:
        """Write plots, the baseline and the JSON report; returns footer lines and whether all went well."""
        s = self.settings
        footer: list[str] = []
        ok = True
        if s.baseline is not None:
            compared = [c["baseline"] for r in records for c in r.get("calls") or [] if "baseline" in c]
            regressed = sum(c["status"] == "regressed" for c in compared)
            missing = sum(c["status"] == "missing" for c in compared)
            footer.append(f"stability baseline {s.baseline}: {len(compared) - missing} compared, "
                          f"{regressed} regressed, {missing} not in the baseline")
        if s.plots is not None:
            from .report.plots import write_plots

            try:
                written = write_plots(records, s.plots)
                footer.append(f"stability plots: {len(written)} PNG file{'s' if len(written) != 1 else ''} "
                              f"written to {s.plots}")
            except (OSError, ValueError, RuntimeError) as exc:
                footer.append(f"stability plots NOT written to {s.plots}: {type(exc).__name__}: {exc}")
                ok = False
        if s.save_baseline is not None:
            line, saved = self._save_baseline(records, interrupted=interrupted)
            footer.append(line)
            ok = ok and (saved or interrupted)
        if s.report is not None:
            if self.write_json(records, final=True):
                footer.append(f"stability JSON written to {s.report}")
            else:
                footer.append(f"stability JSON NOT written to {s.report}: {self.write_error}")
                ok = False
        return footer, ok

    def _save_baseline(self, records: list[dict[str, Any]], *, interrupted: bool) -> tuple[str, bool]:
        """Write the baseline, updating the one already there; returns the footer line and whether it was saved.

        Not after an interrupted run: its last test may have stopped half-way.
        """
        from .report import json_report

        path = self.settings.save_baseline
        if interrupted:
            return f"stability baseline NOT saved to {path}: the run was interrupted", False
        doc = baseline_mod.build_baseline(records, meta={
            "plugin_version": __version__, "environment": json_report.environment(),
            "created_at": json_report.iso_time(time.time())})
        what = f"{len(doc['tests'])} tests"
        if self.previous is not None:
            doc, counts = baseline_mod.merge_baseline(self.previous, doc)
            what = (f"{len(doc['tests'])} tests: {counts['updated']} updated, {counts['added']} added, "
                    f"{counts['kept']} kept")
        try:
            # indented: a baseline is committed, and its changes are reviewed as diffs
            json_report.write_atomic(path, json_report.dumps(doc, indent=1))
        except (OSError, TypeError, ValueError) as exc:
            return f"stability baseline NOT saved to {path}: {type(exc).__name__}: {exc}", False
        return f"stability baseline saved to {path} ({what})", True


__all__ = ["GATING_KEY", "GatingPlugin", "GatingSettings", "Prepared", "addoption", "load_baseline", "prepare",
           "register", "resolve_settings"]
