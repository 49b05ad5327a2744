"""A model built under a distribution strategy trains under it: two logical CPU devices.

TensorFlow: ``tf.distribute.MirroredStrategy`` over two logical CPUs
(``tf.config.set_logical_device_configuration``).  JAX:
``keras.distribution.DataParallel`` over two host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``).  Both are
process-wide settings made before the framework starts, hence a subprocess.
"""

from __future__ import annotations

import keras
import pytest

BACKEND = keras.backend.backend()

TF_TEST = """
import numpy as np
import pytest
import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X[:, 0] > 0).astype("float32")[:, None]
# one strategy for the module: two MirroredStrategy objects in one process can mix up their collective ops
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.stable_training(steps=24, validate_every=8)
def test_mirrored(stability):
    strategy = STRATEGY
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    w0 = model.get_weights()
    rep = stability.fit(model, X, Y, batch_size=32, validation_data=(X[:64], Y[:64]), shuffle=False)
    tr = rep.trace
    assert tr.steps == 24 and tr.info["distributed"] and tr.info["steps_per_execution"] == 1
    # what docs/backends.md (Distribution) says is recorded: replica 0's gradient (its 16 of the 32 samples)
    # of its loss divided by the 2 replicas, and replica 0's own minibatch loss
    ws = [tf.Variable(w) for w in w0]  # the same network by hand: dense relu, dense sigmoid, cross-entropy
    with tf.GradientTape() as tape:
        p = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(tf.constant(X[:16]), ws[0]) + ws[1]), ws[2]) + ws[3])
        p = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
        y16 = tf.constant(Y[:16])
        loss = -tf.reduce_mean(y16 * tf.math.log(p) + (1 - y16) * tf.math.log(1 - p))
        per_replica = loss / 2  # Keras divides each replica's loss by the number of replicas
    grads = tape.gradient(per_replica, ws)
    norm = float(tf.sqrt(sum(tf.reduce_sum(g * g) for g in grads)))
    assert tr.grad_norm[0] == pytest.approx(norm, rel=1e-4)
    assert tr.loss[0] == pytest.approx(float(loss), rel=1e-5)
    assert np.all(np.isfinite(tr.loss)) and np.all(tr.grad_norm > 0)
    assert tr.loss[-1] < tr.loss[0] and tr.has_validation
    assert type(model.distribute_strategy).__name__ == "MirroredStrategy"
    # each replica's own gradient norm (replica 0's is the one recorded above), and weight copies that agree
    r0, r1 = tr.curves["grad_norm/replica_0"], tr.curves["grad_norm/replica_1"]
    assert np.allclose(r0, tr.grad_norm, rtol=1e-5) and np.all(r1 > 0) and not np.allclose(r0, r1)
    assert tr.info["replica_weight_drift"]["value"] == 0.0 and tr.info["replica_weight_drift"]["replicas"] == 2
    assert not [f for f in rep.findings if f.kind.startswith("replica")]


@pytest.mark.stable_training(steps=40)
def test_unbalanced_shards(stability):
    # in order, batches of 32: replica 0 trains on rows 0-15 of each batch, replica 1 on rows 16-31, which
    # are 30x larger: its gradients are ~900x replica 0's
    strategy = STRATEGY
    x = X.copy()
    x[np.arange(len(x)) % 32 >= 16] *= 30.0
    y = x @ np.linspace(-1, 1, 8).astype("float32")[:, None]
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(1e-5), loss="mse")
    rep = stability.fit(model, x, y, batch_size=32, shuffle=False, check=False)
    (f,) = [f for f in rep.findings if f.check == "grad_norm"]
    assert f.kind == "replica_disagree" and f.evidence["replica"] == 1 and f.value > 100, f.message
    assert "shard" in f.cause and f.evidence["cause_key"] == "replica_disagree"
"""

JAX_TEST = """
import numpy as np
import pytest
import jax
import keras

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X[:, 0] > 0).astype("float32")[:, None]


@pytest.mark.stable_training(steps=24, validate_every=8)
def test_data_parallel(stability):
    devices = jax.devices("cpu")
    assert len(devices) == 2
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        rep = stability.fit(model, X, Y, batch_size=32, validation_data=(X[:64], Y[:64]))
    finally:
        keras.distribution.set_distribution(None)
    tr = rep.trace
    assert tr.steps == 24 and np.all(np.isfinite(tr.loss)) and np.all(tr.grad_norm > 0)
    assert tr.loss[-1] < tr.loss[0] and tr.has_validation
"""


@pytest.mark.skipif(BACKEND not in ("tensorflow", "jax"), reason="MirroredStrategy (TensorFlow), DataParallel (JAX)")
def test_trains_under_two_logical_devices(pytester, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", BACKEND)
    if BACKEND == "jax":
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
        monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    pytester.makepyfile(TF_TEST if BACKEND == "tensorflow" else JAX_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2 if BACKEND == "tensorflow" else 1)
