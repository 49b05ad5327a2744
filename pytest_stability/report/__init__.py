"""Reports: per-run results, terminal summary, JSON, baselines, plots.

The package itself imports nothing heavy (no numpy): its submodules that are
on the plugin's load path (``json_report``, ``baseline``, ``junit``) must stay
cheap.  :class:`RunReport` and :class:`StabilityReport` (in ``runs``) are
served lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy sees; at run time __getattr__ imports them on first use
    from .render import fmt as fmt
    from .render import sparkline as sparkline
    from .runs import RunReport as RunReport
    from .runs import StabilityReport as StabilityReport
    from .runs import downsample as downsample

_LAZY = {
    "RunReport": "runs",
    "StabilityReport": "runs",
    "downsample": "runs",
    "sparkline": "render",
    "fmt": "render",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_stability.report' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
