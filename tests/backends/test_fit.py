"""stability.fit() trains with Keras' own fit on whichever backend Keras runs (KERAS_BACKEND).

Backend-neutral on purpose: CI runs this directory once per backend
(TensorFlow, JAX, PyTorch); each test file below is one pytester run of a real
stability test, trained for real.
"""

from __future__ import annotations

import keras
import pytest

BACKEND = keras.backend.backend()


def run(pytester, problem: str, body: str, *args: str):
    """``problem``: tests/conftest.py's tiny, backend-neutral problem (X, Y, XV, YV, build())."""
    pytester.makepyfile(problem + body)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_list_inputs_and_outputs_with_per_output_losses_and_sample_weight(pytester, tiny_problem):
    """The setup of a real report: two outputs, loss=[custom] * 2, sample_weight, Adam."""
    result = run(
        pytester,
        tiny_problem,
        """
def custom_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


@pytest.mark.stable_training(steps=30, validate_every=10)
def test_model(stability):
    a = keras.Input((8,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(1, name="o1")(h), keras.layers.Dense(2, name="o2")(h)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=[custom_loss] * 2)
    xb = rng.normal(size=(256, 3)).astype("float32")
    y2 = np.stack([Y, 1 - Y], axis=1)
    rep = stability.fit(model, [X, xb], [Y[:, None], y2], sample_weight=np.linspace(0.5, 1.5, 256).astype("float32"),
                        validation_data=([XV, xb[:64]], [YV[:, None], np.stack([YV, 1 - YV], 1)]), batch_size=32)
    assert rep.trace.steps == 30
    assert np.all(np.isfinite(rep.trace.loss)) and rep.trace.loss[-1] < rep.trace.loss[0]
    assert rep.trace.var_grad_norms.shape == (30, len(model.trainable_variables))
    assert rep.trace.val_steps[0] == 0 and rep.trace.val_steps[-1] == 30


@pytest.mark.stable_training(steps=8)
def test_what_compile_set_up_is_no_curve_whether_fit_built_it_yet_or_not(stability):
    # fit builds the per-output loss trackers and the compiled metrics when it starts: a model fit before (as the
    # what-if replay's) would otherwise record, and judge, curves that a fresh one does not
    a = keras.Input((8,), name="a")
    model = keras.Model(a, [keras.layers.Dense(1, name="o1")(a), keras.layers.Dense(1, name="o2")(a)])
    model.compile(optimizer="sgd", loss=["mse", "mse"], metrics=[["mae"], ["mae"]])
    first = stability.fit(model, X, [Y[:, None], Y[:, None]], batch_size=32).trace
    assert model._compile_loss.metrics and model._compile_metrics.built  # built by now
    again = stability.fit(model, X, [Y[:, None], Y[:, None]], batch_size=32).trace
    assert first.curves == again.curves == {} and np.all(np.isfinite(again.loss))
""",
    )
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    "data",
    [
        "X, Y, batch_size=32",
        "X, Y, batch_size=32, validation_data=(XV, YV), shuffle=False",
        "Seq()",
    ],
    ids=["arrays", "validation", "pydataset"],
)
def test_fits_epoch_iterator_stopped_at_the_planned_step_is_freed_when_fit_returns(pytester, tiny_problem, data):
    """Stopped at the planned step in the middle of an epoch, Keras' epoch iterator sits in a reference cycle (its
    suspended generator holds it): left to a later garbage collection, TensorFlow's destructor of its tf.data
    iterator can wait up to a minute there.  The plugin closes it when fit returns, also when fit raised: no
    collection is needed."""
    result = run(
        pytester,
        tiny_problem,
        """
import gc
from pytest_stability.training.keras_internals import fit_epoch_iterator

class Find(keras.callbacks.Callback):
    ref = None
    def on_train_begin(self, logs=None):
        Find.ref = fit_epoch_iterator()

class Seq(keras.utils.PyDataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return X[32 * i : 32 * (i + 1)], Y[32 * i : 32 * (i + 1)]

def holders(obj):  # what refers to obj, two levels up (for the failure message)
    def name(o):
        code = getattr(o, "f_code", None) or getattr(o, "gi_code", None)
        return type(o).__name__ + (":" + code.co_name if code is not None else "")
    return [(name(r), [name(q) for q in gc.get_referrers(r)][:6]) for r in gc.get_referrers(obj)]

class Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3:
            raise RuntimeError("boom")

def freed():
    assert Find.ref is not None  # found while fit ran
    left = Find.ref()
    assert left is None, f"the epoch iterator outlived fit, held by {holders(left)}"  # freed once fit returned

def test_model(stability):
    gc.disable()  # anything freed below is freed by its reference count
    try:
        rep = stability.fit(build(), DATA, steps=20, callbacks=[Find()])  # 8 steps an epoch
        assert rep.trace.steps == 20
        freed()
    finally:
        gc.enable()

def test_fit_that_raises(stability):
    gc.disable()
    try:
        try:
            stability.fit(build(), DATA, steps=20, callbacks=[Find(), Boom()])
        except RuntimeError as exc:
            assert str(exc) == "boom"
        else:
            raise AssertionError("fit did not raise")
        freed()
    finally:
        gc.enable()
""".replace("DATA", data),
    )
    result.assert_outcomes(passed=2)


def test_recorded_loss_and_gradient_norm_match_an_independent_computation(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        '''
def fit_and_twin(stability):
    """stability.fit of an SGD model; a twin with its initial weights; those weights."""
    model = build(optimizer=keras.optimizers.SGD(0.1))
    model.build((None, 8))
    w0 = [keras.ops.convert_to_numpy(v.value).copy() for v in model.trainable_variables]
    rep = stability.fit(model, X, Y, batch_size=32)
    check = build(optimizer=keras.optimizers.SGD(0.1))
    check.build((None, 8))
    for v, w in zip(check.trainable_variables, w0):
        v.assign(w)
    return rep, check, w0


@pytest.mark.stable_training(steps=8, shuffle=False)
def test_model(stability):
    rep, check, w0 = fit_and_twin(stability)
    expected = float(keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(Y[:32, None], check(X[:32]))).mean())
    assert rep.trace.loss[0] == pytest.approx(expected, rel=1e-5)
    # SGD: the update is lr * gradient, so the first update's size gives the first gradient norm
    assert rep.trace.update_ratio[0] * np.sqrt(sum(float(np.sum(w ** 2)) for w in w0)) == pytest.approx(
        0.1 * rep.trace.grad_norm[0], rel=1e-4)
    # and so per variable, each in its own column: its update over its own weights' norm, its gradient's norm
    # (the two kernels differ in size and norm: a column given another's sums fails; the biases start at zero,
    # so their ratio has no weights to be relative to), which add up to the total
    w_norms = np.array([np.sqrt(float(np.sum(w ** 2))) for w in w0])
    kernels = w_norms > 0
    assert rep.trace.var_grad_norms.shape == (8, len(w0)) and kernels.sum() == 2
    np.testing.assert_allclose(
        rep.trace.var_update_ratio[0][kernels] * w_norms[kernels], 0.1 * rep.trace.var_grad_norms[0][kernels],
        rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.sum(rep.trace.var_grad_norms ** 2, axis=1)), rep.trace.grad_norm, rtol=1e-5)
    assert np.all(rep.trace.var_grad_norms[0] > 0)
    # a running mean would be smooth: raw minibatch losses jump when the data cycles (8 batches/epoch)
    assert rep.trace.loss[7] != pytest.approx(np.mean(rep.trace.loss[:8]), rel=1e-3)


@pytest.mark.stable_training(steps=11, readback_every=4, shuffle=False)
def test_every_step(stability):
    # each step's own loss, in its place, across read-backs and the epoch's end (8 batches), the last chunk
    # cut short: the same model trained batch by batch, its loss taken before each step
    rep, check, _ = fit_and_twin(stability)
    expected = []
    for step in range(11):
        xb, yb = X[step % 8 * 32:(step % 8 + 1) * 32], Y[step % 8 * 32:(step % 8 + 1) * 32]
        loss = keras.losses.binary_crossentropy(yb[:, None], check(xb))
        expected.append(float(keras.ops.convert_to_numpy(loss).mean()))
        check.train_on_batch(xb, yb)
    np.testing.assert_allclose(rep.trace.loss, expected, rtol=1e-5)
''',
    )
    result.assert_outcomes(passed=2)


def test_adams_recorded_second_moments_match_its_own(pytester, tiny_problem):
    """`diagnostics=True` records Adam's `v_rms` (the root mean square of its second moments after each step) and
    `g2_over_v_max` (the largest g^2 / (v + eps^2) of each step, v before it): the last step's `v_rms` is the
    optimizer's own final moments', and the first step's ratio (v = 0 before it) lies between the largest
    variable's mean square gradient and the whole gradient's squared norm, over eps^2."""
    result = run(
        pytester,
        tiny_problem,
        """
import numpy as np


@pytest.mark.stable_training(steps=6, diagnostics=True, shuffle=False)
def test_model(stability):
    model = build(optimizer=keras.optimizers.Adam(0.01))
    rep = stability.fit(model, X, Y, batch_size=32)
    t = rep.trace
    v = np.concatenate([keras.ops.convert_to_numpy(s.value).ravel() for s in model.optimizer._velocities])
    assert t.opt_stats["v_rms"].shape == (6,)
    assert t.opt_stats["v_rms"][-1] == pytest.approx(np.sqrt(np.mean(v.astype("float64"))), rel=1e-4)
    eps2 = float(model.optimizer.epsilon) ** 2
    sizes = np.array([np.prod(w.shape) for w in model.trainable_variables], dtype="float64")
    low = np.max(t.var_grad_norms[0] ** 2 / sizes) / eps2
    high = t.grad_norm[0] ** 2 / eps2
    assert low * (1 - 1e-4) <= t.opt_stats["g2_over_v_max"][0] <= high * (1 + 1e-4)
""",
    )
    result.assert_outcomes(passed=1)


