"""A Ctrl-C or a timeout's signal that comes while ``fit`` waits for a step ends ``fit``, with the plugin as
without it, on every backend (CI runs this directory once per backend).

Keras turns each batch's logs into floats inside a bare ``except: pass``.  In plain ``fit``, with no batch-end
hook among the callbacks, that runs on a thread of Keras' own; the plugin's read-back is a batch-end hook, which
moves it onto the main thread, and under JAX reading a log value there waits for the step: a signal's handler
that ran during that wait raised inside the ``except``, and training went on to its last step (1 of 6 timed-out
runs under load).  The engine reads the logs before Keras does (``isolation.batch_logs_read_before_keras``).

Keras' own ``fit`` has bare ``except`` blocks of its own that run on the main thread: on every eager step
(PyTorch's), and at each epoch's end; a signal whose handler runs in one is lost in plain ``fit`` too (1 run in 100
to 400 under load, on PyTorch: ``KERAS_BACKEND=torch pytest tests/backends/test_interrupts.py -k signal_while
--count 400 -x`` beside a CPU-bound process, with pytest-repeat): such a run is drawn again, and a signal lost
anywhere else fails the test with where it landed.
"""

from __future__ import annotations

import signal
import traceback
from pathlib import Path

import keras
import numpy as np
import pytest

from pytest_stability.options import resolve_config_defaults
from pytest_stability.training import engine

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="a POSIX interval timer")

STEPS, BATCH = 400, 256
rng = np.random.default_rng(0)
X = rng.normal(size=(BATCH * 4, 512)).astype("float32")
Y = rng.normal(size=(BATCH * 4, 1)).astype("float32")


class Interrupted(BaseException):
    """What a signal's handler raises (KeyboardInterrupt, pytest-timeout's ``Failed``): not an ``Exception``."""


class AlarmDuringABatch(keras.callbacks.Callback):
    """At the fourth batch's start, a timer that fires while that batch trains (no batch-end hook: Keras would run
    its batch-end work on a thread of its own)."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        if self.batches == 4:
            signal.setitimer(signal.ITIMER_REAL, 0.002)


def _model():
    keras.utils.set_random_seed(0)
    # a step of some tens of milliseconds: the timer fires while it runs
    model = keras.Sequential(
        [
            keras.Input((512,)),
            keras.layers.Dense(1024, activation="relu"),
            keras.layers.Dense(1024),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    return model


#: Keras' own code that plain ``fit`` runs on the main thread under a bare ``except`` (file, function): a signal
#: whose handler runs there is lost, in plain ``fit`` as in a stability run.  The Functional model's check of its
#: inputs' structure and the compiled loss's packing of the targets, on every eager step (PyTorch's: 1 run in 100
#: to 400 under load lost it in plain ``fit``); the epoch's logs turned into floats at its end, which on JAX waits
#: for the step (plain ``fit`` lost it there once, with Keras 3.13)
KERAS_SWALLOWS = {
    ("models/functional.py", "_maybe_warn_inputs_struct_mismatch"),
    ("trainers/compile_utils.py", "call"),
    ("trainers/trainer.py", "get_metrics_result"),
}


@pytest.fixture
def alarm():
    """The timer's signal raises :class:`Interrupted`; the list it yields gets, per signal, the functions the main
    thread was in when the handler ran (file, function), innermost last."""
    landed: list[list[tuple[str, str]]] = []

    def handler(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 0)
        landed.append([("/".join(Path(f.filename).parts[-2:]), f.name) for f in traceback.extract_stack(frame)])
        raise Interrupted("the timer")

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield landed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def interrupted(run, landed, attempts=4):
    """``run()`` (a fresh model each time) ends with the timer's :class:`Interrupted`.  A run whose signal landed
    in :data:`KERAS_SWALLOWS` and was lost there is drawn again: Keras loses it the same way without the plugin.
    Anywhere else, a run that goes on training fails the test, with where the signal landed."""
    for _ in range(attempts):
        landed.clear()
        try:
            run()
        except Interrupted:
            return
        assert landed and KERAS_SWALLOWS & set(landed[-1]), f"the signal was lost; the handler ran in {landed}"
    pytest.fail(f"the signal was lost in Keras' own code {attempts} times in a row: {landed}")


def test_a_signal_while_a_step_trains_ends_fit_with_the_plugin_as_without_it(alarm):
    def plain():
        callback = AlarmDuringABatch()
        return _model().fit(X, Y, batch_size=BATCH, epochs=STEPS // 4, verbose=0, callbacks=[callback])

    interrupted(plain, alarm)

    spec = resolve_config_defaults(lambda n: None, lambda n: None)
    raised = []

    def mine():
        raised.clear()
        callback = AlarmDuringABatch()
        return engine.train(
            _model(),
            X,
            Y,
            fit_kwargs={"callbacks": [callback], "verbose": 0},
            steps=STEPS,
            seed=0,
            spec=spec,
            batch_size=BATCH,
            on_raise=lambda exc, where, stopped: raised.append((where, stopped)),
        )

    interrupted(mine, alarm)
    assert len(raised) == 1 and raised[0][0].startswith("during fit, after "), raised
    # with what was recorded before the signal: as many steps as it says, and their losses
    where, stopped = raised[0]
    done = int(where.removeprefix("during fit, after ").split(" of ")[0])
    if done:
        assert stopped is not None and stopped.trace.steps == done and stopped.trace.steps_planned == STEPS
        assert np.isfinite(stopped.trace.loss).all() and stopped.wall_time > 0
    else:
        assert stopped is None
    # Keras' dispatch is left as it was
    from keras.src.callbacks.callback_list import CallbackList

    assert CallbackList._on_train_batch_end.__module__ == "keras.src.callbacks.callback_list"


@pytest.mark.parametrize("progbar_of_the_users", [False, True], ids=["keras_progbar", "users_progbar"])
def test_the_dispatch_read_from_the_users_callbacks_is_plain_fits_with_its_progress_bar(
    monkeypatch, progbar_of_the_users
):
    """``batch_logs_read_before_keras`` tells from the user's callbacks alone whether plain ``fit`` would run
    batch ends on a thread of its own; with ``verbose=1`` Keras adds its progress bar (a batch-end hook) after it
    decided, so the bar runs on that thread too, and a bar the user passes makes the dispatch synchronous."""
    import threading

    from keras.src.callbacks.progbar_logger import ProgbarLogger

    from pytest_stability.training.keras_internals import callback_list

    threads = []
    original = ProgbarLogger.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        threads.append(threading.current_thread() is threading.main_thread())
        original(self, batch, logs)

    monkeypatch.setattr(ProgbarLogger, "on_train_batch_end", on_train_batch_end)
    users = [keras.callbacks.ProgbarLogger()] if progbar_of_the_users else []
    _model().fit(X[:BATCH], Y[:BATCH], batch_size=BATCH, epochs=1, verbose=1, callbacks=users)
    assert len(threads) == 1
    on_a_thread = not threads[0]
    assert getattr(callback_list(list(users)), "_async_train", False) == on_a_thread
    # a batch-end hook of the user's runs on the main thread; so does every batch end on TensorFlow
    assert on_a_thread == (not progbar_of_the_users and keras.backend.backend() != "tensorflow")
