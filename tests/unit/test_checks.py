"""Adversarial unit tests of the four numeric checks (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.checks import Thresholds, run_checks
from pytest_stability.checks.gradients import check_grad_norm
from pytest_stability.checks.nonfinite import check_nonfinite
from pytest_stability.checks.spikes import check_loss_spike
from pytest_stability.checks.validation import check_val_loss
from pytest_stability.trace import INPUT, OVERFLOW, Trace


def _noisy_decay(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(-np.linspace(0, 3, n)) * np.exp(0.2 * rng.normal(size=n))


# -- loss_spike ------------------------------------------------------------------

def test_spike_healthy_noisy_loss_passes():
    r = check_loss_spike(Trace(loss=_noisy_decay()))
    assert r.status == "passed"
    assert r.stats["max_zscore"] < Thresholds().spike_zscore


def test_spike_detected_at_its_step():
    loss = _noisy_decay()
    loss[200] = 5.0
    r = check_loss_spike(Trace(loss=loss))
    assert r.status == "failed"
    assert r.findings[0].step == 200
    assert r.findings[0].evidence["ratio"] > 3


def test_spike_on_last_step_detected():
    loss = _noisy_decay()
    loss[-1] = 5.0
    r = check_loss_spike(Trace(loss=loss))
    assert r.failed and r.findings[-1].step == loss.size - 1
    assert r.findings[-1].evidence["recovered"] is None


def test_spike_constant_loss_passes():
    r = check_loss_spike(Trace(loss=np.full(200, 0.7)))
    assert r.status == "passed"


def test_spike_tiny_absolute_jump_ignored():
    loss = np.full(200, 1e-6)
    loss[:50] = 1.0
    loss[150] = 2e-5  # 20x, but 2e-5 absolute: below spike_min_rise * L0
    assert check_loss_spike(Trace(loss=loss)).status == "passed"


def test_spike_negative_losses_use_linear_space():
    rng = np.random.default_rng(1)
    loss = -1.0 + 0.01 * rng.normal(size=200)
    loss[150] = 2.0
    r = check_loss_spike(Trace(loss=loss))
    assert r.failed and r.findings[0].step == 150
    assert r.stats["max_ratio"] is None


@pytest.mark.parametrize("loss", [np.zeros(0), np.array([1.0]), np.full(30, np.nan)])
def test_spike_too_short_or_empty_is_skipped(loss):
    assert check_loss_spike(Trace(loss=loss)).status == "skipped"


def test_spike_all_nan_long_trace_has_no_findings():
    r = check_loss_spike(Trace(loss=np.full(200, np.nan)))
    assert r.findings == ()


def test_spike_no_recovery_and_stuck():
    loss = np.concatenate([np.exp(-np.linspace(0, 3, 150)), np.full(150, 3.0)])
    r = check_loss_spike(Trace(loss=loss))
    f = r.findings[0]
    assert f.kind == "spike_no_recovery" and f.evidence["stuck"] is True


# -- nonfinite -------------------------------------------------------------------

def test_nonfinite_all_finite_passes():
    assert check_nonfinite(Trace(loss=_noisy_decay(), grad_norm=np.ones(300))).status == "passed"


def test_nonfinite_one_inf_at_its_step():
    loss = _noisy_decay()
    loss[123] = np.inf
    r = check_nonfinite(Trace(loss=loss))
    assert r.failed and r.findings[0].step == 123 and r.findings[0].kind == "training"


def test_nonfinite_all_nan_fails_at_step_zero():
    r = check_nonfinite(Trace(loss=np.full(5, np.nan)))
    assert r.failed and r.findings[0].step == 0


def test_nonfinite_empty_and_single_step():
    assert check_nonfinite(Trace(loss=np.zeros(0))).status == "passed"
    assert check_nonfinite(Trace(loss=np.array([np.nan]))).findings[0].step == 0


def test_nonfinite_grad_only():
    g = np.ones(10)
    g[4] = np.nan
    r = check_nonfinite(Trace(loss=np.ones(10), grad_norm=g))
    assert r.findings[0].step == 4 and "gradients" in r.findings[0].evidence["quantities"]


def test_nonfinite_input_batch_reported():
    flags = np.zeros(10, np.int32)
    flags[6] = INPUT
    r = check_nonfinite(Trace(loss=np.ones(10), nonfinite=flags))
    assert r.findings[0].kind == "input" and r.findings[0].evidence["input_nonfinite"] is True


def test_nonfinite_overflow_alone_is_not_a_failure():
    flags = np.zeros(10, np.int32)
    flags[3] = OVERFLOW | 2
    r = check_nonfinite(Trace(loss=np.ones(10), nonfinite=flags))
    assert r.status == "passed" and r.stats["overflow_steps"] == 1


# -- grad_norm -------------------------------------------------------------------

def test_grad_norm_steady_passes():
    rng = np.random.default_rng(0)
    g = np.exp(0.3 * rng.normal(size=300))
    assert check_grad_norm(Trace(loss=np.ones(300), grad_norm=g)).status == "passed"


def test_grad_norm_growth_on_last_step():
    g = np.ones(300)
    g[-1] = 1e3
    r = check_grad_norm(Trace(loss=np.ones(300), grad_norm=g))
    assert r.failed and r.findings[0].step == 299 and r.findings[0].evidence["p90_before"] == pytest.approx(1.0)


def test_grad_norm_absolute_limit():
    g = np.ones(20)
    g[2] = 5.0
    r = check_grad_norm(Trace(loss=np.ones(20), grad_norm=g), Thresholds(max_grad_norm=4.0))
    assert r.failed and r.findings[0].kind == "absolute" and r.findings[0].step == 2


@pytest.mark.parametrize("g", [np.zeros(0), np.array([1.0]), np.full(100, np.nan)])
def test_grad_norm_short_or_nan_skipped(g):
    assert check_grad_norm(Trace(loss=np.ones(g.size), grad_norm=g)).status == "skipped"


def test_grad_norm_missing_is_skipped():
    assert check_grad_norm(Trace(loss=np.ones(100))).status == "skipped"


def test_grad_norm_zero_reference_skipped():
    assert check_grad_norm(Trace(loss=np.ones(100), grad_norm=np.zeros(100))).status == "skipped"


# -- val_loss --------------------------------------------------------------------

def _val(v):
    v = np.asarray(v, float)
    return Trace(loss=np.ones(10), val_steps=np.arange(v.size) * 10, val_loss=v)


def test_val_falling_passes():
    assert check_val_loss(_val([1.0, 0.8, 0.6, 0.5])).status == "passed"


def test_val_rise_fails_with_best():
    r = check_val_loss(_val([1.0, 0.5, 0.5, 2.0, 2.0]))
    assert r.failed and r.findings[0].evidence["best"] == pytest.approx(0.5 * 0.6 + 0.4 * 0.5 * 0.6 + 0.4 * 0.4 * 1.0, rel=0.5)


def test_val_rise_on_last_measurement():
    r = check_val_loss(_val([1.0, 0.9, 0.8, 5.0]))
    assert r.failed and r.findings[0].step == 30


def test_val_constant_and_negative():
    assert check_val_loss(_val([0.5] * 5)).status == "passed"
    assert check_val_loss(_val([-1.0, -1.2, -1.3])).status == "passed"


@pytest.mark.parametrize("v", [[], [1.0], [np.nan, np.nan, 1.0]])
def test_val_too_few_finite_skipped(v):
    assert check_val_loss(_val(v)).status == "skipped"


def test_val_nan_reported_by_nonfinite():
    r = check_nonfinite(_val([1.0, np.nan]))
    assert r.failed and r.findings[0].kind == "validation" and r.findings[0].step == 10


def test_run_checks_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown check"):
        run_checks(Trace(loss=np.ones(5)), checks=["loss_spikes"])
