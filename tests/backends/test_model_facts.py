"""Wiring bugs of a model's output: a loss that takes probabilities on an output layer that makes none (a linear
Dense under binary_crossentropy, Keras' default ``from_logits=False``), a softmax over one unit.  Told from real
Keras models, said in the report's note, and named first when a check fails (on every backend)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pytest_stability.training.model_facts import integer_inputs_are_features, output_wiring


def _dense_stack(*tail, **compile_kw):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), *tail])
    model.compile(optimizer="adam", **compile_kw)
    return model


def _functional(outputs_act, loss):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    out = keras.layers.Dense(3, activation=outputs_act, name="logits")(hidden)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss=loss)
    return model


def _two_outputs():
    inputs = keras.Input((4,))
    a = keras.layers.Dense(1, name="a")(inputs)
    b = keras.layers.Dense(1, name="b")(inputs)
    model = keras.Model(inputs, [a, b])
    model.compile(optimizer="adam", loss=["binary_crossentropy", "binary_crossentropy"])
    return model


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(x)


def _subclassed():
    model = _Subclassed()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model(np.zeros((1, 4), "float32"))
    return model


CASES = {
    # (model, the activation named, or None where nothing is wrong or nothing can be told)
    "linear_dense_bce_string": (lambda: _dense_stack(keras.layers.Dense(1), loss="binary_crossentropy"), "linear"),
    "relu_dense_bce_class": (
        lambda: _dense_stack(keras.layers.Dense(1, activation="relu"), loss=keras.losses.BinaryCrossentropy()),
        "relu",
    ),
    "linear_dense_bce_class_name": (lambda: _dense_stack(keras.layers.Dense(1), loss="BinaryCrossentropy"), "linear"),
    "linear_dense_bce_function": (
        lambda: _dense_stack(keras.layers.Dense(1), loss=keras.losses.binary_crossentropy),
        "linear",
    ),
    "sparse_cce_on_logits": (lambda: _functional(None, "sparse_categorical_crossentropy"), "linear"),
    "past_a_reshape": (
        lambda: _dense_stack(keras.layers.Dense(1), keras.layers.Reshape((1,)), loss="binary_crossentropy"),
        "linear",
    ),
    "sigmoid_dense": (
        lambda: _dense_stack(keras.layers.Dense(1, activation="sigmoid"), loss="binary_crossentropy"),
        None,
    ),
    "softmax_output": (lambda: _functional("softmax", "sparse_categorical_crossentropy"), None),
    "activation_layer_last": (
        lambda: _dense_stack(keras.layers.Dense(1), keras.layers.Activation("sigmoid"), loss="binary_crossentropy"),
        None,
    ),
    "softmax_layer_last": (
        lambda: _dense_stack(keras.layers.Dense(3), keras.layers.Softmax(), loss="categorical_crossentropy"),
        None,
    ),
    "from_logits_true": (
        lambda: _dense_stack(keras.layers.Dense(1), loss=keras.losses.BinaryCrossentropy(from_logits=True)),
        None,
    ),
    "mse": (lambda: _dense_stack(keras.layers.Dense(1), loss="mse"), None),
    "two_outputs": (_two_outputs, None),
    "subclassed": (_subclassed, None),
    # a softmax over one unit, whatever the loss
    "softmax_dense_one_unit": (
        lambda: _dense_stack(keras.layers.Dense(1, activation="softmax"), loss="binary_crossentropy"),
        "softmax_one_unit",
    ),
    "softmax_layer_one_unit": (
        lambda: _dense_stack(keras.layers.Dense(1), keras.layers.Softmax(), loss="mse"),
        "softmax_one_unit",
    ),
    # from_logits=True on an output that makes probabilities: JAX and PyTorch read them as logits
    "sigmoid_dense_from_logits": (
        lambda: _dense_stack(
            keras.layers.Dense(1, activation="sigmoid"), loss=keras.losses.BinaryCrossentropy(from_logits=True)
        ),
        "logits_from_probabilities",
    ),
    "softmax_output_from_logits": (
        lambda: _functional("softmax", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        "logits_from_probabilities",
    ),
    "softmax_layer_from_logits": (
        lambda: _dense_stack(
            keras.layers.Dense(3), keras.layers.Softmax(), loss=keras.losses.CategoricalCrossentropy(from_logits=True)
        ),
        "logits_from_probabilities",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wiring_bug_of_the_output_is_told_from_the_model(case):
    build, expected = CASES[case]
    fact = output_wiring(build())
    if expected is None:
        assert fact is None, fact
    elif expected == "softmax_one_unit":
        assert fact is not None and fact["key"] == expected and fact["layer"].split()[0] in ("Dense", "Softmax")
    elif expected == "logits_from_probabilities":
        assert fact is not None and fact["key"] == expected, fact
        if fact["activation"] == "softmax":  # over 3 classes the loss cannot fall below ln(1 + 2/e)
            assert fact["classes"] == 3 and fact["floor"] == pytest.approx(np.log1p(2 / np.e))
        else:
            assert fact["classes"] == 1 and fact["floor"] == pytest.approx(np.log1p(1 / np.e))
    else:
        assert fact is not None and fact["key"] == "probabilities_from_unbounded", fact
        assert fact["activation"] == expected and fact["layer"].startswith("Dense '")
        assert fact["expects"] == ("softmax" if "cce" in case else "sigmoid")


def test_the_report_says_it_and_a_failure_names_it_first(pytester):
    """The note says what is wrong on any run, and a failure's cause and first fix name the output layer."""
    pytester.makepyfile(
        """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1)) > 0).astype("float32")


def build():
    hidden = keras.layers.Dense(32, activation="relu")
    model = keras.Sequential([keras.Input((8,)), hidden, keras.layers.Dense(1, name="out")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


@pytest.mark.stable_training(steps=40)
def test_note(stability):
    rep = stability.fit(build(), X, Y, batch_size=32, check=False)
    notes = " ".join(rep.trace.info["notes"])
    assert "the loss binary_crossentropy takes probabilities (from_logits=False)" in notes
    assert "Dense 'out' with activation 'linear'" in notes
    assert "keras.losses.BinaryCrossentropy(from_logits=True)" in notes


@pytest.mark.stable_training(steps=60)
def test_failure(stability):
    # a ReLU on the output, its units off from the start: every output is 0, clipped to 1e-7 in the loss, so
    # no gradient reaches the model and the loss stays where it started
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="relu", bias_initializer=keras.initializers.Constant(-100.0), name="out"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rep = stability.fit(model, X, Y, batch_size=32, check=False)
    first = rep.findings[0]
    assert first.check == "stuck" and first.evidence["cause_key"] == "probabilities_from_unbounded", first.cause
    assert "Dense 'out' with activation relu" in first.cause
    assert first.evidence["fixes"][0]["text"].startswith("give Dense 'out' activation='sigmoid'")


@pytest.mark.stable_training(steps=60)
def test_softmax_over_one_unit(stability):
    # 1 whatever its input: nothing learns on JAX and PyTorch; TensorFlow's binary_crossentropy computes from
    # the logits under it, so there it trains as with a sigmoid
    hidden = keras.layers.Dense(32, activation="relu")
    model = keras.Sequential([keras.Input((8,)), hidden, keras.layers.Dense(1, activation="softmax", name="out")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rep = stability.fit(model, X, Y, batch_size=32, check=False)
    assert "Dense 'out', a softmax over a single unit" in " ".join(rep.trace.info["notes"])
    if keras.backend.backend() == "tensorflow":
        assert not rep.findings
    else:
        first = rep.findings[0]
        assert first.check == "stuck" and first.evidence["cause_key"] == "softmax_one_unit", first.cause


@pytest.mark.stable_training(steps=150)
def test_from_logits_on_a_softmax(stability):
    # TensorFlow's Keras takes the logits under the softmax (with a warning); JAX and PyTorch read the
    # probabilities as logits: over 3 classes the loss never falls below ln(1 + 2/e) = 0.551
    y3 = (X[:, 0] > 0.5).astype("int32") + (X[:, 1] > 0).astype("int32")
    hidden = keras.layers.Dense(32, activation="relu")
    model = keras.Sequential([keras.Input((8,)), hidden, keras.layers.Dense(3, activation="softmax", name="out")])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    rep = stability.fit(model, X, y3, batch_size=32, check=False)
    (note,) = [n for n in rep.trace.info["notes"] if "from_logits=True" in n]
    assert "Dense 'out' with activation 'softmax'" in note and "ln(1 + 2/e) = 0.551" in note
    floor = np.log1p(2 / np.e)
    if keras.backend.backend() == "tensorflow":
        assert "it trains as intended here" in note and rep.trace.loss[-10:].max() < floor
    else:
        assert "the loss reads its probabilities, in (0, 1), as logits" in note
        assert rep.trace.loss.min() >= floor * (1 - 1e-5)
"""
    )
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning"
    )
    result.assert_outcomes(passed=4)


