"""The plugin's validation measurements compiled as Keras compiles its own ``evaluate`` (``CompiledMeasure``): under
JAX all of them, one jitted function a run; under TensorFlow a model's own ``test_step``, in a ``tf.function``.
They give what the same measurements give op by op, which PyTorch keeps (its ``evaluate`` runs eagerly too).  Runs
once per Keras backend in CI."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pytest_stability.training.validation import (
    CompiledMeasure,
    ValidationProbe,
    _loss_of,
    as_given,
    depends_on_batching,
    own_depends_on_batching,
    own_test_step_loss,
)

BACKEND = keras.backend.backend()


class Penalty(keras.layers.Layer):
    def call(self, h):
        self.add_loss(0.01 * keras.ops.mean(keras.ops.square(h)))
        return h


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 10)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32"), rng.uniform(0.5, 1.5, size=n).astype("float32")


def _trained(loss="binary_crossentropy", epochs=1, **compile_kw):
    """A model with every kind of loss term evaluate adds up (compiled, added, regularization), BatchNorm and
    Dropout (which differ between training and inference mode), after ``epochs`` epochs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    h = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.1))(inputs)
    h = Penalty()(keras.layers.Dropout(0.3)(keras.layers.BatchNormalization()(h)))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, **compile_kw)
    x, y, _ = _data()
    if epochs:
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return model


def test_the_compiled_measurement_is_the_op_by_op_one_and_evaluates():
    model = _trained()
    x, y, w = _data()
    measure = CompiledMeasure(keras, model)
    assert measure.usable is (BACKEND == "jax")  # compiled under JAX only
    for training in (False, True):  # inference mode: validation; training mode: the BatchNorm gap's other half
        for weights in (None, w):
            op_by_op = _loss_of(keras, model, x, y, weights, training)
            compiled = _loss_of(keras, model, x, y, weights, training, measure=measure)
            assert compiled == pytest.approx(op_by_op, rel=1e-5), (training, weights is None)
    assert measure.usable is (BACKEND == "jax"), "a compiled measurement failed and fell back to op by op"
    assert _loss_of(keras, model, x, y, None, False, measure=measure) == pytest.approx(
        model.evaluate(x, y, batch_size=len(x), verbose=0), rel=1e-5
    )


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
def test_the_compiled_probe_tells_a_sum_from_a_mean_as_op_by_op(reduction):
    # the first samples together and one by one, in one compiled call under JAX (the one by one mapped with vmap)
    model = _trained(loss=keras.losses.BinaryCrossentropy(reduction=reduction))
    x, y, _ = _data()
    batches = [(x[i : i + 8], y[i : i + 8], None) for i in range(0, len(x), 8)]
    measure = CompiledMeasure(keras, model)
    assert depends_on_batching(keras, model, batches, measure) is (reduction == "sum")
    assert depends_on_batching(keras, model, batches) is (reduction == "sum")
    if BACKEND == "jax":
        together, apart = measure.joined_and_apart(*(keras.ops.convert_to_tensor(a[:4]) for a in (x, y)), None)
        ones = [_loss_of(keras, model, x[i : i + 1], y[i : i + 1], None, False) for i in range(4)]
        assert apart == pytest.approx(np.mean(ones), rel=1e-5)
        assert together == pytest.approx(_loss_of(keras, model, x[:4], y[:4], None, False), rel=1e-5)
        assert measure.usable


def test_a_model_fit_runs_eagerly_is_measured_op_by_op():
    # it may not trace (Python control flow on values): measured as fit runs it, op by op
    # (untrained: what decides is how the model is compiled; trained op by op, the two took 7 s on JAX)
    eager = CompiledMeasure(keras, _trained(epochs=0, run_eagerly=True))
    assert not eager.usable and not eager.usable_test_step
    assert not CompiledMeasure(keras, _trained(epochs=0, jit_compile=False)).usable


class OwnTestStep(keras.Model):
    """A ``test_step`` of the model's own (Keras' val_loss comes from it): here Keras' own, on every backend."""

    def test_step(self, *args):
        return super().test_step(*args)


