"""The setups the differential test runs through plain ``model.fit`` and through ``stability.fit``.

This file is copied into a pytester directory (see test_fidelity.py) and imported there: each setup is a
function returning ``(model, x, y, fit_kwargs)``, called after seeding, so that both runs start from the same
model and data.  Backend-neutral except the GAN's train_step (one per backend, as in Keras' guides: gan.py, copied
from example_project/).
"""

from __future__ import annotations

import os

import keras
import numpy as np

BACKEND = keras.backend.backend()
STEPS = 24  # 3 epochs of 8 batches of 8
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 4)).astype("float32")
Y = (X[:, :1] + 0.5 * X[:, 1:2] > 0).astype("float32")


def mlp(optimizer=None, **compile_kwargs):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        **compile_kwargs,
    )
    return model


class Spy(keras.callbacks.Callback):
    """Every hook Keras calls during fit: (hook, index, sorted log keys)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _log(self, hook, index=None, logs=None):
        self.calls.append((hook, index, tuple(sorted(logs or {}))))

    def on_train_begin(self, logs=None):
        self._log("train_begin", None, logs)

    def on_train_end(self, logs=None):
        self._log("train_end", None, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._log("epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log("epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._log("train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._log("train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._log("test_begin", None, logs)

    def on_test_end(self, logs=None):
        self._log("test_end", None, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._log("test_batch_end", batch, logs)


class EpochSpy(keras.callbacks.Callback):
    """Only epoch-level hooks: the plugin keeps its chunked calls for it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, tuple(sorted(logs or {}))))


class StopAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.stop_training = True


class RaiseAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise RuntimeError(f"the user's callback raised at batch {batch}")


class Batches(keras.utils.PyDataset):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return X[i * 8 : (i + 1) * 8], Y[i * 8 : (i + 1) * 8]


def batches_forever():
    while True:
        for i in range(8):
            yield X[i * 8 : (i + 1) * 8], Y[i * 8 : (i + 1) * 8]


# -- the setups: each returns (model, x, y, fit_kwargs); fit_kwargs callbacks are made fresh per call ----------


def spy():
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [Spy()], "validation_data": (X[:16], Y[:16])}


class OwnTestStep(keras.Sequential):
    """A ``test_step`` of the model's own (Keras' own, called as a user's override calls it): the plugin runs it
    itself for its validation measurements, compiled (TensorFlow: a graph loop over the batches of one shape; JAX:
    jitted and scanned)."""

    def test_step(self, *args):
        return super().test_step(*args)


def own_test_step():
    """Validated by its own test_step in batches of 8, 8 and 4, a regularized weight, and a callback that sees
    every batch (the plugin's measurements call none of its test hooks)."""
    model = OwnTestStep(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01)),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    return model, X, Y, {"batch_size": 8, "callbacks": [Spy()], "validation_data": (X[:20], Y[:20])}


def spy_alone():
    """One callback, not in a list: Keras' fit takes it as [callback]."""
    return mlp(), X, Y, {"batch_size": 8, "callbacks": Spy(), "validation_data": (X[:16], Y[:16])}


def epoch_spy():
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [EpochSpy()], "validation_split": 0.25}


def stop_training():
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [Spy(), StopAt(4)]}


def raising_callback():
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [RaiseAt(3)]}


def early_stopping():
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [stop, EpochSpy()]}


def reduce_lr_on_plateau():
    cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, min_delta=10.0, factor=0.5)
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [cb]}


def learning_rate_scheduler():
    cb = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-2 * 0.5**epoch)
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [cb, EpochSpy()]}


def rate_set_per_batch():
    """A callback that sets the learning rate before each batch through the model it closes over (not
    ``self.model``).  On JAX, plain fit holds the optimizer's state through an epoch and drops such an assignment
    until the epoch's end, unless something reads the variables (``Callback.model`` syncs them): the plugin's
    own reads must not, at each batch's end or at a validation mid-epoch."""
    model = mlp(keras.optimizers.SGD(0.1))

    def set_rate(batch, logs):
        model.optimizer.learning_rate.assign(0.1 / (1 + batch))

    callbacks = [keras.callbacks.LambdaCallback(on_train_batch_begin=set_rate), Spy()]
    return model, X, Y, {"batch_size": 8, "callbacks": callbacks, "validation_data": (X[:16], Y[:16])}


