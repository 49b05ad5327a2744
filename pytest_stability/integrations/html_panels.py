"""pytest-html integration: each stability test's panel in pytest-html's report.

When pytest-html is installed and active (``pytest --html=report.html``), each
stability test's row in pytest-html's report gets the same panel as in
``--stability-html`` (curves, findings, cause, fix, what-if, margins, baseline),
through pytest-html's extras: ``report.extras``, the list its report reads from
every phase's report of a test.  pytest-html stays an optional integration, not
a dependency: without it this module is never imported.

The panel is added on the controller, from the record on the teardown report,
before pytest-html's own ``pytest_runtest_logreport`` (``trylast``) reads the
extras, so a pytest-xdist run gets it too and workers send no HTML.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..record import StabilityRecord
from ..report import html

#: pytest-html's name for its plugin (its pytest11 entry point).
PYTEST_HTML_PLUGIN = "html"


def html_extra(content: str) -> dict[str, Any]:
    """An extra as ``pytest_html.extras.html(content)`` makes it (the same dict, without importing pytest-html)."""
    return {"name": "pytest-stability", "format_type": "html", "content": content, "mime_type": None, "extension": None}


class PytestHtmlPanels:
    """Registered on the controller when pytest-html is active; see the module docstring."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "stability", None)
        if report.when != "teardown" or not isinstance(data, dict):
            return
        panel = html.render_panel(StabilityRecord.from_dict(data), with_style=True, open_=True)
        # pytest-html reads the extras from this attribute, which pytest's TestReport does not declare
        report.extras = list(getattr(report, "extras", None) or []) + [html_extra(panel)]  # type: ignore[attr-defined]


def register(config: pytest.Config) -> bool:
    """Register the panels when pytest-html is active in this run (``--html`` given); returns whether it is."""
    if not config.pluginmanager.hasplugin(PYTEST_HTML_PLUGIN) or not config.getoption("htmlpath", None):
        return False
    config.pluginmanager.register(PytestHtmlPanels(), "stability-pytest-html")
    return True


__all__ = ["PYTEST_HTML_PLUGIN", "PytestHtmlPanels", "html_extra", "register"]
