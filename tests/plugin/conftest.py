"""Helpers for the plugin tests (JSON report, baselines, seeds, xdist, plots, JUnit).

numpy, keras, tensorflow and matplotlib are imported here, at the top:
pytester's in-process runs restore ``sys.modules`` after each run, numpy 2
refuses to be loaded twice in one process, and a plot test's run must not leave
a half-imported matplotlib behind.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402,F401
import numpy  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

# Where Hypothesis is installed, its pytest plugin imports it in each pytester run's terminal summary, and an
# in-process run drops the modules it imported: once here, not seconds per run (CI installs no Hypothesis).
try:
    import hypothesis  # noqa: E402,F401
except ImportError:
    pass

try:
    import matplotlib  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.image  # noqa: F401
except ImportError:  # the plot tests skip themselves
    pass

#: Timing fields: the only ones allowed to differ between two runs of the same tests.
TIMING_KEYS = frozenset({"wall_time", "duration", "started_at", "finished_at", "created_at"})

#: Named layers and models, appended to tests/conftest.py's TINY_PROBLEM (this build() replaces
#: its build(); both train on its X, Y, XV, YV).  Names make findings readable ("first variable
#: affected: mlp_nan/hidden/kernel"); unnamed models get the same names in every process too
#: (test_auto_names.py).
NAMED_MODELS = '''

def build(lr=1e-2, name="mlp"):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(1, activation="sigmoid", name="out")], name=name)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    return model


def build_diverging(name="mlp_nan"):
    """SGD(10) on targets x100: the gradient norm explodes at step 1 (a grad_norm finding) and the
    loss overflows at step 2, where training stops (a nonfinite finding)."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(1, name="out")], name=name)
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    return model
'''


#: Stability tests that several modules' pytester runs are built from (after named_problem), by name;
#: see the ``scenario`` fixture.  Each is what its name says, at 40 steps or fewer.
SCENARIO_TESTS = {
    "healthy": '''

@pytest.mark.stable_training(steps=40, validate_every=20)
def test_healthy(stability):
    stability.train(build(), X, Y, validation_data=(XV, YV), batch_size=16)
''',
    # findings: grad_norm at step 1, then nonfinite at step 2 (3 steps run), naming mlp_nan/... variables
    "diverges": '''

@pytest.mark.stable_training(steps=40)
def test_diverges(stability):
    stability.train(build_diverging(), X, Y * 100, batch_size=16)
''',
    "crashes": '''

@pytest.mark.stable_training(steps=40)
def test_crashes(stability):
    stability.train(build(name="mlp_crash"), X, Y, batch_size=16)
    raise RuntimeError("the test body crashed")
''',
    "setup_error": '''

@pytest.fixture
def broken_data():
    raise RuntimeError("the data fixture is broken")


@pytest.mark.stable_training(steps=40)
def test_setup_error(broken_data, stability):
    stability.train(build(), X, Y)
''',
    "skipped": '''

@pytest.mark.skip(reason="not today")
@pytest.mark.stable_training(steps=40)
def test_skipped(stability):
    stability.train(build(), X, Y)
''',
    "never_trains": '''

@pytest.mark.stable_training(steps=40)
def test_never_trains(stability):
    pass
''',
    "one": '''

@pytest.mark.stable_training(steps=20)
def test_one(stability):
    stability.train(build(), X, Y, batch_size=16)
''',
    "plain": '''

def test_plain():
    pass
''',
}


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
def named_problem(tiny_problem: str) -> str:
    """Source text defining X, Y, XV, YV, build() and build_diverging() with named layers."""
    return tiny_problem + NAMED_MODELS


@pytest.fixture
def scenario(pytester: pytest.Pytester, named_problem: str) -> Callable[..., Path]:
    """Write a pytester test module: named_problem, then the :data:`SCENARIO_TESTS` named, then ``extra``.

    ``scenario("healthy", "diverges", module="test_x")`` writes test_x.py (default: the test's own name).
    """

    def write(*names: str, module: str | None = None, extra: str = "") -> Path:
        source = named_problem + "".join(SCENARIO_TESTS[name] for name in names) + extra
        return pytester.makepyfile(**{module: source}) if module else pytester.makepyfile(source)

    return write


@pytest.fixture
def gating() -> types.SimpleNamespace:
    """The helpers above, for test modules (a conftest is not importable by name)."""
    return types.SimpleNamespace(load_strict=load_strict, without_timings=without_timings, tests_by_id=tests_by_id,
                                 TIMING_KEYS=TIMING_KEYS)
