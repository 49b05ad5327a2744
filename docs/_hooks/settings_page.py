"""MkDocs hook: the settings tables of ``settings.md``, written from the plugin's own settings table.

It also writes the JSON report's layout into ``reports.md`` from the docstring of the module that writes it.

``settings.md`` holds the markers ``<!-- settings:test -->`` (every setting that is a marker keyword, a
command-line option and an ini key) and ``<!-- settings:run -->`` (the run-wide options); this hook
replaces them with tables built from :data:`pytest_stability.options.OPTIONS` and the run-wide option
tables, so the page lists exactly what the installed plugin accepts, with its defaults and help text.

How the settings are read is in :func:`per_test_settings` and :func:`run_settings` alone: when the settings
table changes shape, only they change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEST_MARK = "<!-- settings:test -->"
RUN_MARK = "<!-- settings:run -->"
#: replaced by the JSON report's document layout, from the docstring of its writer
SCHEMA_MARK = "<!-- json-schema -->"


class Setting(NamedTuple):
    name: str  # marker keyword ("" for a run-wide option)
    cli: str
    ini: str  # "" when there is none
    default: str
    help: str
    expects: str


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def per_test_settings() -> list[Setting]:
    """Every per-test setting: marker keyword, command-line option, ini key, default, help, accepted values."""
    from pytest_stability.options import OPTIONS

    return [Setting(o.name, o.cli, o.ini, _default(o.default), o.help, o.expects) for o in OPTIONS]


def run_settings() -> list[Setting]:
    """The run-wide options (no marker keyword): files, CI integrations, replay."""
    from pytest_stability.integrations import ci
    from pytest_stability.options import (
        BASELINE_STRICT_HELP,
        PATH_SETTINGS,
        REPLAY_BATCH_HELP,
        REPLAY_HELP,
        cli_name,
        ini_name,
    )

    rows = [
        Setting("", f"{cli_name(name)}={metavar}", ini_name(name), "none", help_text, "")
        for name, metavar, help_text in PATH_SETTINGS
    ]
    rows.append(
        Setting("", cli_name("baseline_strict"), ini_name("baseline_strict"), "False", BASELINE_STRICT_HELP, "")
    )
    for name, metavar, help_text, kind in ci.SETTINGS:
        option = cli_name(name) + (f"={metavar}" if metavar else "")
        rows.append(Setting("", option, ini_name(name), "False" if kind == "bool" else "none", help_text, ""))
    rows.append(Setting("", "--stability-replay=SEED", "", "none", REPLAY_HELP, ""))
    rows.append(Setting("", "--stability-replay-batch=STEP", "", "none", REPLAY_BATCH_HELP, ""))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def per_test_table() -> str:
    lines = ["| marker keyword<br>command line<br>ini key | default | what it does |", "|---|---|---|"]
    for s in per_test_settings():
        what = _cell(s.help) + (f" ({_cell(s.expects)})" if s.expects else "")
        lines.append(f"| `{s.name}`<br>`{s.cli}`<br>`{s.ini}` | `{_cell(s.default)}` | {what} |")
    return "\n".join(lines)


def run_table() -> str:
    lines = ["| command line | ini key | what it does |", "|---|---|---|"]
    for s in run_settings():
        ini = f"`{s.ini}`" if s.ini else "-"
        lines.append(f"| `{_cell(s.cli)}` | {ini} | {_cell(s.help)} |")
    return "\n".join(lines)


def json_schema() -> str:
    """The JSON report's document layout: the indented block of ``pytest_stability.report.json_report``'s docstring."""
    import textwrap

    from pytest_stability.report import json_report

    doc = json_report.__doc__ or ""
    start = doc.index("::\n") + 3
    block = []
    for line in doc[start:].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return "```\n" + textwrap.dedent("\n".join(block)).strip("\n") + "\n```"


def render(markdown: str) -> str:
    """``markdown`` with the markers replaced by the tables and the JSON layout."""
    for mark, make in ((TEST_MARK, per_test_table), (RUN_MARK, run_table), (SCHEMA_MARK, json_schema)):
        if mark in markdown:
            markdown = markdown.replace(mark, make())
    return markdown


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    return render(markdown)
