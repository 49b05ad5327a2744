"""Each check fires on a real Keras model made unstable on purpose, through pytest.

The heavier, calibrated pathologies (Adam second-moment collapse, Dice-loss
segmentation collapse, BatchNorm pits) live in benchmarks/scenarios.py and
tests/training/test_scenarios.py; here each check gets a fast end-to-end
test of the failure message.
"""

import keras
import pytest


def run(pytester, source, *args):
    pytester.makepyfile(source)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_too_high_learning_rate_nan_is_caught_at_its_step(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=300)
def test_model(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    stability.train(model, X, Y * 100.0)
""",
    )
    result.assert_outcomes(failed=1)
    # the primary cause first (the gradient burst that the NaN follows), with its evidence and its fix, then the
    # NaN as its consequence
    result.stdout.fnmatch_lines(
        [
            "*stable_training: * of * checks failed (*nonfinite*) - seed 0, */300 steps on CPU",
            "*[[]grad_norm] step *: gradient norm *",
            "*  cause (likely): *a learning rate too high for this model from the start*",
            "*  fix to try: learning_rate=* (now 5 *",
            "*[[]nonfinite] step *: non-finite *; first variable affected: *; "
            "the input batch was finite (the NaN/Inf was produced by training)",
            "*  a consequence of [[]grad_norm] at step *",
            "*replay: pytest test_too_high_learning_rate_nan_is_caught_at_its_step.py::test_model --stability-replay=0",
        ]
    )


def test_nan_in_a_tf_data_batch_is_blamed_on_the_data(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
import tensorflow as tf

@pytest.mark.stable_training(steps=100)
def test_model(stability):
    X2 = X.copy()
    X2[70] = np.nan  # sample 70 lands in batch 2
    ds = tf.data.Dataset.from_tensor_slices((X2, Y)).batch(32)
    stability.train(build(), ds)
""",
    )
    result.assert_outcomes(failed=1)
    # the batch of the failing step is read again from the pipeline after training (no per-step cost)
    result.stdout.fnmatch_lines(["*[[]nonfinite] step 2: non-finite *the input batch itself held NaN/Inf*"])


def test_loss_spike_and_grad_norm_fire_on_exploding_momentum(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=200, checks=["loss_spike", "grad_norm"])
def test_model(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1, activation="sigmoid")])
    # a healthy learning rate, then an abrupt, far too high one at step 100
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([100], [0.05, 30.0])
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="binary_crossentropy")
    try:
        stability.train(model, X, Y, batch_size=16)
    finally:
        trace = stability.reports[-1].trace
        # PiecewiseConstantDecay switches after the boundary: step 101 is the first at 30
        assert trace.lr[100] == pytest.approx(0.05, rel=1e-6) and trace.lr[101] == pytest.approx(30.0, rel=1e-6)
""",
    )
    result.assert_outcomes(failed=1)
    spike = "*[[]loss_spike] step *: loss * is *x its trailing median * (limit 3x = *; robust z *"
    if keras.backend.backend() == "tensorflow":
        result.stdout.fnmatch_lines(
            [
                "*checks failed (loss_spike, grad_norm)*",
                spike,
                "*[[]grad_norm] step *: gradient norm * exceeds * (100x the early-training reference *",
            ]
        )
    else:  # with other numerics the same jump may kill the units first: the loss level-shifts, gradients vanish
        result.stdout.fnmatch_lines(["*checks failed (loss_spike*)*", spike])


def test_val_loss_fires_when_validation_loss_climbs(pytester):
    result = run(
        pytester,
        """
import numpy as np, keras, pytest

rng = np.random.default_rng(1)
X = rng.normal(size=(48, 20)).astype("float32")
Y = rng.integers(0, 2, size=48).astype("float32")       # random labels: pure memorisation
# the same 48 samples 8 times over: 24 steps an epoch, not 3 (fit's per-epoch validation, 17 times not 133)
X, Y = np.tile(X, (8, 1)), np.tile(Y, 8)
XV = rng.normal(size=(256, 20)).astype("float32")
YV = rng.integers(0, 2, size=256).astype("float32")

@pytest.mark.stable_training(steps=400, validate_every=20)
def test_model(stability):
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    stability.train(model, X, Y, validation_data=(XV, YV), batch_size=16)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*checks failed (val_loss)*",
            "*[[]val_loss] step *: smoothed validation loss * after * steps rose * above its best *",
        ]
    )


