"""Fail fast: a NaN at step k stops training at step k, not at step N.

The compiled chunk checks every step and leaves its ``tf.while_loop`` at the
first non-finite one, so the host sees it at the end of that chunk and trains
no further.  Step k is deliberately not a chunk boundary.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from pytest_stability.checks import run_checks  # noqa: E402
from pytest_stability.options import resolve_config_defaults  # noqa: E402
from pytest_stability.trace import GRADS, INPUT, WEIGHTS  # noqa: E402
from pytest_stability.training import engine  # noqa: E402

STEPS = 1000
READBACK = 50
BAD_STEP = 123  # inside the third chunk (100..149)


class NanAtStep(keras.optimizers.schedules.LearningRateSchedule):
    """1e-3, except NaN at one step: the update there makes the weights NaN
    while the loss and gradients of that step are still finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, step):
        return keras.ops.cast(keras.ops.where(keras.ops.equal(step, self.step), np.nan, 1e-3), "float32")

    def get_config(self):
        return {"step": self.step}


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    return x, y


def _model(lr) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    return model


def _spec():
    return resolve_config_defaults(lambda n: None, lambda n: None).replace(readback_every=READBACK)


def _assert_stopped_at(trace, bit: int) -> None:
    assert trace.steps == BAD_STEP + 1, f"trained {trace.steps} steps, expected to stop after step {BAD_STEP}"
    assert trace.steps_planned == STEPS
    assert not trace.nonfinite[:BAD_STEP].any(), "a step before the injected one was flagged"
    assert trace.nonfinite[BAD_STEP] & bit
    assert trace.first_nonfinite["step"] == BAD_STEP
    (nonfinite,) = [r for r in run_checks(trace) if r.name == "nonfinite"]
    assert nonfinite.status == "failed"
    assert nonfinite.findings[0].step == BAD_STEP


def test_nan_weights_stop_training_at_the_step_they_appear():
    x, y = _problem()
    engine.seed_everything(0)
    result = engine.train(_model(NanAtStep(BAD_STEP)), x, y, steps=STEPS, batch_size=32, seed=0, spec=_spec())
    trace = result.trace
    _assert_stopped_at(trace, WEIGHTS)
    # The loss and gradients of the bad step were finite: only the weight check saw it.
    assert np.isfinite(trace.loss[BAD_STEP]) and np.isfinite(trace.grad_norm[BAD_STEP])
    assert trace.first_nonfinite["source"] == "weights"


def test_nan_input_batch_stops_training_at_that_batch():
    # A tf.data pipeline (not checked on the host, unlike arrays) whose batch
    # BAD_STEP holds a NaN.
    x, y = _problem()
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()

    def poison(i, batch):
        bx, by = batch
        bad = tf.equal(i, BAD_STEP)
        return tf.where(bad, tf.fill(tf.shape(bx), np.nan), bx), by

    ds = tf.data.Dataset.zip((tf.data.Dataset.range(STEPS + 10), batches)).map(poison)
    engine.seed_everything(0)
    result = engine.train(_model(1e-3), ds, None, steps=STEPS, seed=0, spec=_spec())
    if keras.backend.backend() == "torch":
        # the batch is checked before its step, which is not run: on a GPU, NaN probabilities make PyTorch's
        # binary cross-entropy assert on the device, which no later CUDA call survives
        _assert_stopped_at(result.trace, INPUT)
        assert not result.trace.nonfinite[BAD_STEP] & GRADS
    else:
        # the NaN reaches the gradients at that step (the clipped cross-entropy even keeps the loss itself
        # finite), and the batch itself is checked in the step, on the device
        _assert_stopped_at(result.trace, GRADS)
    assert result.trace.nonfinite[BAD_STEP] & INPUT
    assert result.trace.first_nonfinite["source"] == "input batch"
