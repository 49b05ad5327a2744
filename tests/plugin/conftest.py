"""Helpers for the plugin tests (JSON report, baselines, seeds, xdist, plots, JUnit).

numpy, keras, tensorflow and matplotlib are imported here, at the top:
pytester's in-process runs restore ``sys.modules`` after each run, numpy 2
refuses to be loaded twice in one process, and a plot test's run must not leave
a half-imported matplotlib behind.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402,F401
import numpy  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

# Where Hypothesis is installed, its pytest plugin imports it in each pytester run's terminal summary, and an
# in-process run drops the modules it imported: once here, not seconds per run (`[test]` installs it).
with contextlib.suppress(ImportError):
    import hypothesis  # noqa: F401

# The plugin's own modules, imported once here too: an in-process pytester run drops the modules it imported,
# so each run that trains would import the training engine, the checks and the reports (and what they import
# of Keras) again.
import pytest_stability  # noqa: E402

for _module in pkgutil.walk_packages(pytest_stability.__path__, "pytest_stability."):
    importlib.import_module(_module.name)

import recorded_runs  # noqa: E402  (this directory's helper module: pytest puts the directory on sys.path)

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
    "healthy": """

@pytest.mark.stable_training(steps=40, validate_every=20)
def test_healthy(stability):
    stability.train(build(), X, Y, validation_data=(XV, YV), batch_size=16)
""",
    # findings: grad_norm at step 1, then nonfinite at step 2 (3 steps run), naming mlp_nan/... variables
    "diverges": """

@pytest.mark.stable_training(steps=40)
def test_diverges(stability):
    stability.train(build_diverging(), X, Y * 100, batch_size=16)
""",
    "crashes": """

@pytest.mark.stable_training(steps=40)
def test_crashes(stability):
    stability.train(build(name="mlp_crash"), X, Y, batch_size=16)
    raise RuntimeError("the test body crashed")
""",
    "setup_error": """

@pytest.fixture
def broken_data():
    raise RuntimeError("the data fixture is broken")


@pytest.mark.stable_training(steps=40)
def test_setup_error(broken_data, stability):
    stability.train(build(), X, Y)
""",
    "skipped": """

@pytest.mark.skip(reason="not today")
@pytest.mark.stable_training(steps=40)
def test_skipped(stability):
    stability.train(build(), X, Y)
""",
    "never_trains": """

@pytest.mark.stable_training(steps=40)
def test_never_trains(stability):
    pass
""",
    "one": """

@pytest.mark.stable_training(steps=20)
def test_one(stability):
    stability.train(build(), X, Y, batch_size=16)
""",
    "plain": """

def test_plain():
    pass
""",
    # a parametrized test: its node id ("test_param[0.01]") becomes a file name
    "param": """

@pytest.mark.parametrize("lr", [1e-2])
@pytest.mark.stable_training(steps=20)
def test_param(stability, lr):
    stability.train(build(lr), X, Y, batch_size=16)
""",
    # the loss is NaN from step 0 (NaN in the first batch): its plot has nothing to log-scale.  Named to sort
    # before test_healthy: such a plot must not abort the plots after it ("Data cannot be log-scaled").
    "nan_from_start": """

@pytest.mark.stable_training(steps=10)
def test_a_nan_from_start(stability):
    model = build()
    model.compile(optimizer="sgd", loss=lambda y, p: keras.ops.mean(p) * np.nan)  # NaN from step 0
    report = stability.train(model, X, Y, batch_size=16, check=False)
    assert report.trace.steps == 1 and not np.isfinite(report.trace.loss).any()
""",
    # two seeds of a model built per seed
    "two": """

@pytest.mark.stable_training(steps=12, seeds=2)
def test_two(stability):
    stability.train(build, X, Y, batch_size=16)
""",
}

#: test_baseline.py's module: test_a's training and validation data are switched by VARIANT: "grad" scales the
#: inputs (gradient norms and the validation loss grow ~10x), "val" flips 30% of the validation labels (only the
#: validation loss grows; val_tolerance=5 keeps the in-run val_loss check quiet), "nan" makes it diverge.
GATE_TESTS = """
VARIANT = {variant!r}
XS = 10.0 if VARIANT == "grad" else 1.0
flip = np.random.default_rng(1).random(64) < 0.3
YV_A = np.where(flip, 1 - YV, YV) if VARIANT == "val" else YV


@pytest.mark.stable_training(steps=60, validate_every=20, val_tolerance=5.0)
def test_a(stability):
    if VARIANT == "nan":
        stability.train(build_diverging(), X, Y * 100, batch_size=16)
    else:
        stability.train(build(), X * XS, Y, validation_data=(XV * XS, YV_A), batch_size=16)


