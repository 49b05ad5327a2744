"""Mixed precision and XLA: the recorded numbers and the verdict do not change.

* ``mixed_float16`` trains through a ``LossScaleOptimizer``: the recorded loss
  and gradient norms are the unscaled ones, and a loss-scale overflow step is
  flagged OVERFLOW (the optimizer skipped it), never GRADS, so it is not
  reported as instability.
* ``mixed_bfloat16`` needs no loss scaling and records comparable numbers.
* ``jit_compile=True`` compiles the step with XLA and gives the same verdict.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from pytest_stability.checks import run_checks  # noqa: E402
from pytest_stability.options import resolve_config_defaults  # noqa: E402
from pytest_stability.trace import GRADS, OVERFLOW  # noqa: E402
from pytest_stability.training import engine  # noqa: E402

STEPS = 60


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    # The policy is process-global; a leak would turn every later test mixed.
    yield
    keras.config.set_dtype_policy("float32")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32")
    return x, y


def _model(
    policy: str,
    *,
    lr: float = 1e-2,
    initial_scale: float | None = None,
    jit_compile: bool | str = "auto",
    hidden: int = 2,
) -> keras.Model:
    """The model compiled as a user would (``jit_compile="auto"``: XLA under JAX, not on TensorFlow's or PyTorch's
    CPU), unless a test asks otherwise; JAX without XLA dispatches and compiles every operation one at a time.
    The ``jit_compile=True`` tests take one hidden layer: torch.compile's time grows with the graph (their three
    runs on PyTorch, 2-core CPU, empty Inductor cache: 64 s with one, 77 s with two)."""
    keras.config.set_dtype_policy(policy)
    try:
        model = keras.Sequential(
            [
                keras.Input((8,)),
                *[keras.layers.Dense(32, activation="relu") for _ in range(hidden)],
                # The output layer in float32, as the Keras mixed-precision guide advises.
                keras.layers.Dense(1, activation="sigmoid", dtype="float32"),
            ]
        )
        optimizer = keras.optimizers.Adam(lr)
        if initial_scale is not None:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)
        model.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=jit_compile)
    finally:
        keras.config.set_dtype_policy("float32")
    return model


def _train(model, validation=True, **spec_changes):
    """STEPS steps, with validation data unless ``validation=False`` (under ``torch.compile`` the validation
    step is one more function to compile, about 8 s on a 2-core CPU: the healthy jit case keeps it)."""
    x, y = _data()
    spec = resolve_config_defaults(lambda n: None, lambda n: None).replace(**spec_changes)
    engine.seed_everything(0)
    fit_kwargs = {"validation_data": (x[:64], y[:64])} if validation else {}
    result = engine.train(model, x, y, fit_kwargs=fit_kwargs, steps=STEPS, batch_size=32, seed=0, spec=spec)
    return result


@contextlib.contextmanager
def _dynamo_gave_up():
    """The warnings torch._dynamo logs when it stops compiling a frame that keeps recompiling (PyTorch only)."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
                seen.append(record.getMessage())

    handler, logger = Catch(logging.WARNING), logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def _statuses(trace) -> dict[str, str]:
    return {r.name: r.status for r in run_checks(trace)}


@pytest.fixture(scope="module")
def float32_trace():
    engine.seed_everything(0)
    return _train(_model("float32")).trace


def test_mixed_float16_records_unscaled_loss_and_grad_norms(float32_trace):
    engine.seed_everything(0)
    model = _model("mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras wraps it itself
    trace = _train(model).trace
    assert trace.info["loss_scale"] is True
    assert trace.steps == STEPS and not trace.nonfinite.any()
    # Same initial weights: step 0 must agree with float32 to float16 precision.
    # A missing unscale would be off by the loss scale (2**15).
    np.testing.assert_allclose(trace.loss[0], float32_trace.loss[0], rtol=1e-2)
    np.testing.assert_allclose(trace.grad_norm[0], float32_trace.grad_norm[0], rtol=2e-2)
    ratio = trace.grad_norm / float32_trace.grad_norm
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert abs(trace.loss[-10:].mean() - float32_trace.loss[-10:].mean()) < 0.1
    assert _statuses(trace) == _statuses(float32_trace)


def test_loss_scale_overflow_is_flagged_overflow_not_instability():
    # An absurd initial scale overflows float16 gradients: the optimizer skips
    # those updates and halves the scale until the gradients fit.
    engine.seed_everything(0)
    trace = _train(_model("mixed_float16", initial_scale=2.0**40)).trace
    overflow = (trace.nonfinite & OVERFLOW) != 0
    assert trace.steps == STEPS, "an overflow step must not stop training"
    assert overflow[0] and 5 < overflow.sum() < STEPS - 10, overflow.sum()
    assert not (trace.nonfinite & GRADS).any()
    assert trace.first_nonfinite is None
    results = {r.name: r for r in run_checks(trace)}
    assert results["nonfinite"].status == "passed"
    assert results["nonfinite"].stats["overflow_steps"] == int(overflow.sum())
    # Once the scale fits, the recorded norms are finite and unscaled (O(1) here, not O(2**25)).
    after = trace.grad_norm[~overflow]
    assert np.all(np.isfinite(after)) and after.max() < 100, after.max()


def test_mixed_bfloat16_records_comparable_numbers(float32_trace):
    engine.seed_everything(0)
    trace = _train(_model("mixed_bfloat16")).trace
    assert trace.info["loss_scale"] is False
    assert trace.steps == STEPS and not trace.nonfinite.any()
    np.testing.assert_allclose(trace.loss[0], float32_trace.loss[0], rtol=5e-2)
    np.testing.assert_allclose(trace.grad_norm[0], float32_trace.grad_norm[0], rtol=1e-1)
    assert _statuses(trace) == _statuses(float32_trace)


@pytest.mark.parametrize("lr", [1e-2, 1e3], ids=["healthy", "diverging"])
def test_jit_compile_gives_the_same_trace_and_verdict(lr):
    validation = lr < 1  # the diverging run stops within a few steps: its validation adds nothing
    engine.seed_everything(0)
    plain = _train(_model("float32", lr=lr, jit_compile=False, hidden=1), validation=validation).trace
    engine.seed_everything(0)
    model = _model("float32", lr=lr, jit_compile=True, hidden=1)
    with _dynamo_gave_up() as gave_up:
        jitted = _train(model, validation=validation).trace
    # PyTorch: torch.compile compiled the step throughout, as in plain fit (the recording once failed dynamo's
    # guards at every step, and dynamo stopped compiling the user's update after 8 recompilations)
    assert not gave_up, gave_up
    # the report says what Keras resolved (it turns XLA off where the model or settings do not support it)
    assert jitted.info["jit_compile"] is bool(model.jit_compile)
    assert jitted.steps == plain.steps
    np.testing.assert_allclose(jitted.loss[:10], plain.loss[:10], rtol=1e-3)
    assert _statuses(jitted) == _statuses(plain)


def test_jit_compile_with_mixed_float16_overflow():
    engine.seed_everything(0)
    trace = _train(_model("mixed_float16", initial_scale=2.0**40, jit_compile=True, hidden=1), validation=False).trace
    assert trace.steps == STEPS
    assert trace.nonfinite[0] & OVERFLOW and not (trace.nonfinite & GRADS).any()
    assert _statuses(trace)["nonfinite"] == "passed"
