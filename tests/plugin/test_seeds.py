"""seeds=K / --stability-seeds=K: every seed trains; any unstable seed fails the test; spread and replay."""

from __future__ import annotations

import json
import random
import shlex

import numpy as np
import pytest

#: conftest.py's SEEDS_TESTS: build_for_seed() builds a diverging model when the first draw of Python's `random`
#: (seeded by the fixture with the run's seed) is below BAD_DRAW.
BAD_DRAW = 0.5


def _diverging_seeds(seeds):
    out = []
    for s in seeds:
        random.seed(s)
        if random.random() < BAD_DRAW:
            out.append(s)
    return out


def test_any_unstable_seed_fails_the_test_and_is_named_with_its_replay(pytester, named_problem, gating, recorded):
    assert _diverging_seeds([0, 1, 2]) == [1]  # the premise of this test
    pytester.makepyfile(test_multi_seed=named_problem + recorded.SEEDS_TESTS.format(bad_draw=BAD_DRAW))
    # the recorded training (recorded/seeds.json) is replayed seed by seed, each only if the test built the model
    # recorded for that seed (seed 1's is the diverging one)
    run = ("-p", "no:cacheprovider", *recorded.args("seeds"))
    result = pytester.runpytest(*run, "--stability-report=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * test_multi_seed.py::test_three_seeds: stable_training: * checks failed (*nonfinite*) - seed 1, *",
            "E *replay: pytest test_multi_seed.py::test_three_seeds --stability-replay=1",
            "E *unstable under 1 of 3 seeds: [[]1[]]",
            "FAIL  test_multi_seed.py::test_three_seeds  steps=*/30 seeds=3 failed=[[]1[]] CPU *",
        ]
    )
    (test,) = gating.load_strict(pytester.path / "r.json")["tests"]
    assert (test["verdict"], test["seeds"], test["failed_seeds"]) == ("unstable", [0, 1, 2], [1])
    (call,) = test["calls"]
    assert (call["seeds"], call["failed_seeds"]) == ([0, 1, 2], [1])
    assert [(r["seed"], r["verdict"]) for r in call["runs"]] == [(0, "stable"), (1, "unstable"), (2, "stable")]
    assert [r["replay"] for r in call["runs"]] == [
        f"pytest test_multi_seed.py::test_three_seeds --stability-replay={s}" for s in (0, 1, 2)
    ]
    # the spread across seeds: min / median / max of each summary metric
    final = [r["summary"]["steps_run"] for r in call["runs"]]
    assert call["spread"]["steps_run"] == {"min": min(final), "median": sorted(final)[1], "max": max(final)}
    assert set(call["spread"]["p99_grad_norm"]) == {"min", "median", "max"}
    assert call["spread"]["p99_grad_norm"]["min"] < call["spread"]["p99_grad_norm"]["max"]

    # the printed replay command reproduces exactly the failing seed
    result = pytester.runpytest(*run, "test_multi_seed.py::test_three_seeds", "--stability-replay=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAIL  test_multi_seed.py::test_three_seeds  steps=*/30 seed=1 CPU *"])
    result = pytester.runpytest(*run, "test_multi_seed.py::test_three_seeds", "--stability-replay=2")
    result.assert_outcomes(passed=1)


def test_seeds_from_the_command_line(pytester, named_problem, gating):
    pytester.makepyfile(
        test_cli_seeds=named_problem
        + """

@pytest.mark.stable_training(steps=30)
def test_stable(stability):
    stability.train(build, X, Y, batch_size=16)
"""
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--stability-seeds=2", "--stability-seed=5", "--stability-report=r.json"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PASS  test_cli_seeds.py::test_stable  steps=30/30 seeds=2 CPU *"])
    (test,) = gating.load_strict(pytester.path / "r.json")["tests"]
    assert (test["verdict"], test["seeds"], test["failed_seeds"]) == ("stable", [5, 6], [])
    runs = test["calls"][0]["runs"]
    assert [r["replay"] for r in runs] == [
        f"pytest test_cli_seeds.py::test_stable --stability-replay={s}" for s in (5, 6)
    ]
    # different seeds, different initialisations: the runs differ
    assert runs[0]["curves"]["loss"]["value"] != runs[1]["curves"]["loss"]["value"]


#: A plugin that reseeds Python's and numpy's generators for each test's call phase, as pytest-randomly does
#: (its ``pytest_runtest_call``), with a seed of its own per session: here the value of RESEED.
RESEEDING_PLUGIN = """
import os
import random

import numpy as np


def pytest_runtest_call(item):
    seed = int(os.environ["RESEED"])
    random.seed(seed)
    np.random.seed(seed)
"""