def test_a_static_loss_scale_factor_records_the_gradients_the_update_uses(pytester, tiny_problem):
    """``Adam(loss_scale_factor=1024)``: Keras multiplies the loss by 1024 before taking the gradients and the
    optimizer divides the gradients it is given by 1024 before the update.  The gradient norms were recorded of the
    scaled gradients (1024x: a ``max_grad_norm`` or a suggested ``clipnorm`` off by that much, Adam's g^2/v by
    1024^2); the same run without the factor records the same numbers, and so does one whose factor is on the
    optimizer a ``LossScaleOptimizer`` wraps."""
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=6, diagnostics=True, shuffle=False)
def test_model(stability):
    traces = []
    O = keras.optimizers
    for make in (
        lambda: O.Adam(1e-3),
        lambda: O.Adam(1e-3, loss_scale_factor=1024.0),
        # the factor on the optimizer a LossScaleOptimizer wraps: both scales are taken off
        lambda: O.LossScaleOptimizer(O.Adam(1e-3, loss_scale_factor=1024.0)),
    ):
        keras.utils.set_random_seed(0)
        traces.append(stability.fit(build(optimizer=make()), X, Y, batch_size=32).trace)
    plain = traces[0]
    for scaled in traces[1:]:
        np.testing.assert_allclose(scaled.loss, plain.loss, rtol=1e-5)  # the loss as the model computes it
        np.testing.assert_allclose(scaled.grad_norm, plain.grad_norm, rtol=1e-4)
        np.testing.assert_allclose(scaled.var_grad_norms, plain.var_grad_norms, rtol=1e-4)
        np.testing.assert_allclose(scaled.opt_stats["g2_over_v_max"], plain.opt_stats["g2_over_v_max"], rtol=1e-3)
        np.testing.assert_allclose(scaled.update_ratio, plain.update_ratio, rtol=1e-4)
""",
    )
    result.assert_outcomes(passed=1)


def test_class_weight_validation_split_callbacks_and_lr_schedule(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        """
class Counting(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0
        self.epochs = 0
        self.val = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        self.val.append(logs.get("val_loss"))


@pytest.mark.stable_training(steps=40, readback_every=10)
def test_model(stability):
    counting = Counting()
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5 ** epoch)
    rep = stability.fit(build(), X, Y, batch_size=32, validation_split=0.25, class_weight={0: 1.0, 1: 3.0},
                        callbacks=[counting, halve])
    # 192 training samples / 32 = 6 steps per epoch: 7 epochs, the last cut at 40 steps
    assert rep.trace.steps == 40
    assert counting.epochs >= 6 and counting.batches >= 4
    assert all(v is not None for v in counting.val[:6])  # Keras' own validation ran for the user's callbacks
    lr = rep.trace.lr
    assert lr[0] == pytest.approx(0.01) and lr[6] == pytest.approx(0.005) and lr[39] == pytest.approx(0.01 * 0.5 ** 6)
    assert rep.trace.has_validation and rep.trace.val_steps[0] == 0


@pytest.mark.stable_training(steps=30, readback_every=5)
def test_reduce_lr_on_plateau_lowers_the_recorded_rate(stability):
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    rep = stability.fit(build(), X, Y, batch_size=32, callbacks=[plateau])
    assert rep.trace.lr[0] == pytest.approx(0.01)
    assert rep.trace.lr[-1] < 0.01 / 4


@pytest.mark.stable_training(steps=30, readback_every=5)
def test_one_callback_not_in_a_list_is_called_as_keras_calls_it(stability):
    # Keras' fit takes callbacks=cb as [cb] (its CallbackList flattens what it is given); the plugin had
    # failed with "TypeError: 'Counting' object is not iterable"
    counting = Counting()
    rep = stability.fit(build(), X, Y, batch_size=32, callbacks=counting)
    assert rep.trace.steps == 30 and counting.batches == 30 and counting.epochs == 4
""",
    )
    result.assert_outcomes(passed=3)


CUSTOM_TRAIN_STEP = {
    "tensorflow": """
    def train_step(self, data):
        import tensorflow as tf
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}
""",
    "jax": """
    def compute_loss_and_updates(self, trainable_variables, non_trainable_variables, x, y, training=False):
        y_pred, non_trainable_variables = self.stateless_call(
            trainable_variables, non_trainable_variables, x, training=training)
        loss = self.compute_loss(x, y, y_pred)
        return loss, (y_pred, non_trainable_variables)

    def train_step(self, state, data):
        import jax
        trainable_variables, non_trainable_variables, optimizer_variables, metrics_variables = state
        x, y = data
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (loss, (y_pred, non_trainable_variables)), grads = grad_fn(
            trainable_variables, non_trainable_variables, x, y, training=True)
        trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable_variables)
        new_metrics_vars, logs = [], {}
        for metric in self.metrics:
            this = metrics_variables[len(new_metrics_vars):len(new_metrics_vars) + len(metric.variables)]
            if metric.name == "loss":
                this = metric.stateless_update_state(this, loss)
            else:
                this = metric.stateless_update_state(this, y, y_pred)
            logs[metric.name] = metric.stateless_result(this)
            new_metrics_vars += this
        return logs, (trainable_variables, non_trainable_variables, optimizer_variables, new_metrics_vars)
""",
    "torch": """
    def train_step(self, data):
        import torch
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}
""",
}

#: the same train_step, returning the step's own loss (``return {"loss": loss}``) and updating no metric
RAW_LOSS_STEP = {
    name: (
        source.split("        new_metrics_vars, logs = [], {}")[0]
        + '        return {"loss": loss}, (trainable_variables, non_trainable_variables, optimizer_variables, '
        "metrics_variables)\n"
        if name == "jax"
        else source.split("        for metric in self.metrics:")[0] + '        return {"loss": loss}\n'
    )
    for name, source in CUSTOM_TRAIN_STEP.items()
}


def test_custom_train_step_from_the_keras_guide_is_trained_and_recorded(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        f'''
class CustomModel(keras.Model):
{CUSTOM_TRAIN_STEP[BACKEND]}


def net(cls, optimizer):
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    model = cls(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def custom():
    return net(CustomModel, keras.optimizers.Adam(1e-2))


@pytest.mark.stable_training(steps=24, readback_every=8)
def test_model(stability):
    rep = stability.fit(custom(), X, Y[:, None], batch_size=32)
    tr = rep.trace
    assert tr.steps == 24 and tr.info["custom_train_step"] and tr.info["loss_recorded"]
    assert np.all(tr.grad_norm > 0) and np.all(np.isfinite(tr.loss))
    assert tr.var_grad_norms.shape == (24, 4) and np.all(tr.var_grad_norms > 0)
    assert tr.loss[-1] < tr.loss[0]


class RawLoss(keras.Model):
{RAW_LOSS_STEP[BACKEND]}


def raw_loss_model():
    return net(RawLoss, keras.optimizers.SGD(0.05))


# one epoch of 40 steps (32 per batch, not shuffled) whose batch 30 has targets far off: a spike at step 30
X5, Y5 = np.concatenate([X] * 5), np.concatenate([Y[:, None]] * 5)
Y5[960:992] = 30.0


def spike_at_30_is_recorded_and_judged(stability, model):
    first = np.mean((keras.ops.convert_to_numpy(keras.ops.stop_gradient(model(X5[:32]))) - Y5[:32]) ** 2)
    rep = stability.fit(model, X5, Y5, batch_size=32, shuffle=False, check=False)
    tr = rep.trace
    assert tr.info["loss_recorded"] and np.all(np.isfinite(tr.loss)) and tr.loss.shape == (40,)
    np.testing.assert_allclose(tr.loss[0], first, rtol=1e-5)
    assert tr.loss[30] > 20 * np.max(tr.loss[20:30])
    failed = {{r.name: r.findings for r in rep.runs[0].results if r.findings}}
    assert "loss_spike" in failed and failed["loss_spike"][0].step == 30, (failed, tr.loss)
    return tr


@pytest.mark.stable_training(steps=40, readback_every=8)
def test_a_loss_the_train_step_only_returns_is_recorded_and_judged(stability):
    # the loss tracker is left alone: the raw loss is the "loss" each step returns, and a spike in it fails
    tr = spike_at_30_is_recorded_and_judged(stability, raw_loss_model())
    assert any("the raw loss is the 'loss' this model's train_step returns" in note for note in tr.info["notes"])


@pytest.mark.stable_training(steps=40, readback_every=8)
def test_filing_the_returned_loss_changes_nothing_plain_fit_would_give(stability):
    # the train_step wrapper that files the returned loss: the same weights and optimizer steps as plain fit
    keras.utils.set_random_seed(0)
    plain = raw_loss_model()
    keras.utils.set_random_seed(0)
    plain.fit(X5, Y5, batch_size=32, shuffle=False, epochs=1, verbose=0)
    keras.utils.set_random_seed(0)
    mine = raw_loss_model()
    stability.fit(mine, X5, Y5, batch_size=32, shuffle=False, seed=0, check=False)
    assert int(mine.optimizer.iterations) == int(plain.optimizer.iterations) == 40
    for a, b in zip(plain.weights, mine.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


class OwnLoss(CustomModel):
    """A train_step that tracks its loss in a Mean of its own, named LOSS: no raw loss for the loss tracker."""

    LOSS = "my_loss"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_loss = keras.metrics.Mean(name=self.LOSS)

    @property
    def metrics(self):
        return [self.own_loss]


class OwnLossNamedLoss(OwnLoss):
    """Keras' guide to a lower-level train_step: the loss kept in a Mean of its own named "loss"."""

    LOSS = "loss"


