"""The fixture's training: data kinds, determinism, what is recorded, seeds, replay."""

import pytest


def run(pytester, source, *args):
    pytester.makepyfile(source)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_same_seed_same_trace_and_different_seed_differs(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
TRACES = {}

@pytest.mark.parametrize("seed", [3, 3, 4])
def test_model(stability, seed):
    report = stability.train(build(), X, Y, steps=60, seed=seed)
    TRACES.setdefault(seed, []).append(report.trace.loss.copy())

def test_compare():
    a, b = TRACES[3]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, TRACES[4][0])
""",
    )
    result.assert_outcomes(passed=4)


def _on_tensorflow_only(why="TensorFlow's gradient registry"):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(why)


def test_a_stability_test_leaves_none_of_its_graphs_alive(pytester, tiny_problem):
    """TensorFlow keeps a registration per traced ``tf.custom_gradient`` for good, and Keras' optimizer traces
    one in every train function: without the plugin dropping them when its ``fit`` returns, every graph that ``fit``
    traced would stay alive (and walked by each full garbage collection) for the rest of the process."""
    _on_tensorflow_only()
    result = run(
        pytester,
        tiny_problem
        + """
import gc
from tensorflow.python.framework import func_graph
from pytest_stability.training.isolation import gradient_registrations

SEEN = {}

def live_graphs():
    gc.collect()
    return sum(isinstance(o, func_graph.FuncGraph) for o in gc.get_objects())

class Seen(keras.callbacks.Callback):
    def on_train_end(self, logs=None):  # inside fit: its train function is traced by now
        SEEN["made"] = sorted(gradient_registrations() - SEEN["before"])
        SEEN["traced"] = live_graphs() - SEEN["graphs"]

def test_model(stability):
    SEEN["graphs"] = live_graphs()
    SEEN["before"] = gradient_registrations()
    stability.train(build(), X, Y, steps=20, validation_data=(XV, YV), callbacks=[Seen()])
    assert SEEN["made"] and not set(SEEN["made"]) & gradient_registrations()  # dropped when fit returned

def test_after():
    assert SEEN["made"] and SEEN["traced"] > 0  # fit registered gradients and traced graphs: they are gone
    assert not set(SEEN["made"]) & gradient_registrations()
    assert live_graphs() <= SEEN["graphs"]
""",
    )
    result.assert_outcomes(passed=2)


def test_the_users_own_custom_gradients_traced_in_a_stability_test_stay_registered(pytester, tiny_problem):
    """Only what the plugin's ``fit`` traced is dropped from TensorFlow's gradient registry: a ``tf.custom_gradient``
    function the user's code traced during the test (outside the plugin's ``fit``) is still differentiable in a
    later test, as it would be without the plugin."""
    _on_tensorflow_only()
    result = run(
        pytester,
        tiny_problem
        + """
import tensorflow as tf

@tf.custom_gradient
def times_three_backward(x):
    return tf.identity(x), lambda dy: 3.0 * dy

@tf.function
def f(x):
    return times_three_backward(x)

def test_model(stability):
    f(tf.constant(1.0))  # traced in graph mode here: registers a CustomGradient-* name
    stability.train(build(), X, Y, steps=8)
    f(tf.constant(2.0))

def test_after():
    x = tf.constant(2.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = f(x)  # the function traced in test_model, differentiated now
    assert float(tape.gradient(y, x)) == 3.0
""",
    )
    result.assert_outcomes(passed=2)


def test_records_raw_minibatch_loss_not_the_running_mean(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=16, shuffle=False)
def test_model(stability):
    model = build()
    w0 = [v.numpy() for v in model.trainable_variables]
    report = stability.train(model, X, Y, batch_size=32)
    # Recompute the first step's loss by hand from the initial weights and batch 0.
    check = build()
    for v, w in zip(check.trainable_variables, w0):
        v.assign(w)
    expected = float(keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(Y[:32, None], check(X[:32]))).mean())
    assert report.trace.loss[0] == pytest.approx(expected, rel=1e-5)
    # A running mean would be smooth; raw minibatch losses jump when the data cycles (8 batches/epoch).
    assert report.trace.loss[8] != pytest.approx(np.mean(report.trace.loss[:9]), rel=1e-3)
    assert report.trace.steps == 16 and report.trace.grad_norm.shape == (16,)
    assert np.all(report.trace.nonfinite == 0)
""",
    )
    result.assert_outcomes(passed=1)


