"""--stability-report: schema, strict JSON, atomic and complete writes, the JSON hooks."""

from __future__ import annotations

import os
import signal
from importlib import metadata

import pytest

import pytest_stability
from pytest_stability.report import json_report

#: The tests of the schema test: every outcome a stability test can have.
SCENARIO = ("healthy", "diverges", "crashes", "setup_error", "skipped", "plain")

TOP_KEYS = {
    "schema_version",
    "plugin",
    "environment",
    "devices",
    "started_at",
    "finished_at",
    "duration",
    "complete",
    "interrupted",
    "exitstatus",
    "counts",
    "tests",
}
TEST_KEYS = {
    "nodeid",
    "outcome",
    "verdict",
    "error",
    "skip_reason",
    "seeds",
    "failed_seeds",
    "device",
    "wall_time",
    "baseline",
    "steps_planned",
    "steps_run",
    "findings",
    "settings",
    "calls",
}
SUMMARY_KEYS = {
    "final_loss",
    "min_loss",
    "largest_spike",
    "spikes",
    "max_grad_norm",
    "p99_grad_norm",
    "val_trend",
    "final_val_loss",
    "findings",
    "steps_run",
    "steps_planned",
}
FINDING_KEYS = {"check", "kind", "step", "value", "limit", "message", "evidence", "cause", "fix", "confidence"}


def _tf_version() -> tuple[str, str]:
    for dist in json_report.TENSORFLOW_DISTRIBUTIONS:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise AssertionError("no TensorFlow distribution installed")


def test_report_schema_and_content(pytester, scenario, gating):
    scenario(*SCENARIO, module="test_scenario")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=reports/stability.json")
    result.assert_outcomes(passed=2, failed=2, errors=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*- stability JSON written to *reports/stability.json -*", "*short test summary info*"]
    )
    report_dir = pytester.path / "reports"
    # no temp file left behind; the diverging test's batch beside the report
    assert sorted(p.name for p in report_dir.iterdir()) == ["stability-batches", "stability.json"]
    assert [p.name for p in (report_dir / "stability-batches").iterdir()] == [
        "test_scenario.py__test_diverges-seed0-step2.npz"
    ]
    doc = gating.load_strict(report_dir / "stability.json")

    assert set(doc) == TOP_KEYS
    assert doc["schema_version"] == 1
    assert doc["plugin"] == {"name": "pytest-stability", "version": pytest_stability.__version__}
    env = doc["environment"]
    dist, version = _tf_version()
    assert (env["tensorflow_distribution"], env["tensorflow"]) == (dist, version)
    assert env["keras"] == metadata.version("keras")
    assert env["pytest"] == pytest.__version__
    assert env["python"] == ".".join(map(str, __import__("sys").version_info[:3]))
    assert doc["devices"] == ["CPU"]
    assert (doc["complete"], doc["interrupted"], doc["exitstatus"]) == (True, False, 1)
    assert doc["started_at"] <= doc["finished_at"] and doc["duration"] > 0
    assert doc["counts"] == {"tests": 5, "stable": 2, "unstable": 1, "error": 1, "skipped": 1}

    tests = gating.tests_by_id(doc)
    assert [t["nodeid"] for t in doc["tests"]] == sorted(tests)  # sorted; the plain test is not a stability test
    assert sorted(tests) == [
        f"test_scenario.py::test_{n}" for n in ("crashes", "diverges", "healthy", "setup_error", "skipped")
    ]
    for t in doc["tests"]:
        assert set(t) == TEST_KEYS, t["nodeid"]

    healthy = tests["test_scenario.py::test_healthy"]
    assert (healthy["outcome"], healthy["verdict"], healthy["error"]) == ("passed", "stable", None)
    assert (healthy["seeds"], healthy["failed_seeds"], healthy["device"]) == ([0], [], "CPU")
    assert (healthy["steps_planned"], healthy["steps_run"]) == (40, 40)
    assert healthy["wall_time"] > 0 and healthy["findings"] == []
    assert healthy["settings"]["steps"] == 40 and healthy["settings"]["validate_every"] == 20
    (call,) = healthy["calls"]
    (run,) = call["runs"]
    assert (run["seed"], run["verdict"], run["steps_run"]) == (0, "stable", 40)
    assert run["replay"] == "pytest test_scenario.py::test_healthy --stability-replay=0"
    assert set(run["summary"]) == SUMMARY_KEYS
    s = run["summary"]
    assert all(
        isinstance(s[k], float)
        for k in ("final_loss", "largest_spike", "max_grad_norm", "p99_grad_norm", "val_trend", "final_val_loss")
    )
    assert s["p99_grad_norm"] <= s["max_grad_norm"] and s["val_trend"] < 0 and s["spikes"] == 0
    assert run["curves"]["loss"]["step"] == list(range(40))
    assert len(run["curves"]["grad_norm"]["value"]) == 40
    # validation runs at the first read-back at or after each validate_every (16-step epochs end chunks)
    assert run["curves"]["val_loss"]["step"] == [0, 32, 40]

    diverges = tests["test_scenario.py::test_diverges"]
    assert (diverges["outcome"], diverges["verdict"], diverges["failed_seeds"]) == ("failed", "unstable", [0])
    assert diverges["steps_planned"] == 40 and diverges["steps_run"] < 40
    findings = {f["check"]: f for f in diverges["findings"]}
    assert set(findings) == {"grad_norm", "nonfinite"}  # the gradient norm explodes, then the loss overflows
    for finding in diverges["findings"]:
        assert set(finding) == FINDING_KEYS | {"call", "seed"}
        assert (finding["call"], finding["seed"]) == (0, 0) and finding["cause"] and finding["fix"]
    finding = findings["nonfinite"]
    assert finding["step"] == diverges["steps_run"] - 1  # training stops at the non-finite step
    assert "first variable affected: mlp_nan/" in finding["message"]
    (run,) = diverges["calls"][0]["runs"]
    assert run["findings"] == [{k: v for k, v in f.items() if k not in ("call", "seed")} for f in diverges["findings"]]
    # the non-finite gradient norm is encoded, not written as a NaN/Infinity token
    assert run["curves"]["grad_norm"]["value"][-1] in ("nan", "inf")
    assert all(isinstance(v, float) for v in run["curves"]["grad_norm"]["value"][:-1])

    crashed = tests["test_scenario.py::test_crashes"]
    assert (crashed["outcome"], crashed["verdict"], crashed["steps_run"]) == ("failed", "stable", 40)

    setup_error = tests["test_scenario.py::test_setup_error"]
    assert (setup_error["outcome"], setup_error["verdict"], setup_error["calls"]) == ("error", "error", [])
    assert setup_error["error"] == (
        "the test errored before the stability fixture was set up: RuntimeError: the data fixture is broken"
    )

    skipped = tests["test_scenario.py::test_skipped"]
    assert (skipped["outcome"], skipped["verdict"], skipped["calls"]) == ("skipped", "skipped", [])
    assert skipped["skip_reason"] == "Skipped: not today"


