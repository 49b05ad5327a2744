"""Where CI users look: the options and wiring of TensorBoard logs, GitHub annotations and Markdown, GPUs under
pytest-xdist, and progress lines.

``plugin.py`` calls :func:`addoption`, :func:`prepare` (every problem returned, for the run's one usage
error), :func:`register` and, from ``pytest_load_initial_conftests``, :func:`early_worker_setup`. The pytest
plugins that write the TensorBoard logs and the GitHub annotations and Markdown are here
(:class:`TensorBoardPlugin`, :class:`GitHubPlugin`); what they write is rendered by
:mod:`~pytest_stability.report.tensorboard` and :mod:`~pytest_stability.report.github` (``report/`` holds
renderers only), the GPUs and progress lines by :mod:`~pytest_stability.integrations.xdist_gpus` and
:mod:`~pytest_stability.integrations.progress`. All of them are run-wide settings (no marker keyword); each
has an ini twin, and a command-line value wins. A relative path from the command line is relative to the
invocation directory, one from the ini file to the rootdir (as for ``--stability-report``).

Nothing heavy is imported here: this module is on the plugin's load path.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..record import StabilityRecord
from . import progress, xdist_gpus
from .session import SESSION_KEY, is_worker

if TYPE_CHECKING:
    from ..report.runs import StabilityReport

CI_KEY = pytest.StashKey["CISettings"]()

TENSORBOARD_HELP = (
    "write each stability run's full per-step trace (loss, grad_norm, lr, update_ratio, val_loss, "
    "BatchNorm gap, findings) as TensorBoard event files under DIR, one run per test and seed; "
    "needs the tensorboard package"
)
MARKDOWN_HELP = (
    "write the stability report as Markdown (a table: verdict, test, steps, headline finding, baseline, "
    "plot) to PATH; under GitHub Actions it is also appended to $GITHUB_STEP_SUMMARY"
)
TENSORBOARD_VARS_HELP = "with --stability-tensorboard: also write each variable's gradient norm (grad_norm/<variable>)"

#: (name, metavar, help, kind) of the settings: --stability-NAME (dest stability_NAME) and ini stability_NAME.
SETTINGS = (
    ("tensorboard", "DIR", TENSORBOARD_HELP, "path"),
    ("tensorboard_per_variable", None, TENSORBOARD_VARS_HELP, "bool"),
    ("markdown", "PATH", MARKDOWN_HELP, "path"),
    ("xdist_gpus", "GPUS", xdist_gpus.XDIST_GPUS_HELP, "text"),
    ("gpu_lock", None, xdist_gpus.GPU_LOCK_HELP, "bool"),
    ("progress_after", "SECONDS", progress.PROGRESS_AFTER_HELP, "text"),
)


def addoption(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    """Register the options and their ini twins."""
    for name, metavar, help_text, kind in SETTINGS:
        cli, ini = "--stability-" + name.replace("_", "-"), "stability_" + name
        if kind == "bool":
            group.addoption(
                cli, dest="stability_" + name, action="store_true", default=None, help=f"{help_text} (ini: {ini})"
            )
            parser.addini(ini, help=help_text, type="bool", default=False)
        else:
            group.addoption(
                cli, dest="stability_" + name, default=None, metavar=metavar, help=f"{help_text} (ini: {ini})"
            )
            extra = " (a relative path is relative to the rootdir)" if kind == "path" else ""
            parser.addini(ini, help=help_text + extra, default=None)


@dataclass(frozen=True)
class CISettings:
    """The resolved settings (paths absolute)."""

    tensorboard: Path | None = None
    tensorboard_per_variable: bool = False
    markdown: Path | None = None
    xdist_gpus: str | None = None
    gpu_lock: bool = False


def _path(config: pytest.Config, name: str, problems: list[str]) -> Path | None:
    cli, ini = config.getoption("stability_" + name), config.getini("stability_" + name)
    if cli is not None:
        if not str(cli).strip():
            problems.append(f"--stability-{name}: expected a path, received an empty string")
            return None
        return Path(config.invocation_params.dir, os.path.expanduser(cli))
    if ini not in (None, ""):
        return Path(config.rootpath, os.path.expanduser(str(ini)))
    return None


def _bool(config: pytest.Config, name: str) -> bool:
    cli = config.getoption("stability_" + name)
    return bool(config.getini("stability_" + name)) if cli is None else bool(cli)


def prepare(config: pytest.Config) -> tuple[CISettings, list[str]]:
    """Resolve the settings; returns them and every problem found (none raised)."""
    problems: list[str] = []
    workerinput = getattr(config, "workerinput", {})
    tensorboard = _path(config, "tensorboard", problems)
    if "stability_tensorboard" in workerinput:  # the controller's resolution wins (same directory for all)
        tensorboard = Path(workerinput["stability_tensorboard"])
    markdown = _path(config, "markdown", problems)
    if tensorboard is not None:
        from ..report.tensorboard import MISSING_MESSAGE, tensorboard_available

        if tensorboard.exists() and not tensorboard.is_dir():
            problems.append(f"--stability-tensorboard: {tensorboard} exists and is not a directory")
        if not tensorboard_available():
            problems.append(MISSING_MESSAGE)
    if markdown is not None and markdown.is_dir():
        problems.append(f"--stability-markdown: {markdown} is a directory; give a file path")
    problems.extend(xdist_gpus.validate(config))
    problems.extend(progress.validate(config))
    gpus, lock = xdist_gpus.read_settings(config)
    settings = CISettings(
        tensorboard=tensorboard,
        tensorboard_per_variable=_bool(config, "tensorboard_per_variable"),
        markdown=markdown,
        xdist_gpus=gpus,
        gpu_lock=lock,
    )
    return settings, problems


def register(config: pytest.Config, settings: CISettings, plots_dir: Path | None = None) -> None:
    """Register the plugins the settings ask for (after :func:`prepare` found no problem)."""
    config.stash[CI_KEY] = settings
    manager = config.pluginmanager
    if settings.tensorboard is not None:
        manager.register(
            TensorBoardPlugin(settings.tensorboard, per_variable=settings.tensorboard_per_variable),
            "stability-tensorboard",
        )
    if settings.gpu_lock:
        manager.register(xdist_gpus.GpuLockPlugin(), "stability-gpu-lock")
    if is_worker(config):
        return
    manager.register(_ControllerPlugin(settings), "stability-ci-controller")
    # GitHub annotations and step summary, and the Markdown file; imported only when wanted.
    if settings.markdown is not None or os.environ.get("GITHUB_ACTIONS", "").lower() == "true":
        manager.register(
            GitHubPlugin(config, settings.markdown, plots_dir=plots_dir, tensorboard_dir=settings.tensorboard),
            "stability-github",
        )


class _ControllerPlugin:
    """Controller side: hands the TensorBoard directory to xdist workers; the header line."""

    def __init__(self, settings: CISettings) -> None:
        self.settings = settings

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.settings.tensorboard is not None:
            node.workerinput["stability_tensorboard"] = str(self.settings.tensorboard)

    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        s = self.settings
        if config.get_verbosity() < 0:
            return None
        lines = []
        if s.tensorboard is not None:
            lines.append(
                f"stability TensorBoard logs: {s.tensorboard}"
                + (" (with per-variable gradient norms)" if s.tensorboard_per_variable else "")
            )
        if s.xdist_gpus is not None:
            gpus = xdist_gpus.parse_gpus(s.xdist_gpus)
            found = gpus if gpus is not None else xdist_gpus.detect_gpus()
            how = "" if gpus is not None else " (auto)"
            lines.append(f"stability GPUs per xdist worker{how}: {','.join(found) or 'none found'}")
        if s.gpu_lock:
            lines.append(f"stability GPU lock: {xdist_gpus.lock_path()}")
        return lines or None


# -- the plugins the settings register (their renderers are in report/) ----------------------------------


class TensorBoardPlugin:
    """Registered with ``--stability-tensorboard``: writes each run's event files where it trained."""

    def __init__(self, logdir: Path, *, per_variable: bool = False) -> None:
        self.logdir = Path(logdir)
        self.per_variable = per_variable
        #: nodeid -> train() calls written so far (a test may train more than once)
        self._calls: dict[str, int] = {}

    def pytest_stability_run_stopped(self, nodeid: str, report: StabilityReport) -> None:
        """A call an exception stopped: its steps so far, as a call of its own."""
        self.pytest_stability_run_finished(nodeid, report)

    def pytest_stability_run_finished(self, nodeid: str, report: StabilityReport) -> None:
        index = self._calls.get(nodeid, 0)
        self._calls[nodeid] = index + 1
        from ..report.tensorboard import write_report

        try:
            write_report(self.logdir, nodeid, report, call_index=index, per_variable=self.per_variable)
        except Exception as exc:  # noqa: BLE001 - logs are a side effect: a full disk must not fail a stable test
            import warnings

            from ..errors import StabilityWarning

            warnings.warn(
                StabilityWarning(
                    f"pytest-stability: TensorBoard events of {nodeid} NOT written to {self.logdir}: "
                    f"{type(exc).__name__}: {exc}"
                ),
                stacklevel=2,
            )


