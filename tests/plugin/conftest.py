"""Helpers for the CI-gating tests (JSON report, baselines, seeds, xdist, plots, JUnit).

matplotlib is imported here, at the top, for the same reason tests/conftest.py
imports numpy and keras: pytester's in-process runs restore ``sys.modules``,
and a plot test's run must not leave a half-imported matplotlib behind.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

try:
    import matplotlib  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.image  # noqa: F401
except ImportError:  # the plot tests skip themselves
    pass

#: Timing fields: the only ones allowed to differ between two runs of the same tests.
TIMING_KEYS = frozenset({"wall_time", "duration", "started_at", "finished_at", "created_at"})

#: Named layers and models, so variable names do not depend on how many models
#: the process built before (they appear in findings and in the report).
NAMED_PROBLEM = '''
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("float32")
XV = rng.normal(size=(64, 8)).astype("float32")
YV = (XV[:, 0] + 0.5 * XV[:, 1] > 0).astype("float32")


def build(lr=1e-2, name="mlp"):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(1, activation="sigmoid", name="out")], name=name)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    return model


def build_diverging(name="mlp_nan"):
    """SGD(10) on targets x100: the loss overflows within a few steps (a nonfinite finding)."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(1, name="out")], name=name)
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    return model
'''


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON token {token!r}")


def load_strict(path: str | Path) -> Any:
    """Parse a JSON file the way a strict CI parser does: NaN / Infinity tokens are errors."""
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_reject_constant)


def without_timings(obj: Any) -> Any:
    """``obj`` with every timing field (:data:`TIMING_KEYS`) removed, recursively."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def tests_by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["nodeid"]: t for t in document["tests"]}


@pytest.fixture
def named_problem() -> str:
    """Source text defining X, Y, XV, YV, build() and build_diverging() with named layers."""
    return NAMED_PROBLEM


@pytest.fixture
def gating() -> types.SimpleNamespace:
    """The helpers above, for test modules (a conftest is not importable by name)."""
    return types.SimpleNamespace(load_strict=load_strict, without_timings=without_timings, tests_by_id=tests_by_id,
                                 TIMING_KEYS=TIMING_KEYS)