def _classifier(loss="sparse_categorical_crossentropy", units=4):
    return _dense_stack(keras.layers.Dense(units, activation="softmax"), loss=loss)


@pytest.mark.parametrize(
    ("labels", "loss", "says"),
    [
        ([1, 2, 3, 4], "sparse_categorical_crossentropy", "they start at 1: shift them to start at 0 (y - 1)"),
        ([0, 2, 5], keras.losses.SparseCategoricalCrossentropy(), "give the output layer 6 units, one per class"),
        ([-1, 0, 3], keras.losses.sparse_categorical_crossentropy, "name the negative one ignore_class"),
        ([0, 1, 2, 3], "sparse_categorical_crossentropy", None),
        ([-1, 0, 3], keras.losses.SparseCategoricalCrossentropy(ignore_class=-1), None),
        ([1, 2, 3, 4], "categorical_crossentropy", None),  # not labels: nothing to say
        # a Sequential without an Input, not built before fit: its last Dense's units
        ([1, 2, 3, 4], "unbuilt", "they start at 1: shift them to start at 0 (y - 1)"),
    ],
)
def test_labels_a_sparse_cross_entropy_cannot_take_are_told(labels, loss, says):
    from pytest_stability.training.model_facts import label_range_error

    y = np.array(labels * 4, dtype="int32")
    if loss == "unbuilt":
        model = keras.Sequential(
            [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4, activation="softmax")]
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    else:
        model = _classifier(loss)
    problem = label_range_error(model, y)
    if says is None:
        assert problem is None, problem
    else:
        assert problem is not None and problem.startswith(f"y holds labels from {min(labels)} to {max(labels)}")
        assert "takes labels 0 to 3 for the model's 4 output units" in problem and says in problem, problem


