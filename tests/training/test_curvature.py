"""Curvature margin (curvature=True): a marginal configuration against its fixed twin, max_eos_ratio, baselines,
and data it cannot take a fixed batch from.

The problem is the least squares of test_margin.py, trained with SGD on minibatches of 32: its Hessian is
``2/32 [X_B 1]^T [X_B 1]`` on the fixed batch whatever the weights, so the sharpness is the same at every
measurement and the edge-of-stability ratio is ``lr * sharpness / 2``, exactly proportional to the learning
rate.  At lr 0.5 the run trains close to the edge (its learning-rate margin is 1.41x, test_margin.py).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

#: the sharpness of the fixed batch (the first 32 samples), appended to tests/conftest.py's least squares
FIXED_BATCH = """
A = np.concatenate([X[:32], np.ones((32, 1), "float32")], 1).astype(np.float64)
SHARPNESS = float(np.linalg.eigvalsh(2 / 32 * A.T @ A)[-1])  # the first batch of 32: the fixed batch
"""


def run(pytester, problem, body, *args):
    pytester.makepyfile(test_curv=problem + body)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_a_marginal_configuration_sits_near_the_edge_and_its_fixed_twin_far_below(pytester, least_squares):
    result = run(
        pytester,
        least_squares + FIXED_BATCH,
        """
@pytest.mark.stable_training(steps=100, curvature=True)
def test_near_the_edge(stability):
    rep = stability.fit(linear(0.5), X, Y, batch_size=32)
    c = rep.trace.info["curvature"]
    assert np.allclose(c["sharpness"], SHARPNESS, rtol=1e-3)
    assert c["limit"] == [4.0] * len(c["steps"])  # 2 / lr
    assert rep.result("curvature").status == "skipped"  # reported, not gated without max_eos_ratio


@pytest.mark.stable_training(steps=100, curvature=True)
def test_fixed_twin(stability):
    stability.fit(linear(0.05), X, Y, batch_size=32)
""",
        "--stability-report=report.json",
        "--junitxml=junit.xml",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_curv.py::test_fixed_twin  * eos ratio 0.105",
            "PASS  test_curv.py::test_near_the_edge  * eos ratio 1.05",
        ]
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    runs = {t["nodeid"].split("::")[1]: t["calls"][0]["runs"][0] for t in doc["tests"]}
    edge, twin = runs["test_near_the_edge"], runs["test_fixed_twin"]
    info = edge["model"]["curvature"]
    # read-backs every 6 epochs of 8 steps (a chunk of 50 steps never crosses more than one buffer), and at the end
    assert info["steps"] == [48, 96, 100] and info["kind"] == "hessian" and info["rule"] == "gd"
    # above 1 while the run is stable (its learning-rate margin is 1.41x): one minibatch's Hessian is sharper
    # than the full batch's (docs/whatif-and-margins.md: the caveat on the minibatch Hessian)
    assert 1.0 < edge["summary"]["eos_ratio"] < 1.1
    # the same Hessian, a tenth of the learning rate: a tenth of the ratio, ten times the margin
    assert twin["summary"]["eos_ratio"] == pytest.approx(edge["summary"]["eos_ratio"] / 10, rel=1e-3)
    assert twin["summary"]["curvature_margin"] == pytest.approx(10 * edge["summary"]["curvature_margin"], rel=1e-3)
    assert info["text"].startswith("edge-of-stability ratio 1.05 at step 48 (sharpness 4.18")
    assert "curvature margin 0.956x" in info["text"]
    assert info["seconds_total"] > 0 and all(info["converged"])
    assert edge["curves"]["eos_ratio"]["step"] == [48, 96, 100]
    case = next(
        c for c in ET.parse(pytester.path / "junit.xml").iter("testcase") if c.get("name") == "test_near_the_edge"
    )
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert 1.0 < float(props["stability_eos_ratio"]) < 1.1 and "stability_curvature_margin" in props


def test_max_eos_ratio_fails_a_run_at_the_edge_and_passes_its_twin(pytester, least_squares):
    result = run(
        pytester,
        least_squares + FIXED_BATCH,
        """
@pytest.mark.stable_training(steps=100, curvature=True, max_eos_ratio=0.5)
def test_near_the_edge(stability):
    stability.fit(linear(0.5), X, Y, batch_size=32)


@pytest.mark.stable_training(steps=100, curvature=True, max_eos_ratio=0.5)
def test_fixed_twin(stability):
    stability.fit(linear(0.05), X, Y, batch_size=32)
""",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]curvature] step 47: edge-of-stability ratio 1.05 after 48 steps is above max_eos_ratio 0.5: "
            "edge-of-stability ratio 1.05 at step 48 (sharpness 4.18* vs limit 4 = 2/η at lr 0.5)*",
            "*fix to try: lower the learning rate*",
        ]
    )


def test_baseline_fails_when_the_curvature_margin_shrinks(pytester, least_squares):
    body = """
@pytest.mark.stable_training(steps=100, curvature=True)
def test_model(stability):
    stability.fit(linear({lr}), X, Y, batch_size=32)
"""
    saved = run(pytester, least_squares + FIXED_BATCH, body.format(lr=0.05), "--stability-save-baseline=base.json")
    saved.assert_outcomes(passed=1)
    base = json.loads((pytester.path / "base.json").read_text())
    (section,) = base["backends"].values()  # the baseline's one section: the backend this run trained on
    summary = section["tests"]["test_curv.py::test_model"]["calls"][0]["runs"]["0"]["summary"]
    assert summary["curvature_margin"] == pytest.approx(9.56, rel=1e-3) and summary["eos_ratio"] < 0.11
    # 4x the learning rate: still stable, ratio still < 1, but the curvature margin shrank 4x (> the factor 2)
    result = run(pytester, least_squares + FIXED_BATCH, body.format(lr=0.2), "--stability-baseline=base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*curvature margin (1 / edge-of-stability ratio): baseline 9.56x, now 2.39x (tolerance: /2, limit 4.78x)*"]
    )
    # within the factor: 1.5x the learning rate passes
    again = run(pytester, least_squares + FIXED_BATCH, body.format(lr=0.075), "--stability-baseline=base.json")
    again.assert_outcomes(passed=1)


def test_fixed_batch_from_a_dataset_and_none_from_a_generator(pytester, least_squares):
    result = run(
        pytester,
        least_squares + FIXED_BATCH,
        """
import tensorflow as tf


@pytest.mark.stable_training(steps=40, readback_every=20, curvature=True, max_eos_ratio=0.5)
def test_dataset(stability):
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(32)
    rep = stability.fit(linear(0.05), data)
    c = rep.trace.info["curvature"]
    assert c["batch_size"] == 32 and np.allclose(c["sharpness"], SHARPNESS, rtol=1e-3)
    assert rep.result("curvature").status == "passed"


@pytest.mark.stable_training(steps=40, readback_every=20, curvature=True, max_eos_ratio=0.5)
def test_generator(stability):
    def batches():
        while True:
            for i in range(0, 256, 32):
                yield X[i:i + 32], Y[i:i + 32]
    rep = stability.fit(linear(0.05), batches())
    c = rep.trace.info["curvature"]
    assert c["steps"] == [] and "cannot be read again" in c["text"]
    assert rep.result("curvature").status == "skipped"  # said in the report, never a silent pass
""",
    )
    result.assert_outcomes(passed=2)


def test_bad_curvature_settings_are_usage_errors(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--stability-curvature-points=0", "--stability-max-eos-ratio=-1"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stability-curvature-points*0*", "*--stability-max-eos-ratio*-1*"])
