"""--junitxml: each stability test's verdict and key metrics as <property> elements."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def _properties(path):
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = case.find("properties")
        out[case.get("name")] = {} if props is None else {p.get("name"): p.get("value") for p in props}
    return out


def test_verdict_and_metrics_are_junit_properties(pytester, scenario, gating):
    scenario("healthy", "diverges", "never_trains", "plain", module="test_junit_scenario")
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml", "--stability-report=r.json")
    result.assert_outcomes(passed=2, failed=2)
    props = _properties(pytester.path / "junit.xml")
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "r.json"))

    healthy = props["test_healthy"]
    (run,) = tests["test_junit_scenario.py::test_healthy"]["calls"][0]["runs"]
    assert set(healthy) == {
        "stability_verdict",
        "stability_seeds",
        "stability_device",
        "stability_final_loss",
        "stability_largest_spike",
        "stability_max_grad_norm",
        "stability_p99_grad_norm",
        "stability_val_trend",
        "stability_steps_run",
    }
    assert (healthy["stability_verdict"], healthy["stability_seeds"], healthy["stability_device"]) == (
        "stable",
        "0",
        "CPU",
    )
    assert healthy["stability_steps_run"] == "40"
    for key in ("final_loss", "largest_spike", "max_grad_norm", "p99_grad_norm", "val_trend"):
        assert float(healthy[f"stability_{key}"]) == run["summary"][key], key  # the same numbers as the JSON

    diverges = props["test_diverges"]
    assert diverges["stability_verdict"] == "unstable"
    first = tests["test_junit_scenario.py::test_diverges"]["findings"][0]
    assert diverges["stability_finding"] == f"{first['check']} at step {first['step']}: {first['message']}"
    assert int(diverges["stability_steps_run"]) < 40

    never = props["test_never_trains"]
    assert never == {
        "stability_verdict": "error",
        "stability_error": "the test did not complete a stability.fit() call",
    }
    assert props["test_plain"] == {}


def test_baseline_status_is_a_junit_property(pytester, scenario, recorded):
    scenario("one", module="test_junit_baseline")
    run = ("-p", "no:cacheprovider", *recorded.args("scenarios"))
    result = pytester.runpytest(*run, "--stability-save-baseline=base.json")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest(*run, "--stability-baseline=base.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    assert _properties(pytester.path / "junit.xml")["test_one"]["stability_baseline"] == "ok"