def test_labels_out_of_range_are_refused_before_training_on_every_backend(pytester):
    """On JAX a label out of range trains silently (it counts for nothing); on TensorFlow and PyTorch it fails
    deep inside training. Either way the run is refused first, with what to change, for y and the validation
    data's y alike."""
    pytester.makepyfile(
        """
import keras
import numpy as np
import pytest

X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
LABELS = np.arange(64) % 4


def build():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.stable_training(steps=8)
def test_from_one(stability):
    stability.fit(build(), X, LABELS + 1, batch_size=16)


@pytest.mark.stable_training(steps=8)
def test_validation(stability):
    stability.fit(build(), X, LABELS, batch_size=16, validation_data=(X[:8], np.arange(8) % 5))
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*stability.fit(): y holds labels from 1 to 4, but sparse_categorical_crossentropy takes labels 0 to 3 "
            "for the model's 4 output units*shift them to start at 0 (y - 1)*",
            "*stability.fit(): validation y holds labels from 0 to 4*give the output layer 5 units*",
        ],
        consecutive=False,
    )
    assert "Traceback" not in result.stdout.str()


def test_batchnorm_over_features_in_batches_of_one_sample_is_told_from_the_model():
    from pytest_stability.training.model_facts import batchnorm_over_one_sample

    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(name="bn")])
    conv = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()])
    assert batchnorm_over_one_sample(dense, 1) == {"layer": "BatchNormalization 'bn'"}
    assert batchnorm_over_one_sample(dense, 2) is None  # two samples have a spread
    assert batchnorm_over_one_sample(conv, 1) is None  # over an image, its positions give the spread
    assert batchnorm_over_one_sample(_dense_stack(keras.layers.Dense(1), loss="mse"), 1) is None


def test_batchnorm_in_batches_of_one_sample_is_said_and_named_first(pytester):
    """Every feature becomes the layer's beta: nothing before it learns, and the loss sits at ln 2, which
    without the model's facts reads as labels with no signal."""
    pytester.makepyfile(
        """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(256, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1)) > 0).astype("float32")


@pytest.mark.stable_training(steps=200)
def test_batch_of_one(stability):
    bn = keras.layers.BatchNormalization(name="bn")
    head = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), bn, keras.layers.Activation("relu"), head])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    rep = stability.fit(model, X, Y, batch_size=1, check=False)
    assert "BatchNormalization 'bn' normalises each feature over the batch" in " ".join(rep.trace.info["notes"])
    first = rep.findings[0]
    assert first.check == "stuck" and first.evidence["cause_key"] == "batchnorm_one_sample", first.cause
    assert first.evidence["fixes"][0]["text"].startswith("train with a batch_size of 16 or more")
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=1)


REGRESSION = np.linspace(-3.0, 60.0, 100, dtype="float32")[:, None]  # 2 of 100 in [0, 1], 3 in [-1, 1]


@pytest.mark.parametrize(
    "activation, loss, y, outside",
    [
        ("sigmoid", "mse", REGRESSION, 0.98),
        ("tanh", keras.losses.MeanAbsoluteError(), REGRESSION, 0.97),
        ("sigmoid", "MeanSquaredError", REGRESSION, 0.98),  # compile takes the class's name
        ("sigmoid", keras.losses.mean_squared_error, REGRESSION, 0.98),  # ... and Keras' function
        ("sigmoid", "huber", np.linspace(0.0, 1.05, 100, dtype="float32"), None),  # 5 %: a fit that mostly reaches
        ("sigmoid", "mse", np.linspace(0.0, 1.0, 100, dtype="float32"), None),  # targets scaled into (0, 1)
        (None, "mse", REGRESSION, None),  # a linear output reaches anything
        ("sigmoid", "binary_crossentropy", REGRESSION, None),  # not a regression loss: not this rule's
    ],
)
def test_targets_a_bounded_output_cannot_reach_are_told_from_the_model_and_the_data(activation, loss, y, outside):
    model = _dense_stack(keras.layers.Dense(1, activation=activation, name="out"), loss=loss)
    fact = output_wiring(model, y)
    if outside is None:
        assert fact is None or fact["key"] != "targets_out_of_range", fact
        return
    assert fact is not None and fact["key"] == "targets_out_of_range", fact
    assert fact["layer"] == "Dense 'out'" and fact["activation"] == activation
    assert fact["outside"] == pytest.approx(outside) and (fact["target_min"], fact["target_max"]) == (-3.0, 60.0)
    assert output_wiring(model) is None and output_wiring(model, [1.0, 50.0]) is None  # no array: nothing told


def test_a_regression_through_a_sigmoid_that_cannot_reach_its_targets_fails_as_stuck(pytester):
    """Targets around 50 and a sigmoid output: the output saturates at 1, and the loss barely moves (2 %) for the
    whole run while the batches keep it noisy and the gradients alive, so no other rule of stuck's sees it.  It
    passed as stable; it fails with the output and the targets named, and the fix a linear output."""
    pytester.makepyfile(
        """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 8)).astype("float32")
