"""The fast tier: ``pytest tests/unit`` imports no TensorFlow, Keras, JAX or torch.

Checked on every run that collects only tests under tests/unit: the run fails,
naming the modules, if one of them was imported (by a test, a conftest or the
plugin).  A run of the whole suite imports TensorFlow in tests/plugin's
conftest, so there the check is left to ``test_fast_tier.py``'s subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HEAVY = ("tensorflow", "keras", "jax", "torch")
_UNIT_DIR = Path(__file__).parent
_unit_only = False


def heavy_modules() -> list[str]:
    return sorted(name for name in HEAVY if name in sys.modules)


def pytest_collection_finish(session: pytest.Session) -> None:
    global _unit_only
    _unit_only = bool(session.items) and all(_UNIT_DIR in Path(str(item.path)).parents for item in session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    heavy = heavy_modules()
    if _unit_only and heavy:
        sys.stderr.write(f"\ntests/unit imported {', '.join(heavy)}: the fast tier must not\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
