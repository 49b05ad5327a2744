"""CI gating: the JSON report, baselines across commits, and plots (options, wiring, side effects).

* ``--stability-report=PATH``: one strict-JSON document per run
  (:mod:`~pytest_stability.report.json_report`), rewritten atomically after
  each stability test and at the end of the run, also an interrupted one.
* ``--stability-save-baseline=PATH`` records each test's summary metrics per
  seed; ``--stability-baseline=PATH`` fails a test whose stability regressed
  (:mod:`~pytest_stability.report.baseline`).  The comparison runs in the
  process that trains the test, from the ``pytest_stability_run_finished``
  hook, so the test itself fails; its builtins result rides on the teardown
  report's ``stability`` record to the (xdist) controller.
* ``--stability-plots=DIR``: one PNG per test (:mod:`~pytest_stability.report.plots`).

Only the controller writes files (xdist workers must not: pytest#10641).
Every option has an ini twin; a command-line value wins over the ini value.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pytest

from . import __version__
from .options import OPTIONS_BY_NAME, Option, OptionValueError, _float, _int, parse_text
from .report import baseline as baseline_mod  # light: math only
from .session import SESSION_KEY, is_worker

# report.json_report (json, tempfile, platform, importlib.metadata) and
# report.plots (matplotlib) are imported where used: this module is on the
# plugin's load path, which every pytest run pays for.

GATING_KEY = pytest.StashKey["GatingPlugin"]()

REPORT_HELP = "write the JSON stability report (strict JSON, schema-versioned, written atomically) to PATH"
SAVE_BASELINE_HELP = "save each stability test's summary metrics (per seed) as a baseline file at PATH"
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

#: The baseline tolerances, in the form of :data:`pytest_stability.options.OPTIONS` entries.  Once
#: options.OPTIONS holds entries of these names they become marker keywords too, and are read from
#: each test's resolved settings (marker > CLI > ini > default); until then they are registered here
#: as CLI + ini settings only.
TOLERANCE_OPTIONS: tuple[Option, ...] = (
    Option("baseline_grad_factor", _float(1, strict=False), baseline_mod.TOLERANCE_DEFAULTS["baseline_grad_factor"],
           "baseline: fail when the 99th-percentile gradient norm exceeds this multiple of the baseline's"),
    Option("baseline_val_tolerance", _float(0, strict=False),
           baseline_mod.TOLERANCE_DEFAULTS["baseline_val_tolerance"],
           "baseline: fail when the final smoothed validation loss exceeds the baseline's by more than "
           "this fraction of it"),
    Option("baseline_extra_spikes", _int(0), baseline_mod.TOLERANCE_DEFAULTS["baseline_extra_spikes"],
           "baseline: loss spikes allowed beyond the baseline's count"),
)


def _own_tolerance_options() -> tuple[Option, ...]:
    """The tolerance options this module registers: those options.OPTIONS does not (yet) hold."""
    return tuple(opt for opt in TOLERANCE_OPTIONS if opt.name not in OPTIONS_BY_NAME)


def addoption(parser: pytest.Parser, group: Any) -> None:
    """Register the report / baseline / plot options and their ini twins."""
    for name, metavar, help_text in PATH_SETTINGS:
        group.addoption("--stability-" + name.replace("_", "-"), dest="stability_" + name, default=None,
                        metavar=metavar, help=f"{help_text} (ini: stability_{name})")
        parser.addini("stability_" + name, help=help_text + " (a relative path is relative to the rootdir)",
                      default=None)
    group.addoption("--stability-baseline-strict", dest="stability_baseline_strict", action="store_true",
                    default=None, help=f"{BASELINE_STRICT_HELP} (ini: stability_baseline_strict)")
    parser.addini("stability_baseline_strict", help=BASELINE_STRICT_HELP, type="bool", default=False)
    for opt in _own_tolerance_options():
        group.addoption(opt.cli, dest="stability_" + opt.name, default=None, metavar=opt.name.upper(),
                        help=f"{opt.help}; {opt.expects} (default: {opt.default}; ini: {opt.ini})")
        parser.addini(opt.ini, help=f"{opt.help} (default: {opt.default})", default=None)


@dataclass(frozen=True)
class GatingSettings:
    """The resolved gating settings of a run (paths absolute)."""

    report: Path | None = None
    save_baseline: Path | None = None
    baseline: Path | None = None
    baseline_strict: bool = False
    plots: Path | None = None
    #: run-wide tolerance values (CLI > ini > default) of the options registered here
    tolerances: Mapping[str, Any] = field(default_factory=dict)


def resolve_settings(config: pytest.Config) -> tuple[GatingSettings, list[str]]:
    """CLI > ini > default for every gating setting; returns the settings and the problems found."""
    problems: list[str] = []
    paths: dict[str, Path | None] = {}
    for name, _, _ in PATH_SETTINGS:
        cli, ini = config.getoption("stability_" + name), config.getini("stability_" + name)
        if cli is not None:
            if not str(cli).strip():
                problems.append(f"--stability-{name.replace('_', '-')}: expected a path, received an empty string")
                paths[name] = None
            else:
                paths[name] = Path(config.invocation_params.dir, os.path.expanduser(cli))
        elif ini not in (None, ""):
            paths[name] = Path(config.rootpath, os.path.expanduser(str(ini)))
        else:
            paths[name] = None
    strict = config.getoption("stability_baseline_strict")
    if strict is None:
        strict = bool(config.getini("stability_baseline_strict"))
    tolerances: dict[str, Any] = {}
    for opt in _own_tolerance_options():
        value = opt.default
        raw_ini = config.getini(opt.ini)
        if raw_ini not in (None, ""):
            try:
                value = parse_text(opt, str(raw_ini))
            except OptionValueError as exc:
                problems.append(f"ini {opt.ini}: expected {exc}")
        raw_cli = config.getoption("stability_" + opt.name)
        if raw_cli is not None:
            try:
                value = parse_text(opt, str(raw_cli))
            except OptionValueError as exc:
                problems.append(f"{opt.cli}: expected {exc}")
        tolerances[opt.name] = value
    settings = GatingSettings(report=paths["report"], save_baseline=paths["save_baseline"],
                              baseline=paths["baseline"], baseline_strict=bool(strict), plots=paths["plots"],
                              tolerances=tolerances)
    for name in ("report", "save_baseline"):
        path = getattr(settings, name)
        if path is not None and path.is_dir():
            problems.append(f"--stability-{name.replace('_', '-')}: {path} is a directory; give a file path")
    if settings.plots is not None and settings.plots.exists() and not settings.plots.is_dir():
        problems.append(f"--stability-plots: {settings.plots} exists and is not a directory")
    if settings.baseline_strict and settings.baseline is None:
        problems.append("--stability-baseline-strict needs --stability-baseline=PATH (or ini stability_baseline)")
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


def configure(config: pytest.Config) -> None:
    """Resolve and check the gating settings, then register the run's :class:`GatingPlugin`.

    Raises:
        pytest.UsageError: listing every bad setting (exit 4): a bad value, an
            unreadable or invalid baseline, --stability-plots without matplotlib.
    """
    settings, problems = resolve_settings(config)
    baseline = None
    if settings.baseline is not None:
        try:
            baseline = load_baseline(settings.baseline)
        except baseline_mod.BaselineFileError as exc:
            problems.append(f"--stability-baseline: {exc}")
    if settings.plots is not None and not is_worker(config):
        try:
            import matplotlib  # noqa: F401  (checked now, so a run does not fail only at its end)
        except ImportError:
            problems.append(PLOTS_MISSING_MESSAGE)
    if problems:
        if problems == [PLOTS_MISSING_MESSAGE]:
            raise pytest.UsageError(PLOTS_MISSING_MESSAGE)
        raise pytest.UsageError("pytest-stability: invalid settings:\n  " + "\n  ".join(problems))
    plugin = GatingPlugin(config, settings, baseline)
    config.stash[GATING_KEY] = plugin
    config.pluginmanager.register(plugin, "stability-gating")


def _run_inputs(report: Any) -> list[dict[str, Any]]:
    """What the baseline comparison reads of a StabilityReport's runs (builtins)."""
    return [{"seed": int(r.seed), "summary": r.summary(), "findings": [f.to_dict() for f in r.findings]}
            for r in report.runs]


