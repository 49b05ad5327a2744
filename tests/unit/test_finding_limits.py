"""A finding's ``limit`` (JSON ``limit``) is the limit its message states.

Each message states the same number as the finding's ``limit``: ``loss_spike`` "limit 3x = 2.058" (the
ratio and the level it means), ``val_loss`` "over the limit 0.55 (best + 0.05)", ``grad_norm`` its norm limit.
"""

from __future__ import annotations

import numpy as np

from pytest_stability.checks import run_checks
from pytest_stability.trace import Trace


def _finding(trace: Trace, check: str):
    (result,) = [r for r in run_checks(trace, checks=[check]) if r.name == check]
    assert result.status == "failed" and result.findings, result
    return result.findings[0]


def _spike_trace() -> Trace:
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 3, 300)) * np.exp(0.05 * rng.normal(size=300))
    loss[200:215] *= 20  # a spike the model stays at (a lone one-step outlier is not a finding)
    return Trace(loss=loss)


def _val_trace() -> Trace:
    loss = np.exp(-np.linspace(0, 3, 300))
    val_steps = np.arange(0, 301, 25)
    val = np.concatenate([np.linspace(1.0, 0.5, 7), np.linspace(0.6, 1.2, 6)])
    return Trace(loss=loss, val_steps=val_steps, val_loss=val)


def test_grad_norm_message_states_its_limit():
    g = np.ones(300)
    g[200] = 1e4
    finding = _finding(Trace(loss=np.exp(-np.linspace(0, 3, 300)), grad_norm=g), "grad_norm")
    assert f"{finding.limit:.4g}" in finding.message


def test_loss_spike_message_states_its_limit():
    finding = _finding(_spike_trace(), "loss_spike")
    assert f"{finding.limit:.4g}" in finding.message


def test_val_loss_message_states_its_limit():
    finding = _finding(_val_trace(), "val_loss")
    assert f"{finding.limit:.4g}" in finding.message