class FreezeFirstLayer(keras.callbacks.Callback):
    """Freezes the first layer before the first step (a fine-tuning schedule's first epoch)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self.model.layers[0].trainable = False


def frozen_at_first_epoch():
    """A layer frozen by a callback after fit began: on TensorFlow, plain fit builds the optimizer in its first
    step, for the variables still trainable then (JAX and PyTorch build it before the callbacks run)."""
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [FreezeFirstLayer(), Spy()]}


def sparse_labels_two_outputs():
    """Integer labels for a softmax head beside a sigmoid head, each with "accuracy" (resolved from the data's and
    the outputs' shapes to sparse categorical and binary accuracy) and a weighted metric: on TensorFlow, plain fit
    builds the metrics in its first step."""
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(
        inputs,
        {
            "kind": keras.layers.Dense(3, activation="softmax")(h),
            "flag": keras.layers.Dense(1, activation="sigmoid")(h),
        },
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={"kind": "sparse_categorical_crossentropy", "flag": "binary_crossentropy"},
        metrics={"kind": ["accuracy"], "flag": ["accuracy", "mae"]},
        weighted_metrics={"kind": ["accuracy"], "flag": []},
    )
    kinds = (X[:, 0] > 0).astype("int32") + (X[:, 1] > 0).astype("int32")
    return model, X, {"kind": kinds, "flag": Y}, {"batch_size": 8, "callbacks": [Spy()]}


def model_checkpoint(tmp):
    cb = keras.callbacks.ModelCheckpoint(
        os.path.join(tmp, "ckpt_{epoch}_{batch}.weights.h5"), save_weights_only=True, save_freq=5
    )
    return mlp(), X, Y, {"batch_size": 8, "callbacks": [cb]}


def mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = mlp()
    finally:
        keras.config.set_dtype_policy("float32")
    return model, X, Y, {"batch_size": 8}


def jit_compile():
    return mlp(jit_compile=True), X, Y, {"batch_size": 8}


def run_eagerly():
    return mlp(run_eagerly=True), X, Y, {"batch_size": 8, "callbacks": [EpochSpy()]}


def own_steps_per_execution():
    return mlp(steps_per_execution=4), X, Y, {"batch_size": 8, "callbacks": [Spy()]}


def gradient_accumulation():
    return mlp(keras.optimizers.Adam(1e-2, gradient_accumulation_steps=2)), X, Y, {"batch_size": 8}


def moving_average():
    """Adam with ``use_ema``: the moving average overwrites the weights every 5 steps, and fit writes it into
    them once more at its end (``finalize_variable_values``), which a run cut into several fits would repeat."""
    optimizer = keras.optimizers.Adam(1e-2, use_ema=True, ema_overwrite_frequency=5)
    return mlp(optimizer), X, Y, {"batch_size": 8, "callbacks": [EpochSpy()]}


def callable_learning_rate():
    """A learning rate given as a function (Keras calls it at each step): the plugin reads the optimizer's
    config, which serialises the function with a warning plain fit never gives."""
    return mlp(keras.optimizers.Adam(learning_rate=lambda: 0.01)), X, Y, {"batch_size": 8, "callbacks": [EpochSpy()]}


SEQ = np.random.default_rng(1).normal(size=(64, 5, 1)).astype("float32")


def stateful_rnn():
    """A stateful RNN (its Input's batch size fixed): the plugin's own validation, in whole batches of that
    size, leaves the RNN's state as plain fit's validation does.  (A SimpleRNN: Keras' own fit of a stateful
    LSTM fails on PyTorch, a tensor modified in place in backprop.)"""
    rnn = keras.layers.SimpleRNN(4, stateful=True)
    model = keras.Sequential([keras.Input(batch_shape=(8, 5, 1)), rnn, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    y = SEQ.sum(axis=1)
    kw = {"batch_size": 8, "shuffle": False, "validation_data": (SEQ[:24], y[:24]), "callbacks": [EpochSpy()]}
    return model, SEQ, y, kw


def class_weight():
    return mlp(), X, Y, {"batch_size": 8, "class_weight": {0: 1.0, 1: 3.0}}


def sample_weight():
    return mlp(), X, Y, {"batch_size": 8, "sample_weight": np.linspace(0.5, 1.5, 64).astype("float32")}


def validation_split():
    return mlp(), X, Y, {"batch_size": 8, "validation_split": 0.25, "callbacks": [EpochSpy()]}


def tf_dataset():
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    return mlp(), ds, None, {"callbacks": [EpochSpy()]}


def py_dataset():
    return mlp(), Batches(), None, {"callbacks": [EpochSpy()]}


def generator():
    return mlp(), batches_forever(), None, {"steps_per_epoch": 8, "epochs": 3, "callbacks": [EpochSpy()]}


def validation_generator():
    """A one-shot generator as validation_data: Keras' own validation at each epoch's end still sees it."""
    val = ((X[i : i + 16], Y[i : i + 16]) for i in range(0, 32, 16))
    return mlp(), X, Y, {"batch_size": 8, "validation_data": val, "callbacks": [EpochSpy()]}


def _loader(x, y, **kwargs):
    import torch

    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), **kwargs
    )


def torch_dataloader():
    """The PyTorch backend's own input: a DataLoader that shuffles (each epoch's permutation drawn from torch's
    global generator when its iteration starts), and one for validation."""
    return (
        mlp(),
        _loader(X, Y, batch_size=8, shuffle=True),
        None,
        {
            "validation_data": _loader(X[:16], Y[:16], batch_size=8),
            "callbacks": [EpochSpy()],
        },
    )


def torch_dataloader_unobserved():
    """The same DataLoader with nothing that observes epochs."""
    return mlp(), _loader(X, Y, batch_size=8, shuffle=True), None, {}


def pandas_frame():
    """A pandas DataFrame and Series, as tabular data often comes: the plugin gives fit their arrays."""
    import pandas as pd

    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    return mlp(), frame, pd.Series(Y[:, 0]), {"batch_size": 8, "validation_data": (frame[:16], pd.Series(Y[:16, 0]))}


class Endpoint(keras.layers.Layer):
    """The endpoint-layer pattern: the layer adds the loss (``add_loss``), the model is compiled with loss=None."""

    def call(self, prediction, target):
        self.add_loss(keras.ops.mean(keras.losses.binary_crossentropy(target, prediction)))
        return prediction


def endpoint_layer():
    """A model whose only loss is an ``add_loss`` (compiled with ``loss=None``), validation data included: fit
    trains it on that loss."""
    inputs, target = keras.Input((4,)), keras.Input((1,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    prediction = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = keras.Model([inputs, target], Endpoint()(prediction, target))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    return model, [X, Y], None, {"batch_size": 8, "validation_data": ([X[:16], Y[:16]],), "callbacks": [EpochSpy()]}


class Reconstruction(keras.layers.Layer):
    """An autoencoder's loss as ``add_loss``: how far the reconstruction is from the input."""

    def call(self, inputs, reconstruction):
        self.add_loss(keras.ops.mean(keras.ops.square(inputs - reconstruction)))
        return reconstruction


def add_loss_bare_validation():
    """An autoencoder whose only loss is an ``add_loss``, validated on a bare array, which fit reads as x_val
    alone (the plugin once refused it as not a tuple)."""
    inputs = keras.Input((4,))
    reconstruction = keras.layers.Dense(4)(keras.layers.Dense(2, activation="relu")(inputs))
    model = keras.Model(inputs, Reconstruction()(inputs, reconstruction))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    return model, X, None, {"batch_size": 8, "validation_data": X[:16], "callbacks": [EpochSpy()]}


def full_batch():
    """The whole data set each step, a model with Dropout (each sample's mask depends on its place in the batch,
    which Keras shuffles each epoch): the stability run keeps the epochs."""
    return mlp(), X, Y, {"batch_size": 64, "_plain_epochs": 24}


def full_batch_no_dropout():
    """The whole data set each step, nothing random in the model: the stability run trains it as one long epoch
    (nothing observes epochs), which changes the order of the samples within the batch, so the sums, by
    rounding only."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    return model, X, Y, {"batch_size": 64, "_plain_epochs": 24}


def gan():
    """The GAN of Keras' guides (example_project/gan.py): two optimizers, d_loss and g_loss."""
    from gan import REAL
    from gan import gan as build

    return build(), REAL, None, {"batch_size": 32, "callbacks": [EpochSpy()]}


def gan_whatif():
    """The GAN with the what-if on, which keeps the state before the first step: ``model.optimizer``, which the
    GAN's ``train_step`` never applies, stays unbuilt as in plain fit on TensorFlow (the state was once taken by
    building it first)."""
    return gan()


def frozen_whatif():
    """A layer frozen by a callback after fit began, with the what-if on: the optimizer is built for the variables
    still trainable at the first step, as in plain fit, not before the callbacks run."""
    return frozen_at_first_epoch()
