"""The pure parts of the curvature margin (no framework): Lanczos on numpy matrices, the optimizers' limits
against a simulation of Keras' own update rules, the measurement schedule, the summary and the check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_stability.pipeline import curvature_result
from pytest_stability.report import baseline as baseline_mod
from pytest_stability.training.curvature import lanczos_top, measurement_steps, rule_for, summarize


def _hessian_like(n: int, seed: int, top: float = 50.0) -> np.ndarray:
    """A symmetric matrix with a few outliers over a bulk, like a network's Hessian, and negative eigenvalues."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    spectrum = np.concatenate([[top, 0.6 * top, 0.3 * top], rng.uniform(-2.0, 2.0, n - 3)])
    return (q * spectrum) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_finds_the_top_eigenvalue_of_a_hessian_like_matrix_within_its_budget(seed):
    a = _hessian_like(300, seed)
    top = lanczos_top(lambda v: a @ v, 300, iterations=20, seed=seed)
    exact = np.linalg.eigvalsh(a)[-1]
    assert top.converged and top.products <= 20
    assert top.value == pytest.approx(exact, rel=1e-3)
    assert top.residual < 1e-2  # some eigenvalue within residual * |value|


def test_lanczos_gives_the_largest_algebraic_eigenvalue_not_the_largest_in_magnitude():
    # power iteration would find -100 here; the edge of stability is about the largest positive curvature
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    a = (q * np.concatenate([[-100.0, 7.0], rng.uniform(-1, 1, 38)])) @ q.T
    assert lanczos_top(lambda v: a @ v, 40, iterations=40, tol=1e-9).value == pytest.approx(7.0, rel=1e-6)


def test_lanczos_is_exact_once_the_krylov_space_is_invariant_and_deterministic_for_a_seed():
    a = np.diag([3.0, 1.0, -2.0, 0.5])
    top = lanczos_top(lambda v: a @ v, 4, iterations=20, tol=0.0)
    assert top.value == pytest.approx(3.0, rel=1e-12) and top.converged and top.products <= 4
    b = _hessian_like(80, 5)
    first = lanczos_top(lambda v: b @ v, 80, iterations=6, tol=0.0, seed=7)
    again = lanczos_top(lambda v: b @ v, 80, iterations=6, tol=0.0, seed=7)
    assert first[:4] == again[:4] and np.array_equal(first.vector, again.vector)
    assert first.products == 6 and not first.converged


def test_a_warm_start_from_the_previous_ritz_vector_needs_fewer_products_for_the_same_answer():
    a = _hessian_like(300, 4)
    cold = lanczos_top(lambda v: a @ v, 300, iterations=20, seed=0)
    assert np.linalg.norm(a @ cold.vector - cold.value * cold.vector) <= 1e-3 * cold.value  # it is the Ritz pair
    # the next read-back: the matrix moved a little
    nudge = _hessian_like(300, 5, top=1.0)
    b = a + 0.02 * nudge
    warm = lanczos_top(lambda v: b @ v, 300, iterations=20, seed=0, start=cold.vector)
    again = lanczos_top(lambda v: b @ v, 300, iterations=20, seed=0)
    assert warm.value == pytest.approx(np.linalg.eigvalsh(b)[-1], rel=1e-3) and warm.converged
    assert warm.products < again.products
    with pytest.raises(ValueError, match="start has 3 entries"):
        lanczos_top(lambda v: b @ v, 300, start=np.ones(3))


def test_lanczos_stops_on_a_non_finite_product_and_rejects_an_empty_operator():
    top = lanczos_top(lambda v: np.full_like(v, np.nan), 10)
    assert math.isnan(top.value) and top.products == 1 and not top.converged
    with pytest.raises(ValueError, match="n >= 1"):
        lanczos_top(lambda v: v, 0)


# -- the limits: each is where Keras' update rule on f(w) = h w^2 / 2 stops contracting -------------------


def _sgd(h, lr, momentum=0.0, nesterov=False, steps=400):
    w, m = 1.0, 0.0
    for _ in range(steps):  # keras/src/optimizers/sgd.py update_step
        g = h * w
        if momentum:
            m = momentum * m - lr * g
            w = w + (momentum * m - lr * g if nesterov else m)
        else:
            w = w - lr * g
    return abs(w)