DATA_KINDS = {
    "tf_data": "import tensorflow as tf; rep = stability.train(build(), "
    "tf.data.Dataset.from_tensor_slices((X, Y)).batch(32), "
    "validation_data=tf.data.Dataset.from_tensor_slices((XV, YV)).batch(32))",
    "pydataset": """
    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return X[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]
    rep = stability.train(build(), Seq(), validation_data=Seq())""",
    "sample_weight": "rep = stability.train(build(), X, Y, sample_weight=np.ones(len(X), 'float32'), "
    "validation_data=(XV, YV, np.ones(len(XV), 'float32')))",
    "dict_inputs": """
    inp = keras.Input((8,), name="features")
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(8, activation="relu")(inp))
    model = keras.Model({"features": inp}, out)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rep = stability.train(model, {"features": X}, Y, validation_data=({"features": XV}, YV))""",
    "factory": "rep = stability.train(build, X, Y)",
}


@pytest.mark.parametrize("kind", sorted(DATA_KINDS))
def test_data_kinds_train_for_exactly_the_steps(pytester, tiny_problem, kind):
    result = run(
        pytester,
        tiny_problem
        + f"""
@pytest.mark.stable_training(steps=20, validate_every=10)
def test_model(stability):
    {DATA_KINDS[kind]}
    assert rep.trace.steps == 20
    assert rep.ok
    assert rep.trace.has_validation == {kind != "factory"}
    if {kind != "factory"}:
        # measured before the first step, at the first read-back at or after each 10 steps, and at the end
        steps = rep.trace.val_steps.tolist()
        assert steps[0] == 0 and steps[-1] == 20 and len(steps) >= 3 and steps == sorted(steps)
""",
    )
    result.assert_outcomes(passed=1)