@pytest.mark.stable_training(steps=40, readback_every=8)
def test_a_loss_kept_in_a_mean_of_its_own_named_loss_is_the_loss(stability):
    tr = spike_at_30_is_recorded_and_judged(stability, net(OwnLossNamedLoss, keras.optimizers.SGD(0.05)))
    assert "loss" not in tr.curves and not tr.info.get("notes"), tr.info.get("notes")


@pytest.mark.stable_training(steps=8)
def test_own_loss_metric_is_said_not_invented(stability):
    inputs = keras.Input((8,))
    model = OwnLoss(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    rep = stability.fit(model, X, Y[:, None], batch_size=32)
    assert not rep.trace.info["loss_recorded"]
    assert np.all(np.isnan(rep.trace.loss)) and np.all(rep.trace.grad_norm > 0)
    # its own metric is recorded step by step, and judged as a loss: the note says both
    assert any("loss_spike judges" in note and "my_loss" in note for note in rep.trace.info["notes"])
    assert list(rep.trace.curves) == ["my_loss"]
    # the report draws what was recorded: my_loss, and no curve of NaN for the loss it never recorded
    curves = rep.runs[0].to_record().curves
    assert "my_loss" in curves and "loss" not in curves


class RunningMeanAsLoss(OwnLoss):
    """Returns its own metric's running mean as "loss" too, as Keras' VAE example does."""

    def train_step(self, *args):
        out = super().train_step(*args)
        if isinstance(out, tuple):  # JAX: (logs, state)
            return {{"loss": out[0]["my_loss"], **out[0]}}, out[1]
        return {{"loss": out["my_loss"], **out}}


@pytest.mark.stable_training(steps=8)
def test_a_running_mean_returned_as_the_loss_is_not_taken_for_the_raw_loss(stability):
    inputs = keras.Input((8,))
    model = RunningMeanAsLoss(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    rep = stability.fit(model, X, Y[:, None], batch_size=32)
    assert not rep.trace.info["loss_recorded"] and list(rep.trace.curves) == ["my_loss"]
    assert any("loss_spike judges" in note and "my_loss" in note for note in rep.trace.info["notes"])


def marked_mse(y, p):
    # +inf (no gradient) on the batch holding the marker label 2: the loss alone goes non-finite
    inf = keras.ops.stop_gradient(keras.ops.where(keras.ops.max(y) > 1.5, np.inf, 0.0))
    return keras.losses.mean_squared_error(keras.ops.minimum(y, 1.0), p) + inf


@pytest.mark.stable_training(steps=40, readback_every=64)
def test_a_non_finite_loss_its_metric_sees_after_the_update_stops_the_run_there(stability):
    # the guide's train_step updates the loss metric after the optimizer's apply
    Y2 = Y[:, None].copy()
    Y2[100] = 2.0  # batch 3 (32 per batch, not shuffled)
    model = custom()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=marked_mse)
    began = []
    count = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs=None: began.append(batch))
    rep = stability.fit(model, X, Y2, batch_size=32, shuffle=False, check=False, callbacks=[count])
    tr = rep.trace
    assert tr.steps == 4 and np.flatnonzero(tr.nonfinite).tolist() == [3] and np.isinf(tr.loss[3])
    if keras.backend.backend() == "torch":  # one step per call: none ran after the non-finite one
        assert len(began) == 4, began