def test_curves_are_downsampled_to_at_most_500_points(pytester, named_problem, gating):
    pytester.makepyfile(
        named_problem
        + """
@pytest.mark.stable_training(steps=700, readback_every=350)
def test_long(stability):
    stability.train(build(), X, Y, batch_size=16)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(passed=1)
    (run,) = gating.load_strict(pytester.path / "r.json")["tests"][0]["calls"][0]["runs"]
    assert run["steps_run"] == 700
    for name in ("loss", "grad_norm"):
        steps = run["curves"][name]["step"]
        assert len(steps) == len(run["curves"][name]["value"]) == 500
        assert steps == sorted(steps) and steps[0] == 0 and steps[-1] >= 698


def test_ini_twin_and_no_report_without_option(pytester, scenario, gating, recorded):
    scenario("one")
    run = ("-p", "no:cacheprovider", *recorded.args("scenarios"))
    result = pytester.runpytest(*run)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*stability JSON*")
    assert not list(pytester.path.glob("*.json"))

    pytester.makeini("[pytest]\nstability_report = out/from_ini.json\n")
    result = pytester.runpytest(*run)
    result.assert_outcomes(passed=1)
    assert [t["verdict"] for t in gating.load_strict(pytester.path / "out/from_ini.json")["tests"]] == ["stable"]
    # the command line wins over the ini value
    (pytester.path / "out/from_ini.json").unlink()
    result = pytester.runpytest(*run, "--stability-report=cli.json")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "cli.json").is_file() and not (pytester.path / "out/from_ini.json").exists()


def test_report_path_that_is_a_directory_is_a_usage_error(pytester):
    pytester.mkdir("reports")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--stability-report=reports")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stability-report: */reports is a directory; give a file path*"])


def test_written_after_each_test_so_a_killed_run_leaves_what_ran(pytester, scenario, recorded):
    # test_reads_partial_report reads the report while the run is still going: test_one is
    # already in it, and the document says it is not complete.  The JSON hooks run for each
    # write, as hookspecs.py says: complete False after the stability test, True at the end.
    pytester.makeconftest("""
def pytest_stability_update_json(document):
    with open("update_json_calls.txt", "a") as out:
        out.write(f"complete={document['complete']} tests={len(document['tests'])}\\n")
""")
    scenario(
        "one",
        extra="""

def test_reads_partial_report():
    import json

    doc = json.load(open("partial.json"))
    assert doc["complete"] is False and doc["exitstatus"] is None and doc["finished_at"] is None
    assert [(t["nodeid"], t["verdict"], t["outcome"]) for t in doc["tests"]] == [
        ("test_written_after_each_test_so_a_killed_run_leaves_what_ran.py::test_one", "stable", "passed")]
""",
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-report=partial.json"
    )
    result.assert_outcomes(passed=2)
    assert (pytester.path / "update_json_calls.txt").read_text().splitlines() == [
        "complete=False tests=1",
        "complete=True tests=1",
    ]


HOOKS_CONFTEST = """
import numpy as np


def pytest_stability_update_json(config, document):
    document["commit"] = "abc123"
    document["nan_from_hook"] = float("nan")
    document["numpy_from_hook"] = np.float64(2.5)
"""


def test_update_json_hook_and_strictness(pytester, scenario, gating, recorded):
    pytester.makeconftest(HOOKS_CONFTEST)
    scenario("diverges")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-report=r.json")
    result.assert_outcomes(failed=1)
    text = (pytester.path / "r.json").read_text()
    assert '"nan_from_hook":"nan"' in text
    doc = gating.load_strict(pytester.path / "r.json")  # raises on a NaN / Infinity token
    assert (doc["commit"], doc["nan_from_hook"], doc["numpy_from_hook"]) == ("abc123", "nan", 2.5)
    assert doc["tests"][0]["verdict"] == "unstable"


def test_generate_json_hook_replaces_the_document(pytester, scenario, gating, recorded):
    pytester.makeconftest(
        HOOKS_CONFTEST
        + """

def pytest_stability_generate_json(config, records):
    return {"custom": True, "nodeids": [r["nodeid"] for r in records]}
"""
    )
    scenario("one")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-report=r.json")
    result.assert_outcomes(passed=1)
    assert gating.load_strict(pytester.path / "r.json") == {
        "custom": True,
        "nodeids": ["test_generate_json_hook_replaces_the_document.py::test_one"],
        "commit": "abc123",
        "nan_from_hook": "nan",
        "numpy_from_hook": 2.5,
    }


def test_unwritable_document_fails_the_run_with_a_message(pytester, scenario, recorded):
    pytester.makeconftest("""
def pytest_stability_update_json(document):
    document["bad"] = object()
""")
    scenario("one")
    result = pytester.runpytest("-p", "no:cacheprovider", *recorded.args("scenarios"), "--stability-report=r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*stability JSON NOT written to */r.json: TypeError: document[[]'bad'[]] is a object, "
            "which JSON cannot hold: <object object at *"
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    assert not (pytester.path / "r.json").exists()


INTERRUPTED = """
import os
import signal
import time


@pytest.mark.stable_training(steps=20)
def test_1_completes(stability):
    stability.train(build(), X, Y, batch_size=16)


@pytest.mark.stable_training(steps=20)
def test_2_interrupted(stability):
    stability.train(build(name="mlp2"), X, Y, batch_size=16)
    # a shell that starts the suite in the background ignores SIGINT, and this process inherits that: Python
    # then leaves SIGINT ignored, where a terminal's Ctrl-C would raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    time.sleep(30)


@pytest.mark.stable_training(steps=20)
def test_3_never_runs(stability):
    stability.train(build(), X, Y, batch_size=16)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
def test_interrupted_run_writes_what_ran(pytester, named_problem, gating):
    pytester.makepyfile(test_int=named_problem + INTERRUPTED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--stability-report=r.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*stability JSON written to */r.json*"])
    result.stdout.fnmatch_lines(["*!! KeyboardInterrupt !!*"])
    result.stdout.fnmatch_lines(["*test_2_interrupted  steps=20/20 seed=0 CPU*(interrupted)*"])
    doc = gating.load_strict(pytester.path / "r.json")
    assert (doc["complete"], doc["interrupted"], doc["exitstatus"]) == (True, True, 2)
    tests = gating.tests_by_id(doc)
    assert sorted(tests) == ["test_int.py::test_1_completes", "test_int.py::test_2_interrupted"]
    assert (tests["test_int.py::test_1_completes"]["outcome"], tests["test_int.py::test_1_completes"]["verdict"]) == (
        "passed",
        "stable",
    )
    interrupted = tests["test_int.py::test_2_interrupted"]
    # it trained before Ctrl-C: that training is in the report
    assert (interrupted["outcome"], interrupted["verdict"], interrupted["steps_run"]) == ("interrupted", "stable", 20)


def test_report_of_a_run_without_stability_tests_does_not_import_tensorflow(pytester, gating):
    pytester.makeconftest("""
import sys


def pytest_stability_update_json(document):
    document["heavy_modules"] = sorted(m for m in ("tensorflow", "keras", "matplotlib") if m in sys.modules)
""")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--stability-report=r.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*- stability JSON written to */r.json -*"])
    result.stdout.no_fnmatch_line("*== stability report:*")
    doc = gating.load_strict(pytester.path / "r.json")
    assert doc["heavy_modules"] == [] and doc["tests"] == [] and doc["counts"]["tests"] == 0
    assert doc["environment"]["tensorflow"] is not None and doc["environment"]["keras"] is not None
