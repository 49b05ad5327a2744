"""The batch a step trained on, found again after training, is the batch ``fit`` gave it: on every backend
(CI runs this directory once per backend), for shuffled, unshuffled and batch-shuffled array inputs, with a
validation split, over several epochs of several chunks each.

The model records what it trains on: the first input column holds each sample's index, and its
``train_step`` (run eagerly) writes down the indices of every batch.  The plugin never sees that record.
Then a sample with an absurd target makes the loss spike wherever it is trained: the spike finding names
that sample's batch, and the ``.npz`` saved beside the report holds it.
"""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

from pytest_stability.options import resolve_config_defaults
from pytest_stability.training import batches, engine

N, BS = 100, 8  # 13 batches an epoch, the last one short


#: the indices of every batch the model trained on (a module global: a list set on a Keras layer is tracked as a
#: copy)
SEEN: list[list[int]] = []


class Recording(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):  # noqa: ANN001, ANN201 - Keras' signature
        return self.dense(x)

    def train_step(self, *args):  # noqa: ANN002, ANN201 - JAX passes (state, data), the others (data)
        x = args[-1][0]
        SEEN.append(np.asarray(keras.ops.convert_to_numpy(x))[:, 0].astype(int).tolist())
        return super().train_step(*args)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(N, dtype="float32")[:, None], rng.normal(size=(N, 3)).astype("float32")], axis=1)
    return x, rng.normal(size=(N, 1)).astype("float32")


@pytest.mark.parametrize(
    ("shuffle", "split", "readback_every"),
    [(True, 0.0, 5), (True, 0.2, 4), (False, 0.0, 5), ("batch", 0.0, 7)],
    ids=["shuffled", "validation_split", "unshuffled", "batch_shuffled"],
)
def test_every_step_names_the_batch_fit_gave_it(shuffle, split, readback_every):
    x, y = _data()
    SEEN.clear()
    engine.seed_everything(3)
    model = Recording()
    model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse", run_eagerly=True)  # the index column is large
    spec = resolve_config_defaults(lambda n: None, lambda n: None).replace(readback_every=readback_every)
    fit_kwargs = {"shuffle": shuffle, "validation_split": split} if split else {"shuffle": shuffle}
    steps = 40
    res = engine.train(model, x, y, fit_kwargs=fit_kwargs, steps=steps, seed=3, spec=spec, batch_size=BS)
    assert res.trace.steps == steps
    # fit may peek at a batch before training (to build the loss): the steps are the last `steps` batches
    trained = SEEN[-steps:]
    n_train = int(N * (1 - split))
    assert res.batches.n == n_train and res.batches.per_epoch == -(-n_train // BS)
    with warnings.catch_warnings():
        # as under `pytest -W error`: Keras' own warnings while the plugin reads its pipeline again (PyTorch's
        # loader warned of NumPy 2's `__array__` copy keyword) are not the user's and lose no sample
        warnings.simplefilter("error")
        for step in range(steps):
            where = batches.locate(res.batches, step)
            assert where["indices"] == trained[step], (step, where)
            assert where["epoch"] == step // res.batches.per_epoch and where["batch"] == step % res.batches.per_epoch
    if shuffle is True:  # the order really was shuffled
        assert trained[0] != list(range(BS))
        if keras.backend.backend() != "tensorflow":  # (TensorFlow: plain fit under a global seed repeats it)
            assert trained[0] != trained[res.batches.per_epoch]


BAD_SAMPLES = """
import numpy as np
import keras

rng = np.random.default_rng(0)
X = rng.normal(size=(4000, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1)) * 0.1).astype("float32")
Y[BAD] = 300.0  # an absurd target: the step that trains it blows the weights away for a while


@pytest.mark.stable_training(steps=120, batch_size=16, readback_every=20)
def test_bad_sample(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    # in order, so that the bad sample comes once the loss has settled (which batch a shuffled step trained on
    # is tested above)
    stability.fit(model, X, Y, shuffle=False)
"""


def test_a_spike_names_the_bad_sample_and_saves_its_batch(pytester):
    bad = 1500  # trained at step 93 (batches of 16, in order)
    pytester.makepyfile(test_bad=f"import pytest\nBAD = {bad}\n" + BAD_SAMPLES)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--stability-report=out/report.json")
    result.assert_outcomes(failed=1)
    import json

    report = json.loads((pytester.path / "out" / "report.json").read_text())
    findings = [f for call in report["tests"][0]["calls"] for run in call["runs"] for f in run["findings"]]
    spikes = [f for f in findings if f["check"] == "loss_spike"]
    assert spikes, findings
    where = spikes[0]["evidence"]["batch"]
    assert where["step"] == spikes[0]["step"] == 93 and where["indices"] == list(range(1488, 1504))
    saved = np.load(where["file"])
    assert saved["indices"].tolist() == where["indices"]
    assert saved["x"].shape == (16, 8) and saved["y"].shape == (16, 1) and float(saved["y"].max()) == 300.0
    assert int(saved["step"]) == where["step"] and int(saved["seed"]) == 0
    result.stdout.fnmatch_lines(
        [
            "*batch: step 93 trained on batch 93 of 250 (from 0) in epoch 0: samples [[]1488, 1489, *, ... 16 in all]; "
            "saved to *test_bad.py__test_bad_sample-seed0-step93.npz"
        ]
    )
    # the stability report's row names it too
    result.stdout.fnmatch_lines(
        [
            "FAIL  test_bad.py::test_bad_sample  *",
            "      [[]loss_spike] step 93: *",
            "      batch: step 93 trained on batch 93 of 250 (from 0) in epoch 0: samples [[]1488, *",
        ]
    )
    # the update into the spike was ordinary: the diagnosis points at the batch, and at the batch replay
    result.stdout.fnmatch_lines(
        [
            "*(the update into step 93 was ordinary (*), so the batch of step 93 itself may have caused the jump*"
            "--stability-replay-batch=93 tells a bad sample from a bad update)"
        ]
    )


def test_the_batch_replay_tells_a_bad_sample(pytester):
    pytester.makepyfile(test_bad="import pytest\nBAD = 1500\n" + BAD_SAMPLES)
    result = pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "--stability-replay=0",
        "--stability-replay-batch=93",
        "--stability-report=r.json",
        "--stability-html=r.html",
    )
    result.assert_outcomes(passed=1)  # judged on the 93 steps before the bad sample: stable
    (run,) = json.loads((pytester.path / "r.json").read_text())["tests"][0]["calls"][0]["runs"]
    probe = run["model"]["batch_replay"]
    assert (probe["verdict"], probe["damaged"], probe["batch"]["indices"][0]) == ("bad_sample", True, 1488)
    assert probe["before"]["loss"] > 1e3 > 1e-3 > probe["previous_before"]["loss"]
    # and which of its 16 samples: the one with the absurd target makes nearly all of its loss
    assert probe["worst_sample"]["index"] == 1500 and probe["worst_sample"]["share"] > 0.99
    assert "batch replay: -&gt; a bad sample" in (pytester.path / "r.html").read_text()
    result.stdout.fnmatch_lines(
        [
            "*batch replay: the batch of step 93 (samples [[]1488, 1489, *]): loss *, gradient norm * at the weights "
            "step 93 started from; after its update loss *",
            "*batch replay: the batch of step 92, at the same weights: loss *; after the update of step 93: *",
            "*batch replay: -> a bad sample: at the same weights this batch's loss is *x the previous batch's*",
            "*batch replay: -> its update damaged the model*",
            "*batch replay: -> sample 1500 makes *% of this batch's loss at these weights: look at it first*",
        ]
    )


