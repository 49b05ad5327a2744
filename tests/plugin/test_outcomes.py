"""What a stability test's row and JSON entry say when the test fails for a reason other than its training,
and how usage errors and plot failures are shown."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest


def test_a_test_failing_after_stable_training_is_not_shown_as_passed(pytester, scenario, gating, recorded):
    scenario("crashes", "healthy", module="test_after")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= stability report: 2 tests, 0 unstable, 1 failed after training =*",
            "FAIL  test_after.py::test_crashes  steps=40/40 seed=0 CPU*",
            "      test failed after training: RuntimeError: the test body crashed",
            "PASS  test_after.py::test_healthy  steps=40/40*",
        ]
    )
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "r.json"))
    crashed = tests["test_after.py::test_crashes"]
    assert (crashed["outcome"], crashed["verdict"]) == ("failed", "stable")  # training was stable; the test was not
    assert crashed["error"] == "the test failed after stability.fit(): RuntimeError: the test body crashed"
    assert tests["test_after.py::test_healthy"]["error"] is None


def test_a_crash_before_training_names_the_exception(pytester, named_problem, gating):
    pytester.makepyfile(
        named_problem
        + """

@pytest.mark.stable_training(steps=10)
def test_boom(stability):
    raise KeyError("no data today")
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(failed=1)
    (test,) = gating.load_strict(pytester.path / "r.json")["tests"]
    assert (test["outcome"], test["verdict"]) == ("failed", "error")
    assert test["error"] == "the test did not complete a stability.fit() call: KeyError: 'no data today'"


def test_a_test_that_skips_itself_before_training_is_a_skip_not_an_error(pytester, named_problem, gating):
    """``pytest.skip()`` or ``pytest.importorskip()`` in the test's body, before any ``stability.fit()``: pytest
    counts a skip, and so do the stability report's row and JSON entry (they said "the test did not complete a
    stability.fit() call", an error)."""
    pytester.makepyfile(
        test_skips=named_problem
        + """

@pytest.mark.stable_training(steps=10)
def test_skips(stability):
    pytest.skip("needs a GPU")


@pytest.mark.stable_training(steps=10)
def test_imports(stability):
    pytest.importorskip("a_module_nobody_has")
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*= stability report: 2 tests, 0 unstable =*",
            "SKIP  test_skips.py::test_imports  *a_module_nobody_has*",
            "SKIP  test_skips.py::test_skips  Skipped: needs a GPU",
        ]
    )
    result.stdout.no_fnmatch_line("*did not complete a stability.fit() call*")
    doc = gating.load_strict(pytester.path / "r.json")
    assert doc["counts"]["skipped"] == 2 and doc["counts"]["error"] == 0
    tests = gating.tests_by_id(doc)
    assert [(t["outcome"], t["verdict"], t["error"]) for t in tests.values()] == [("skipped", "skipped", None)] * 2
    assert tests["test_skips.py::test_skips"]["skip_reason"] == "Skipped: needs a GPU"


RERUN_TESTS = """
from pathlib import Path


def attempt(name):
    \"\"\"1 on a test's first attempt, 2 on its rerun (pytest-rerunfailures runs the same item again).\"\"\"
    seen = Path(f"attempts-{name}")
    n = int(seen.read_text()) + 1 if seen.exists() else 1
    seen.write_text(str(n))
    return n


@pytest.mark.stable_training(steps=40)
def test_unstable_then_stable(stability):
    if attempt("a") == 1:
        stability.fit(build(optimizer=keras.optimizers.SGD(1e4)), X * 100, Y, batch_size=32)
    stability.fit(build(), X, Y, batch_size=32)


@pytest.fixture
def setup_fails_on_rerun():
    if attempt("b") == 2:
        raise RuntimeError("the database is down")


@pytest.mark.stable_training(steps=40)
def test_unstable_then_setup_error(setup_fails_on_rerun, stability):
    stability.fit(build(optimizer=keras.optimizers.SGD(1e4)), X * 100, Y, batch_size=32)
"""


def test_a_rerun_test_is_reported_as_its_last_attempt_ran(pytester, tiny_problem, gating):
    """pytest-rerunfailures runs a failed test's item again: its row, JSON entry and JUnit properties are those of
    the last attempt, nothing of the earlier one's (its failure was the passing rerun's ``error``; its record,
    training and all, stood for a rerun that errored in setup)."""
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_reruns=tiny_problem + RERUN_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--reruns=1", "--stability-report=r.json", "--junitxml=j.xml")
    outcomes = {k: n for k, n in result.parseoutcomes().items() if k != "warnings"}  # (Keras' on PyTorch)
    assert outcomes == {"passed": 1, "errors": 1, "rerun": 2}, result.stdout.str()
    result.stdout.fnmatch_lines_random(
        [
            "PASS  test_reruns.py::test_unstable_then_stable  steps=40/40 *",
            "ERROR test_reruns.py::test_unstable_then_setup_error  the test errored before the stability fixture "
            "was set up: RuntimeError: the database is down",
        ]
    )
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "r.json"))
    passed = tests["test_reruns.py::test_unstable_then_stable"]
    assert (passed["outcome"], passed["verdict"], passed["error"], len(passed["calls"])) == (
        "passed",
        "stable",
        None,
        1,
    )
    errored = tests["test_reruns.py::test_unstable_then_setup_error"]
    assert (errored["outcome"], errored["verdict"], errored["calls"]) == ("error", "error", [])
    # JUnit: one testcase per attempt (pytest-rerunfailures' way), each with its own attempt's properties
    attempts = [
        {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(pytester.path / "j.xml").getroot().iter("testcase")
        if case.get("name") == "test_unstable_then_stable"
    ]
    assert [a["stability_verdict"] for a in attempts] == ["unstable", "stable"]
    assert "stability_error" not in attempts[1]


def test_a_usage_error_is_printed_once(pytester, tiny_problem):
    pytester.makepyfile(
        tiny_problem
        + """

