"""A finding's ``limit`` (JSON ``limit``) is the limit its message states.

Known bug, owned by the checks (pytest_stability/checks/*, not changed here): for ``loss_spike`` the
message gives the ratio limit ("limit 3x") while ``limit`` is the absolute loss level
(trailing median x spike_ratio); for ``val_loss`` the message gives the allowed rise ("limit 0.05")
while ``limit`` is best + allowed rise.  ``grad_norm`` agrees.  Strict xfail: fixing the checks makes
these XPASS, which fails the run until the marker is removed.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.checks import run_checks
from pytest_stability.trace import Trace


def _finding(trace: Trace, check: str):
    (result,) = [r for r in run_checks(trace, checks=[check]) if r.name == check]
    assert result.status == "failed" and result.findings, result
    return result.findings[0]


def _spike_trace() -> Trace:
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 3, 300)) * np.exp(0.05 * rng.normal(size=300))
    loss[200] *= 20
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


@pytest.mark.xfail(strict=True, reason="checks: message states the ratio limit, JSON limit is the absolute level")
def test_loss_spike_message_states_its_limit():
    finding = _finding(_spike_trace(), "loss_spike")
    assert f"{finding.limit:.4g}" in finding.message


@pytest.mark.xfail(strict=True, reason="checks: message states the allowed rise, JSON limit is best + rise")
def test_val_loss_message_states_its_limit():
    finding = _finding(_val_trace(), "val_loss")
    assert f"{finding.limit:.4g}" in finding.message