T = (X @ rng.normal(size=8) * 10 + 50).astype("float32")


@pytest.mark.stable_training(steps=200)
@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_regression(stability, activation):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation=activation, name="out")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    stability.fit(model, X, T, batch_size=32)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]stuck] step 0: training is stuck from step 0: 99% of the targets lie outside (0, 1), the range of "
            "the model's sigmoid output; *",
            "*cause (likely): the model's output comes from Dense 'out' with activation sigmoid, whose values stay "
            "within (0, 1), but 99% of the targets (from * to *) lie outside it*",
            "*fix to try: give Dense 'out' no activation (a linear output) for a regression*",
            "PASS  *test_regression[[]None]*",
        ]
    )


def test_a_multi_optimizer_is_refused_before_training_on_every_backend():
    """Keras 3.15's MultiOptimizer has no learning rate of its own, which the recorder reads: it had failed inside
    the recorder on every backend; it is refused first, with what to do instead."""
    from pytest_stability.errors import StabilityUsageError
    from pytest_stability.training.engine import validate_model

    if not hasattr(keras.optimizers, "MultiOptimizer"):
        pytest.skip("this Keras has no MultiOptimizer")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="head")])
    chooser = keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1), {".*head.*": keras.optimizers.Adam()})
    model.compile(optimizer=keras.optimizers.MultiOptimizer(chooser), loss="mse")
    with pytest.raises(
        StabilityUsageError, match=r"MultiOptimizer \(its optimizers: Adam, SGD\), which pytest-stability"
    ):
        validate_model(model)


