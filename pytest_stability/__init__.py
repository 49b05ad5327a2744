"""pytest-stability: training stability as a testable, CI-gated property of Keras models.

Importing this package is cheap: it imports no TensorFlow or Keras.  Public
names are served lazily (PEP 562) so ``import pytest_stability`` in every
pytest run costs nothing.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Trace": "pytest_stability.trace",
    "run_checks": "pytest_stability.checks",
    "Thresholds": "pytest_stability.checks",
    "Finding": "pytest_stability.checks",
    "CheckResult": "pytest_stability.checks",
    "diagnose": "pytest_stability.diagnosis",
    "StabilityReport": "pytest_stability.report",
    "StabilityError": "pytest_stability.errors",
    "StabilityUsageError": "pytest_stability.errors",
    "StabilityWarning": "pytest_stability.errors",
    # imports Keras when asked for (a user's model.compile): a skip-step guard for any Keras optimizer
    "SkipStepGuard": "pytest_stability.training.guard",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_stability' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
