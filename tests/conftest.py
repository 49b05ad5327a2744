"""Shared test setup; imports no TensorFlow, Keras or numpy, so ``pytest tests/unit`` is a fast tier.

The pytester suites (tests/plugin, tests/training) import numpy, keras and
tensorflow at the top of their own conftest.py: pytester's
in-process runs restore ``sys.modules`` after each run, and numpy 2 refuses to
be loaded twice in one process ("cannot load module more than once").
"""

pytest_plugins = ["pytester"]

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

#: Under JAX, XLA compiles the same small programs again and again (the same model and data shapes in many
#: tests, and in each of the differential test's setups): the suite keeps them in JAX's persistent
#: compilation cache.  One directory per process that loads this file (each xdist worker, made afresh and
#: removed at the end), never shared by two at once: JAX writes an entry in place, and another process
#: reading it half written would get a warning and compile again.  pytester's subprocesses inherit their
#: worker's, which waits for them.  A hit returns the executable XLA made for the same program and options,
#: so nothing a test checks depends on it; the tracing and lowering still run.  A cache directory of your own
#: (``JAX_COMPILATION_CACHE_DIR`` set before the run) is left as it is.
_SUITE_JAX_CACHE = "PYTEST_STABILITY_SUITE_JAX_CACHE"
_JAX_CACHE_DIR = None
if os.environ.get("KERAS_BACKEND") == "jax" and (
    "JAX_COMPILATION_CACHE_DIR" not in os.environ or os.environ.get(_SUITE_JAX_CACHE)
):
    _JAX_CACHE_DIR = tempfile.mkdtemp(prefix="pytest-stability-suite-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE_DIR
    os.environ[_SUITE_JAX_CACHE] = "1"
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # tiny programs too (the default is 1 s)
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


#: Under pytest-xdist, each worker's TensorFlow and PyTorch would size their thread pools for the whole machine:
#: two workers on two cores run four compute threads that take turns.  Each worker gets its share of the cores
#: instead, for the threads that split one op (TensorFlow's intra-op pool, PyTorch's OpenMP threads); the models
#: the suite trains are too small to gain from more.  Measured on the 2-core CI machine, one process each way:
#: the TensorFlow pass 284 s against 304 s, the PyTorch pass on two workers 95 s against 121 s on one.
#: TensorFlow's inter-op pool is left alone (one thread can deadlock ops that wait on each other, as
#: tensorflow/tensorflow#38969 shows).  JAX is left alone: measured, no faster.  Values of your own are kept;
#: read when the frameworks are first imported, so set here, before any test module imports one.  Nothing a test
#: checks depends on it: the differential tests compare two runs in the same process.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)


#: The slowest tests of each pass (``--durations`` in CI's log), in that order: under pytest-xdist they start
#: first, so that the two workers end together.  pytest-xdist hands out tests in the order collected, and
#: PyTorch's ``torch.compile`` tests, collected last (tests/training/test_precision.py), ran alone on one worker
#: at the end of the pass while the other had finished.  Every worker collects the same order, as xdist needs.
SLOWEST_FIRST = (
    "tests/backends/test_fidelity.py::",
    "tests/training/test_precision.py::test_jit_compile_gives_the_same_trace_and_verdict[healthy]",
    "tests/training/test_precision.py::test_jit_compile_with_mixed_float16_overflow",
    "tests/backends/test_distribution.py::",
    "tests/backends/test_fit.py::test_no_update_is_applied_after_a_non_finite_loss_or_after_the_planned_steps",
    "tests/plugin/test_xdist.py::",
    "tests/plugin/test_github.py::test_annotations_and_step_summary_serial_then_xdist",
    "tests/plugin/test_tensorboard.py::test_xdist_writes_the_same_runs",
    "tests/plugin/test_xdist_gpus.py::",
    "tests/unit/test_fast_tier.py::",
)


def _slowness(item: pytest.Item) -> int:
    for rank, prefix in enumerate(SLOWEST_FIRST):
        if item.nodeid.startswith(prefix):
            return rank
    return len(SLOWEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_slowness)  # stable: the rest keep their order


def pytest_unconfigure(config: pytest.Config) -> None:
    if _JAX_CACHE_DIR is not None:
        shutil.rmtree(_JAX_CACHE_DIR, ignore_errors=True)


#: A tiny, fast, healthy training problem that pytester test files start with.
TINY_PROBLEM = """
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("float32")
XV = rng.normal(size=(64, 8)).astype("float32")
YV = (XV[:, 0] + 0.5 * XV[:, 1] > 0).astype("float32")


def build(lr=1e-2, optimizer=None, loss="binary_crossentropy", compile=True):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    if compile:
        model.compile(optimizer=optimizer or keras.optimizers.Adam(lr), loss=loss)
    return model
"""


#: Least squares on standardised features with one Dense unit and plain SGD: gradient descent on it diverges
#: once the learning rate passes 2 / (the largest curvature), so how close a learning rate sits to that edge is
#: known in advance (tests/backends/test_margin.py, tests/training/test_curvature.py).
LEAST_SQUARES = """
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1))).astype("float32")


def linear(lr):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model
"""


@pytest.fixture
def least_squares() -> str:
    """Source text defining X, Y and linear(lr): prepend it to a pytester test file."""
    return LEAST_SQUARES


@pytest.fixture
def tiny_problem() -> str:
    """Source text defining X, Y, XV, YV and build(): prepend it to a pytester test file."""
    return TINY_PROBLEM


@pytest.fixture(autouse=True)
def _fixed_terminal_width(monkeypatch):
    """pytester output wraps and truncates at the terminal width: pin it so that
    tests match the same lines on every machine (CI runners differ in COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "80")


#: Set by pytest-xdist in each worker: when the suite itself runs with ``-n``, the pytest runs a test starts
#: (pytester) must not believe they are xdist workers.
_XDIST_WORKER_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True)
def _not_an_xdist_worker_inside(monkeypatch):
    for key in _XDIST_WORKER_ENV:
        monkeypatch.delenv(key, raising=False)


#: TensorFlow's graph optimiser (Grappler) rewrites each traced function before its first call: on the suite's
#: tiny models a third of a training run's time (0.79 s against 1.21 s for a 64-step stability run of a small MLP
#: with validation; the TensorFlow pass's tests 605 worker-seconds against 666, the same tests passing).  It changes
#: how a graph is run, not what it computes, so the tests that check what the plugin makes of a run (the checks,
#: the diagnosis, the what-if, the reports, tests/training and tests/plugin) run without it (in the test's own
#: process: a pytester subprocess or nested xdist worker keeps TensorFlow's default).  tests/backends, the
#: tests of how the plugin trains with Keras' own fit (the differential fidelity test among them), keeps it, as
#: users' runs do; so does every test with ``PYTEST_STABILITY_SUITE_GRAPPLER=1`` set.
_GRAPPLER_KEPT = os.environ.get("PYTEST_STABILITY_SUITE_GRAPPLER") == "1"
_BACKENDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backends")


@pytest.fixture(autouse=True)
def _grappler_where_it_matters(request: pytest.FixtureRequest):
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is not None:
        off = not (_GRAPPLER_KEPT or str(request.node.path).startswith(_BACKENDS_DIR + os.sep))
        if bool(tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer")) != off:
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": off})
    yield


@pytest.fixture(autouse=True)
def _no_traced_graphs_kept():
    """The suite's own plain ``model.fit`` calls leave no ``tf.custom_gradient`` registration behind, as the
    plugin's ``fit`` does not (``pytest_stability.training.isolation.drop_gradient_registrations``): each would
    keep its train function's graphs alive, and every full garbage collection of the worker would walk them
    again, to the end of the run."""
    import sys

    if "tensorflow" not in sys.modules:
        yield
        return
    from pytest_stability.training.isolation import drop_gradient_registrations, gradient_registrations

    before = gradient_registrations()
    yield
    drop_gradient_registrations(before)