def _heads(loss, loss_weights=None, as_list=False):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    a = keras.layers.Dense(1, activation="sigmoid", name="a")(hidden)
    aux = keras.layers.Dense(2, name="aux")(keras.layers.Dense(4, name="aux_hidden")(hidden))
    model = keras.Model(inputs, [a, aux] if as_list else {"a": a, "aux": aux})
    model.compile(optimizer="adam", loss=loss, loss_weights=loss_weights)
    return model


def test_the_variables_that_feed_only_an_output_without_a_loss_are_told_from_the_model():
    from pytest_stability.training.model_facts import outputs_without_loss

    aux_only = ["aux_hidden/kernel", "aux_hidden/bias", "aux/kernel", "aux/bias"]
    no_aux = {"outputs": ["aux"], "zero_weight": [], "variables": aux_only}
    bce = "binary_crossentropy"
    assert outputs_without_loss(_heads({"a": bce})) == no_aux
    assert outputs_without_loss(_heads({"a": bce, "aux": None})) == no_aux
    assert outputs_without_loss(_heads([bce, None], as_list=True)) == no_aux
    # a loss weight of 0 trains nothing either
    assert outputs_without_loss(_heads({"a": bce, "aux": "mse"}, {"a": 1.0, "aux": 0.0})) == {
        **no_aux,
        "zero_weight": ["aux"],
    }
    assert outputs_without_loss(_heads("mse", [1.0, 0.0], as_list=True))["zero_weight"] == ["aux"]
    # the shared hidden layer feeds the trained output: only what feeds aux alone is listed
    assert outputs_without_loss(_heads({"aux": "mse"}))["variables"] == ["a/kernel", "a/bias"]
    assert outputs_without_loss(_heads({"a": bce, "aux": "mse"})) is None
    assert outputs_without_loss(_heads({"a": bce, "aux": "mse"}, {"a": 1.0, "aux": 0.5})) is None
    assert outputs_without_loss(_heads("mse")) is None  # one loss for every output
    assert outputs_without_loss(_two_outputs()) is None  # a loss for each
    assert outputs_without_loss(_subclassed()) is None  # no graph to read