class GitHubPlugin:
    """Registered on the controller: remembers test locations; writes the Markdown and prints the annotations."""

    def __init__(
        self,
        config: pytest.Config,
        markdown_path: Path | None,
        *,
        plots_dir: Path | None = None,
        tensorboard_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.markdown_path = markdown_path
        self.plots_dir = plots_dir
        self.tensorboard_dir = tensorboard_dir
        #: nodeid -> report.location (the controller has the reports, also under xdist)
        self.locations: dict[str, tuple[str, int, str]] = {}
        self.footer: list[str] = []
        self._annotations: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.nodeid not in self.locations:
            fspath, lineno, domain = report.location
            self.locations[report.nodeid] = (fspath, -1 if lineno is None else int(lineno), domain)

    def _records(self) -> list[StabilityRecord]:
        session = self.config.stash.get(SESSION_KEY, None)
        return session.sorted_records() if session is not None else []

    def _markdown(self, records: list[StabilityRecord], relative_to: Path | None, *, link_plots: bool = True) -> str:
        from ..report.github import markdown, plot_links

        plots = plot_links(records, self.plots_dir, relative_to) if self.plots_dir is not None else None
        tb = None
        if self.tensorboard_dir is not None:
            tb = (
                os.path.relpath(self.tensorboard_dir, relative_to)
                if relative_to is not None
                else str(self.tensorboard_dir)
            )
        return markdown(records, plots=plots, tensorboard=tb, link_plots=link_plots)

    # trylast wrapper: innermost, so this runs after every plain pytest_sessionfinish (the
    # session's records are complete, also for an interrupted run) and before the terminal
    # reporter's wrapper prints the summary.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Generator[None, object, object]:
        result = yield
        from ..report.github import annotations, in_github_actions

        records = self._records()
        env = os.environ
        if in_github_actions(env):
            self._annotations = annotations(records, self.locations, self.config.rootpath, env)
            summary_path = env.get("GITHUB_STEP_SUMMARY")
            if summary_path and records:
                root = Path(env.get("GITHUB_WORKSPACE") or self.config.rootpath)
                self._append(Path(summary_path), self._markdown(records, root, link_plots=False), "GitHub step summary")
        if self.markdown_path is not None:
            self._write(self.markdown_path, self._markdown(records, self.markdown_path.parent))
        return result

    def _append(self, path: Path, text: str, what: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text + "\n")
        except OSError as exc:
            self.footer.append(f"stability Markdown NOT appended to the {what} {path}: {exc}")

    def _write(self, path: Path, text: str) -> None:
        from ..report.json_report import write_atomic

        try:
            write_atomic(path, text)
        except (OSError, TypeError) as exc:
            self.footer.append(f"stability Markdown NOT written to {path}: {type(exc).__name__}: {exc}")
            return
        self.footer.append(f"stability Markdown written to {path}")

    @pytest.hookimpl(trylast=True)  # after the stability report section
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        # Workflow commands must start a line of stdout; they are printed whatever the verbosity.
        for line in self._annotations:
            terminalreporter.write_line(line)
        if self.config.get_verbosity() >= -1:
            for line in self.footer:
                terminalreporter.write_sep("-", line, **({"red": True, "bold": True} if " NOT " in line else {}))


def early_worker_setup(early_config: pytest.Config) -> None:
    """From ``pytest_load_initial_conftests``: an xdist worker's GPU environment, before any conftest imports a
    framework."""
    xdist_gpus.configure_worker_environment(early_config)


__all__ = [
    "CI_KEY",
    "CISettings",
    "GitHubPlugin",
    "SETTINGS",
    "TensorBoardPlugin",
    "addoption",
    "early_worker_setup",
    "prepare",
    "register",
]