''',
    )
    result.assert_outcomes(passed=7)


def test_nan_stops_training_at_its_step_and_the_same_seed_gives_the_same_trace(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        """
TRACES = []


@pytest.mark.stable_training(steps=200, readback_every=50)
def test_diverges(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    rep = stability.fit(model, X, Y * 1e3, batch_size=32, check=False)
    tr = rep.trace
    assert not rep.ok and tr.steps < 50  # stopped at the failing step, not at the end of the chunk
    bad = np.flatnonzero(tr.nonfinite)
    assert bad.size and bad[0] == tr.steps - 1  # no step after the first non-finite one
    failed = {r.name for r in rep.runs[0].results if r.findings}
    assert "nonfinite" in failed
    # no update after the failing step: the weights are those of the failing step
    w = [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]
    assert not all(np.all(np.isfinite(a)) for a in w) or tr.first_nonfinite["source"] in ("loss", "gradients")


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ended = []

    def on_epoch_end(self, epoch, logs=None):
        self.ended.append(epoch)


@pytest.mark.stable_training(steps=64, readback_every=64)
def test_nan_ends_the_run_at_the_end_of_its_epoch(stability):
    # 8 steps an epoch, a read-back every 64 steps: the non-finite step in the first epoch ends the run at that
    # epoch's end, so your epoch callbacks see no epoch after it (they saw 8, trained with no update)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    epochs = Epochs()
    rep = stability.fit(model, X, Y * 1e3, batch_size=32, check=False, callbacks=[epochs])
    assert rep.trace.steps < 8 and np.flatnonzero(rep.trace.nonfinite)[0] == rep.trace.steps - 1
    assert epochs.ended == [0]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) <= 8


class Histories(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_end(self, logs=None):
        self.seen.append(self.model.history)


@pytest.mark.stable_training(steps=64, whatif=True)
def test_model_history_is_the_runs_after_the_what_if_replays(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    histories = Histories()
    rep = stability.fit(model, X, Y * 1e3, batch_size=32, check=False, callbacks=[histories])
    assert rep.findings[0].evidence["whatif"]["attempts"]  # a replay ran fit again
    assert len(histories.seen) > 1 and model.history is histories.seen[0]
    # what plain model.fit() returns: the run's History, so that stability.fit() stands where model.fit() stood
    assert rep.history is histories.seen[0] and list(rep.history.history) == ["loss"]
    assert rep.history.epoch == list(range(len(rep.history.history["loss"])))


@pytest.mark.parametrize("seed", [3, 3, 4])
@pytest.mark.stable_training(steps=30)
def test_seeded(stability, seed):
    rep = stability.fit(build(), X, Y, seed=seed, batch_size=16)
    TRACES.append((seed, rep.trace.loss.copy(), rep.trace.grad_norm.copy()))


def test_compare():
    (s1, l1, g1), (s2, l2, g2), (s3, l3, _) = TRACES
    assert s1 == s2 == 3 and s3 == 4
    assert np.array_equal(l1, l2) and np.array_equal(g1, g2)
    assert not np.array_equal(l1, l3)
""",
    )
    result.assert_outcomes(passed=7)


def test_validation_and_the_batchnorm_gap_do_not_change_the_training_trajectory(pytester, tiny_problem):
    """Validating (with the BatchNorm train/inference gap, a training-mode forward through Dropout) at every
    read-back must leave the training run exactly as it is without validation data: on PyTorch, Dropout
    draws its masks from torch's global generator, which the measurement puts back."""
    result = run(
        pytester,
        tiny_problem,
        """
TRACES = []


def net():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dropout(0.3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.stable_training(steps=30, readback_every=10, validate_every=10)
def test_run(stability, validate):
    # within one epoch (32 batches of 8): Keras' own end-of-epoch evaluation of validation_data opens a data
    # iterator, which on PyTorch draws from torch's global generator and so changes the next epoch's order
    # with or without the plugin
    kw = {"validation_data": (XV, YV)} if validate else {}
    rep = stability.fit(net(), X, Y, batch_size=8, **kw)
    TRACES.append((rep.trace.loss.copy(), rep.trace.info.get("bn_train_infer_gap"), rep.trace.val_loss))


def test_compare():
    (l0, gap0, v0), (l1, gap1, v1) = TRACES
    assert v0 is None and v1 is not None and v1.size == 4  # validated before the first step and at 3 read-backs
    assert gap1 is not None  # the gap was measured during training
    np.testing.assert_array_equal(l0, l1)
""",
    )
    result.assert_outcomes(passed=3)


def test_the_model_is_given_back_untouched(pytester, tiny_problem):
    """After the test: the user's optimizer, no extra variables, and plain fit / save work."""
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=12)
def test_model(stability, tmp_path):
    model = build()
    stability.fit(model, X, Y, batch_size=32)
    names = [v.name for v in model.optimizer.variables]
    assert not any(n.startswith("stability_") for n in names)
    assert not any(v.name.startswith("stability_") for v in model.metrics_variables)
    assert "apply" not in vars(model.optimizer) and "stateless_apply" not in vars(model.optimizer)
    assert "train_step" not in vars(model)
    model.fit(X, Y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert len(again.optimizer.variables) == len(model.optimizer.variables)
""",
    )
    result.assert_outcomes(passed=1)


def test_data_kinds(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        """
class Seq(keras.utils.PyDataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return X[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]


@pytest.mark.stable_training(steps=20)
def test_pydataset(stability):
    rep = stability.fit(build(), Seq(), validation_data=Seq())
    assert rep.trace.steps == 20 and rep.runs[0].data_kind == "pydataset"


@pytest.mark.stable_training(steps=20)
def test_dict_inputs(stability):
    inp = keras.Input((8,), name="features")
    model = keras.Model({"features": inp}, keras.layers.Dense(1, activation="sigmoid")(inp))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rep = stability.fit(model, {"features": X}, Y, batch_size=32)
    assert rep.trace.steps == 20


@pytest.mark.stable_training(steps=20)
def test_validation_from_a_generator(stability):
    # a one-shot generator: the batches the plugin reads for its own validation are given back to fit, whose own
    # validation at each epoch's end (for the user's callbacks) sees them, as in plain fit
    seen = []
    logs_of = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs.get("val_loss")))
    val = ((XV[i:i + 32], YV[i:i + 32]) for i in range(0, 64, 32))
    rep = stability.fit(build(), X, Y, batch_size=32, validation_data=val, callbacks=[logs_of])
    assert rep.trace.has_validation and len(rep.trace.val_loss) >= 2
    assert len(seen) == 3 and seen[0] is not None and np.isfinite(seen[0]), seen


@pytest.mark.stable_training(steps=20)
def test_generator_that_runs_out(stability):
    gen = ((X[i:i + 32], Y[i:i + 32]) for i in range(0, 256, 32))
    stability.fit(build(), gen)


@pytest.mark.stable_training(steps=20)
def test_generator_that_runs_out_in_the_users_epochs(stability):
    # 5 batches, steps_per_epoch=5: Keras' later epochs train again on the 2 batches it read ahead of the first
    gen = ((X[i:i + 32], Y[i:i + 32]) for i in range(0, 160, 32))
    stability.fit(build(), gen, steps_per_epoch=5)
""",
    )
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*the training data ran out after 8 batches, but steps=20 needs 20: *"])
    # the batches the generator gave, not the steps fit ran on them
    result.stdout.fnmatch_lines(
        ["*the training data ran out after 5 batches, but steps=20 needs 20 (fit ran * steps: *lower steps to <= 5.*"]
    )


@pytest.mark.skipif(BACKEND != "torch", reason="a torch DataLoader is a PyTorch-backend input")
def test_torch_dataloader(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        """
import torch


@pytest.mark.stable_training(steps=20)
def test_model(stability):
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    rep = stability.fit(build(), torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True))
    assert rep.trace.steps == 20 and rep.runs[0].data_kind == "dataloader"
""",
    )
    result.assert_outcomes(passed=1)


def test_nan_in_a_pipeline_batch_is_caught_on_the_device_at_its_step(pytester, tiny_problem):
    """Batches from a pipeline (here a PyDataset) are checked for NaN/Inf in the step itself, on the device:
    the run stops at that step and blames the data, with no second read of the pipeline."""
    result = run(
        pytester,
        tiny_problem,
        """
X2 = X.copy()
X2[70] = np.nan  # sample 70: batch 2


class Seq(keras.utils.PyDataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return X2[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]


@pytest.mark.stable_training(steps=40, readback_every=64)
def test_model(stability):
    rep = stability.fit(build(loss="mse"), Seq(), shuffle=False, check=False)
    tr = rep.trace
    assert tr.steps == 3 and np.flatnonzero(tr.nonfinite).tolist() == [2]
    assert tr.nonfinite[2] & 16  # INPUT
    assert tr.info["inputs_checked"] and "input_batch_reread" not in tr.info
    nonfinite = next(r for r in rep.runs[0].results if r.name == "nonfinite")
    assert "the input batch itself held NaN/Inf" in nonfinite.findings[0].message


SEEN = []


def bce(y_true, y_pred):
    if keras.backend.backend() == "torch":  # eager: the probabilities of each step that ran
        SEEN.append(bool(np.all(np.isfinite(keras.ops.convert_to_numpy(y_pred)))))
    return keras.losses.binary_crossentropy(y_true, y_pred)


@pytest.mark.stable_training(steps=40, readback_every=64)
def test_a_loss_that_raises_on_it(stability):
    # PyTorch's binary cross-entropy refuses NaN probabilities (on a GPU with a device-side assert that no
    # later CUDA call survives), so PyTorch checks the batch before its step and does not run it; the others
    # compute a NaN loss
    try:
        stability.fit(build(loss=bce), Seq(), shuffle=False)
    finally:
        if keras.backend.backend() == "torch":  # (the loss is traced on the others: nothing seen)
            assert SEEN and all(SEEN), SEEN
""",
    )
    # the same outcome on every backend: PyTorch, which does not run that step, ends the run there as the
    # others' NaN loss does
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*[[]nonfinite] step 2: non-finite *the input batch itself held NaN/Inf*"])


def test_no_update_is_applied_after_a_non_finite_loss_or_after_the_planned_steps(pytester, tiny_problem):
    """The weights after the test are those of the last step that counts, on every backend and for both ways
    of keeping a step out (a zero learning rate for Adam, whose update scales with it; a cond, a select or a
    host check for SGD with momentum, whose buffer carries earlier rates): checked against plain fit."""
    result = run(
        pytester,
        tiny_problem,
        """
OPTIMIZERS = {"adam": lambda: keras.optimizers.Adam(1e-2),
              "sgd_momentum": lambda: keras.optimizers.SGD(1e-2, momentum=0.9)}


def twin(model, optimizer):
    other = build(optimizer=OPTIMIZERS[optimizer](), loss=model.loss)
    other.set_weights(model.get_weights())
    return other


def assert_same_weights(a, b):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def marked_loss(y, p):
    # binary cross-entropy, plus +inf (no gradient) on the batch holding the marker label 2
    y_ = keras.ops.minimum(y, 1.0)
    inf = keras.ops.stop_gradient(keras.ops.where(keras.ops.max(y) > 1.5, np.inf, 0.0))
    return keras.losses.binary_crossentropy(y_, p) + inf


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.stable_training(steps=40, readback_every=64)
def test_stops_after_a_loss_that_is_not_finite(stability, optimizer):
    Y2 = Y.copy()
    Y2[100] = 2.0  # batch 3 (32 per batch, not shuffled)
    model = build(optimizer=OPTIMIZERS[optimizer](), loss=marked_loss)
    plain = twin(model, optimizer)
    rep = stability.fit(model, X, Y2, batch_size=32, shuffle=False, check=False)
    tr = rep.trace
    assert tr.steps == 4 and np.flatnonzero(tr.nonfinite).tolist() == [3] and tr.nonfinite[3] == 1  # LOSS only
    plain.fit(X[:128], Y2[:128], batch_size=32, shuffle=False, epochs=1, verbose=0)  # the same 4 steps
    assert_same_weights(model, plain)


def stops_at_the_planned_step(stability, optimizer):
    # 8 batches an epoch: fit is asked for 5 epochs (40 steps), the last 3 must not run
    model = build(optimizer=OPTIMIZERS[optimizer]())
    plain = twin(model, optimizer)
    rep = stability.fit(model, X, Y, batch_size=32, shuffle=False)
    assert rep.trace.steps == 37
    plain.fit(X, Y, batch_size=32, shuffle=False, epochs=4, verbose=0)
    plain.fit(X[:160], Y[:160], batch_size=32, shuffle=False, epochs=1, verbose=0)  # steps 33 to 37
    assert_same_weights(model, plain)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 37
    return rep


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.stable_training(steps=37, readback_every=64)
def test_stops_at_the_planned_step(stability, optimizer):
    # an epoch is one call of 8 steps: TensorFlow shortens the calls to 1 step, so that one ends at step 37
    # (no second trace); JAX cuts its last call (steps_per_execution, read at each call); PyTorch runs a step a call
    rep = stops_at_the_planned_step(stability, optimizer)
    assert rep.trace.info["steps_per_execution"] == (1 if keras.backend.backend() != "jax" else 64)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.stable_training(steps=37, readback_every=3)
def test_stops_at_the_planned_step_inside_a_call(stability, optimizer):
    # calls of 3, 3 and 2 steps an epoch (not all equal: no shorter calls keep the read-backs in place), so the
    # call at step 36 is cut to the one step left (TensorFlow: a train function made for it)
    rep = stops_at_the_planned_step(stability, optimizer)
    assert rep.trace.info["steps_per_execution"] == (3 if keras.backend.backend() != "torch" else 1)


def bn_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    return model


@pytest.mark.stable_training(steps=37, readback_every=64)
def test_batchnorm_statistics_see_only_the_planned_batches(stability):
    model = bn_model()
    plain = bn_model()
    plain.set_weights(model.get_weights())
    stability.fit(model, X, Y, batch_size=32, shuffle=False)
    plain.fit(X, Y, batch_size=32, shuffle=False, epochs=4, verbose=0)
    plain.fit(X[:160], Y[:160], batch_size=32, shuffle=False, epochs=1, verbose=0)
    assert_same_weights(model, plain)  # the moving mean and variance included
""",
    )
    result.assert_outcomes(passed=7)


def test_the_run_ends_at_steps_with_the_users_own_fit_arguments(pytester, tiny_problem):
    """Where JAX cuts its last call at `steps`, the epoch arithmetic must hold with what users pass to fit:
    a validation split (a shorter epoch), a later initial epoch, more epochs than needed, their own
    steps_per_execution, sample weights, a steps_per_epoch that does not divide the data (arrays, a finite
    dataset, a PyDataset), or over data that repeats forever.  Every run ends at
    exactly 23 steps, and so does optimizer.iterations; the user's own epochs that end it earlier are said."""
    result = run(
        pytester,
        tiny_problem,
        """
CASES = {"validation_split": dict(validation_split=0.25), "initial_epoch": dict(initial_epoch=2),
         "epochs": dict(epochs=50), "sample_weight": dict(sample_weight=np.ones(256, "float32")),
         # 8 batches a pass: Keras' epochs run 5, 3, 5, 3, 5, 2 steps (one ends where a pass ends)
         "steps_per_epoch": dict(steps_per_epoch=5),
         # a dataset that repeats forever: every epoch runs 5 steps, and the last call is cut at step 23
         "repeated_dataset": dict(steps_per_epoch=5),
         # a finite dataset and a PyDataset of 8 batches: as the arrays
         "finite_dataset": dict(steps_per_epoch=5), "py_dataset": dict(steps_per_epoch=5)}


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return X[i * 32 : (i + 1) * 32], Y[i * 32 : (i + 1) * 32]
if keras.backend.backend() != "torch":  # Keras' fit refuses steps_per_execution > 1 on PyTorch
    CASES["spe"] = {}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.stable_training(steps=23, readback_every=16)
def test_model(stability, case):
    model = build()
    if case == "spe":
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", steps_per_execution=4)
    x, y, kw = X, Y, dict(CASES[case], batch_size=32)
    if case in ("repeated_dataset", "finite_dataset"):
        import tensorflow as tf

        x, y = tf.data.Dataset.from_tensor_slices((X, Y)).batch(kw.pop("batch_size")), None
        x = x.repeat() if case == "repeated_dataset" else x
    elif case == "py_dataset":
        x, y = Batches(), None
        kw.pop("batch_size")
    rep = stability.fit(model, x, y, **kw)
    assert rep.trace.steps == 23
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 23


@pytest.mark.stable_training(steps=23, readback_every=16)
def test_the_users_epochs_end_it_early_and_the_note_says_why(stability):
    # the user's steps_per_epoch=5 and epochs=4 over 8 batches: 5, 3, 5, 3 steps, as in plain fit
    model, plain = build(), build()
    plain.set_weights(model.get_weights())
    kw = dict(batch_size=32, shuffle=False, steps_per_epoch=5, epochs=4)
    rep = stability.fit(model, X, Y, **kw)
    plain.fit(X, Y, verbose=0, **kw)
    assert rep.trace.steps == 16 == int(keras.ops.convert_to_numpy(plain.optimizer.iterations))
    assert "every 8 batches, which steps_per_epoch=5 does not divide" in " ".join(rep.trace.info["notes"])
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.stable_training(steps=23, readback_every=16)
def test_the_note_counts_the_users_epochs_from_their_initial_epoch(stability):
    # epochs=3 from initial_epoch=1: two epochs of 8 steps, as plain fit runs
    rep = stability.fit(build(), X, Y, batch_size=32, epochs=3, initial_epoch=1)
    assert rep.trace.steps == 16
    assert "after 16 of 23 steps: epochs=3 (from initial_epoch=1) ended it" in " ".join(rep.trace.info["notes"])
""",
    )
    result.assert_outcomes(passed=10 if BACKEND == "torch" else 11)


def test_read_backs_convert_without_numpy_2_deprecation_warnings():
    """numpy 2 passes ``copy`` to ``__array__``, which TensorFlow's (and this PyTorch's) tensors do not take, so
    ``keras.ops.convert_to_numpy`` warns once per call: the example project's run showed ~670 such warnings
    on TensorFlow, all from the plugin's read-backs.  The plugin converts with the tensor's own method."""
    import warnings

    import numpy as np

    from pytest_stability.training.recorders import host_numpy

    var = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for x in (var, var.value, keras.ops.ones((4,)), keras.ops.cast(keras.ops.ones((2,)), "bfloat16")):
            out = host_numpy(x)
            assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(host_numpy(var), np.arange(6).reshape(2, 3))


def test_an_embeddings_gradient_norm_sums_the_rows_of_an_id_looked_up_twice(pytester, tiny_problem):
    """TensorFlow hands the optimizer an embedding's gradient as IndexedSlices, one row per id looked up; an id
    looked up twice has two rows, and the gradient is their sum.  The recording squared each row alone and
    gave 0.031 for this gradient's norm of 0.047 (a 5-word vocabulary, 8 ids a sample: every batch repeats
    ids).  The norm here is computed in numpy from the model's weights and the first batch."""
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=2, shuffle=False)
def test_model(stability):
    ids = np.random.default_rng(0).integers(0, 5, size=(64, 8))
    target = np.random.default_rng(1).normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([
        keras.Input((8,), dtype="int32"),
        keras.layers.Embedding(5, 4),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1, use_bias=False),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    table, w = (keras.ops.convert_to_numpy(v.value).astype(np.float64) for v in model.trainable_variables)
    # MSE over a batch of 32 of mean_t(table[id_t]) @ w: d loss / d table[v] = sum over the batch and the
    # positions holding v of 2 (pred - y) / 32 * w / 8
    x, y = ids[:32], target[:32].astype(np.float64)
    hidden = table[x].mean(axis=1)
    d_pred = 2 * (hidden @ w - y) / 32
    d_table = np.zeros_like(table)
    np.add.at(d_table, x, (d_pred * w[:, 0] / 8)[:, None, :].repeat(8, axis=1))
    d_w = hidden.T @ d_pred
    rep = stability.fit(model, ids, target, batch_size=32, check=False)
    assert len(np.unique(x)) < x.size  # ids repeat within the batch
    np.testing.assert_allclose(
        rep.trace.var_grad_norms[0], [np.linalg.norm(d_table), np.linalg.norm(d_w)], rtol=1e-4)
    assert rep.trace.grad_norm[0] == pytest.approx(np.sqrt(np.sum(d_table ** 2) + np.sum(d_w ** 2)), rel=1e-4)
""",
    )
    result.assert_outcomes(passed=1)


def test_the_recorded_update_is_the_weights_change_under_every_kind_of_optimizer_state(pytester, tiny_problem):
    """The first step's recorded update ratio, |w1 - w0| / |w0|, against the weights the step left, under the
    optimizers whose state is least like Adam's: factored second moments (Adafactor), a sign update (Lion),
    Ftrl's accumulators, Muon's orthogonalised update, a centred RMSprop with momentum, Nesterov momentum, loss
    scaling, a moving average of the weights.  (All 19 of Keras' optimizers and variants matched on each
    backend when this test was written; these cover the kinds of state.)"""
    result = run(
        pytester,
        tiny_problem,
        """
O = keras.optimizers
OPTIMIZERS = {
    "adafactor": lambda: O.Adafactor(1e-3),
    "lion": lambda: O.Lion(1e-4),
    "ftrl": lambda: O.Ftrl(1e-2),
    "rmsprop_centred": lambda: O.RMSprop(1e-3, momentum=0.9, centered=True),
    "nesterov": lambda: O.SGD(0.05, momentum=0.9, nesterov=True),
    "loss_scale": lambda: O.LossScaleOptimizer(O.Adam(1e-3)),
    "ema": lambda: O.Adam(1e-3, use_ema=True),
}
if hasattr(O, "Muon"):
    OPTIMIZERS["muon"] = lambda: O.Muon(1e-3)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.stable_training(steps=1, shuffle=False)
def test_model(stability, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    w0 = [np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.trainable_variables]
    rep = stability.fit(model, x, y, batch_size=32, check=False)
    w1 = [np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.trainable_variables]
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(w1, w0))) / np.sqrt(sum(np.sum(b ** 2) for b in w0))
    assert moved > 0 and np.isfinite(rep.trace.grad_norm[0]) and rep.trace.grad_norm[0] > 0
    assert rep.trace.update_ratio[0] == pytest.approx(moved, rel=2e-3)
""",
        "-W",
        "ignore::DeprecationWarning",
    )
    result.assert_outcomes(passed=7 + hasattr(keras.optimizers, "Muon"))


def test_the_reports_model_facts_leave_no_numpy_2_deprecation_warning():
    """Keras' get_config reads Adam's plain learning rate with np.array(variable), which numpy 2 warns about
    for JAX's variables: the plugin reads the optimizer's config after every test, and must not pass that
    warning on to the user's run (the example project showed one per test on JAX)."""
    import warnings

    from pytest_stability.training.engine import model_info
    from pytest_stability.training.recorders import make_recorder

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rec = make_recorder(BACKEND, model, chunk=8, limit=8, diagnostics=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = model_info(keras, model, rec, backend=BACKEND, spe=1, kind="arrays", distributed=False)
    assert info["optimizer_config"]["learning_rate"] == pytest.approx(1e-3)
    assert not [w for w in caught if "__array__" in str(w.message)], [str(w.message) for w in caught]


def test_the_logs_are_read_back_once_a_chunk_and_never_per_step(pytester, tiny_problem):
    """A callback with a batch-end hook makes Keras convert the step's logs to Python floats in fit's own
    thread after each call of the train function (a device sync; without one, JAX and PyTorch do it in a
    worker thread).  TensorFlow and JAX run a chunk per call (here an epoch of 8 steps, shorter than the
    chunk), so the plugin may cost that once a call; PyTorch runs one step per call, so there it must not
    cost it at all.  Counted at Keras' CallbackList, in fit's thread."""
    result = run(
        pytester,
        tiny_problem,
        """
import threading

from keras.src.callbacks.callback_list import CallbackList

BACKEND = keras.backend.backend()


@pytest.mark.stable_training(steps=64, readback_every=16)
def test_model(stability, monkeypatch):
    in_fit_thread = []
    original = CallbackList._on_train_batch_end

    def counted(self, batch, logs=None):
        in_fit_thread.append(threading.current_thread() is threading.main_thread())
        return original(self, batch, logs)

    monkeypatch.setattr(CallbackList, "_on_train_batch_end", counted)
    rep = stability.fit(build(), X, Y, batch_size=32)
    assert rep.trace.steps == 64
    synced = sum(in_fit_thread)
    if BACKEND == "torch":
        assert len(in_fit_thread) == 64 and synced == 0, (len(in_fit_thread), synced)
    else:
        assert 1 <= synced <= 64 // 8, synced  # 8 steps an epoch: at most one call of 8 steps each
""",
    )
    result.assert_outcomes(passed=1)


def test_a_callback_that_sees_single_batches_sees_every_step_and_none_past_the_planned_ones(pytester, tiny_problem):
    """A callback that overrides a batch-level hook sees every step, as in plain fit (the run keeps the model's
    steps_per_execution), and none past ``steps`` (the last call is cut there; PyTorch runs one step per call
    and stops right at ``steps``)."""
    result = run(
        pytester,
        tiny_problem,
        """
class Steps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append(batch)


@pytest.mark.stable_training(steps=37, readback_every=64)
def test_model(stability):
    steps = Steps()
    rep = stability.fit(build(), X, Y, batch_size=32, shuffle=False, callbacks=[steps])
    assert rep.trace.steps == 37
    assert steps.batches == list(range(8)) * 4 + list(range(5))
""",
    )
    result.assert_outcomes(passed=1)


def test_nan_weights_are_reported_at_their_step_and_pytorch_runs_no_step_after(pytester, tiny_problem):
    """A NaN learning rate at step 5 makes the weights NaN there (loss and gradients still finite).  The next
    step's sigmoid would give NaN probabilities, which PyTorch's binary cross-entropy refuses: with an error
    on the CPU, with a device-side assert on a GPU, after which no CUDA call of the process works (every
    later test fails).  So PyTorch runs no step after a non-finite one: the loss never sees a NaN.  The run
    stops at step 5 and reports it, as on the other backends."""
    result = run(
        pytester,
        tiny_problem,
        """
from pytest_stability.trace import WEIGHTS

BACKEND = keras.backend.backend()
SEEN = []


def bce(y_true, y_pred):
    if BACKEND == "torch":  # eager: the probabilities of each step that ran
        SEEN.append(bool(np.all(np.isfinite(keras.ops.convert_to_numpy(y_pred)))))
    return keras.losses.binary_crossentropy(y_true, y_pred)


class NanAtStep(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return keras.ops.cast(keras.ops.where(keras.ops.equal(step, 5), np.nan, 1e-2), "float32")

    def get_config(self):
        return {}


@pytest.mark.stable_training(steps=40, readback_every=64)
def test_model(stability):
    rep = stability.fit(build(optimizer=keras.optimizers.SGD(NanAtStep()), loss=bce), X, Y, batch_size=32,
                        check=False)
    tr = rep.trace
    assert tr.steps == 6 and np.flatnonzero(tr.nonfinite).tolist() == [5] and tr.nonfinite[5] & WEIGHTS
    assert tr.first_nonfinite["source"] == "weights"
    if BACKEND == "torch":
        assert SEEN and all(SEEN), SEEN  # (one more call than steps: Keras builds the loss on a batch first)
        assert not any("raised" in note for note in rep.trace.info.get("notes", []))
""",
    )
    result.assert_outcomes(passed=1)


def test_an_error_raised_in_training_reaches_the_user_unchanged(pytester, tiny_problem):
    """A user callback that raises mid-run, with nothing non-finite recorded: the engine reads back what was
    recorded (a non-finite step before the error would end the run there), then lets the user's own error
    through, unchanged."""
    result = run(
        pytester,
        tiny_problem,
        """
class Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch >= 3:
            raise ValueError(f"boom at batch {batch}")


@pytest.mark.stable_training(steps=40, readback_every=64)
def test_model(stability):
    stability.fit(build(), X, Y, batch_size=32, callbacks=[Boom()])
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *ValueError: boom at batch *"])
    result.stdout.no_fnmatch_line("*has been deleted*")


def test_validation_points_are_the_same_steps_on_every_backend(pytester, tiny_problem):
    """Read-backs (and the validation points and curvature measurements they carry) fall where TensorFlow's
    and JAX's compiled calls end: every chunk // min(chunk, epoch) calls, a call cut at an epoch's end.
    PyTorch runs one step per call and reads back at the same steps."""
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=40, readback_every=16, validate_every=10)
def test_model(stability):
    # validation every 10 steps caps the chunk at 10; 8 steps an epoch: calls of 8 steps, a read-back after
    # each (8, 16, 24, ...), a validation at the first read-back past each multiple of 10, and at the end
    rep = stability.fit(build(), X, Y, batch_size=32, validation_data=(XV, YV))
    assert rep.trace.val_steps.tolist() == [0, 16, 24, 32, 40]
""",
    )
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(BACKEND != "torch", reason="Keras' fit refuses steps_per_execution > 1 on PyTorch alone")
def test_pytorch_refuses_steps_per_execution_above_one_as_keras_does(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=8)
def test_model(stability):
    model = build()
    model.compile(optimizer="adam", loss="binary_crossentropy", steps_per_execution=4)
    stability.fit(model, X, Y, batch_size=32)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*compiled with steps_per_execution=4, which Keras' fit refuses on the PyTorch backend (it must be 1)*"]
    )


def test_steps_a_loss_scale_optimizer_skips_are_counted_and_too_many_fail(pytester):
    """Mixed precision: an overflow of the scaled gradients is the loss-scale optimizer skipping a step, not an
    instability; a run that skips most of its steps learns nothing and fails with that as its cause.  The
    loss scale is recorded per step, and the report says what the layers computed in."""
    result = run(
        pytester,
        "",
        """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")


def mixed(scale):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, dtype="float32")])
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model, X * scale, (X[:, :1] * scale ** 2).astype("float32")


@pytest.mark.stable_training(steps=40)
def test_overflowing(stability):
    model, x, y = mixed(1e4)  # the squared error overflows float16 at every scale the optimizer tries
    rep = stability.fit(model, x, y, batch_size=32, check=False)
    assert rep.trace.info["compute_dtypes"] == {"float16": 1, "float32": 1}
    scale = rep.trace.opt_stats["loss_scale"]
    assert scale[0] == 2.0 ** 15 and scale[1] == 2.0 ** 14  # halved after each overflow
    [finding] = [f for f in rep.findings if f.check == "nonfinite"]
    assert finding.kind == "skipped_steps" and finding.value > 0.25 and finding.limit == 0.25
    assert "updates did not happen" in finding.message and "float32" in finding.fix


@pytest.mark.stable_training(steps=40)
def test_healthy(stability):
    model, x, y = mixed(1.0)
    rep = stability.fit(model, x, y, batch_size=32)
    assert not any(f.check == "nonfinite" for f in rep.findings)
""",
        "--stability-report=report.json",
    )
    result.assert_outcomes(passed=2)
    import json

    doc = json.loads((pytester.path / "report.json").read_text())
    runs = {t["nodeid"].split("::")[1]: t["calls"][0]["runs"][0] for t in doc["tests"]}
    assert "loss_scale" in runs["test_overflowing"]["curves"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow builds the optimizer inside the traced step")
def test_the_recorders_variables_are_made_eagerly_when_the_optimizer_is_built_in_the_traced_step():
    """Keras' TensorFlow trainer builds an optimizer in the first trace of the train step, where the recorder
    makes its buffers too.  A variable made inside a function being traced has its initializer lifted out of the
    graph (some 25 ms each on a 2-core CPU, four in every stability run, against 0.5 ms eagerly), so the recorder
    makes its own eagerly; the optimizer's are Keras' and are made as in plain fit.  Seen through TensorFlow's
    public variable creator hook."""
    import numpy as np
    import tensorflow as tf

    from pytest_stability.training.recorders import make_recorder

    made: dict[str, bool] = {}  # name -> made while a graph was being built

    def creator(next_creator, **kwargs):
        made[str(kwargs.get("name"))] = not tf.executing_eagerly()
        return next_creator(**kwargs)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    assert not model.optimizer.built
    rec = make_recorder(BACKEND, model, chunk=8, limit=8, diagnostics=False)
    with tf.variable_creator_scope(creator):
        rec.install()
        try:
            x = np.ones((16, 4), "float32")
            model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)
        finally:
            rec.uninstall()
    mine = {name: inside for name, inside in made.items() if name.startswith("stability_")}
    assert {"stability_record", "stability_count", "stability_halt"} <= set(mine), made
    assert not any(mine.values()), mine
    # the optimizer was built in the trace, as in plain fit: the path this test is about
    assert any(inside for name, inside in made.items() if not name.startswith("stability_")), made
    assert int(rec.read()["count"]) == 4


def test_short_epochs_kept_for_keras_validation_are_said_in_the_report_row_with_v(pytester, tiny_problem):
    # 128 training samples at batch 32: four steps an epoch, kept because Keras validates at each epoch's end;
    # a note on speed, not on the verdict: in the row with -v (and in the JSON and HTML reports)
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=12)
def test_model(stability):
    rep = stability.fit(build(), X, Y, batch_size=32, validation_split=0.5)
    assert rep.trace.steps == 12
    assert rep.trace.info["speed_notes"] == [
        "short epochs (4 step(s) each) kept for Keras' validation at each epoch's end (validation_split=0.5): "
        "Keras' work at each epoch's end and start may cost more than the steps"
    ]
    assert "notes" not in rep.trace.info
""",
        "-v",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_short_epochs_kept_*.py::test_model  steps=12/12 *",
            "      note: short epochs (4 step(s) each) kept for Keras' validation at each epoch's end "
            "(validation_split=0.5): *",
        ]
    )


def test_a_validation_split_that_leaves_one_class_is_said_in_a_note(pytester, tiny_problem):
    # labels sorted by class: Keras splits off the last quarter before it shuffles, so validation holds class 1 alone
    result = run(
        pytester,
        tiny_problem,
        """
@pytest.mark.stable_training(steps=12)
def test_model(stability):
    order = np.argsort(Y, kind="stable")
    rep = stability.fit(build(), X[order], Y[order], batch_size=32, validation_split=0.25)
    (note,) = rep.trace.info["notes"]
    assert note.startswith("validation_split=0.25 takes the last 64 samples, before Keras shuffles, and every one")
    rep = stability.fit(build(), X, Y, batch_size=32, validation_split=0.25)  # unsorted: both classes
    assert "notes" not in rep.trace.info
""",
    )
    result.assert_outcomes(passed=1)


def test_a_full_batch_is_one_long_epoch_unless_something_observes_epochs_and_the_speed_note_says_which(
    pytester, tiny_problem
):
    # the whole training set as one batch: one step an epoch. Nothing of the user's observes epochs, so the run
    # presents the batch as one long epoch; a callback with an epoch-level hook keeps the epochs short
    result = run(
        pytester,
        tiny_problem,
        """
class EpochCounter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1


@pytest.mark.stable_training(steps=30)
def test_model(stability):
    rep = stability.fit(build(), X, Y, batch_size=256)
    assert rep.trace.steps == 30
    assert rep.trace.info["speed_notes"] == [
        "full batch: the same batch was presented as one epoch of 30 steps instead of 30 epochs of one step "
        "(nothing of yours observes epochs, and the order of the samples in the batch, which Keras shuffles each "
        "epoch, changes the sums only by rounding here)"
    ]
    counter = EpochCounter()
    rep = stability.fit(build(), X, Y, batch_size=256, callbacks=[counter])
    assert rep.trace.steps == 30 and counter.epochs == 30
    assert rep.trace.info["speed_notes"][0].startswith(
        "short epochs (1 step(s) each) kept for EpochCounter.on_epoch_end, which sees them: "
    )
    assert "notes" not in rep.trace.info  # neither qualifies the verdict
    # a batch_size asked for above the training samples: plain fit takes them all, and the report says so
    rep = stability.fit(build(), X, Y, batch_size=1000)
    assert rep.trace.steps == 30 and rep.trace.info["notes"] == [
        "batch_size=1000 is larger than the 256 training samples: every step trains on all 256 (a full batch), "
        "as plain fit does"
    ]
    assert rep.trace.info["batch_size"] == 256  # the samples a step trains on, not the batch_size asked for
""",
    )
    result.assert_outcomes(passed=1)


def test_keras_progress_output_shows_the_batches_and_epochs_of_plain_fit(pytester, tiny_problem):
    """verbose=1 (tried as a new user would): the chunked calls showed the bar at each chunk's last step, past
    the epoch's end ("50/20"), and a full batch with verbose=2 was shown as one long epoch ("Epoch 1/1"). Keras'
    progress output observes batches and epochs as a callback does: the run keeps them."""
    result = run(
        pytester,
        tiny_problem,
        r"""
import re


def shown(out):
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return re.findall(r"Epoch \d+/\d+", out), [tuple(map(int, c)) for c in re.findall(r"(\d+)/(\d+) ", out)]


def plain_then_stability(stability, capsys, batch_size, epochs, verbose):
    # what plain fit and stability.fit print, and the stability run's report
    build().fit(X, Y, batch_size=batch_size, epochs=epochs, verbose=verbose)
    plain = shown(capsys.readouterr().out)
    rep = stability.fit(build(), X, Y, batch_size=batch_size, verbose=verbose)
    return plain, shown(capsys.readouterr().out), rep


@pytest.mark.stable_training(steps=40)
def test_bar(stability, capsys):
    (plain_epochs, plain_bars), (epochs, bars), rep = plain_then_stability(stability, capsys, 64, 10, 1)
    assert epochs == plain_epochs and len(epochs) == 10
    assert bars and all(n <= total == 4 for n, total in bars), bars
    assert (4, 4) in bars and (4, 4) in plain_bars
    assert any("Keras' progress output (verbose=1)" in n for n in rep.trace.info["speed_notes"])


@pytest.mark.stable_training(steps=30)
def test_epoch_lines(stability, capsys):
    (plain_epochs, _), (epochs, _), rep = plain_then_stability(stability, capsys, 256, 30, 2)
    assert epochs == plain_epochs and len(epochs) == 30
    assert rep.trace.info["speed_notes"][0].startswith(
        "short epochs (1 step(s) each) kept for Keras' progress output (verbose=2), which sees them: "
    )
""",
    )
    result.assert_outcomes(passed=2)


def test_the_validation_loss_is_the_one_evaluate_reports_with_regularization_and_added_losses(pytester, tiny_problem):
    """The plugin's own validation loss is ``evaluate``'s: the compiled loss, what the layers add with
    ``add_loss`` and the weights' regularization.  A model with a ``kernel_regularizer`` once had no validation
    loss at all (its regularizer read None for the weight in the plugin's stateless scope: "val_loss is not
    judged"), and a model whose loss is an ``add_loss`` neither ("No loss to compute")."""
    result = run(
        pytester,
        tiny_problem,
        """
class Penalty(keras.layers.Layer):
    def call(self, h, target):
        self.add_loss(0.1 * keras.ops.mean(keras.ops.square(h - target)))
        return h


def regularized(compiled_loss):
    # a classifier with a compiled loss, or an autoencoder whose only loss is an add_loss: both penalized
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
    if compiled_loss:
        out = keras.layers.Dense(1, activation="sigmoid")(Penalty()(h, target=0.0))
    else:
        out = Penalty()(keras.layers.Dense(8)(h), inputs)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy" if compiled_loss else None)
    return model


@pytest.mark.parametrize("compiled_loss", [True, False])
@pytest.mark.stable_training(steps=20, readback_every=10, validate_every=10)
def test_val(stability, compiled_loss):
    model = regularized(compiled_loss)
    targets = (XV, YV) if compiled_loss else (XV,)
    rep = stability.fit(model, X, Y if compiled_loss else None, batch_size=32, validation_data=targets)
    assert not [n for n in rep.trace.info.get("notes", []) if "validation" in n], rep.trace.info["notes"]
    assert len(rep.trace.val_steps) >= 2 and rep.trace.val_steps[-1] == 20, rep.trace.val_steps
    assert rep.trace.info["batch_size"] == 32  # the samples a step trains on (the BatchNorm diagnosis reads it)
    evaluated = model.evaluate(*targets, batch_size=len(XV), verbose=0)
    assert abs(rep.trace.val_loss[-1] - evaluated) <= 1e-5 * evaluated, (rep.trace.val_loss, evaluated)


# a Sequential without an Input creates its weights in the plugin's first measurement, the regularized ones then
# unmapped: on TensorFlow that read None, and the run was refused ("validation_data does not fit the model")
@pytest.mark.stable_training(steps=20, readback_every=10, validate_every=10)
def test_lazy(stability):
    dense = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01))
    model = keras.Sequential([dense, keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    rep = stability.fit(model, X, Y, batch_size=32, validation_data=(XV, YV))
    assert "notes" not in rep.trace.info, rep.trace.info["notes"]
    evaluated = model.evaluate(XV, YV, batch_size=len(XV), verbose=0)
    assert abs(rep.trace.val_loss[-1] - evaluated) <= 1e-5 * evaluated, (rep.trace.val_loss, evaluated)
""",
    )
    result.assert_outcomes(passed=3)


def test_a_loss_that_changes_with_the_batching_is_validated_in_fits_own_batches(pytester, tiny_problem):
    """The plugin joins the validation batches into large ones, which changes nothing for a mean over samples;
    a ``"sum"`` reduction (each batch's sum, averaged over batches) and a Dice loss (one ratio over the whole
    batch) change with it: the sum's validation loss was twice Keras' ``val_loss`` (64 samples joined against
    two batches of 32), the Dice loss 6e-4 off.  The first batches, apart and joined, tell the two kinds apart;
    the second kind is measured in the batches ``fit`` validates in, and the row says why, while a mean over
    samples is still joined and says nothing."""
    result = run(
        pytester,
        tiny_problem,
        """
SEG_X = np.random.default_rng(2).normal(size=(160, 6, 6, 1)).astype("float32")
SEG_Y = (SEG_X > 0.3).astype("float32")

LOSSES = {
    "mean": "binary_crossentropy",
    "sum": keras.losses.BinaryCrossentropy(reduction="sum"),
    "dice": keras.losses.Dice(),
}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.stable_training(steps=16, readback_every=8, validate_every=8)
def test_val(stability, kind):
    if kind == "dice":
        conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")
        model = keras.Sequential([keras.Input((6, 6, 1)), conv])
        x, y, val = SEG_X[:96], SEG_Y[:96], (SEG_X[96:], SEG_Y[96:])
    else:
        model, x, y, val = build(compile=False), X, Y, (XV, YV)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSSES[kind])
    rep = stability.fit(model, x, y, batch_size=32, validation_data=val)
    notes = [n for n in rep.trace.info.get("notes", []) if "batched" in n]
    assert notes == ([] if kind == "mean" else [
        "the loss changes with how the samples are batched (a sum, or a loss over the whole batch), so the "
        "validation loss is measured in the 2 validation batches fit uses, as Keras' val_loss is"
    ]), notes
    assert rep.trace.val_steps[-1] == 16, rep.trace.val_steps
    evaluated = model.evaluate(*val, batch_size=32, verbose=0)  # the batches of fit's own validation
    assert abs(rep.trace.val_loss[-1] - evaluated) <= 1e-5 * evaluated, (rep.trace.val_loss, evaluated)
""",
    )
    result.assert_outcomes(passed=3)


def test_the_batching_probe_tells_a_mean_a_sum_and_a_loss_it_cannot_compute_apart():
    """The probe before the first measurement: a mean over samples is the same one by one and together, a sum is
    not, and a model whose loss cannot be computed (no compiled loss: its test_step's own) is one it cannot tell,
    which is measured in fit's batches without a note that blames the batching."""
    import numpy as np

    from pytest_stability.training.validation import depends_on_batching

    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 1)).astype("float32"), None)] * 2

    def model(loss):
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss=loss)
        return m

    assert depends_on_batching(keras, model("mse"), batches) is False
    assert depends_on_batching(keras, model(keras.losses.MeanSquaredError(reduction="sum")), batches) is True
    assert depends_on_batching(keras, model(None), batches) is None


def test_a_model_with_a_test_step_of_its_own_is_validated_with_it(pytester, tiny_problem):
    """Keras' ``val_loss`` is what the model's ``test_step`` computes.  The plugin measured the compiled loss
    (``compute_loss``) whatever the ``test_step``: a trial's own computed an L1 error, its val_loss 0.40 against
    the judged MSE's 0.24, and one without a compiled loss had its validation "not judged" (on JAX, whose
    ``compute_loss`` returns 0 without a loss, a flat 0 was judged).  A ``test_step`` of the model's own is now
    run itself, on fit's validation batches from reset metrics, with nothing kept: here it adds 1 to the MSE,
    the measurement is ``evaluate``'s, and the epoch's running loss in the History, which a measurement in the
    middle of the epoch would have disturbed through the loss tracker, is the mean of the epoch's steps."""
    result = run(
        pytester,
        tiny_problem,
        """
BACKEND = keras.backend.backend()


class PlusOne(keras.Sequential):
    def test_step(self, *args):
        tracker = self.metrics[0]  # the loss tracker, whose variables come first in metrics_variables
        if BACKEND == "jax":  # Keras' JAX trainer: a stateless test_step
            (tv, ntv, mv), data = args
            y_pred, _ = self.stateless_call(tv, ntv, data[0], training=False)
            loss = self.compute_loss(x=data[0], y=data[1], y_pred=y_pred) + 1.0
            n = len(tracker.variables)
            kept = tracker.stateless_update_state(mv[:n], loss, sample_weight=keras.ops.shape(data[0])[0])
            return {"loss": tracker.stateless_result(kept)}, (tv, ntv, list(kept) + list(mv[n:]))
        (data,) = args
        loss = self.compute_loss(x=data[0], y=data[1], y_pred=self(data[0], training=False)) + 1.0
        tracker.update_state(loss, sample_weight=keras.ops.shape(data[0])[0])
        return self.get_metrics_result()


@pytest.mark.stable_training(steps=16, readback_every=4, validate_every=4)
def test_val(stability):
    model = PlusOne([keras.Input((8,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rep = stability.fit(model, X, Y, batch_size=32, validation_data=(XV, YV))
    assert "notes" not in rep.trace.info, rep.trace.info["notes"]
    assert list(rep.trace.val_steps) == [0, 4, 8, 12, 16]
    evaluated = model.evaluate(XV, YV, batch_size=32, verbose=0)
    mse = float(np.mean((keras.ops.convert_to_numpy(model(XV))[:, 0] - YV) ** 2))
    assert abs(evaluated - (mse + 1.0)) <= 1e-5 * evaluated, (evaluated, mse)  # the premise: its own loss
    assert abs(rep.trace.val_loss[-1] - evaluated) <= 1e-5 * evaluated, (rep.trace.val_loss, evaluated)
    # 8 steps an epoch: the second epoch's running mean, measured in its middle (step 12) and undisturbed
    epoch_loss = rep.history.history["loss"][-1]
    assert abs(epoch_loss - float(np.mean(rep.trace.loss[8:16]))) <= 1e-5 * epoch_loss, rep.history.history


class TrainingPenalty(keras.layers.Layer):
    def call(self, h, training=None):
        if training:  # the only loss: in training mode (inference has none for compute_loss)
            self.add_loss(keras.ops.mean(keras.ops.square(h - 1.0)))
        return h


class OwnSquaredError(keras.Sequential):
    def test_step(self, *args):
        tracker = self.metrics[0]
        if BACKEND == "jax":
            (tv, ntv, mv), data = args
            y_pred, _ = self.stateless_call(tv, ntv, data[0], training=False)
        else:
            (data,) = args
            y_pred = self(data[0], training=False)
        loss = keras.ops.mean(keras.ops.square(y_pred[:, 0] - data[1]))
        if BACKEND == "jax":
            n = len(tracker.variables)
            kept = tracker.stateless_update_state(mv[:n], loss)
            return {"loss": tracker.stateless_result(kept)}, (tv, ntv, list(kept) + list(mv[n:]))
        tracker.update_state(loss)
        return {"loss": tracker.result()}


# the BatchNorm gap is measured with compute_loss, which has no loss in inference mode here: it once took the
# validation loss, which the model's own test_step computes, down with it ("val_loss is not judged")
@pytest.mark.stable_training(steps=8, readback_every=4, validate_every=4)
def test_batchnorm_gap_without_compute_loss(stability):
    layers = [keras.Input((8,)), keras.layers.Dense(8), keras.layers.BatchNormalization(), TrainingPenalty()]
    model = OwnSquaredError([*layers, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    rep = stability.fit(model, X, Y, batch_size=32, validation_data=(XV, YV))
    assert list(rep.trace.val_steps) == [0, 4, 8], rep.trace.info.get("notes")
    assert rep.trace.info["notes"] == ["the BatchNorm train/inference gap could not be measured (ValueError)"]
    evaluated = model.evaluate(XV, YV, batch_size=32, verbose=0)
    assert abs(rep.trace.val_loss[-1] - evaluated) <= 1e-5 * evaluated, (rep.trace.val_loss, evaluated)


@pytest.mark.stable_training(steps=8)
def test_no_loss_in_logs(stability):
    class NoLoss(keras.Sequential):
        def test_step(self, *args):
            return ({"other": 0.0}, args[0]) if BACKEND == "jax" else {"other": 0.0}

    model = NoLoss([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rep = stability.fit(model, X, Y, batch_size=32, validation_data=(XV, YV))
    assert rep.trace.val_loss is None
    assert rep.trace.info["notes"] == [
        "the validation loss could not be computed with its own test_step (ValueError: the model's test_step "
        "returned no 'loss' (its logs: ['other'])); val_loss is not judged"
    ]
""",
    )
    result.assert_outcomes(passed=3)


def test_a_model_with_a_fixed_batch_size_is_validated_in_whole_batches_of_it(pytester, tiny_problem):
    """A stateful RNN takes batches of exactly its Input's batch size: the plugin's own validation, which joins
    the validation batches into larger ones, measures in whole batches of that size (it had refused the run,
    blaming validation data that plain fit takes), and says which samples it left out (whole batches alone:
    test_fidelity.py's stateful_rnn setup, the same weights as plain fit)."""
    result = run(
        pytester,
        tiny_problem,
        """
SEQ = np.random.default_rng(1).normal(size=(64, 5, 1)).astype("float32")
SEQ_Y = SEQ.sum(axis=1)


def stateful():
    rnn = keras.layers.SimpleRNN(4, stateful=True)
    model = keras.Sequential([keras.Input(batch_shape=(8, 5, 1)), rnn, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


# one epoch with validation_freq=2: Keras' own validation, which a partial batch fails, never runs
@pytest.mark.stable_training(steps=6, readback_every=2)
def test_left_over(stability):
    val = (SEQ[:20], SEQ_Y[:20])
    rep = stability.fit(stateful(), SEQ, SEQ_Y, batch_size=8, shuffle=False, validation_data=val, validation_freq=2)
    assert len(rep.trace.val_loss) >= 2 and np.all(np.isfinite(rep.trace.val_loss))
    assert "the validation loss is measured on 16 of the 20 validation samples, in whole batches" in " ".join(
        rep.trace.info["notes"]
    )
""",
    )
    result.assert_outcomes(passed=1)


def test_a_layer_a_callback_freezes_when_fit_begins(pytester, tiny_problem):
    """On TensorFlow and PyTorch the frozen layer's weights never change, as in plain fit (the differential test
    compares the rest), and no check takes it for a layer that cannot learn: Keras' PyTorch fit built the
    optimizer for it before the callbacks ran, and the run once failed `stuck` ("never received a gradient ...
    set layer.trainable = False"). Keras' JAX fit built it before them too, and its first step refuses the
    change: plain fit raises that ValueError, a stability run fails with it, quoted, saying where it came from
    (it once said "model.fit() rejected the arguments", which these are not)."""
    result = run(
        pytester,
        tiny_problem,
        """
class Freeze(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.model.layers[0].trainable = False

def test_freeze(stability):
    model = build()
    first = [w.copy() for w in model.layers[0].get_weights()]
    stability.fit(model, X, Y, steps=12, batch_size=32, callbacks=[Freeze()])
    for a, b in zip(first, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
""",
    )
    if BACKEND == "jax":
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["*stability.fit(): model.fit() raised at its first step, before any update: ValueError: *"]
        )
    else:
        result.assert_outcomes(passed=1)


FLOAT64 = """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8))
Y = X @ rng.normal(size=(8, 1))


@pytest.mark.stable_training(steps=40, readback_every=10)
def test_float64(stability):
    model = keras.Sequential([keras.Input((8,), dtype=DTYPE), keras.layers.Dense(16, activation="relu", dtype=DTYPE),
                              keras.layers.Dense(1, dtype=DTYPE)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rep = stability.fit(model, X, Y, batch_size=32, validation_split=0.25)
    tr = rep.trace
    assert tr.steps == 40 and np.all(np.isfinite(tr.loss)) and np.all(tr.grad_norm > 0)
    assert tr.loss[-5:].mean() < tr.loss[:5].mean() and tr.has_validation
    assert {str(w.dtype) for w in model.weights} == {EXPECTED}
"""


def test_a_float64_model_trains_and_is_recorded(pytester):
    # PyTorch's norm refused to narrow float64 to the float32 the recorder asked for, and the run was refused as
    # "model.fit() raised at its first step"; layers of dtype float64 leave Keras' floatx (process-wide) alone
    result = run(pytester, FLOAT64.replace("DTYPE", '"float64"').replace("EXPECTED", '"float64"'), "")
    result.assert_outcomes(passed=1)


@pytest.mark.skipif(BACKEND != "jax", reason="jax_enable_x64 is JAX's")
def test_a_float64_model_under_jax_enable_x64(pytester, monkeypatch):
    # Under x64 a Python index is int64: the recorder's row went into its buffer at (int32 slot, int64 0), which
    # dynamic_update_slice refuses; a process of its own, as x64 is set for the whole process
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("JAX_ENABLE_X64", "1")
    pytester.makepyfile(FLOAT64.replace("DTYPE", '"float64"').replace("EXPECTED", '"float64"'))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