def test_a_models_own_test_step_compiled_gives_the_eager_loss_and_evaluates():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    h = keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.1))(inputs)
    model = OwnTestStep(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.BatchNormalization()(h)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    x, y, _ = _data(60)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    batches = as_given(keras, [(x[i : i + 8], y[i : i + 8], None) for i in range(0, len(x), 8)])  # 7 of 8, then 4
    measure = CompiledMeasure(keras, model)
    compiled_where = {"jax": measure.test_step, "tensorflow": measure.tf_test_step}.get(BACKEND)
    assert (compiled_where is not None and compiled_where() is not None) is (BACKEND != "torch")
    before = [keras.ops.convert_to_numpy(v) for v in model.variables + model.metrics_variables]
    # the regularized kernel: the eager measurement raised on TensorFlow and PyTorch before (its regularizer read
    # the weight as None in the measurement's stateless scope), and the run had no validation loss
    eager = own_test_step_loss(keras, model, batches)
    compiled = own_test_step_loss(keras, model, batches, measure)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert measure.usable_test_step is (BACKEND != "torch"), "the compiled test_step failed and fell back"
    # the seven batches of 8 in one call, a graph loop (TensorFlow) or a scan (JAX) over them: one call a batch
    # cost a millisecond
    assert measure._loop_ok, "the loop failed and fell back to a call a batch"
    after = [keras.ops.convert_to_numpy(v) for v in model.variables + model.metrics_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "a measurement kept something"
    assert compiled == pytest.approx(model.evaluate(x, y, batch_size=8, verbose=0)[0], rel=1e-5)


class WeightedPlusOne(keras.Model):
    """Its own ``test_step``: the mean squared error plus 1, its loss tracker updated per batch
    weighted by the batch's samples (as Keras' own ``compute_loss`` does), or ``weighted=False`` unweighted (each
    batch counts once, whatever its size), or ``whole_batch=True`` the ratio of two sums over the batch (as a Dice
    loss is), each batch weighted."""

    def __init__(self, *args, weighted=True, whole_batch=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.weighted, self.whole_batch = weighted, whole_batch

    def test_step(self, *args):
        tracker = self.metrics[0]  # the loss tracker, whose variables come first in metrics_variables
        if BACKEND == "jax":  # Keras' JAX trainer: a stateless test_step
            (tv, ntv, mv), data = args
            y_pred, _ = self.stateless_call(tv, ntv, data[0], training=False)
        else:
            (data,) = args
            y_pred = self(data[0], training=False)
        err = keras.ops.square(y_pred - data[1])
        if self.whole_batch:
            loss = keras.ops.sum(err) / (keras.ops.sum(keras.ops.abs(y_pred)) + 1.0)
        else:
            loss = keras.ops.mean(err) + 1.0
        weight = keras.ops.shape(data[0])[0] if self.weighted else None
        if BACKEND == "jax":
            n = len(tracker.variables)
            kept = tracker.stateless_update_state(mv[:n], loss, sample_weight=weight)
            return {"loss": tracker.stateless_result(kept)}, (tv, ntv, list(kept) + list(mv[n:]))
        tracker.update_state(loss, sample_weight=weight)
        return {"loss": tracker.result()}


@pytest.mark.parametrize(
    "kind, samples, run_eagerly",
    [
        ("weighted", 70, True),
        ("weighted", 70, False),
        ("unweighted", 70, True),
        ("unweighted", 64, True),
        ("whole_batch", 70, True),
        ("whole_batch", 64, True),
    ],
)
def test_an_own_test_step_is_run_in_joined_batches_only_where_that_gives_fits_loss(kind, samples, run_eagerly):
    """A model's own ``test_step`` was run in fit's validation batches: eagerly (PyTorch's, ``run_eagerly``, and
    under TensorFlow the measurement before the first step), 512 calls of a batch of one cost a batch-1 epoch 5.7x
    plain fit on PyTorch at every measurement, and 2.4x on TensorFlow for the first one alone.  A probe (four
    samples together, one by one, and one and three) tells the losses that joined batches leave as they are, run
    joined, from those that change, run in fit's batches.  70 samples come in batches of 32, 32 and 6, whose
    unequal last batch makes an unweighted mean of the batches' losses differ from a mean over samples; 64 in two
    equal batches, where the two are the same.  Compiled (``run_eagerly=False``), JAX runs it in fit's batches
    (the probe would compile it for three more shapes)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    out = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(inputs))
    model = WeightedPlusOne(inputs, out, weighted=kind != "unweighted", whole_batch=kind == "whole_batch")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=run_eagerly)
    x, y, _ = _data(samples)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    batches = [(x[i : i + 32], y[i : i + 32], None) for i in range(0, len(x), 32)]
    joins = kind == "weighted" or (kind == "unweighted" and samples == 64)
    assert own_depends_on_batching(keras, model, batches) is (not joins)
    notes: list[str] = []
    probe = ValidationProbe(
        keras, model, x, y, kind="arrays", fit_kwargs={"validation_data": (x, y)}, batch_size=32, notes=notes
    )
    before = [keras.ops.convert_to_numpy(v) for v in model.variables + model.metrics_variables]
    probe(first=True)
    probe()
    assert probe.ok and not notes, notes
    after = [keras.ops.convert_to_numpy(v) for v in model.variables + model.metrics_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "a measurement kept something"
    probed = run_eagerly or BACKEND != "jax"
    assert len(probe._eval) == (1 if joins and probed else len(batches)), len(probe._eval)  # joined: one batch
    evaluated = model.evaluate(x, y, batch_size=32, verbose=0)
    joined = own_test_step_loss(keras, model, as_given(keras, [(x, y, None)]))
    if not joins:  # the premise: a mean over all samples is not what evaluate reports here
        assert abs(joined - evaluated) > 1e-3 * evaluated, (joined, evaluated)
    assert probe.losses[-1] == pytest.approx(evaluated, rel=1e-5), (probe.losses, evaluated)
