"""Learning-rate stability margin (margin=True): marginal vs fixed twin, an unstable run, min_margin, baselines.

The problem is least squares on standardised features with plain SGD: gradient descent on it diverges
once the learning rate passes 2 / (the largest curvature), so how close a learning rate sits to that
edge is known in advance.  Backend-neutral: CI runs it once per Keras backend.
"""

from __future__ import annotations

import json

import pytest


def run(pytester, problem, body, *args):
    pytester.makepyfile(test_lr_margin=problem + body)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


MARKED = """
@pytest.mark.stable_training(steps=60, margin=True, margin_steps=30)
def test_near_the_edge(stability):
    rep = stability.fit(linear(0.5), X, Y, batch_size=32)
    m = rep.trace.info["margin"]
    assert m["stable_at_1x"] and 1.0 <= m["value"] < 2.0, m["text"]
    assert m["upper"] is not None and m["value"] < m["upper"] <= 2.0
    assert m["text"].startswith("stability margin ") and " at step " in m["text"]
    bad = [p for p in m["probes"] if not p["stable"]]
    assert bad and bad[0]["check"] in ("loss_spike", "nonfinite", "grad_norm")


@pytest.mark.stable_training(steps=60, margin=True, margin_steps=30)
def test_fixed_twin(stability):
    rep = stability.fit(linear(0.01), X, Y, batch_size=32)
    m = rep.trace.info["margin"]
    assert m["value"] >= 16.0 and m["capped"], m["text"]
    assert [p["factor"] for p in m["probes"]] == [2.0, 4.0, 8.0, 16.0]


@pytest.mark.stable_training(steps=60, margin=True, margin_steps=30)
def test_already_unstable(stability):
    rep = stability.fit(linear(3.0), X, Y, batch_size=32, check=False)
    assert not rep.ok
    m = rep.trace.info["margin"]
    assert m["value"] < 1.0 and not m["stable_at_1x"] and m["probes"] == []
"""


def test_marginal_configuration_has_a_smaller_margin_than_its_fixed_twin(pytester, least_squares):
    result = run(pytester, least_squares, MARKED, "--stability-report=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_lr_margin.py::test_fixed_twin  * margin 16x",
            "PASS  test_lr_margin.py::test_near_the_edge  * margin 1.*x",
        ]
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    margins = {t["nodeid"].split("::")[1]: t["calls"][0]["runs"][0]["summary"]["lr_margin"] for t in doc["tests"]}
    assert margins["test_fixed_twin"] >= 16 > 2 > margins["test_near_the_edge"] >= 1 > margins["test_already_unstable"]


def test_min_margin_fails_a_run_that_trains_too_close_to_the_edge(pytester, least_squares):
    result = run(
        pytester,
        least_squares,
        """
@pytest.mark.stable_training(steps=60, margin=True, margin_steps=30, min_margin=4)
def test_near_the_edge(stability):
    stability.fit(linear(0.5), X, Y, batch_size=32)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*[[]margin] step 59: learning-rate stability margin 1.* is below min_margin 4x*"])


def test_baseline_fails_when_the_margin_shrinks(pytester, least_squares):
    body = """
LR = {lr}


@pytest.mark.stable_training(steps=60, margin=True, margin_steps=30)
def test_model(stability):
    stability.fit(linear(LR), X, Y, batch_size=32)
"""
    saved = run(pytester, least_squares, body.format(lr=0.01), "--stability-save-baseline=base.json")
    saved.assert_outcomes(passed=1)
    entry = json.loads((pytester.path / "base.json").read_text())
    assert "lr_margin" in json.dumps(entry)
    # the same test, now with a learning rate 50x higher: still stable, but its margin collapsed
    result = run(pytester, least_squares, body.format(lr=0.5), "--stability-baseline=base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*learning-rate stability margin: baseline 16x, now 1.*x (tolerance: /2, limit 8x)*"])


def test_bad_margin_settings_are_usage_errors(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-margin-max-factor=0.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stability-margin-max-factor*0.5*"])