def test_the_test_body_starts_from_the_stability_seed_under_a_plugin_that_reseeds_each_call(
    pytester, tiny_problem, monkeypatch
):
    """The model the test builds is the stability seed's (Keras draws an unseeded layer's seed from Python's
    generator), whatever another plugin seeds the call phase with; a fixture set up after `stability` draws
    from the seeded states, and the body goes on from where it left them (they are put back, not reseeded)."""
    pytester.makeconftest(RESEEDING_PLUGIN)
    pytester.makepyfile(
        test_reseeded=tiny_problem
        + """
import json
import random


@pytest.fixture
def drawn(stability):
    return random.random(), float(np.random.random())


@pytest.mark.stable_training(steps=4, seed=3)
def test_builds(stability, drawn):
    body = random.random(), float(np.random.random())
    model = build()
    with open("drawn.json", "w") as f:
        json.dump({"drawn": drawn, "body": body, "weights": [w.tolist() for w in model.get_weights()]}, f)
    stability.fit(model, X, Y, batch_size=64)
"""
    )
    seen = []
    for reseed in ("1", "2"):
        monkeypatch.setenv("RESEED", reseed)
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        seen.append(json.loads((pytester.path / "drawn.json").read_text()))
    assert seen[0] == seen[1]  # the same draws and the same model in both sessions
    # the seed's streams: the fixture took the first numbers, the body the second
    python, numpy = random.Random(3), np.random.RandomState(3)
    assert seen[0]["drawn"] == [python.random(), numpy.random()]
    assert seen[0]["body"] == [python.random(), numpy.random()]


#: pytest-randomly's reseeding, all of it: with its per-session seed before each test's setup and call
RESEEDING_AT_SETUP = (
    RESEEDING_PLUGIN
    + """

def pytest_runtest_setup(item):
    pytest_runtest_call(item)
"""
)


def test_fixtures_set_up_before_stability_build_the_same_model_in_every_session(pytester, tiny_problem, monkeypatch):
    """pytest sets up a module-scoped fixture, and a fixture the test names before ``stability``, before the
    `stability` fixture: their models were initialised from whatever state Python's generator was in (here
    another session's reseeding, or what the session drew before), so the same test trained another model in
    each session and its replay command replayed nothing.  The test's seed is set before its first fixture."""
    pytester.makeconftest(RESEEDING_AT_SETUP)
    pytester.makepyfile(
        test_fixture_models=tiny_problem
        + """
import json


@pytest.fixture(scope="module")
def shared():
    return build()


@pytest.fixture
def named_first():
    return build()


@pytest.mark.stable_training(steps=4, seed=3)
def test_fixture_models(named_first, stability, shared):
    with open("weights.json", "w") as f:
        models = {"first": named_first, "shared": shared}
        json.dump({name: [w.tolist() for w in m.get_weights()] for name, m in models.items()}, f)
    stability.fit(named_first, X, Y, batch_size=64)
"""
    )
    seen = []
    for reseed in ("1", "2"):
        monkeypatch.setenv("RESEED", reseed)
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        seen.append(json.loads((pytester.path / "weights.json").read_text()))
    assert seen[0] == seen[1]
    assert seen[0]["first"] != seen[0]["shared"]  # two models, each drawn from the seeded stream