LR_JUMP = """
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(512, 8)).astype("float32")
Y = (X @ rng.normal(size=(8, 1))).astype("float32")


@pytest.mark.stable_training(steps=120, batch_size=16, readback_every=20)
def test_lr_jump(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([60], [0.05, 1.2])  # far too high from step 60
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    stability.fit(model, X, Y)
"""


def test_the_batch_replay_tells_a_bad_update(pytester):
    pytester.makepyfile(test_jump=LR_JUMP)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*was ordinary*")  # the updates before the spike were not
    text = result.stdout.str()
    command = next(line for line in text.splitlines() if "a bad sample or a bad update? pytest" in line)
    step = int(command.rsplit("=", 1)[1])
    assert step > 60, command
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--stability-replay=0", f"--stability-replay-batch={step}"
    )
    result.stdout.fnmatch_lines(
        [
            f"*batch replay: -> not this batch: the previous batch's loss is as high at these "
            f"weights, so the updates before step {step} did it*"
        ]
    )


BLOWS_UP_WITH_VALIDATION = """
import numpy as np
import keras
import pytest

rng = np.random.default_rng(0)
X = rng.normal(size=(480, 8)).astype("float32")
Y = (X[:, :1] > 0).astype("float32")


@pytest.mark.stable_training(steps=100)
def test_adam_at_half(stability):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss="binary_crossentropy")
    stability.fit(model, X[:384], Y[:384], validation_data=(X[384:], Y[384:]), batch_size=32)
"""


def test_the_batch_replay_is_judged_on_the_validation_the_run_it_replays_measured(pytester):
    # the run cut at step 1 measured the validation loss once more at its end, after Adam's first update at 0.5:
    # judged on it, the replay failed val_loss, a check the run it replays had measured only at step 0 by then
    pytester.makepyfile(test_half=BLOWS_UP_WITH_VALIDATION)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--stability-replay=0", "--stability-replay-batch=1", "--stability-report=r.json"
    )
    result.assert_outcomes(passed=1)
    (run,) = json.loads((pytester.path / "r.json").read_text())["tests"][0]["calls"][0]["runs"]
    assert [c["status"] for c in run["checks"] if c["name"] == "val_loss"] != ["failed"]
    assert run["model"]["batch_replay"]["batch"]["step"] == 1
    result.stdout.fnmatch_lines(["*batch replay: the batch of step 1 *"])


def test_the_shares_of_a_batch_are_one_compiled_loss_evaluated_per_sample(monkeypatch):
    """`--stability-replay-batch` weighs a batch's loss to one sample at a time: on TensorFlow and JAX one
    compiled loss for them all (a compilation per sample took 15 s for 64 samples under JAX), and the sample
    with the absurd target makes nearly all of it."""
    from pytest_stability.training import batch_replay, curvature

    traced = []
    loss_fn = curvature._loss_fn

    def counting(keras_module, model):  # noqa: ANN001, ANN202 - curvature._loss_fn's own signature
        inner = loss_fn(keras_module, model)

        def loss(*args):  # noqa: ANN002, ANN202
            traced.append(1)
            return inner(*args)

        return loss

    monkeypatch.setattr(curvature, "_loss_fn", counting)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(48, 8)).astype("float32")
    y = np.zeros((48, 1), "float32")
    y[5] = 300.0
    shares = batch_replay._sample_shares(keras, model, (x, y, None))
    assert shares is not None and shares.shape == (48,)
    assert int(np.argmax(shares)) == 5 and shares[5] > 0.99 and shares.sum() == pytest.approx(1.0)
    # traced once (TensorFlow may trace a function twice); PyTorch runs the loss eagerly, once a sample
    if keras.backend.backend() == "torch":
        assert len(traced) == 48
    else:
        assert 1 <= len(traced) <= 2, f"the loss was traced {len(traced)} times for 48 samples"
