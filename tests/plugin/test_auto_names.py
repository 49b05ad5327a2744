"""Keras' automatic names restart in every stability test, and a model built before still trains.

The name counter is process-wide: without the restart, a model's name ("sequential_137") and the
variables named in findings would depend on the tests that ran before in the same process
(test_xdist.py checks the consequence: serial and ``-n 2`` reports are equal).
"""

from __future__ import annotations

NAMES = '''

AT_IMPORT = build()  # takes "sequential" even when this process has built no model before


@pytest.fixture
def prebuilt():
    """Built before the stability fixture (it is set up first), after the names restart."""
    return build()


@pytest.mark.parametrize("run", [1, 2])
@pytest.mark.stable_training(steps=20)
def test_names(prebuilt, stability, run):
    stability.train(prebuilt, X, Y, batch_size=16)
    fresh = build()
    print(f"NAMES run={run} prebuilt={prebuilt.name}:{','.join(layer.name for layer in prebuilt.layers)}")
    print(f"NAMES run={run} fresh={fresh.name}:{','.join(layer.name for layer in fresh.layers)}")
    stability.train(fresh, X, Y, batch_size=16)
'''


def test_auto_names_restart_per_test_and_a_model_built_before_trains(pytester, tiny_problem, gating):
    pytester.makepyfile(tiny_problem + NAMES)
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(passed=2)
    # this process built many models before (earlier tests): the names start afresh all the same, before the
    # test's first fixture, and count on into the body (a fixture's layer and the body's never share a name)
    result.stdout.fnmatch_lines(
        [
            f"*NAMES run={run} {which}"
            for run in (1, 2)
            for which in ("prebuilt=sequential:dense,dense_1*", "fresh=sequential_1:dense_2,dense_3*")
        ]
    )
    tests = gating.load_strict(pytester.path / "r.json")["tests"]
    assert [t["nodeid"] for t in tests] == [
        f"test_auto_names_restart_per_test_and_a_model_built_before_trains.py::test_names[{run}]" for run in (1, 2)
    ]
    for test in tests:
        assert len(test["calls"]) == 2, test["nodeid"]
        prebuilt, fresh = (call["runs"][0] for call in test["calls"])
        assert (prebuilt["verdict"], prebuilt["steps_run"], fresh["verdict"], fresh["steps_run"]) == (
            "stable",
            20,
            "stable",
            20,
        ), test["nodeid"]
        assert (prebuilt["model"]["model"], fresh["model"]["model"]) == ("sequential", "sequential_1")