def test_a_dtype_policy_a_session_fixture_sets_outlives_the_first_stability_test(pytester, tiny_problem):
    """The seeding before a stability test's first fixture is put back after its teardown, and only it: a
    session-scoped fixture set up within that test's setup (here one that sets a mixed-precision policy for the
    whole session) keeps what it set for the tests after."""
    pytester.makeconftest(
        """
import keras
import pytest


@pytest.fixture(scope="session", autouse=True)
def policy():
    keras.config.set_dtype_policy("mixed_bfloat16")
    yield
    keras.config.set_dtype_policy("float32")
"""
    )
    pytester.makepyfile(
        test_policy=tiny_problem
        + """
@pytest.mark.stable_training(steps=4)
def test_first(stability):
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    stability.fit(build(), X, Y, batch_size=64)


def test_after():
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
"""
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_model_an_earlier_stability_test_trained_is_said_to_depend_on_the_tests_before_it(pytester, tiny_problem):
    """A model shared through a module-scoped fixture: the second test trains it from where the first left it,
    so its verdict depends on test selection and order, and its replay command, run alone, trains the fresh
    model.  The row says so; the first test's row says nothing, and nor does a second call in the same test."""
    pytester.makepyfile(
        test_shared_model=tiny_problem
        + """
@pytest.fixture(scope="module")
def model():
    return build()


@pytest.mark.stable_training(steps=8)
def test_first(stability, model):
    stability.fit(model, X, Y, batch_size=32)
    stability.fit(model, X, Y, batch_size=32)


@pytest.mark.stable_training(steps=8)
def test_second(stability, model):
    stability.fit(model, X, Y, batch_size=32)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(passed=2)
    notes = {
        t["nodeid"]: [n for call in t["calls"] for run in call["runs"] for n in run["model"].get("notes", [])]
        for t in json.loads((pytester.path / "r.json").read_text())["tests"]
    }
    assert notes["test_shared_model.py::test_first"] == []
    assert notes["test_shared_model.py::test_second"] == [
        "this model was trained by an earlier stability test, test_shared_model.py::test_first (8 steps): this "
        "run starts where that one ended, so its result depends on which tests ran before it (-k, --lf, "
        "pytest-xdist, pytest-randomly) and its replay command, run alone, trains another model; build the model "
        "in the test or in a function-scoped fixture, or pass stability.fit a function that builds it"
    ]
    result.stdout.fnmatch_lines(["*note: this model was trained by an earlier stability test*"])


REPEATED_TESTS = """
def diverging():
    # least squares far past the learning rate's edge: Inf within 20 steps on every backend (a sigmoid classifier
    # at SGD(1e4) saturated instead under JAX, and its 20 steps passed there)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


@pytest.mark.stable_training(steps=20)
def test_repeated(stability):
    stability.fit(diverging(), X * 100, Y, batch_size=32)


@pytest.mark.repeat(2)
@pytest.mark.stable_training(steps=20)
def test_marked(stability):
    stability.fit(diverging(), X * 100, Y, batch_size=32)
"""


def test_the_replay_of_a_test_repeated_by_pytest_repeat_names_the_count_its_node_id_needs(pytester, tiny_problem):
    """``--count=3`` (pytest-repeat) makes ``test_repeated[2-3]``, a node id that exists only with that option: the
    replay command carries it (a ``repeat`` marker's count is in the source), and the command, run as printed,
    runs that one test and fails it the same way."""
    pytest.importorskip("pytest_repeat")
    pytester.makepyfile(test_repeat=tiny_problem + REPEATED_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--count=3", "--stability-report=r.json")
    result.assert_outcomes(failed=5)
    replays = {
        t["nodeid"]: call["runs"][0]["replay"]
        for t in json.loads((pytester.path / "r.json").read_text())["tests"]
        for call in t["calls"]
    }
    assert replays["test_repeat.py::test_repeated[2-3]"] == (
        "pytest 'test_repeat.py::test_repeated[2-3]' --stability-replay=0 --count=3"
    )
    assert (
        replays["test_repeat.py::test_marked[1-2]"] == "pytest 'test_repeat.py::test_marked[1-2]' --stability-replay=0"
    )
    result.stdout.fnmatch_lines(
        ["E *replay: pytest 'test_repeat.py::test_repeated[[]2-3[]]' --stability-replay=0 --count=3"]
    )
    for nodeid, failure in (
        ("test_repeated[2-3]", "FAIL  test_repeat.py::test_repeated[[]2-3[]]  steps=*/20 *"),
        ("test_marked[1-2]", "FAIL  test_repeat.py::test_marked[[]1-2[]]  steps=*/20 *"),
    ):
        command = shlex.split(replays[f"test_repeat.py::{nodeid}"])
        assert command[0] == "pytest"
        result = pytester.runpytest("-p", "no:cacheprovider", *command[1:])
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([failure])


def test_the_replay_command_names_the_file_from_where_pytest_was_run(pytester, tiny_problem, monkeypatch):
    """``cd tests && pytest`` with pytest.ini above: pytest's node ids are relative to the rootdir, and
    ``pytest tests/test_sub.py::test_model`` typed in tests/ finds no file.  The replay command names the file from
    where pytest was run, and run there as printed it replays the test."""
    pytester.makefile(".ini", pytest="[pytest]\n")
    tests = pytester.mkdir("tests")
    (tests / "test_sub.py").write_text(
        tiny_problem
        + """
@pytest.mark.stable_training(steps=5, max_grad_norm=1e-4)
def test_model(stability):
    stability.fit(build(), X, Y, batch_size=32)
"""
    )
    monkeypatch.chdir(tests)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *replay: pytest test_sub.py::test_model --stability-replay=0"])
    (test,) = json.loads((tests / "r.json").read_text())["tests"]
    assert test["nodeid"] == "tests/test_sub.py::test_model"  # the report keeps pytest's own id
    (command,) = [r["replay"] for r in test["calls"][0]["runs"]]
    assert command == "pytest test_sub.py::test_model --stability-replay=0"
    replayed = pytester.runpytest("-p", "no:cacheprovider", *shlex.split(command)[1:])
    replayed.assert_outcomes(failed=1)
    # from the rootdir itself, the node id as pytest gives it
    monkeypatch.chdir(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "tests")
    result.stdout.fnmatch_lines(["E *replay: pytest tests/test_sub.py::test_model --stability-replay=0"])