def test_absolute_max_grad_norm(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=40, max_grad_norm=1e-4)
def test_model(stability):
    stability.train(build(), X, Y)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*[[]grad_norm] step 0: gradient norm * exceeds 0.0001 (max_grad_norm=0.0001); largest in sequential*"]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_noisy_small_batch_training_passes(pytester, seed):
    result = run(
        pytester,
        f"""
import numpy as np, keras, pytest

rng = np.random.default_rng({seed})
X = rng.normal(size=(1024, 10)).astype("float32")
w = rng.normal(size=10)
Y = (X @ w + rng.normal(scale=1.0, size=1024) > 0).astype("float32")   # noisy labels
XV = rng.normal(size=(256, 10)).astype("float32")
YV = (XV @ w > 0).astype("float32")

@pytest.mark.stable_training(steps=400, seed={seed})
def test_model(stability):
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"])
    report = stability.train(model, X, Y, validation_data=(XV, YV), batch_size=8)
    assert report.ok and report.trace.steps == 400
    assert [r.status for r in report.results] == ["passed"] * 5
""",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*stability report: 1 test, 0 unstable*", f"PASS  *::test_model  steps=400/400 seed={seed} CPU*"]
    )


def test_check_false_returns_the_report_without_raising(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=40, max_grad_norm=1e-4)
def test_model(stability):
    report = stability.train(build(), X, Y, check=False)
    assert not report.ok and report.verdict == "unstable"
    assert report.findings[0].check == "grad_norm" and report.findings[0].step == 0
    assert report.trace.grad_norm.shape == (40,) and report.trace.var_grad_norms.shape == (40, 4)
""",
    )
    result.assert_outcomes(passed=1)


def test_gradient_accumulation_is_judged_on_the_steps_that_update_the_weights(pytester, tiny_problem):
    """Keras' ``gradient_accumulation_steps=4`` updates the weights at every 4th step only: the three steps
    between change nothing by design.  Their update ratios were zeros, and every healthy run failed ``stuck``
    with "median |dw|/|w| 0 per step"; they are NaN now ("no update at this step") and the checks judge the
    updates made.  A run whose updates are too small is still stuck, judged on those updates alone."""
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=200)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_healthy(stability, optimizer):
    opt = (keras.optimizers.Adam(1e-3, gradient_accumulation_steps=4) if optimizer == "adam"
           else keras.optimizers.SGD(0.05, gradient_accumulation_steps=4))
    report = stability.train(build(optimizer=opt), X, Y, validation_data=(XV, YV), batch_size=16)
    assert report.ok, report.findings[0].message
    trace = report.trace
    assert trace.info["gradient_accumulation_steps"] == 4
    updated = np.flatnonzero(np.isfinite(trace.update_ratio))
    assert updated.tolist() == list(range(3, 200, 4)), updated  # a fresh optimizer: its 4th, 8th, ... steps
    assert (trace.update_ratio[updated] > 1e-5).all()
    assert np.isnan(trace.var_update_ratio[np.isnan(trace.update_ratio)]).all()
    assert np.isfinite(trace.grad_norm).all() and np.isfinite(trace.loss).all()  # every step's own, as before


@pytest.mark.stable_training(steps=200)
def test_too_slow(stability):
    opt = keras.optimizers.SGD(1e-7, gradient_accumulation_steps=4)
    report = stability.train(build(optimizer=opt), X, Y, batch_size=16, check=False)
    stuck = [f for f in report.findings if f.check == "stuck"]
    assert stuck and "the updates are too small to move the weights" in stuck[0].message, report.findings
    assert stuck[0].evidence["update_ratio_tail"] > 0  # the median of the updates made, not of the zeros between
    # stuck from the start, the rate too low: the steps between updates are no evidence of faster updates before
    # (they had made the stretch start at the tail, and the diagnosis a collapse after a blow-up, a lower rate)
    assert stuck[0].step == 0, stuck[0].message
    head = report.findings[0]
    assert head.evidence["cause_key"] == "updates_too_small", head.cause
    assert head.fix.startswith("a larger learning rate"), head.fix
""",
    )
    result.assert_outcomes(passed=3)
