"""CI gating: JSON report, baselines, plots (issue 3).  Placeholder wiring."""

from __future__ import annotations

from typing import Any


def addoption(parser: Any, group: Any) -> None:
    """Register the report/baseline/plot options (none yet)."""
