"""Read ``@pytest.mark.stable_training(...)`` into a frozen :class:`~pytest_stability.options.RunSpec`.

Markers from module, class and function level are merged, the closest
winning, over the run's CLI/ini/default settings.
"""

from __future__ import annotations

from typing import Any

import pytest

from .options import OptionValueError, RunSpec, merge_marker

MARKER_NAME = "stable_training"


def _merged_args(node: pytest.Item | Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    # iter_markers yields the closest first; apply farthest first.
    for mark in reversed(list(node.iter_markers(MARKER_NAME))):
        if mark.args or "steps" in mark.kwargs:
            # a closer marker's steps replaces a farther one's, however given
            args = tuple(mark.args)
            kwargs.pop("steps", None)
        kwargs.update(mark.kwargs)
    return args, kwargs


def spec_for_node(node: Any, defaults: RunSpec) -> RunSpec:
    """The resolved settings of a test (marker > CLI > ini > default)."""
    args, kwargs = _merged_args(node)
    return merge_marker(defaults, args, kwargs)


def validate_markers(node: Any, defaults: RunSpec) -> str | None:
    """None when the test's markers are valid, else the message to fail collection with."""
    try:
        spec_for_node(node, defaults)
    except OptionValueError as exc:
        return f"stable_training: {exc}"
    return None
