"""The Keras internals pytest-stability depends on, in one place.

The plugin instruments Keras' own ``fit``; a few of the things it must reach are not public API.  Each module
path it imports from ``keras.src`` is in :data:`IMPORTS` (and imported through :func:`load`), each private
attribute it reads on a Keras object in :data:`ATTRIBUTES`.  :func:`missing` checks them all against the
installed Keras on the current backend; ``tests/backends/test_keras_internals.py`` runs it on every backend CI
installs, so a Keras release that moves one fails there, with its name, rather than inside a user's test.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import weakref
from types import FrameType, ModuleType
from typing import Any

from ..framework_types import Callback, Data, Model, Optimizer, Variable

#: name -> (module, attribute) of everything imported from ``keras.src``, and what for
IMPORTS: dict[str, tuple[str, str, str]] = {
    "StatelessScope": (
        "keras.src.backend.common.stateless_scope",
        "StatelessScope",
        "the loss as a function of variable values (curvature, the batch replay, the JAX recorder)",
    ),
    "data_adapter_utils": (
        "keras.src.trainers.data_adapters",
        "data_adapter_utils",
        "unpacking (x, y, sample_weight) batches of a pipeline",
    ),
    "array_slicing": (
        "keras.src.trainers.data_adapters",
        "array_slicing",
        "the validation data, batched as fit batches it",
    ),
    "get_data_adapter": (
        "keras.src.trainers.data_adapters",
        "get_data_adapter",
        "the validation data, batched as fit batches it",
    ),
    "ArrayDataAdapter": (
        "keras.src.trainers.data_adapters.array_data_adapter",
        "ArrayDataAdapter",
        "the batch a step trained on, found again over the sample indices (training/batches.py)",
    ),
    "global_state": (
        "keras.src.backend.common",
        "global_state",
        "Keras' process-wide seed and name counters, put back after each test (training/isolation.py)",
    ),
    "naming": ("keras.src.utils", "naming", "restarting Keras' automatic layer names for each test"),
    "JAXTrainer": ("keras.src.backend.jax.trainer", "JAXTrainer", "the JAX trainer's state handling (JAX only)"),
    "Functional": (
        "keras.src.models.functional",
        "Functional",
        "a functional model's own call, whose outputs its graph gives (:func:`build_before_first_trace`)",
    ),
    "EpochIterator": (
        "keras.src.trainers.epoch_iterator",
        "EpochIterator",
        "fit's epoch iterator, closed when fit returns (:func:`fit_epoch_iterator`)",
    ),
    "CallbackList": (
        "keras.src.callbacks.callback_list",
        "CallbackList",
        "the batch logs read before Keras' bare except takes them (isolation.batch_logs_read_before_keras)",
    ),
}

#: (owner, attribute, what for): private attributes the plugin reads on Keras objects
ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    ("Model", "_compile_loss", "whether fit has built the loss (the what-if replay's data order)"),
    ("Model", "_compile_config", "recompiling a clone for another seed"),
    ("Model", "_call_has_training_arg", "calling the model in training mode outside fit"),
    ("Model", "_compute_loss", "the training loss outside fit"),
    (
        "Model",
        "_flatten_layers",
        "finding BatchNormalization layers, random layers, layers that may add a loss, layers not built yet",
    ),
    ("Model", "_loss_tracker", "the raw per-step loss"),
    ("Layer", "_seed_generators", "whether a layer draws random numbers (Dropout)"),
    ("Optimizer", "_variables", "the optimizer's own variables (the recorder's buffers ride in them on JAX)"),
    ("Optimizer", "_trainable_variables", "the variables an apply() updates"),
    ("Optimizer", "_get_variable_index", "a variable's slot in the optimizer"),
    ("Optimizer", "_learning_rate", "the learning-rate schedule the what-if replay scales"),
    ("Adam", "_velocities", "Adam's second moments (the epsilon diagnosis)"),
    ("Metric", "_variables", "the loss tracker's total and count"),
    ("Callback", "_model", "the model fit trains, read without Callback.model (which syncs JAX's state)"),
    ("JAXModel", "_jax_state_synced", "JAX: whether fit's state is in the variables (sync_variables)"),
    ("JAXModel", "jax_state_sync", "JAX: fit's state put into the variables (sync_variables)"),
    ("Variable", "_value", "TensorFlow: the tf.Variable behind a Keras variable (a strategy's per-replica copies)"),
    ("Model", "_compile_metrics", "TensorFlow: the compiled metrics, built before the first trace"),
    ("Sequential", "_functional", "TensorFlow: a sequential model's graph, whose outputs build the metrics"),
    ("Functional", "_outputs_struct", "a functional model's outputs (TensorFlow: they build the metrics)"),
    ("KerasTensor", "_keras_history", "the layer that made a symbolic tensor: the output layer, the graph walked back"),
    ("Layer", "_inbound_nodes", "a functional model's graph walked back from the outputs that have a loss"),
    ("Layer", "_outbound_nodes", "a functional model's graph walked forward from an integer input (ids or values)"),
    ("EpochIterator", "_distributed_dataset", "TensorFlow: the dataset fit iterates, whose targets build the metrics"),
    ("EpochIterator", "_epoch_iterator", "the generator of fit's epoch iterator, closed when fit returns"),
    ("CallbackList", "_async_train", "whether plain fit would run the batch-end hooks on a thread of Keras' own"),
    ("CallbackList", "_on_train_batch_end", "the batch-end dispatch, given logs read to the host first"),
    (
        "EpochIterator",
        "_current_iterator",
        "the epoch's data iterator, closed with it when it is a generator (JAX's look-ahead on a GPU)",
    ),
)


def fit_epoch_iterator() -> weakref.ref[object] | None:
    """A weak reference to the epoch iterator of the Keras ``fit`` running now, found from one of its callbacks:
    the local ``epoch_iterator`` of the nearest ``fit`` frame up the stack (None when there is none).

    Stopped before its data ran out (the plugin stops ``fit`` at the planned step), that iterator's generator
    stays suspended, holding the iterator, in a reference cycle: only a full garbage collection, maybe minutes
    later, frees it and its ``tf.data`` iterator.  TensorFlow's destructor of a ``tf.data`` iterator left idle
    that long can wait for its autotuning thread's next wake-up, up to a minute, with Python's lock held
    (``benchmarks/iterator_release.py``: 8.4 s in 2 of 5 plain ``fit`` calls stopped early and left idle 12 s).
    :func:`close_epoch_iterator` closes it as soon as ``fit`` returns instead, as plain Keras would at that later
    collection.
    """
    EpochIterator = load("EpochIterator")
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit":
            candidate = frame.f_locals.get("epoch_iterator")
            if isinstance(candidate, EpochIterator):
                return weakref.ref(candidate)
        frame = frame.f_back
    return None


def close_epoch_iterator(ref: weakref.ref[object] | None) -> None:
    """Close the generators of the epoch iterator :func:`fit_epoch_iterator` found, once ``fit`` has returned:
    the cycles are broken, and the iterator and its ``tf.data`` iterator are freed now.

    Its own generator holds it; so does the epoch's data iterator when that is a generator method of it, as
    Keras' JAX one-batch-ahead iterator on a GPU is (found on an H200: ``benchmarks/results/gpu_check.md``).
    A generator closed here is one that Keras would not resume (``fit`` made the epoch iterator and has
    returned), and that a garbage collection would close later.

    The iterator's references to them are dropped too, as its own ``reset()`` drops them (without calling the
    data's ``on_epoch_end``): on CPython 3.12.0 to 3.12.3, ``close()`` leaves a generator's locals alive
    (CPython gh-118272, fixed in 3.12.4), so a closed generator would still hold the iterator in its cycle
    (found on the GPU machine's Python 3.12.3, under JAX and PyTorch alike)."""
    iterator = ref() if ref is not None else None
    if iterator is None:
        return
    for name in ("_epoch_iterator", "_current_iterator"):
        generator = getattr(iterator, name, None)
        if inspect.isgenerator(generator):
            generator.close()
            setattr(iterator, name, None)
        del generator
    del iterator


def tf_variable(variable: Variable) -> Any:
    """The ``tf.Variable`` behind a Keras variable (Keras' TensorFlow ``Variable`` keeps it in ``_value``): a
    distribution strategy's per-replica copies are read from it."""
    return getattr(variable, "_value", variable)


def load(name: str) -> Any:
    """The ``keras.src`` object :data:`IMPORTS` names ``name``."""
    module, attribute, _ = IMPORTS[name]
    return getattr(importlib.import_module(module), attribute)


def missing_imports(backend: str) -> list[str]:
    """Every import of :data:`IMPORTS` the installed Keras lacks on ``backend`` (``JAXTrainer`` on JAX only): a
    check of modules Keras has mostly imported already, made before a test first trains."""
    out = []
    for name, (module, attribute, _) in IMPORTS.items():
        if name == "JAXTrainer" and backend != "jax":
            continue
        try:
            load(name)
        except (ImportError, AttributeError) as exc:
            out.append(f"{module}.{attribute} ({type(exc).__name__}: {exc})")
    return out


#: The oldest Keras release supported (the extras in pyproject.toml require it): the backend and training tests
#: pass on 3.13.0 and later on each backend but for Keras' own differences; on 3.12.0 a Muon optimizer's run fails
#: on TensorFlow, before it a LossScaleOptimizer's first step (docs/backends.md, Keras versions)
KERAS_MIN = (3, 13)


@functools.cache
def unsupported(version: str, backend: str) -> str | None:
    """Why the plugin cannot train with Keras ``version`` on ``backend`` (None: it can): not Keras 3, older than
    :data:`KERAS_MIN`, or a newer Keras that moved one of :data:`IMPORTS`.  Checked once per process."""
    found = re.match(r"(\d+)\.(\d+)", version)
    release = (int(found[1]), int(found[2])) if found else (0, 0)
    if release[0] != 3:
        return f"pytest-stability needs Keras 3; found keras {version}"
    if release < KERAS_MIN:
        least = ".".join(map(str, KERAS_MIN))
        return f"pytest-stability needs Keras {least} or newer; found keras {version}: pip install 'keras>={least}'"
    lacks = missing_imports(backend)
    if lacks:
        return (
            f"keras {version} has moved internals of Keras' fit that pytest-stability reaches: {'; '.join(lacks)}. "
            "A newer pytest-stability may know this Keras; until then, install the Keras release before it"
        )
    return None


def missing(keras: ModuleType) -> list[str]:
    """Every internal of :data:`IMPORTS` and :data:`ATTRIBUTES` the installed Keras lacks on the current
    backend (``JAXTrainer`` on JAX only), checked on a small compiled model trained for one step."""
    import numpy as np

    backend = keras.backend.backend()
    out = missing_imports(backend)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.1), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    found: list[object] = []
    synced: list[object] = []

    callback: Callback = keras.callbacks.Callback

    class FindEpochIterator(callback):  # type: ignore[misc]  # Keras is untyped
        def on_train_begin(self, logs: object = None) -> None:
            ref = fit_epoch_iterator()
            found.append(ref() if ref is not None else None)

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            # JAX: fit holds its state now; its flag says whether the variables have it
            synced.append(getattr(self._model, "_jax_state_synced", None))

    finder = FindEpochIterator()
    model.fit(
        np.zeros((8, 4), "float32"),
        np.zeros((8, 1), "float32"),
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[finder],
    )
    dropout = model.layers[0]
    owners = {
        "Model": model,
        "Layer": dropout,
        "Optimizer": model.optimizer,
        "Adam": model.optimizer,
        "Metric": model._loss_tracker if hasattr(model, "_loss_tracker") else None,
        "Variable": model.trainable_variables[0],
        "EpochIterator": found[0] if found else None,
        "Callback": finder,
        "JAXModel": model,
        "Sequential": model,
        "Functional": getattr(model, "_functional", None),
        "KerasTensor": model.outputs[0],
        "CallbackList": callback_list([]),
    }
    tensorflow_only = {("Variable", "_value"), ("EpochIterator", "_distributed_dataset")}
    for owner, attribute, _ in ATTRIBUTES:
        if ((owner, attribute) in tensorflow_only and backend != "tensorflow") or (
            owner == "JAXModel" and backend != "jax"
        ):
            continue
        if owner == "JAXModel" and attribute == "_jax_state_synced" and synced != [False]:
            out.append(f"JAXModel._jax_state_synced (False while fit holds its state; read {synced})")
            continue
        obj = owners[owner]
        if obj is None or not hasattr(obj, attribute):
            out.append(f"{owner}.{attribute}")
    return out


