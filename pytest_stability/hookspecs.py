"""Hook specifications of pytest-stability (``pytest_stability_*``).

Implement them in a ``conftest.py`` or a plugin.  Every hook is called with
keyword arguments; an implementation may accept fewer arguments than the spec.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_stability_run_finished(nodeid: str, report: Any) -> None:
    """Called after each ``stability.train()`` call, before its verdict is raised.

    Args:
        nodeid: the test's node id.
        report: the :class:`~pytest_stability.report.StabilityReport`
            (trace as numpy arrays, findings, summary).

    Example (conftest.py)::

        def pytest_stability_run_finished(nodeid, report):
            np.save(f"traces/{nodeid.replace('/', '_')}.npy", report.trace.loss)
    """


@pytest.hookspec(firstresult=True)
def pytest_stability_generate_json(config: pytest.Config, records: list) -> dict | None:
    """Build the JSON report document from the per-test records.

    Return a dict to replace the default document; the first non-None result
    wins.  The default implementation is registered ``trylast``.
    """


@pytest.hookspec
def pytest_stability_update_json(config: pytest.Config, document: dict) -> None:
    """Mutate the JSON report document in place before it is written.

    Example (conftest.py)::

        def pytest_stability_update_json(document):
            document["commit"] = os.environ.get("GITHUB_SHA")
    """