def _adam(h, lr, beta_1, p, steps=400):
    # Adam with its preconditioner frozen at p (Cohen et al. 2022's analysis): EMA momentum on g / p
    w, m = 1.0, 0.0
    for _ in range(steps):
        m = m + (h * w - m) * (1 - beta_1)
        w = w - lr * m / p
    return abs(w)


def _rmsprop(h, lr, momentum, p, steps=400):
    w, m = 1.0, 0.0
    for _ in range(steps):  # keras/src/optimizers/rmsprop.py: increment = lr * g / sqrt(v + eps)
        inc = lr * h * w / p
        if momentum:
            m = momentum * m + inc
            w = w - m
        else:
            w = w - inc
    return abs(w)


@pytest.mark.parametrize(
    "name, config, run",
    [
        ("SGD", {}, lambda h, lr: _sgd(h, lr)),
        ("SGD", {"momentum": 0.9}, lambda h, lr: _sgd(h, lr, 0.9)),
        ("SGD", {"momentum": 0.5, "nesterov": True}, lambda h, lr: _sgd(h, lr, 0.5, nesterov=True)),
        ("Adam", {"beta_1": 0.9}, lambda h, lr: _adam(h, lr, 0.9, p=4.0)),
        ("AdamW", {"beta_1": 0.8}, lambda h, lr: _adam(h, lr, 0.8, p=0.5)),
        ("RMSprop", {"momentum": 0.0}, lambda h, lr: _rmsprop(h, lr, 0.0, p=2.0)),
        ("RMSprop", {"momentum": 0.7}, lambda h, lr: _rmsprop(h, lr, 0.7, p=2.0)),
    ],
)
def test_each_limit_is_where_the_optimizers_own_update_stops_converging_on_a_quadratic(name, config, run):
    rule = rule_for(name, config)
    lr = 0.05
    limit = rule.limit(lr)
    # the preconditioned rules bound h / p (the sharpness of P^-1 H); the simulations take the raw h
    p = {"Adam": 4.0, "AdamW": 0.5, "RMSprop": 2.0}.get(name, 1.0)
    assert rule.preconditioned == (p != 1.0 or name == "RMSprop")
    assert run(0.97 * limit * p, lr) < 1e-2
    assert run(1.03 * limit * p, lr) > 1e2


def test_limits_in_numbers_and_optimizers_without_one():
    assert rule_for("SGD", {}).limit(0.1) == pytest.approx(20.0)
    assert rule_for("SGD", {"momentum": 0.9}).limit(0.1) == pytest.approx(38.0)
    assert rule_for("Adam", {"beta_1": 0.9}).limit(1.0) == pytest.approx(38.0)  # 38/η at β₁ = 0.9
    assert rule_for("SGD", {"momentum": 0.9, "nesterov": True}).text.endswith("(Nesterov momentum)")
    lion = rule_for("Lion", {"beta_1": 0.9})
    assert lion.kind == "unknown" and lion.limit(0.1) is None and "no edge-of-stability limit" in lion.text
    assert rule_for("SGD", {}).limit(0.0) is None and rule_for("SGD", {}).limit(float("nan")) is None


def test_measurement_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert measurement_steps(200, 4) == [50, 100, 150, 200]
    assert measurement_steps(10, 3) == [4, 7, 10]
    assert measurement_steps(3, 4) == [1, 2, 3]
    assert measurement_steps(7, 1) == [7]


# -- the summary, the check and the baseline -----------------------------------------------------------


def _points(*sharp):
    return [
        {
            "step": 50 * (i + 1),
            "sharpness": s,
            "batch_sharpness": s / 2,
            "iterations": 9,
            "converged": True,
            "residual": 1e-4,
            "seconds": 0.25,
        }
        for i, s in enumerate(sharp)
    ]


