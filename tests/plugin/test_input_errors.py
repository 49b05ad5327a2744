"""Bad models and bad data get a clear message naming what was received; never a plugin traceback."""

import contextlib
import os
import signal
import threading

import pytest

CASES = {
    "uncompiled": (
        "stability.train(build(compile=False), X, Y)",
        "*stability.train(): the model 'sequential*' is not compiled: call model.compile(optimizer=..., loss=...)*",
    ),
    # plain fit trains nothing and says nothing; on JAX the recording raised from inside the plugin
    "nothing_trainable": (
        "m = build(); m.trainable = False; m.compile(optimizer='adam', loss='binary_crossentropy'); "
        "stability.train(m, X, Y)",
        "*stability.train(): the model 'sequential*' has no trainable variables (model.trainable is False): fit "
        "would train nothing*",
    ),
    "not_a_model": (
        "stability.train('model', X, Y)",
        "*stability.train(): the model must be a compiled keras.Model "
        "(or a zero-argument callable returning one); received str*",
    ),
    "no_data": (
        "stability.train(build(), None, None)",
        "*stability.train(): training data is required: received x=None*",
    ),
    "empty": (
        "stability.train(build(), X[:0], Y[:0])",
        "*stability.train(): x is empty: there is nothing to train on*",
    ),
    "mismatched_lengths": (
        "stability.train(build(), X, Y[:100])",
        "*x and y have different numbers of samples: x has 256 (shape (256, 8)), y has 100 (shape (100,))*",
    ),
    "mismatched_features": (
        "stability.train(build(), X[:, :5], Y)",
        "*stability.train(): model.fit() raised at its first step, before any update: ValueError: "
        "*expected axis -1 of input shape to have value 8, but received input with shape (32, 5)*",
    ),
    "unknown_fit_argument": (
        "stability.fit(build(), X, Y, epoch=3)",
        "*stability.fit(): model.fit() has no argument 'epoch' (did you mean epochs?); it accepts *epochs*",
    ),
    "run_setting_given_to_fit": (
        "stability.fit(build(), X, Y, spike_ratio=4)",
        "*stability.fit(): model.fit() has no argument 'spike_ratio' (spike_ratio is a setting of the run: "
        "@pytest.mark.stable_training(spike_ratio=...) or --stability-spike-ratio=..., not a fit() argument)*",
    ),
    "optimizer_setting_given_to_fit": (
        "stability.fit(build(), X, Y, learning_rate=0.1)",
        "*model.fit() has no argument 'learning_rate' (learning_rate belongs to the model's optimizer: set it "
        "where you compile the model)*",
    ),
    "compile_argument": (
        "stability.fit(build(), X, Y, steps_per_execution=4)",
        "*stability.fit(): steps_per_execution is not a fit() argument; use readback_every*",
    ),
    "check_not_a_bool": (
        "stability.fit(build(), X, Y, check='no')",
        "*stability.fit(): check must be True or False, received 'no' (str)*",
    ),
    "epochs_zero": (
        "stability.fit(build(), X, Y, epochs=0)",
        "*stability.fit(): epochs must be an int >= 1, received 0*",
    ),
    "epochs_not_above_initial_epoch": (
        "stability.fit(build(), X, Y, epochs=2, initial_epoch=5)",
        "*stability.fit(): epochs=2 with initial_epoch=5 trains no epoch: fit trains from epoch initial_epoch up "
        "to epochs (an index, not a count), so epochs must be above initial_epoch*",
    ),
    "steps_per_epoch_zero": (
        "stability.fit(build(), X, Y, steps_per_epoch=0)",
        "*stability.fit(): steps_per_epoch must be an int >= 1, received 0*",
    ),
    "validation_freq_a_tuple": (
        "stability.fit(build(), X, Y, validation_data=(XV, YV), validation_freq=(1, 2))",
        "*stability.fit(): validation_freq must be an int >= 1 (validate every that many epochs) or a list of them "
        "(the epochs to validate after), received (1, 2)*",
    ),
    "epochs_float": (
        "stability.fit(build(), X, Y, epochs=2.0)",
        "*stability.fit(): epochs must be an int >= 1, received 2.0 (float)*",
    ),
    "validation_split_out_of_range": (
        "stability.fit(build(), X, Y, validation_split=1.5)",
        "*stability.fit(): validation_split must be a number between 0 and 1, the fraction of the samples held "
        "out for validation; received 1.5*",
    ),
    "validation_split_of_a_dataset": (
        "import tensorflow as tf; "
        "stability.fit(build(), tf.data.Dataset.from_tensor_slices((X, Y)).batch(32), validation_split=0.2)",
        "*stability.fit(): validation_split=0.2 needs x as arrays, which fit splits; x is a tf.data.Dataset: pass "
        "validation_data=(x_val, y_val) (or a validation dataset) instead*",
    ),
    # each backend's own message ("None values not supported", "Invalid dtype: object"...) says nothing of y
    "no_targets": (
        "stability.fit(build(), X)",
        "*stability.fit(): model.fit() raised at its first step, before any update: ValueError: * (y is None, and "
        "the model is compiled with loss='binary_crossentropy', which compares its outputs with targets: pass the "
        "targets as y, or a dataset of (x, y) pairs)*",
    ),
    "string_targets": (
        "stability.fit(build(), X, np.where(Y > 0.5, 'cat', 'dog'))",
        "*stability.fit(): model.fit() raised at its first step, before any update: ValueError: * (y holds strings, "
        "the first 'cat': a loss takes numbers; encode the classes as integers, e.g. classes, y = np.unique(y, "
        "return_inverse=True), or a keras.layers.StringLookup)*",
    ),
    # text for a TextVectorization layer, in a numpy array: plain fit stops on it with the same "Invalid dtype"
    "string_inputs": (
        "stability.fit(build(), [np.full(X.shape, 'a review')], Y)",
        "*stability.fit(): model.fit() raised at its first step, before any update: ValueError: * (x holds text in a "
        "numpy array, the first 'a review': Keras' fit takes numpy arrays of numbers only; give the text as a "
        "tf.data.Dataset of (text, y) pairs, which runs a TextVectorization layer on every backend in its map, or as "
        "a tf.constant on TensorFlow)*",
    ),
    "list_outputs_mismatch": (
        "stability.fit(build(), X, [Y, Y])",
        "*stability.fit(): model.fit() raised at its first step, before any update: ValueError: *",
    ),
    "python_list": (
        "stability.train(build(), X, Y.tolist())",
        "*stability.train(): y is a Python list holding float values (the first: *), where model.fit() takes "
        "arrays*convert it with np.asarray(y)*",
    ),
    "python_list_validation": (
        "stability.train(build(), X, Y, validation_data=(XV.tolist(), YV))",
        "*validation x_val is a Python list holding float values*convert it with np.asarray(x_val)*",
    ),
    "list_of_samples": (
        "stability.train(build(), list(X), Y)",
        "*x has 8 (256 arrays of shape (8,)), y has 256 (shape (256,)); fit reads a list of 256 arrays as 256 "
        "inputs: to pass 256 samples, stack them (np.stack(x))*",
    ),
    "nan_in_x": (
        "X2 = X.copy(); X2[17, 3] = np.nan; stability.train(build(), X2, Y)",
        "*x holds 1 non-finite value(s) before training starts: the first is NaN at index (17, 3). Training on it "
        "would report a NaN that the model did not cause*",
    ),
    "inf_in_validation": (
        "YV2 = YV.copy(); YV2[5] = np.inf; stability.train(build(), X, Y, validation_data=(XV, YV2))",
        "*validation y holds 1 non-finite value(s) before training starts: the first is Inf at index (5,). "
        "Validating on it would report a NaN validation loss that the model did not cause*",
    ),
    "bad_validation": (
        "stability.train(build(), X, Y, validation_data=XV)",
        "*validation_data of type ndarray is read by fit as x_val alone, with no targets, but the model*"
        "*is compiled with a loss that needs them: pass validation_data=(x_val, y_val)*",
    ),
    "validation_without_targets": (
        "stability.train(build(), X, Y, validation_data=(XV,))",
        "*validation_data, a tuple of length 1, is read by fit as x_val alone*pass validation_data=(x_val, y_val)*",
    ),
    "bad_steps_arg": (
        "stability.train(build(), X, Y, steps=-5)",
        "*stability.train(): steps must be an int >= 1, received -5*",
    ),
    "one_shot_generator": (
        "gen = ((X[i:i + 32], Y[i:i + 32]) for i in range(0, 256, 32)); stability.train(build(), gen, steps=20)",
        "*the training data ran out after 8 batches, but steps=20 needs 20: a generator can be read only once*",
    ),
    "dataset_with_y": (
        "import tensorflow as tf; stability.train(build(), tf.data.Dataset.from_tensor_slices((X, Y)).batch(32), Y)",
        "*y must be None when x is a tf.data.Dataset (it yields (x, y) itself); received y of type ndarray*",
    ),
    "dataset_with_batch_size": (
        "import tensorflow as tf; "
        "stability.train(build(), tf.data.Dataset.from_tensor_slices((X, Y)).batch(32), "
        "batch_size=8)",
        "*batch_size must not be given when x is a tf.data.Dataset: it is already batched*",
    ),
    # plain fit evaluates such validation data forever at the first epoch's end; the plugin read it into memory
    "endless_validation_dataset": (
        "import tensorflow as tf; "
        "stability.fit(build(), X, Y, validation_data=tf.data.Dataset.from_tensor_slices((XV, YV)).batch(16).repeat())",
        "*validation_data is a tf.data.Dataset that repeats forever (its cardinality is infinite), and "
        "validation_steps is not given: fit's validation would never end*pass validation_steps=N*",
    ),
    "endless_validation_pydataset": (
        "Endless = type('Endless', (keras.utils.PyDataset,), {'num_batches': None, "
        "'__getitem__': lambda self, i: (XV[:16], YV[:16])}); "
        "stability.fit(build(), X, Y, validation_data=Endless())",
        "*validation_data is a PyDataset (Endless) whose num_batches is None, which Keras takes for infinite, and "
        "validation_steps is not given*",
    ),
    "multi_optimizer": (
        "m = build(compile=False); "
        "m.compile(optimizer=keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap("
        "keras.optimizers.SGD(0.1), {'.*dense.*': keras.optimizers.Adam()})), loss='binary_crossentropy'); "
        "stability.train(m, X, Y)",
        "*is compiled with a keras.optimizers.MultiOptimizer (its optimizers: Adam, SGD), which pytest-stability "
        "does not record yet*Test with one optimizer, or apply each part's optimizer in a train_step of your own*",
    ),
    "no_loss": (
        "m = build(compile=False); m.compile(optimizer='adam'); stability.train(m, X, Y)",
        "*was compiled without a loss (and overrides neither compute_loss nor train_step, and none of its "
        "layers adds a loss or has a regulariser); pass loss=... to model.compile()*",
    ),
}