@pytest.mark.stable_training(steps=10)
def test_bad_steps(stability):
    stability.train(build(), X, Y, steps=-5)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    # once in the failure section; the stability report and the short summary quote it too
    section = out.split("= FAILURES =", 1)[1].split("= stability report", 1)[0]
    assert section.count("steps must be an int >= 1, received -5") == 1
    result.stdout.fnmatch_lines(["stability.train(): steps must be an int >= 1, received -5"])


def test_a_loss_nan_from_step_0_does_not_stop_the_other_plots(pytester, scenario, recorded):
    pytest.importorskip("matplotlib")
    scenario("healthy", "nan_from_start", module="test_p")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-plots=plots")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*- stability plots: 2 PNG files written to */plots -*"])
    assert sorted(p.name for p in (pytester.path / "plots").iterdir()) == [
        "test_p.py__test_a_nan_from_start.png",
        "test_p.py__test_healthy.png",
    ]
    result.stdout.no_fnmatch_line("*cannot be log-scaled*")


def test_a_failing_plot_is_named_in_a_warning_and_the_others_are_written(pytester, scenario, recorded):
    pytest.importorskip("matplotlib")
    pytester.makeconftest("""
import pytest_stability.report.plots as plots

_render = plots.render_png


def _broken_for_one_test(record):
    if record.nodeid.endswith("test_healthy"):
        raise ValueError("drawing failed")
    return _render(record)


def pytest_configure(config):
    plots.render_png = _broken_for_one_test


def pytest_unconfigure(config):
    plots.render_png = _render
""")
    scenario("healthy", "one", module="test_p")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-plots=plots")
    result.assert_outcomes(passed=2)
    assert result.ret == 0  # a plot is a by-product: the tests passed
    result.stdout.fnmatch_lines(
        [
            "*StabilityWarning: stability plot of test_p.py::test_healthy NOT written: ValueError: drawing failed",
            "*- stability plots: 1 PNG file written to */plots (1 NOT written: test_p.py::test_healthy) -*",
        ]
    )
    assert [p.name for p in (pytester.path / "plots").iterdir()] == ["test_p.py__test_one.png"]


EXPECTED_UNSTABLE = """

@pytest.mark.stable_training(steps=40)
def test_detects(stability):
    report = stability.fit(build_diverging(), X, Y * 100, batch_size=16, check=False)
    assert report.verdict == "unstable"


@pytest.mark.stable_training(steps=40)
def test_raises(stability):
    from pytest_stability import StabilityError

    with pytest.raises(StabilityError):
        stability.fit(build_diverging(), X, Y * 100, batch_size=16)
"""


def test_an_unstable_run_its_test_expects_is_shown_as_expected_not_as_a_failure(pytester, scenario, monkeypatch):
    """``check=False`` and an assertion that the run is unstable, or ``pytest.raises(StabilityError)``: the test
    passes, and its row said FAIL in red under a red title, and GitHub got an error annotation for it, as for a
    failing test."""
    scenario("diverges", module="test_x", extra=EXPECTED_UNSTABLE)
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= stability report: 3 tests, 3 unstable (2 as their tests expect) =*",
            "XFAIL test_x.py::test_detects  steps=3/40 *",
            "FAIL  test_x.py::test_diverges  steps=3/40 *",
            "XFAIL test_x.py::test_raises  steps=3/40 *",
        ]
    )
    errors = [line for line in result.outlines if line.startswith("::error ")]
    assert len(errors) == 1 and "test_diverges" in errors[0], errors
    assert summary.read_text().startswith("## Training stability\n\n3 tests, 3 unstable (2 as their tests expect)\n")
    assert "☑️ unstable, as its test expects | `test_x.py::test_detects`" in summary.read_text()
    # the JSON keeps the verdict and the outcome apart, as they are
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "r.json").read_text())["tests"]}
    assert (tests["test_x.py::test_detects"]["verdict"], tests["test_x.py::test_detects"]["outcome"]) == (
        "unstable",
        "passed",
    )
