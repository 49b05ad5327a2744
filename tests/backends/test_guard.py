"""The skip-step guard: a Keras optimizer wrapper that skips an update whose gradient norm is an outlier of the
latest ones (6 standard deviations over 128 updates, as large-model trainers do), on every backend; and the
what-if replay that says whether the guard would have saved a failing run."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pytest_stability import SkipStepGuard


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [1.5]], "float32")).astype("float32")
    y[200:208] *= 1000.0  # one wild batch: the 26th of 64 at batch size 8, in order
    return x, y


def _model(guard: bool):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD(1e-2)
    model.compile(optimizer=SkipStepGuard(optimizer, window=16, sigmas=6.0) if guard else optimizer, loss="mse")
    return model


def test_the_guard_skips_the_outlier_step_and_only_it():
    x, y = _problem()
    guarded = _model(True)
    guarded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert float(keras.ops.convert_to_numpy(guarded.optimizer.skipped)) == 1.0
    assert int(keras.ops.convert_to_numpy(guarded.optimizer.iterations)) == 63  # the inner optimizer's
    # the same as training without the wild batch
    clean = _model(False)
    keep = np.ones(512, bool)
    keep[200:208] = False
    clean.fit(x[keep], y[keep], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(guarded.get_weights(), clean.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_lasting_change_of_scale_is_skipped_once_not_for_the_rest_of_the_run():
    # every step's norm enters the window, skipped or not (as Levanter and OLMo-core keep them)
    x, y = _problem()
    y = y.copy()
    y[:200] /= 1000.0  # the first 25 batches small, the rest at full scale: the norm jumps at batch 25 for good
    y[200:208] /= 1000.0
    guarded = _model(True)
    guarded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert float(keras.ops.convert_to_numpy(guarded.optimizer.skipped)) in (1.0, 2.0)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="wraps a keras.optimizers.Optimizer; received str"):
        SkipStepGuard("adam")
    with pytest.raises(ValueError, match="window >= 2 and sigmas > 0; received window=1"):
        SkipStepGuard(keras.optimizers.Adam(), window=1)


def test_the_whatif_replay_says_whether_the_guard_saves_the_run(pytester):
    pytester.makepyfile("""
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 4)).astype("float32")
Y = (X @ np.array([[1.0], [-2.0], [0.5], [1.5]], "float32")).astype("float32")
Y[400:408] *= 1000.0  # one wild batch late in the run


@pytest.mark.stable_training(steps=60, whatif=True, skip_step_window=32, shuffle=False)
def test_model(stability):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    report = stability.fit(model, X, Y, batch_size=8, check=False)
    first = report.findings[0]
    guard = first.evidence["whatif"]["guard"]
    assert guard["resolved"] is True and guard["skipped"] == [50], guard
    assert "the run passes" in guard["text"] and "SkipStepGuard(SGD(...), window=32, sigmas=6)" in first.fix
    # offered after the run's own fixes, as the terminal report lists them
    assert first.evidence["fixes"][-1]["text"].startswith("guard the optimizer: SkipStepGuard(SGD(...)")
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=1)
