"""Replicas under a distribution strategy: each replica's own gradient norm (``grad_norm/replica_<i>`` curves)
and the drift of their weight copies, judged by ``grad_norm`` (pure: synthetic traces)."""

from __future__ import annotations

import numpy as np

from pytest_stability.checks import run_checks
from pytest_stability.checks.gradients import REPLICA_FACTOR, replica_findings
from pytest_stability.pipeline import judge
from pytest_stability.trace import Trace


def _trace(scale_replica_1: float, drift: float = 0.0, steps: int = 80) -> Trace:
    rng = np.random.default_rng(0)
    g0 = np.exp(rng.normal(0, 0.3, steps))
    g1 = np.exp(rng.normal(0, 0.3, steps)) * scale_replica_1
    loss = np.exp(-np.linspace(0, 2, steps)) + 0.01 * rng.random(steps)
    trace = Trace(loss=loss, grad_norm=g0)
    trace.curves = {"grad_norm/replica_0": g0, "grad_norm/replica_1": g1}
    trace.info["replica_weight_drift"] = {"value": drift, "variable": "dense/kernel", "replicas": 2}
    return trace


def test_replicas_that_train_alike_pass():
    assert replica_findings(_trace(1.0)) == []
    assert replica_findings(_trace(3.0)) == []  # shards differ: a few x is noise, not drift
    status = {r.name: r.status for r in run_checks(_trace(1.0))}
    assert status["grad_norm"] == "passed"


def test_a_replica_far_from_the_others_is_a_finding():
    (f,) = replica_findings(_trace(40.0))
    assert f.kind == "replica_disagree" and f.evidence["replica"] == 1 and f.step == 10  # the first after warmup
    assert f.limit == REPLICA_FACTOR and 25 < f.value < 60  # the replicas' spread, ~40x
    (f,) = replica_findings(_trace(1 / 40))  # of two replicas, the one with the larger norm is named
    assert f.evidence["replica"] == 0


def test_of_three_replicas_the_odd_one_is_named():
    trace = _trace(1.0)
    rng = np.random.default_rng(1)
    trace.curves["grad_norm/replica_2"] = np.exp(rng.normal(0, 0.3, trace.steps)) / 50
    (f,) = replica_findings(trace)
    assert f.evidence["replica"] == 2 and f.evidence["replicas"] == 3
    grad = next(r for r in run_checks(_trace(40.0)) if r.name == "grad_norm")
    assert grad.status == "failed" and [x.kind for x in grad.findings] == ["replica_disagree"]


def test_weight_copies_that_differ_are_a_finding():
    (f,) = replica_findings(_trace(1.0, drift=0.02))
    assert f.kind == "replica_drift" and f.value == 0.02 and f.step == 79 and "dense/kernel" in f.message
    assert replica_findings(_trace(1.0, drift=1e-7)) == []  # rounding


def test_the_diagnosis_keeps_the_replica_cause():
    results = judge(_trace(40.0, drift=0.02), None)
    grad = next(r for r in results if r.name == "grad_norm")
    kinds = {f.kind: f for f in grad.findings}
    assert "shard" in kinds["replica_disagree"].cause and "strategy.scope()" in kinds["replica_drift"].fix