class GatingPlugin:
    """Registered for the run: baseline comparison (in the process that trains) and the default JSON hook."""

    def __init__(self, config: pytest.Config, settings: GatingSettings, baseline: dict[str, Any] | None) -> None:
        self.config = config
        self.settings = settings
        self.baseline = baseline
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
            tol = ", ".join(f"{k}={v}" for k, v in sorted(s.tolerances.items()))
            lines.append(f"stability baseline: {s.baseline}" + (" (strict)" if s.baseline_strict else "")
                         + (f"; {tol}" if tol else ""))
        if s.save_baseline:
            lines.append(f"stability baseline to save: {s.save_baseline}")
        if s.plots:
            lines.append(f"stability plots: {s.plots}")
        return lines

    # -- baseline comparison, in the process that runs the test -------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._comparisons.pop(item.nodeid, None)
        self._items[item.nodeid] = item

    def tolerances_for(self, nodeid: str) -> dict[str, Any]:
        """The test's tolerances: its resolved settings when options.OPTIONS holds them, else run-wide."""
        item = self._items.get(nodeid)
        fixture = getattr(item, "funcargs", {}).get("stability") if item is not None else None
        values = getattr(getattr(fixture, "spec", None), "values", {}) or {}
        return {opt.name: values[opt.name] if opt.name in values else self.settings.tolerances[opt.name]
                for opt in TOLERANCE_OPTIONS}

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
        except (OSError, TypeError, ValueError) as exc:
            self.write_error = f"{type(exc).__name__}: {exc}"
            return False
        self.write_error = None
        self._last_write = time.monotonic()
        self._write_cost = self._last_write - now
        return True

    def finish(self, records: list[dict[str, Any]], *, interrupted: bool) -> tuple[list[str], bool]:
        """Write plots, the baseline and the JSON report; returns footer lines and whether all went well."""
        from .report import json_report

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
            if interrupted:
                footer.append(f"stability baseline NOT saved to {s.save_baseline}: the run was interrupted")
            else:
                doc = baseline_mod.build_baseline(records, meta={
                    "plugin_version": __version__, "environment": json_report.environment(),
                    "created_at": json_report.iso_time(time.time())})
                try:
                    json_report.write_atomic(s.save_baseline, json_report.dumps(doc))
                    footer.append(f"stability baseline saved to {s.save_baseline} ({len(doc['tests'])} tests)")
                except (OSError, TypeError, ValueError) as exc:
                    footer.append(f"stability baseline NOT saved to {s.save_baseline}: {type(exc).__name__}: {exc}")
                    ok = False
        if s.report is not None:
            if self.write_json(records, final=True):
                footer.append(f"stability JSON written to {s.report}")
            else:
                footer.append(f"stability JSON NOT written to {s.report}: {self.write_error}")
                ok = False
        return footer, ok


__all__ = ["GATING_KEY", "GatingPlugin", "GatingSettings", "TOLERANCE_OPTIONS",
           "addoption", "configure", "load_baseline", "resolve_settings"]
