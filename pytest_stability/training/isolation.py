"""What a stability test changes in the process, confined to the test.

A stability test seeds every random number generator (so that the model the
test builds, and its training, are the seed's alone), restarts Keras'
automatic layer names (so that findings name the same variables in every
process), and, while ``fit`` runs, may enable TensorFlow's op determinism and
filter one TensorFlow log line.  None of that may leak into later tests, which
must run as if the stability test had not: :class:`ProcessState` takes what
these touch before the test and puts it back after it; :func:`op_determinism`
and :func:`quiet_own_retracing` are scoped to one ``fit``.  On TensorFlow the
engine also drops the gradient registrations that its ``fit`` left in
TensorFlow's process-wide registry (:func:`drop_gradient_registrations`), which
would otherwise keep every graph that ``fit`` traced alive for the rest of the
process; registrations made by the test's own code stay.  :func:`batch_logs_read_before_keras`, also scoped to
one ``fit``, keeps a Ctrl-C or a timeout from being lost in Keras' handling of the batch logs.

Imported by the training layer only (it imports Keras and the backend).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..framework_types import Callback, Model

#: Keras' process-wide attributes (``keras.src.backend.common.global_state``) that seeding and name restarts set
_KERAS_GLOBALS = ("global_random_seed", "global_seed_generator", "object_name_uids")


@dataclass
class ProcessState:
    """Random states, Keras' global attributes and TensorFlow's determinism switch, as they were."""

    rng: dict[str, Any]
    keras_globals: dict[str, Any]
    dtype_policy: Any
    tf_seed: int | None = None
    tf_determinism: bool | None = None

    @classmethod
    def take(cls, keras: ModuleType) -> ProcessState:
        from .keras_internals import load

        global_state = load("global_state")

        keras_globals = {}
        for name in _KERAS_GLOBALS:
            value = global_state.get_global_attribute(name)
            # the name counter is a dict that Keras updates in place: keep a copy
            keras_globals[name] = copy.copy(value) if isinstance(value, dict) else value
        state = cls(rng=random_state(), keras_globals=keras_globals, dtype_policy=keras.config.dtype_policy())
        tf = _tensorflow()
        if tf is not None:
            from tensorflow.python.eager import context
            from tensorflow.python.framework import config as tf_config

            state.tf_seed = context.global_seed()
            state.tf_determinism = bool(tf_config.is_op_determinism_enabled())
        return state

    def restore(self, keras: ModuleType) -> None:
        self.restore_seeding()
        if keras.config.dtype_policy() is not self.dtype_policy:
            keras.config.set_dtype_policy(self.dtype_policy)
        if _tensorflow() is not None and self.tf_determinism is not None:
            from tensorflow.python.framework import config as tf_config

            _set_determinism(tf_config, self.tf_determinism)

    def restore_seeding(self) -> None:
        """What seeding and the name restart change, alone: the random states, Keras' seeds and name counter and
        TensorFlow's global seed (not the dtype policy or op determinism, which a fixture may set for the
        session)."""
        from .keras_internals import load

        global_state = load("global_state")

        set_random_state(self.rng)
        for name, value in self.keras_globals.items():
            global_state.set_global_attribute(name, value)
        tf = _tensorflow()
        if tf is not None and self.tf_determinism is not None:
            tf.random.set_seed(self.tf_seed)


def _tensorflow() -> ModuleType | None:
    """TensorFlow when this process imported it already (Keras seeds it whatever the backend), else None."""
    import sys

    return sys.modules.get("tensorflow")


#: the names TensorFlow registers ``tf.custom_gradient`` gradients under in graph mode (``CustomGradient-<uid>``)
_CUSTOM_GRADIENT = "CustomGradient-"


def _gradient_registry() -> dict[str, object] | None:
    """TensorFlow's process-wide table of gradient functions (``ops._gradient_registry``), when TensorFlow is
    imported and keeps it where this reads it, else None."""
    if _tensorflow() is None:
        return None
    from tensorflow.python.framework import ops

    table = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return table if isinstance(table, dict) else None


def gradient_registrations() -> frozenset[str] | None:
    """The names in TensorFlow's gradient registry now (None when TensorFlow is not imported yet): what
    :func:`drop_gradient_registrations` compares against."""
    table = _gradient_registry()
    return frozenset(table) if table is not None else None


def drop_gradient_registrations(before: frozenset[str] | None) -> int:
    """Remove the ``tf.custom_gradient`` registrations made since ``before`` was taken; return how many.

    Tracing a ``tf.custom_gradient`` function in graph mode registers its gradient function under a fresh
    name in a process-wide registry that TensorFlow never empties (tensorflow/tensorflow#27492, #97697), and
    that function's closure holds the traced graph.  Keras' TensorFlow optimizer traces one in every train
    function (the all-reduce of the gradients, also without a distribution strategy), so every train function
    a process traces stays alive with its graphs until the process ends: after a few dozen stability tests,
    hundreds of thousands of graph objects that each of Python's full garbage collections walks again.  A
    registration is only read while the gradient of its graph is built, which Keras does as it traces its
    train step, and the engine discards the train function its ``fit`` traced when ``fit`` returns; so the
    registrations made during the plugin's ``fit`` are dropped then, and its graphs are freed with its train
    function.  Those made outside it stay: a ``tf.custom_gradient`` function that the user's own code traced
    may be differentiated later, which needs its registration.  So do registrations under other names
    (``tf.RegisterGradient`` of a user's own op).
    """
    table = _gradient_registry()
    if table is None:
        return 0
    # None: TensorFlow was imported after ``before`` was taken, and tracing alone registers these
    new = [name for name in table if name.startswith(_CUSTOM_GRADIENT) and name not in (before or ())]
    for name in new:
        del table[name]
    return len(new)


def _set_determinism(tf_config: ModuleType, on: bool) -> None:
    if on:
        tf_config.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


@contextlib.contextmanager
def op_determinism(keras: ModuleType, model: Model, wanted: bool) -> Iterator[str | None]:
    """TensorFlow's op determinism, on for one ``fit`` when ``wanted``; yields a note when it cannot be.

    TensorFlow runs an XLA-compiled step (``jit_compile=True``) without op determinism, and Keras turns XLA
    off for a model compiled while determinism is on.  So determinism is enabled only around ``fit`` (never
    while the test builds and compiles its model), and not at all for a model that trains with XLA: that
    model trains as compiled, and the note says its run is not guaranteed to be bit-reproducible.  Other
    backends: nothing to do (JAX is deterministic on the CPU; PyTorch is seeded).
    """
    if not wanted or keras.backend.backend() != "tensorflow":
        yield None
        return
    from tensorflow.python.framework import config as tf_config

    if bool(model.jit_compile):  # resolves "auto" now, as the first fit would, before determinism is touched
        yield (
            "the model is compiled with jit_compile=True: it trains with XLA, without TensorFlow's op "
            "determinism (XLA does not support it), so the run is not guaranteed to be bit-reproducible"
        )
        return
    before = bool(tf_config.is_op_determinism_enabled())
    if not before:
        tf_config.enable_op_determinism()
    try:
        yield None
    finally:
        if not before:
            tf_config.disable_op_determinism()


class _OwnRetracingFilter(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning for Keras' train functions and the plugin's
    compiled measurements (``validation.CompiledMeasure``): each stability run makes fresh ones by design (one per
    instrumented fit), and after five runs in a process TensorFlow warned about each.  Other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.getMessage())
        own = "multi_step" in msg or "CompiledMeasure." in msg
        return not ("triggered tf.function retracing" in msg and "function" in msg and own)


@contextlib.contextmanager
def quiet_own_retracing(keras: ModuleType) -> Iterator[None]:
    """The retracing filter on TensorFlow's logger, for one ``fit``."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    logger = logging.getLogger("tensorflow")
    own = _OwnRetracingFilter()
    logger.addFilter(own)
    try:
        yield
    finally:
        logger.removeFilter(own)


@contextlib.contextmanager
def batch_logs_read_before_keras(callbacks: list[Callback]) -> Iterator[None]:
    """For one ``fit`` whose batch-end hooks Keras would run on a thread of its own in plain ``fit``: the batch's
    logs read back to the host before Keras' ``CallbackList._on_train_batch_end`` takes them.

    Keras turns each log value into a float inside a bare ``except: pass`` (``pythonify_logs``).  In plain ``fit``,
    unless a callback passed to it has batch-end hooks, that runs on a worker thread (``async`` dispatch, on the
    backends Keras calls thread-safe: JAX and PyTorch, not TensorFlow; the progress bar that ``verbose=1`` adds
    comes after Keras decided, and runs there too), where no signal handler runs; the plugin's own batch-end
    hook makes Keras run it on the main thread at every read-back, where reading a JAX value waits for the step to
    finish: a Ctrl-C or pytest-timeout's signal that came then raised inside that ``except`` and was lost, and
    training went on to its last step.  Read here, outside it (an error of the read keeps the value, for Keras' own
    handling), the wait is done before Keras' ``except``; what the callbacks get is unchanged.  Where a callback of
    the user's has batch-end hooks, Keras runs them on the main thread in plain ``fit`` too, and nothing is changed."""
    import keras

    from .keras_internals import callback_list

    plain = callback_list(list(callbacks))  # None: a Keras laid out otherwise, with no such dispatch to keep
    CallbackList = type(plain)  # noqa: N806  (Keras' class)
    original = vars(CallbackList).get("_on_train_batch_end") if plain is not None else None
    if original is None or not getattr(plain, "_async_train", False):
        yield
        return

    def on_host(logs: object) -> object:
        if not isinstance(logs, dict):
            return logs
        out: dict[str, object] = {}
        for key, value in logs.items():
            try:
                out[key] = keras.ops.convert_to_numpy(value) if keras.ops.is_tensor(value) else on_host(value)
            except Exception:
                out[key] = value
        return out

    def _on_train_batch_end(self: object, batch: int, logs: object = None) -> None:
        original(self, batch, on_host(logs))

    setattr(CallbackList, "_on_train_batch_end", _on_train_batch_end)  # noqa: B010  (a class of Keras')
    try:
        yield
    finally:
        setattr(CallbackList, "_on_train_batch_end", original)  # noqa: B010


def random_state() -> dict[str, Any]:
    """The global random states ``fit`` may draw from: Python's, numpy's and, on PyTorch, torch's."""
    import keras

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])
        if "torch_cuda" in state:
            torch.cuda.set_rng_state_all(state["torch_cuda"])


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """The global random states put back after a measurement: PyTorch's unseeded ``Dropout`` draws its mask
    from torch's global generator (Keras' "fast path"), so one training-mode forward would change every later
    mask of the run.  Python's and numpy's global states are kept too."""
    state = random_state()
    try:
        yield
    finally:
        set_random_state(state)


__all__ = [
    "ProcessState",
    "drop_gradient_registrations",
    "gradient_registrations",
    "kept_random_state",
    "op_determinism",
    "quiet_own_retracing",
    "random_state",
    "set_random_state",
]