def callback_list(callbacks: list[Callback]) -> object | None:
    """A Keras ``CallbackList`` of ``callbacks`` (None where Keras has none where :data:`IMPORTS` says)."""
    try:
        made: object = load("CallbackList")(callbacks)
    except (ImportError, AttributeError):
        return None
    return made


def sync_variables(model: Model, *, read_only: bool = False) -> None:
    """Under JAX, ``fit`` holds the state and empties the variables: put the values back (Keras' way for
    callbacks that read variables).  The trainer then reads the variables again before the next step, and
    with them whatever was assigned to them in between (the what-if's fix).

    ``read_only``: the caller only reads the variables (a validation loss, a curvature measurement), and ``fit``
    goes on from the state it holds, as it would have without this read.  Read again, the variables would bring
    in what a callback of the user's assigned to one of them since (a learning rate set per batch through the
    model itself, not ``self.model``), which plain ``fit`` drops until the epoch's end.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is None:
        return
    held = getattr(model, "_jax_state_synced", None) is False  # fit holds a state the variables lack
    sync()
    if read_only and held:
        model._jax_state_synced = False


def build_optimizer(opt: Optimizer, variables: list[Variable]) -> None:
    """Build an optimizer for ``variables`` as its own ``apply`` does when it finds itself unbuilt: in its name
    scope, then marked built."""
    import keras

    with keras.name_scope(opt.name, caller=opt):
        opt.build(list(variables))
    opt.built = True


def build_before_first_trace(model: Model, epoch_iterator: weakref.ref[object] | None) -> None:
    """TensorFlow: build what the first trace of the train step would build, right before the first call of the
    train function, as that trace would build it, so that the step is traced once.

    Keras' TensorFlow trainer (without a distribution strategy) leaves the optimizer and the compiled metrics to
    build themselves in the first trace of the train step, where ``apply`` and ``update_state`` find them
    unbuilt; a ``tf.function`` whose first trace made variables is traced again, so every run traced its step
    twice (0.1 to 0.3 s each for a small model on a 2-core CPU, the recorder's operations included, more for a
    larger one).  Called from the plugin's callback at the first ``on_train_batch_begin``, after the user's
    callbacks' ``on_train_begin``, ``on_epoch_begin`` and ``on_train_batch_begin`` (one may freeze layers), right
    before the call that traces.  Keras builds both before the first step itself on JAX and PyTorch
    (``_symbolic_build``).  Only for Keras' own ``train_step`` on a model whose layers are all built; left to the
    trace otherwise, as anything below that cannot be known without calling the model.

    * The optimizer: by the same call that ``apply`` makes, with the variables Keras' ``train_step`` applies
      (the model's trainable weights, read now), in the optimizer's name scope: the same variables with the same
      paths and zeros.
    * The compiled metrics: by the same ``build(y_true, y_pred)`` that their ``update_state`` calls, which reads
      only the structure, shapes and dtypes of the targets and outputs (to pick binary, sparse or categorical
      accuracy, and a metric per output), given exactly what the trace would see: the targets' spec of the
      dataset the train function iterates, and the outputs of the model's graph (a functional or sequential
      model with Keras' own ``call``, whose outputs have a rank of 2 or more, so that their last dimension is not
      the batch's).  Nothing of the model is called.  (A multi-output model's compiled loss makes its per-output
      trackers in the trace too; it is left there: its ``call`` rearranges the targets before it builds.)
    """
    import keras

    if keras.backend.backend() != "tensorflow" or model.run_eagerly:
        return
    if type(model).train_step is not keras.Model.train_step or not all(
        layer.built for layer in model._flatten_layers()
    ):
        return
    opt = model.optimizer
    if opt is not None and not opt.built and model.trainable_weights:
        build_optimizer(opt, model.trainable_weights)
    metrics = model._compile_metrics
    if metrics is not None and not metrics.built:
        seen = _first_trace_targets_and_outputs(keras, model, epoch_iterator)
        if seen is not None:
            metrics.build(*seen)


def _first_trace_targets_and_outputs(
    keras: ModuleType, model: Model, epoch_iterator: weakref.ref[object] | None
) -> tuple[Data, Data] | None:
    """``(y_true, y_pred)`` as the first trace of Keras' ``train_step`` sees them, as Keras tensors (see
    :func:`build_before_first_trace`); None when they cannot be known without calling the model."""
    import tensorflow as tf

    functional = load("Functional")
    if type(model).call is keras.Sequential.call:
        graph = getattr(model, "_functional", None)
    elif type(model).call is functional.call:
        graph = model
    else:
        return None
    outputs = getattr(graph, "_outputs_struct", None)
    iterator = epoch_iterator() if epoch_iterator is not None else None
    dataset = getattr(iterator, "_distributed_dataset", None)
    if outputs is None or not isinstance(dataset, tf.data.Dataset):
        return None
    flat = keras.tree.flatten(outputs)
    if not flat or any(len(o.shape) < 2 for o in flat):
        return None
    spec = dataset.element_spec
    if not all(isinstance(s, tf.TensorSpec) for s in keras.tree.flatten(spec)):  # ragged, sparse, optional
        return None
    _, y, _ = load("data_adapter_utils").unpack_x_y_sample_weight(spec)
    if y is None:
        return None
    return keras.tree.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype.name), y), outputs


__all__ = [
    "ATTRIBUTES",
    "IMPORTS",
    "build_before_first_trace",
    "build_optimizer",
    "callback_list",
    "close_epoch_iterator",
    "fit_epoch_iterator",
    "load",
    "missing",
    "sync_variables",
    "tf_variable",
]
