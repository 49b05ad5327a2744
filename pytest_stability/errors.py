"""Exception and warning types raised by pytest-stability.

Kept in their own module, with no third-party imports, so user code and the
plugin can import them without pulling in TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .report.runs import StabilityReport


class StabilityError(AssertionError):
    """A stability check failed.

    Subclasses ``AssertionError`` so pytest reports the test as *failed* (not
    errored) and shows :attr:`args[0]`, the full explanation, as the reason.

    Attributes:
        report: the :class:`~pytest_stability.report.StabilityReport` of the
            failing run (findings, trace, summary).
    """

    def __init__(self, message: str, report: StabilityReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class StabilityUsageError(Exception):
    """The test used pytest-stability incorrectly (bad model, data or argument).

    The message names the value received and what was expected.  The plugin
    shows it without a traceback into its own internals.
    """


class StabilityWarning(pytest.PytestWarning):
    """Base class for warnings issued by pytest-stability."""