def test_summary_uses_the_learning_rate_of_the_step_just_taken():
    lr = np.full(200, 0.1)
    lr[100:] = 0.05  # a schedule: the limit doubles from step 100 on
    info = summarize(_points(10.0, 12.0, 16.0, float("nan")), lr, rule_for("SGD", {}), batch_size=32)
    assert info["limit"] == [20.0, 20.0, 40.0, 40.0]
    assert info["ratio"] == [0.5, 0.6, 0.4, None]  # a non-finite sharpness has no ratio (and is not NaN in JSON)
    assert info["max_ratio"] == 0.6 and info["max_ratio_step"] == 100 and info["margin"] == pytest.approx(1 / 0.6)
    # equal ratios: the earliest step is named
    flat = summarize(_points(10.0, 10.0, 10.0), np.full(150, 0.1), rule_for("SGD", {}), batch_size=32)
    assert flat["max_ratio_step"] == 50
    assert info["seconds_total"] == 1.0 and info["kind"] == "hessian" and info["batch_size"] == 32
    assert info["text"].startswith(
        "edge-of-stability ratio 0.6 at step 100 (sharpness 12 vs limit 20 = 2/η at "
        "lr 0.1); curvature margin 1.67x; 4 points in 1.0 s"
    )
    json.dumps(info, allow_nan=False)


def test_summary_without_a_known_limit_reports_the_sharpness_only():
    info = summarize(_points(10.0, 12.0), np.full(100, 0.1), rule_for("Lion", {}), batch_size=8)
    assert info["ratio"] == [None, None] and info["max_ratio"] is None and info["margin"] is None
    assert info["text"].startswith("sharpness 12 at step 100; no edge-of-stability limit is known for Lion")
    empty = summarize([], None, rule_for("SGD", {}), batch_size=None, notes=["the data is a generator"])
    assert empty["text"] == "curvature not measured: the data is a generator" and empty["steps"] == []


def test_the_check_is_skipped_without_max_eos_ratio_and_fails_above_it():
    info = summarize(_points(10.0, 19.0), np.full(100, 0.1), rule_for("SGD", {}), batch_size=32)
    skipped = curvature_result(info, None)
    assert skipped.status == "skipped" and skipped.detail.endswith("(no max_eos_ratio set)")
    assert skipped.stats == {"eos_ratio": 0.95, "curvature_margin": pytest.approx(1 / 0.95)}
    assert curvature_result(info, 0.95).status == "passed"
    failed = curvature_result(info, 0.5)
    assert failed.status == "failed"
    (f,) = failed.findings  # at the first measurement above the limit; the text names the largest
    assert (f.check, f.kind, f.step, f.value, f.limit) == ("curvature", "above_max", 99, 0.95, 0.5)
    assert f.message.startswith("edge-of-stability ratio 0.95 after 100 steps is above max_eos_ratio 0.5: ")
    (early,) = curvature_result(info, 0.4).findings
    assert (early.step, early.value) == (49, 0.5) and "ratio 0.95 at step 100" in early.message
    assert "lower the learning rate" in f.fix
    json.dumps(f.to_dict(), allow_nan=False)
    unknown = summarize(_points(10.0), np.full(50, 0.1), rule_for("Lion", {}), batch_size=32)
    assert curvature_result(unknown, 0.5).status == "skipped"  # nothing to gate on: said, not failed


def test_baseline_fails_a_curvature_margin_that_shrank_by_more_than_the_factor():
    tol = {
        "baseline_grad_factor": 2.0,
        "baseline_val_tolerance": 0.1,
        "baseline_extra_spikes": 0,
        "baseline_margin_factor": 2.0,
    }
    base = {"summary": {"spikes": 0, "curvature_margin": 10.0}, "findings": []}
    assert baseline_mod.compare_run(base, {"spikes": 0, "curvature_margin": 5.0}, [], tol)["regressions"] == []
    result = baseline_mod.compare_run(base, {"spikes": 0, "curvature_margin": 1.2}, [], tol)
    assert result["regressions"] == [
        "curvature margin (1 / edge-of-stability ratio): baseline 10x, now 1.2x (tolerance: /2, limit 5x)"
    ]
    assert result["metrics"]["curvature_margin"]["regressed"]
    # not measured in one of the two runs: nothing to compare
    assert baseline_mod.compare_run(base, {"spikes": 0}, [], tol)["regressions"] == []