@pytest.mark.stable_training(steps=40, seeds={seeds_b})
def test_b(stability):
    stability.train(build(name="mlp_b"), X, Y, validation_data=(XV, YV), batch_size=16)
"""

#: A test that test_baseline.py adds to GATE_TESTS after its baseline was saved.
GATE_NEW_TEST = """

@pytest.mark.stable_training(steps=30)
def test_c(stability):
    stability.train(build(name="mlp_c"), X, Y, batch_size=16)
"""

#: test_xdist.py's own tests (after every scenario).  XS=10 (the compared runs) makes test_regresses' gradient
#: norms ~10x those of the baseline run, so the baseline comparison fails it.  test_unnamed names nothing: Keras'
#: automatic names (in the report as the model name and in the finding's "first variable affected") must not
#: depend on what else the process ran.
XDIST_TESTS = """

XS = {xs!r}


@pytest.mark.stable_training(steps=30, seeds=2)
def test_two_seeds(stability):
    stability.train(build, X, Y, batch_size=16)


@pytest.mark.stable_training(steps=40)
def test_regresses(stability):
    stability.train(build(name="mlp_r"), X * XS, Y, batch_size=16)


@pytest.mark.stable_training(steps=20)
def test_unnamed(stability):
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    report = stability.train(model, X, Y * 100, batch_size=16, check=False)
    assert report.verdict == "unstable"
"""

#: A test that test_xdist.py adds to XDIST_TESTS after its baseline was saved.
XDIST_NEW_TEST = """

@pytest.mark.stable_training(steps=20)
def test_not_in_baseline(stability):
    stability.train(build(name="mlp_n"), X, Y, batch_size=16)
"""

#: test_seeds.py's module: build_for_seed() runs right after the fixture seeds Python's `random` with the run's
#: seed, so its first draw decides, per seed, whether that seed diverges (seed 1 of 0, 1, 2 does).
SEEDS_TESTS = """
import random


def build_for_seed():
    if random.random() < {bad_draw}:
        return build_diverging()
    return build()


@pytest.mark.stable_training(steps=30, seeds=3)
def test_three_seeds(stability):
    stability.train(build_for_seed, X, Y, batch_size=16)
"""

#: The modules whose training is recorded (tests/plugin/recorded/GROUP.json; see recorded_runs.py), after
#: named_problem.  A report test that runs (some of) these tests replays their training: recorded.args(GROUP, ...).
#: After changing one of them, re-record: STABILITY_REWRITE_RECORDINGS=1 pytest tests/plugin/test_recorded_runs.py
RECORDED_GROUPS = {
    "scenarios": "".join(
        SCENARIO_TESTS[name] for name in ("healthy", "diverges", "crashes", "one", "param", "nan_from_start", "two")
    ),
    "gate": GATE_TESTS.format(variant="same", seeds_b=2) + GATE_NEW_TEST,
    "gate_grad": GATE_TESTS.format(variant="grad", seeds_b=1),
    "gate_val": GATE_TESTS.format(variant="val", seeds_b=1),
    "gate_nan": GATE_TESTS.format(variant="nan", seeds_b=1),
    "xdist": XDIST_TESTS.format(xs=1.0) + XDIST_NEW_TEST,
    "xdist_grad": XDIST_TESTS.format(xs=10.0),
    "seeds": SEEDS_TESTS.format(bad_draw=0.5),
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
    return types.SimpleNamespace(
        load_strict=load_strict, without_timings=without_timings, tests_by_id=tests_by_id, TIMING_KEYS=TIMING_KEYS
    )


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Replayed training (tests/plugin/recorded_runs.py) for a pytester run.

    ``pytester.runpytest(*recorded.args("gate_grad", "gate"), ...)`` replays the recorded training of those groups
    (the first group that has a test wins; a test none has trains for real).  ``recorded.groups`` are the recorded
    modules' sources (:data:`RECORDED_GROUPS`), ``recorded.GATE_TESTS``... their templates.  PYTHONPATH is set so
    that a subprocess run and its pytest-xdist workers load the replaying plugin too; a -n run that replays must
    be a subprocess run (``runpytest_subprocess``): the workers of an in-process run take the sys.path this
    process started with.
    """
    monkeypatch.setenv("PYTHONPATH", recorded_runs.pythonpath_with_this_directory())
    return types.SimpleNamespace(
        args=lambda *groups: ("-p", "recorded_runs", "--recorded-runs=" + ",".join(groups)),
        groups=RECORDED_GROUPS,
        GATE_TESTS=GATE_TESTS,
        GATE_NEW_TEST=GATE_NEW_TEST,
        XDIST_TESTS=XDIST_TESTS,
        XDIST_NEW_TEST=XDIST_NEW_TEST,
        SEEDS_TESTS=SEEDS_TESTS,
    )
