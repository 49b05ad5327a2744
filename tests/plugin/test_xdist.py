"""pytest -n 2 gives the same JSON report, baseline and verdicts as a serial run (apart from timings)."""

from __future__ import annotations

import pytest

pytest.importorskip("xdist")

#: Every outcome a stability test can have, from tests/plugin/conftest.py's SCENARIO_TESTS ...
SHARED = ("healthy", "diverges", "crashes", "setup_error", "skipped", "plain")

# ... and conftest.py's XDIST_TESTS (with XS=10 in the compared runs, test_regresses regresses against the
# baseline) and XDIST_NEW_TEST.  Every run replays the training recorded for these modules (recorded/xdist*.json,
# recorded/scenarios.json): serial and -n 2 runs get the same runs, so what differs is only how records travel.


def test_xdist_report_equals_serial_report(pytester, scenario, gating, recorded):
    scenario(*SHARED, module="test_dist", extra=recorded.XDIST_TESTS.format(xs=1.0))
    # the baseline, from a serial run of the original code
    result = pytester.runpytest(
        "-p", "no:cacheprovider", *recorded.args("xdist", "scenarios"), "--stability-save-baseline=base.json"
    )
    result.assert_outcomes(passed=5, failed=2, errors=1, skipped=1)

    scenario(*SHARED, module="test_dist", extra=recorded.XDIST_TESTS.format(xs=10.0) + recorded.XDIST_NEW_TEST)
    common = (
        "-p",
        "no:cacheprovider",
        *recorded.args("xdist_grad", "xdist", "scenarios"),
        "--stability-baseline=base.json",
    )
    serial = pytester.runpytest(*common, "--stability-report=serial.json", "--stability-save-baseline=serial_base.json")
    serial.assert_outcomes(passed=5, failed=3, errors=1, skipped=1)

    dist = pytester.runpytest_subprocess(
        *common,
        "-n",
        "2",
        "--stability-report=xdist.json",
        "--stability-save-baseline=xdist_base.json",
        "--stability-plots=plots",
    )
    dist.assert_outcomes(passed=5, failed=3, errors=1, skipped=1)
    dist.stdout.no_fnmatch_line("*INTERNALERROR*")

    # The controller alone prints the section, once, with every row and the footer.
    out = dist.stdout.str()
    assert out.count("stability report: 9 tests, 2 unstable (1 as its test expects), 1 error, 1 regressed against") == 1
    dist.stdout.fnmatch_lines_random(
        [
            "PASS  test_dist.py::test_healthy  steps=40/40 seed=0 CPU *",
            "FAIL  test_dist.py::test_diverges  steps=3/40 seed=0 CPU *",
            "PASS  test_dist.py::test_two_seeds  steps=30/30 seeds=2 CPU *",
            "REGR  test_dist.py::test_regresses  steps=40/40 seed=0 CPU *",
            "      baseline -> now: spikes 0 -> 0, p99|g| * -> * !, findings 0 -> 0  REGRESSED",
            "PASS  test_dist.py::test_not_in_baseline  steps=20/20 seed=0 CPU *",
            "      baseline: test not in the baseline (not compared)",
            "ERROR test_dist.py::test_setup_error  the test errored before the stability fixture was set up: "
            "RuntimeError: the data fixture is broken",
            "SKIP  test_dist.py::test_skipped  Skipped: not today",
            "XFAIL test_dist.py::test_unnamed  steps=*/20 seed=0 CPU *",  # check=False: the test expects it
            "test_dist.py::test_regresses: training stability regressed against the baseline */base.json:",
            "  seed 0: 99th-percentile gradient norm: baseline *, now * (tolerance: x2, limit *)",
            "*- stability baseline */base.json: 6 compared, 1 regressed, 1 not in the baseline -*",
            "*- stability plots: 7 PNG files written to */plots -*",
            "*- stability JSON written to */xdist.json -*",
        ]
    )
    # once, as its own line (pytest's short summary may repeat it after "FAILED ... - " on a wide terminal)
    assert (
        sum(
            line.startswith("test_dist.py::test_regresses: training stability regressed against the baseline")
            for line in out.splitlines()
        )
        == 1
    )

    serial_doc = gating.load_strict(pytester.path / "serial.json")
    dist_doc = gating.load_strict(pytester.path / "xdist.json")
    assert dist_doc["counts"] == {"tests": 9, "stable": 5, "unstable": 2, "error": 1, "skipped": 1}
    assert [t["outcome"] for t in dist_doc["tests"]] == [
        "failed",
        "failed",
        "passed",
        "passed",
        "failed",
        "error",
        "skipped",
        "passed",
        "passed",
    ]
    assert [t["baseline"] for t in dist_doc["tests"]] == [
        "ok",
        "ok",
        "ok",
        "missing",
        "regressed",
        None,
        None,
        "ok",
        "ok",
    ]
    # automatic names start afresh in each test: the same in this process (which has built many
    # models before) as in a worker (a replayed run is replayed only if the test built the recorded model,
    # "sequential_1" here: else the test fails, and the outcomes above with it)
    unnamed = gating.tests_by_id(serial_doc)["test_dist.py::test_unnamed"]
    assert unnamed["calls"][0]["runs"][0]["model"]["model"] == "sequential_1"
    assert "sequential_1/dense_1/kernel" in " ".join(f["message"] for f in unnamed["findings"])
    assert gating.without_timings(dist_doc) == gating.without_timings(serial_doc)
    # timings exist in both (they are the only difference allowed)
    assert all(t["wall_time"] > 0 for t in dist_doc["tests"] if t["calls"])

    # the saved baselines are the same too
    assert gating.without_timings(gating.load_strict(pytester.path / "xdist_base.json")) == gating.without_timings(
        gating.load_strict(pytester.path / "serial_base.json")
    )
    # plots, drawn by the controller from the records the workers sent
    plots = sorted(p.name for p in (pytester.path / "plots").iterdir())
    assert plots == [
        f"test_dist.py__test_{n}.png"
        for n in ("crashes", "diverges", "healthy", "not_in_baseline", "regresses", "two_seeds", "unnamed")
    ]
    assert all((pytester.path / "plots" / p).stat().st_size > 10_000 for p in plots)