def test_validation_does_not_update_batchnorm_statistics(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
def bn_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.BatchNormalization(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model

@pytest.mark.stable_training(steps=20, validate_every=5)
def test_model(stability):
    keras.utils.set_random_seed(0)
    m1 = bn_model()
    keras.utils.set_random_seed(0)
    m2 = bn_model()
    with_val = stability.train(m1, X, Y, validation_data=(XV * 100 + 50, YV))
    stability.train(m2, X, Y, validation_data=(XV, YV))  # the same validation work, at the usual scale
    # before training, at the first read-back at or after every 5 steps (8-step epochs end chunks too), at the end
    assert with_val.trace.val_steps.tolist() == [0, 5, 13, 16, 20]
    # Same seed, same training: had validation (inputs shifted by +50) updated the
    # moving statistics, m1's moving mean would have been dragged towards 50.
    mean1, mean2 = m1.layers[0].moving_mean.numpy(), m2.layers[0].moving_mean.numpy()
    assert np.abs(mean2).max() < 1.0
    np.testing.assert_array_equal(mean1, mean2)
""",
    )
    result.assert_outcomes(passed=1)


def test_seeds_run_each_seed_and_replay_runs_one(pytester, tiny_problem):
    source = (
        tiny_problem
        + """
@pytest.mark.stable_training(steps=30, seeds=3, seed=10)
def test_model(stability):
    rep = stability.train(build(), X, Y)
    print("SEEDS", rep.seeds, [r.replay for r in rep.runs])
"""
    )
    result = run(pytester, source, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*SEEDS [[]10, 11, 12] [[]'pytest test_seeds_run_each_seed_and_replay_runs_one.py::"
            "test_model --stability-replay=10', *"
        ]
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", "--stability-replay=11")
    result.stdout.fnmatch_lines(["*SEEDS [[]11] *"])


def test_train_returns_metrics_and_device(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
@pytest.mark.stable_training(steps=20, device="cpu")
def test_model(stability):
    model = build()
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    rep = stability.train(model, X, Y)
    assert rep.device == "CPU"
    assert 0.0 <= rep.primary.final_metrics["accuracy"] <= 1.0
    assert rep.primary.final_metrics["loss"] > 0
    assert rep.trace.info["optimizer"] == "Adam" and rep.trace.info["optimizer_config"]["epsilon"] == 1e-7
""",
    )
    result.assert_outcomes(passed=1)


def test_batchnorm_train_inference_gap_measured_without_touching_statistics(pytester, tiny_problem):
    result = run(
        pytester,
        tiny_problem
        + """
def build_bn(momentum):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
                              keras.layers.BatchNormalization(momentum=momentum),
                              keras.layers.ReLU(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss="binary_crossentropy")
    return model

@pytest.mark.stable_training(steps=40, validate_every=10)
def test_gap(stability):
    lagging = stability.train(build_bn(0.999), X, Y, validation_data=(XV, YV), batch_size=4, check=False)
    # Moving statistics that barely moved from their init (momentum 0.999, 40 steps) do not
    # match the batch statistics: the same batch's loss differs between the two modes.
    gap = lagging.trace.info["bn_train_infer_gap"]
    assert 0.1 < gap < 100 and gap >= lagging.trace.info["bn_train_infer_gap_last"]
    assert lagging.trace.info["bn_gap_batch"] == "validation"
    # the validation-loss diagnosis quotes the measured gap
    from pytest_stability.checks.base import Finding
    from pytest_stability.diagnosis import diagnose
    f = Finding(check="val_loss", kind="rise", step=40, value=1.0, limit=0.5, message="", evidence={"best": 0.4})
    assert "between training and inference mode" in diagnose([f], lagging.trace)[0].cause

@pytest.mark.stable_training(steps=20)
def test_gap_does_not_update_statistics(stability):
    from pytest_stability.training import engine
    model = build_bn(0.99)
    report = stability.train(model, X, Y, check=False)
    assert report.trace.info["bn_gap_batch"] == "training"
    bn = model.layers[1]
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    train_loss = engine._loss_of(keras, model, X[:4], Y[:4], None, True)
    infer_loss = engine._loss_of(keras, model, X[:4], Y[:4], None, False)
    assert train_loss != infer_loss
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.non_trainable_variables)), bn.name

@pytest.mark.stable_training(steps=20)
def test_no_batchnorm_no_gap(stability):
    assert "bn_train_infer_gap" not in stability.train(build(), X, Y).trace.info
""",
    )
    result.assert_outcomes(passed=3)


def test_a_run_ending_inside_an_epoch_traces_its_step_once_on_tensorflow(pytester, tiny_problem):
    """60 steps of 8-step epochs end 4 steps into the last epoch.  TensorFlow compiles a call's steps into the
    train function, so a last call cut to 4 steps was a second trace of the whole step (0.35 s on this model,
    seconds on a large one); the calls are 4 steps long instead (the recorded numbers are the same: the
    recordings of tests/plugin/recorded/ changed only in their steps_per_execution)."""
    _on_tensorflow_only("TensorFlow compiles a call's steps into its train function")
    result = run(
        pytester,
        tiny_problem
        + """
def test_model(stability):
    model = build()
    made = []
    make = model.make_train_function
    def counted(force=False):
        made.append(force)
        return make(force=force)
    model.make_train_function = counted
    rep = stability.train(model, X, Y, steps=60, batch_size=32)
    assert rep.trace.steps == 60 and int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 60
    assert True not in made, made  # never made again for a shorter last call
    assert rep.trace.info["steps_per_execution"] == 4
""",
    )
    result.assert_outcomes(passed=1)
