"""Where CI users look: the options and wiring of TensorBoard logs, GitHub annotations and Markdown,
GPUs under pytest-xdist, and progress lines.

``plugin.py`` calls :func:`addoption`, :func:`prepare` (every problem returned,
for the run's one usage error), :func:`register` and, from
``pytest_load_initial_conftests``, :func:`early_worker_setup`.  The features
live in their own modules: :mod:`~pytest_stability.report.tensorboard`,
:mod:`~pytest_stability.report.github`, :mod:`~pytest_stability.xdist_gpus`,
:mod:`~pytest_stability.progress`.  All of them are run-wide settings (no
marker keyword); each has an ini twin, and a command-line value wins.  A
relative path from the command line is relative to the invocation directory,
one from the ini file to the rootdir (as for ``--stability-report``).

Nothing heavy is imported here: this module is on the plugin's load path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import progress, xdist_gpus
from .session import is_worker

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


def addoption(parser: pytest.Parser, group: Any) -> None:
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
        from .report.tensorboard import MISSING_MESSAGE, tensorboard_available

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
        from .report.tensorboard import TensorBoardPlugin

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
        from .report import github

        manager.register(
            github.GitHubPlugin(config, settings.markdown, plots_dir=plots_dir, tensorboard_dir=settings.tensorboard),
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


def early_worker_setup(early_config: pytest.Config) -> None:
    """From ``pytest_load_initial_conftests``: an xdist worker's GPU environment, before any conftest imports a
    framework."""
    xdist_gpus.configure_worker_environment(early_config)


__all__ = ["CI_KEY", "CISettings", "SETTINGS", "addoption", "early_worker_setup", "prepare", "register"]
