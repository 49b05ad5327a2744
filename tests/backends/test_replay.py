"""The what-if replay retraces the run it replays, bit for bit, on every backend (CI runs this directory
once per backend); a fix changes the trace only from the step it is applied at.

The model has dropout and the data are shuffled, and nothing builds the model's loss before its first
``fit`` (no validation data): that first ``fit`` then opens the data once to build the loss, drawing from
numpy's (JAX) or torch's (PyTorch) global RNG, which the replay's ``fit`` does not; the engine seeds again
when training starts so that the two see the same data order and dropout masks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

from pytest_stability.options import resolve_config_defaults
from pytest_stability.training import engine, whatif

STEPS = 40
FAILURE, WINDOW = 25, 10  # a fix goes in at the last read-back at or before step 15 (replays read back every 5)

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("float32")


def _spec():
    return resolve_config_defaults(lambda n: None, lambda n: None).replace(readback_every=10, shuffle=True)


def _fresh_run(seed):
    """A new model, built under ``seed`` (as the fixture does), trained for STEPS steps."""
    engine.seed_everything(seed)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    # the case a replay must handle: fit builds the compiled loss itself, peeking at the training data
    assert not model._compile_loss.built
    res = engine.train(model, X, Y, steps=STEPS, seed=seed, spec=_spec(), batch_size=32, keep_initial_state=True)
    assert res.trace.steps == STEPS and np.all(np.isfinite(res.trace.loss))
    return model, res


def _replay(model, res, fix):
    return whatif.replay(
        model,
        res,
        fix=fix,
        failure_step=FAILURE,
        window=WINDOW,
        x=X,
        y=Y,
        fit_kwargs={},
        batch_size=32,
        seed=0,
        spec=_spec(),
    )


SERIES = ("loss", "grad_norm", "var_grad_norms", "lr", "update_ratio", "var_update_ratio", "nonfinite")


def test_replay_without_a_fix_reproduces_the_run_bit_for_bit_and_restores_the_model():
    model, res = _fresh_run(0)
    after = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.variables]
    rep = _replay(model, res, {})
    assert (rep.start, rep.end) == (FAILURE - WINDOW, STEPS)
    for name in SERIES:
        np.testing.assert_array_equal(getattr(rep.trace, name), getattr(res.trace, name), err_msg=name)
    # the model is given back in the state the original run ended in
    for a, v in zip(after, model.variables, strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v.value))


def test_replay_with_a_lower_learning_rate_differs_only_from_the_fix_step_on():
    model, res = _fresh_run(0)
    rep = _replay(model, res, {"learning_rate_factor": 0.1})
    k = rep.start
    # a read-back ends each 5-step chunk, and each 8-step epoch where steps run in chunks (not on PyTorch)
    assert k == rep.trace.info["fix_applied_at"] and FAILURE - WINDOW - 5 < k <= FAILURE - WINDOW
    assert rep.end == STEPS
    old, new = res.trace, rep.trace
    # up to the fix, the same run; step k's loss and gradients come from the weights before its update
    for name in SERIES:
        np.testing.assert_array_equal(getattr(new, name)[:k], getattr(old, name)[:k], err_msg=name)
    np.testing.assert_array_equal(new.loss[: k + 1], old.loss[: k + 1])
    np.testing.assert_array_equal(new.grad_norm[: k + 1], old.grad_norm[: k + 1])
    # from step k on: a 10x lower rate, so a 10x smaller first Adam update (same m and v), then another run
    np.testing.assert_allclose(new.lr[k:], 0.1 * old.lr[k:], rtol=1e-6)
    assert new.update_ratio[k] == pytest.approx(0.1 * old.update_ratio[k], rel=1e-3)
    assert np.all(new.loss[k + 1 :] != old.loss[k + 1 :])


def test_two_fresh_runs_with_the_same_seed_give_the_same_trace():
    (_, a), (_, b), (_, c) = _fresh_run(3), _fresh_run(3), _fresh_run(4)
    for name in SERIES:
        np.testing.assert_array_equal(getattr(a.trace, name), getattr(b.trace, name), err_msg=name)
    assert not np.array_equal(a.trace.loss, c.trace.loss)


def test_a_fix_read_when_the_step_is_compiled_takes_effect_mid_run():
    """Adam's epsilon is a Python number the compiled step holds as a constant: the replay makes a new train
    function after applying it. Under JAX, ``jax.jit`` keeps the traces of a function it has seen, so without
    a new step function the replay silently ran the old epsilon (the trace came out identical)."""
    model, res = _fresh_run(0)
    rep = _replay(model, res, {"epsilon": 1.0})  # large enough to change every update from the fix step on
    k = rep.start
    assert 0 < k <= FAILURE - WINDOW and rep.end == STEPS
    old, new = res.trace, rep.trace
    np.testing.assert_array_equal(new.loss[: k + 1], old.loss[: k + 1])
    assert new.update_ratio[k] < 0.5 * old.update_ratio[k]  # sqrt(v) + 1 divides the step now
    assert np.all(new.loss[k + 1 :] != old.loss[k + 1 :])
    assert model.optimizer.epsilon == 1e-7  # the user's setting is put back


def test_a_gan_is_replayed_bit_for_bit_with_its_optimizers_built_inside_the_first_step():
    """The GAN of Keras' guides (example_project/gan.py) applies two optimizers of its own, which TensorFlow and
    PyTorch build inside the first step, after the state before it was taken: the replay puts their slots back at
    the values they were built with. (It once raised "the saved state has ... optimizer variables" instead.)"""
    where = Path(__file__).parents[2] / "example_project" / "gan.py"
    spec = importlib.util.spec_from_file_location("example_gan", where)
    assert spec is not None and spec.loader is not None
    gan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan)
    engine.seed_everything(0)
    model = gan.gan(d_learning_rate=1e-3)
    res = engine.train(model, gan.REAL, None, steps=STEPS, seed=0, spec=_spec(), batch_size=32, keep_initial_state=True)
    rep = whatif.replay(
        model,
        res,
        fix={},
        failure_step=FAILURE,
        window=WINDOW,
        x=gan.REAL,
        y=None,
        fit_kwargs={},
        batch_size=32,
        seed=0,
        spec=_spec(),
    )
    assert (rep.start, rep.end) == (FAILURE - WINDOW, STEPS)
    for name in SERIES:
        np.testing.assert_array_equal(getattr(rep.trace, name), getattr(res.trace, name), err_msg=name)
