"""The curvature (curvature=True) on whichever backend Keras runs: its Hessian-vector products against a
Hessian known in closed form, and the measurement inside a real stability test.

A Dense layer without bias under MSE is linear least squares: with n samples and k outputs the loss is
``sum((X W - Y)^2) / (n k)``, so the Hessian is ``2/(n k) X^T X`` for each output (``kron(., I_k)`` in
Keras' row-major kernel order) whatever the weights, and numpy's ``eigvalsh`` gives its top eigenvalue.
"""

from __future__ import annotations

import json

#: Runs inside pytester like every test here: importing pytest_stability.training in this (outer) process
#: would keep the package across pytester's sys.modules restores, and with it a stale ``engine`` attribute
#: whose Trace is not the next run's Trace.
CLOSED_FORM = """
import keras
import numpy as np
import pytest

from pytest_stability.training import curvature

BACKEND = keras.backend.backend()


def _least_squares(seed: int = 0, n: int = 64, d: int = 12, k: int = 3):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)).astype("float32")
    y = rng.normal(size=(n, k)).astype("float32")
    xd = x.astype(np.float64)
    return x, y, np.kron(2.0 / (n * k) * xd.T @ xd, np.eye(k))


def test_sharpness_matches_the_closed_form_hessian():
    x, y, hessian = _least_squares()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # away from the initial weights (irrelevant here)
    rule = curvature.optimizer_rule(keras, model)
    assert rule.kind == "gd" and not rule.preconditioned
    out = curvature.sharpness(keras, model, (x, y, None), rule=rule)
    exact = np.linalg.eigvalsh(hessian)[-1]
    assert out["sharpness"] == pytest.approx(exact, rel=1e-3), (BACKEND, out)
    assert out["converged"] and out["iterations"] <= 20
    # the batch sharpness is the Rayleigh quotient at the gradient: recompute it from the closed form
    w = keras.ops.convert_to_numpy(model.trainable_variables[0].value).astype(np.float64)
    g = (2.0 / y.size * x.astype(np.float64).T @ (x @ w - y)).reshape(-1)
    assert out["batch_sharpness"] == pytest.approx(g @ hessian @ g / (g @ g), rel=1e-4)


def test_preconditioned_sharpness_matches_the_closed_form_with_adams_own_second_moment():
    x, y, hessian = _least_squares(seed=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, use_bias=False)])
    opt = keras.optimizers.Adam(0.01, epsilon=1e-3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 8 steps: bias corrections still matter
    rule = curvature.optimizer_rule(keras, model)
    assert rule.kind == "adam" and rule.limit(0.01) == pytest.approx(3800.0)
    out = curvature.sharpness(keras, model, (x, y, None), rule=rule)
    # P as Keras' Adam divides by after t steps: (1 - b1^t) / sqrt(1 - b2^t) * (sqrt(v) + eps)
    v = keras.ops.convert_to_numpy(opt._velocities[0].value).astype(np.float64).reshape(-1)
    t = 8
    p = (1 - 0.9 ** t) / np.sqrt(1 - 0.999 ** t) * (np.sqrt(v) + 1e-3)
    d = 1 / np.sqrt(p)
    exact = np.linalg.eigvalsh(d[:, None] * hessian * d[None, :])[-1]
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == t
    assert out["sharpness"] == pytest.approx(exact, rel=1e-3), (BACKEND, out)
    assert out["sharpness"] > 2 * np.linalg.eigvalsh(hessian)[-1]  # the preconditioner matters here
"""


def test_sharpness_and_preconditioned_sharpness_match_the_closed_form_hessian(pytester):
    pytester.makepyfile(CLOSED_FORM)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


PROBLEM = """
import json
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(128, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1))).astype("float32")
A = np.concatenate([X, np.ones((128, 1), "float32")], 1).astype(np.float64)
LAMBDA = float(np.linalg.eigvalsh(2 / 128 * A.T @ A)[-1])   # Dense(1) with bias under MSE: constant Hessian


def mlp(dropout):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dropout(dropout), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model
"""


def test_measured_inside_fit_at_read_backs_without_changing_the_run(pytester):
    """Under JAX fit holds the state, so the measurement goes through _sync; a dropout MLP trained by Adam on
    shuffled minibatches gives the same trace with and without it (no variable, no random state touched)."""
    pytester.makepyfile(
        PROBLEM
        + """
@pytest.mark.stable_training(steps=40, readback_every=10, curvature=True, curvature_points=4)
def test_least_squares(stability):
    lr = 1.5 / LAMBDA
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    rep = stability.fit(model, X, Y, batch_size=128)
    c = rep.trace.info["curvature"]
    assert c["steps"] == [10, 20, 30, 40] and c["kind"] == "hessian" and c["batch_size"] == 128
    assert np.allclose(c["sharpness"], LAMBDA, rtol=1e-3), (c["sharpness"], LAMBDA)
    assert np.allclose(c["ratio"], 0.75, rtol=1e-3) and c["margin"] == pytest.approx(1 / 0.75, rel=1e-3)
    assert c["seconds_total"] > 0 and rep.summary()["eos_ratio"] == pytest.approx(0.75, rel=1e-3)


@pytest.mark.stable_training(steps=30, readback_every=10)
def test_mlp_plain(stability):
    stability.fit(lambda: mlp(0.3), X, Y, batch_size=16)


@pytest.mark.stable_training(steps=30, readback_every=10, curvature=True, curvature_points=3)
def test_mlp_measured(stability):
    rep = stability.fit(lambda: mlp(0.3), X, Y, batch_size=16)
    c = rep.trace.info["curvature"]
    # at the first read-back at or after 10, 20, 30 (read-backs fall on 8-step epochs on TensorFlow and JAX)
    assert len(c["steps"]) == 3 and c["steps"][-1] == 30 and all(s >= t for s, t in zip(c["steps"], (10, 20, 30)))
    assert c["kind"] == "preconditioned" and c["optimizer"] == "Adam"
    assert all(r is not None and r > 0 for r in c["ratio"]), c
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-report=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_measured_inside_fit_at_read_backs_without_changing_the_run.py::"
            "test_least_squares  * eos ratio 0.75"
        ]
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    runs = {t["nodeid"].split("::")[1]: t["calls"][0]["runs"][0] for t in doc["tests"]}
    plain, measured = runs["test_mlp_plain"], runs["test_mlp_measured"]
    assert "eos_ratio" not in plain["summary"] and "curvature" not in plain["model"]
    assert measured["curves"]["loss"] == plain["curves"]["loss"]
    assert measured["curves"]["grad_norm"] == plain["curves"]["grad_norm"]
    assert measured["summary"]["eos_ratio"] == max(measured["model"]["curvature"]["ratio"])
    assert [len(measured["curves"]["eos_ratio"][k]) for k in ("step", "value")] == [3, 3]