#: cases that, were the plugin's refusal to regress, would never end (plain fit's validation of them does not):
#: they fail after this many seconds instead of hanging the suite
NEVER_ENDING = {"endless_validation_dataset": 60, "endless_validation_pydataset": 60}


@contextlib.contextmanager
def deadline(seconds):
    """``TimeoutError`` in the main thread after ``seconds`` (no limit where signals cannot be used)."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the run would never have ended")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_message(pytester, tiny_problem, case):
    body, expected = CASES[case]
    pytester.makepyfile(
        tiny_problem
        + f"""
@pytest.mark.stable_training(steps=20)
def test_model(stability):
    {body}
"""
    )
    with deadline(NEVER_ENDING.get(case)):
        result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([expected])
    # The failure is the message alone: no traceback into the plugin's insides.
    result.stdout.no_fnmatch_line("*pytest_stability/*.py:*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    # printed once, not chained ("During handling of the above exception...")
    result.stdout.no_fnmatch_line("*During handling*")


def test_gpu_device_skips_without_gpu(pytester, tiny_problem):
    pytester.makepyfile(
        tiny_problem
        + """
@pytest.mark.stable_training(steps=10, device="gpu")
def test_model(stability):
    stability.train(build(), X, Y)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    result.stdout.fnmatch_lines(
        [
            "SKIP  test_gpu_device_skips_without_gpu.py::test_model*",
            f"SKIPPED*stable_training(device='gpu'): the {backend} backend sees no GPU*",
        ]
    )


def test_a_subclassed_model_that_cannot_be_cloned_for_more_seeds_says_why_in_one_line(pytester, tiny_problem):
    # Keras' deserialization error quotes the whole config twice; the message gives its root and the way out
    pytester.makepyfile(
        tiny_problem
        + """
class Net(keras.Model):
    def __init__(self, width=16):  # no **kwargs: get_config()'s "trainable" cannot come back in
        super().__init__()
        self.h = keras.layers.Dense(width, activation="relu")
        self.o = keras.layers.Dense(1, activation="sigmoid")

    def call(self, x):
        return self.o(self.h(x))


@pytest.mark.stable_training(steps=10, seeds=2)
def test_model(stability):
    model = Net()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    stability.fit(model, X, Y)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*seeds > 1 trains a fresh copy of the model per seed, but Net 'net' could not be cloned and recompiled "
            "(TypeError: Net.__init__() got an unexpected keyword argument 'trainable'). Pass a zero-argument "
            "function that builds and compiles the model instead: stability.fit(build_model, x, y, ...)"
        ]
    )
    result.stdout.no_fnmatch_line("*config=*")