def test_a_head_without_a_loss_is_named_as_the_cause_of_its_missing_gradients(pytester):
    """Plain fit trains nothing that feeds only an output compiled without a loss (Keras warns on TensorFlow that
    their gradients do not exist, "did you forget to provide a loss?"): stuck fails them, and the cause, read
    from the model's graph, says which output and why, where it listed every possible reason."""
    pytester.makepyfile(
        """
import keras
import numpy as np
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 8)).astype("float32")
Y = (X[:, 0] > 0).astype("float32")


@pytest.mark.stable_training(steps=60)
@pytest.mark.parametrize("aux_loss", [None, "cut"])
def test_heads(stability, aux_loss):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    a = keras.layers.Dense(1, activation="sigmoid", name="a")(hidden)
    aux = keras.layers.Dense(2, name="aux")(keras.layers.Dense(4, name="aux_hidden")(hidden))
    if aux_loss:  # the twin: an output with a loss that no gradient reaches its layers through
        aux = keras.layers.Lambda(lambda t: 0.0 * t, name="cut")(aux)
    model = keras.Model(inputs, {"a": a, "aux": aux})
    model.compile(optimizer="adam", loss={"a": "binary_crossentropy", **({"aux": "mse"} if aux_loss else {})})
    targets = {"a": Y, **({"aux": np.zeros((512, 2), "float32")} if aux_loss else {})}
    rep = stability.fit(model, X, targets, batch_size=32, check=False)
    (stuck,) = [f for f in rep.findings if f.check == "stuck"]
    assert stuck.kind == "no_gradient", stuck.message
    assert stuck.evidence["variables"] == ["aux_hidden/kernel", "aux_hidden/bias", "aux/kernel", "aux/bias"]
    if aux_loss is None:
        assert rep.trace.info["outputs_without_loss"]["outputs"] == ["aux"]
        assert stuck.cause.startswith(
            "aux_hidden/kernel, aux_hidden/bias, aux/kernel, aux/bias feed only the output 'aux', which has no loss "
            "in compile(): nothing trains them"
        ), stuck.cause
        assert stuck.fix.startswith("give 'aux' a loss in compile() if it is meant to train"), stuck.fix
    else:
        assert "outputs_without_loss" not in rep.trace.info
        assert "not connected to the loss" in stuck.cause, stuck.cause
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=2)


def _int_input(*front, functional=None):
    if functional is not None:
        inputs = keras.Input((8,), dtype="int32")
        return keras.Model(inputs, keras.layers.Dense(1)(functional(inputs)))
    return keras.Sequential([keras.Input((8,), dtype="int32"), *front, keras.layers.Dense(1)])


@pytest.mark.parametrize(
    "build, features",
    [
        (lambda: _int_input(), True),  # counts straight into a Dense
        (lambda: _int_input(functional=lambda t: keras.layers.Reshape((8,))(keras.ops.cast(t, "float32"))), True),
        (lambda: _int_input(functional=lambda t: t / 1000), False),  # the model rescales them: not measured raw
        (lambda: _int_input(keras.layers.Rescaling(0.001)), True),  # measured, and said to be rescaled
        (lambda: _int_input(keras.layers.Embedding(100, 4), keras.layers.Flatten()), False),
        (lambda: _int_input(keras.layers.Lambda(lambda t: keras.ops.one_hot(t % 4, 4)), keras.layers.Flatten()), False),
        (lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)]), True),  # float: Keras casts
        (lambda: keras.Sequential([keras.Input((8,)), keras.layers.Embedding(100, 4)]), False),
        (_subclassed, False),  # declares no inputs: its integers may be ids it gathers itself
    ],
)
def test_integer_inputs_are_taken_as_values_only_where_the_graph_shows_it(build, features):
    assert integer_inputs_are_features(build()) is features
