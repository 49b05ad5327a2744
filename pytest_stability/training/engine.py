"""Train with Keras' own ``model.fit``, instrumented, on the backend Keras runs on.

:func:`train` calls the user's ``model.fit`` with the user's arguments and
callbacks, plus the plugin's :class:`Readback` callback, for exactly ``steps``
optimizer steps, while a :class:`~pytest_stability.training.recorders.Recorder`
records per-step data on the device (see that module).  It returns a
:class:`RunResult` whose :class:`~pytest_stability.trace.Trace` the checks
judge.

Per backend (``keras.backend.backend()``, chosen the Keras way:
``KERAS_BACKEND`` or ``keras.json``):

* TensorFlow: ``steps_per_execution = readback_every`` (one compiled
  ``tf.function`` call runs a chunk; shorter calls where that saves a second
  trace for a last call cut short, :func:`.plan.chunking`), recording in the
  optimizer's ``apply``; op determinism is enabled when ``deterministic``.
* JAX: the same chunking; recording in ``stateless_apply``, its buffers
  threaded through ``fit`` as optimizer state and read from the trainer's
  state at each chunk boundary.
* PyTorch: Keras' ``fit`` refuses ``steps_per_execution > 1``, so each step
  runs eagerly; the buffers are still read back once per chunk.

:func:`train` reads as the phases of a run: the inputs (:mod:`.fitsetup`: the data checked, ``fit``'s
arguments completed, the short-epoch decision); what the plugin adds to ``fit`` (the recorders, the curves, the
read-back callback, and what it runs at read-backs: :class:`~.validation.ValidationProbe`,
:class:`CurvatureAtReadbacks`, :class:`FixAt`); the run (:func:`_run_fit`, whose exceptions :func:`_ended_by`
sorts); and the trace assembled from what was recorded.

The plugin measures the validation loss itself, every ``validate_every``
steps (at the first chunk boundary at or after it), on the same fixed batches,
in inference mode and without touching any metric; Keras' own per-epoch
validation still runs when the user passes ``validation_data`` or
``validation_split``, so their callbacks see ``val_loss`` as in their training.
"""

from __future__ import annotations

import inspect
import numbers
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a run builds them: these modules import Keras
    from ..options import RunSpec
    from .batches import BatchPlan
    from .curvature import Meter
    from .curves import Curves
    from .readback import RandomStart, Readback
    from .state import State

from ..errors import StabilityUsageError
from ..framework_types import Callback, Data, Model, Optimizer
from ..options import OPTIONS_BY_NAME, cli_name, optimizer_keyword_hint
from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, WEIGHTS, Trace
from . import isolation
from .fitsetup import (
    FitSetup,
    _leaves,
    _train_samples,
    _under_strategy,
    batch_observers,
    few_samples_note,
    frames_as_arrays,
    full_batch_as_one_epoch,
    input_rescaler,
    output_rescaler,
    prepare_fit,
    short_message,
    split_one_class,
)
from .keras_internals import close_epoch_iterator, sync_variables
from .model_facts import (
    batchnorm_note,
    batchnorm_over_one_sample,
    integer_inputs_are_features,
    integer_targets_are_values,
    label_range_error,
    optimizer_config_silently,
    output_wiring,
    outputs_without_loss,
    rate_callbacks,
    wiring_note,
)
from .plan import Chunking, accumulating_steps, accumulation_steps, chunking
from .recorders import (
    BatchNotRun,
    ChunkRows,
    Recorder,
    RowLayout,
    find_optimizers,
    host_flags,
    host_numpy,
    make_recorder,
    var_name,
)
from .validation import (  # noqa: F401 (engine._loss_of: tests measure with it)
    ValidationProbe,
    _batchnorm_layers,
    _loss_of,
    loss_needs_targets,
)

BACKENDS = ("tensorflow", "jax", "torch")


@dataclass(frozen=True)
class StoppedRun:
    """What a run that an exception stopped had recorded: the trace of its steps (no check judged them), the
    device it trained on, and the seconds it trained."""

    trace: Trace
    device: str
    wall_time: float


#: ``engine.train``'s ``on_raise``: the exception that stopped ``fit``, where (the step, the callback), and what
#: the run recorded before it (None when no step was)
OnRaise = Callable[[BaseException, str, StoppedRun | None], None]


def import_keras() -> Any:
    """Keras 3 on a supported backend, or a usage error saying what to install."""
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StabilityUsageError(
            "pytest-stability needs Keras 3 and a backend to train: pip install 'pytest-stability[cpu]' "
            "(TensorFlow), 'pytest-stability[jax]' or 'pytest-stability[torch]'. Import failed with: " + str(exc)
        ) from None
    backend = keras.backend.backend() if keras.__version__.startswith("3") else ""
    if backend and backend not in BACKENDS:
        raise StabilityUsageError(
            f"pytest-stability trains on the TensorFlow, JAX or PyTorch backend of Keras 3; "
            f"KERAS_BACKEND is {backend!r}"
        )
    from .keras_internals import unsupported

    why = unsupported(keras.__version__, backend)
    if why is not None:
        raise StabilityUsageError(why)
    return keras


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the backend (``keras.utils.set_random_seed``).  The stability test puts the
    random states back when it ends (:class:`~.isolation.ProcessState`); TensorFlow's op determinism is
    enabled around ``fit`` only (:func:`~.isolation.op_determinism`)."""
    keras = import_keras()
    keras.utils.set_random_seed(int(seed))


def has_gpu() -> bool:
    """Whether the current Keras backend sees a GPU."""
    keras = import_keras()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(requested: str) -> tuple[str | None, str]:
    """Map ``auto`` / ``cpu`` / ``gpu`` to a Keras device name (``keras.device``) and a label.

    Returns (device, label); device None for ``auto`` (the backend's default
    placement: its accelerator when it sees one), and ``(None, "no GPU")`` for
    ``gpu`` without one.
    """
    if requested == "cpu":
        return "cpu:0", "CPU"
    gpu = has_gpu()
    if requested == "gpu":
        return ("gpu:0", "GPU") if gpu else (None, "no GPU")
    return None, "GPU" if gpu else "CPU"


def validate_model(model: Model) -> None:
    """Reject what ``fit`` cannot train, naming what was received."""
    keras = import_keras()
    if not isinstance(model, keras.Model):
        raise StabilityUsageError(
            f"the model must be a compiled keras.Model (or a zero-argument callable returning one); "
            f"received {type(model).__name__}"
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise StabilityUsageError(
            f"the model {model.name!r} is not compiled: call model.compile(optimizer=..., loss=...) "
            "before stability.fit(); the optimizer and loss it is compiled with are the ones trained"
        )
    _refuse_multi_optimizer(keras, model)
    custom_step = type(model).train_step is not keras.Model.train_step
    custom_loss = type(model).compute_loss is not keras.Model.compute_loss
    compiled_loss = getattr(model, "_compile_loss", None) is not None
    if not compiled_loss and not custom_loss and not custom_step and not _adds_losses(model):
        raise StabilityUsageError(
            f"the model {model.name!r} was compiled without a loss (and overrides neither compute_loss "
            "nor train_step, and none of its layers adds a loss or has a regulariser); pass loss=... to "
            "model.compile()"
        )
    if getattr(model, "built", False) and not custom_step and not model.trainable_variables:
        # plain fit runs such a model and changes nothing: there is no training to judge
        frozen = " (model.trainable is False)" if not model.trainable else " (every layer is frozen)"
        raise StabilityUsageError(
            f"the model {model.name!r} has no trainable variables{frozen}: fit would train nothing, so there is "
            "no training stability to test; set trainable = True on the layers to train (a frozen base needs a "
            "trainable head), and compile again"
        )


def _refuse_multi_optimizer(keras: ModuleType, model: Model) -> None:
    """A ``keras.optimizers.MultiOptimizer`` (Keras 3.15: several optimizers, each over its own variables) is
    not recorded yet: the recorder reads one learning rate per optimizer, which it has none of (reading it
    raises), and the what-if replay sets one.  Refused before training, rather than failing inside it."""
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    if multi is None:
        return
    held = [model.optimizer, *(v for v in vars(model).values() if isinstance(v, keras.optimizers.Optimizer))]
    for opt in held:
        opt = getattr(opt, "inner_optimizer", opt)  # under a LossScaleOptimizer
        if isinstance(opt, multi):
            inner = ", ".join(f"{type(o).__name__}" for o in getattr(opt, "optimizers", [])) or "none built yet"
            raise StabilityUsageError(
                f"the model {model.name!r} is compiled with a keras.optimizers.MultiOptimizer (its optimizers: "
                f"{inner}), which pytest-stability does not record yet: it records each optimizer's learning "
                "rate, and a MultiOptimizer has none of its own. Test with one optimizer, or apply each part's "
                "optimizer in a train_step of your own, as a GAN does (each is then recorded on its own)"
            )


def _adds_losses(model: Model) -> bool:
    """Whether the model may give ``fit`` a loss of its own, which ``fit`` trains on without a compiled loss:
    a layer's ``add_loss`` (the endpoint-layer pattern), a regulariser.  A class of the user's (the model or a
    layer) may call ``add_loss`` in ``call``, which shows only when it runs: then it may; Keras' own layers
    add losses only through their regularisers."""
    if model.losses:  # the regularisers of built weights
        return True
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if type(layer).__module__.split(".")[0] != "keras":
            return True
        if any(value is not None for name, value in vars(layer).items() if name.endswith("_regularizer")):
            return True
    return False


@dataclass
class RunResult:
    trace: Trace
    device: str
    wall_time: float
    data_kind: str
    final_metrics: dict[str, float] = field(default_factory=dict)
    backend: str = "tensorflow"
    notes: list[str] = field(default_factory=list)
    #: the model's and optimizers' variables before the first step (``keep_initial_state``)
    initial_state: State | None = None
    #: the global random states at the first batch (see :class:`~.readback.RandomStart`)
    random_start: dict[str, Any] | None = None
    #: how the steps map to batches of the data (:func:`.batches.locate` names a step's batch); None under a
    #: distribution strategy
    batches: BatchPlan | None = None


#: fit() arguments the plugin sets itself; passing them is a usage error naming the plugin's keyword.
_OWNED = {"steps_per_execution": "readback_every (a compile() argument; the plugin chunks by readback_every)"}


def fit_parameters(keras: ModuleType) -> set[str]:
    return {p for p in inspect.signature(keras.Model.fit).parameters if p != "self"}


#: fit() arguments that are counts, and their least value: Keras takes others without a check, then trains
#: nothing (epochs=0), a few steps (steps_per_epoch=0) or fails after an epoch (validation_freq=0)
_FIT_COUNTS = {"epochs": 1, "initial_epoch": 0, "steps_per_epoch": 1, "validation_steps": 1, "validation_batch_size": 1}


def _count_problem(name: str, value: object, least: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"{name} must be an int >= {least}, received {value!r} ({type(value).__name__})"
    if value < least:
        return f"{name} must be an int >= {least}, received {value!r}"
    return None


def check_fit_kwargs(keras: ModuleType, fit_kwargs: dict[str, Any]) -> None:
    allowed = fit_parameters(keras)
    for name in fit_kwargs:
        if name in _OWNED:
            raise StabilityUsageError(f"{name} is not a fit() argument; use {_OWNED[name]}")
        if name not in allowed:
            raise StabilityUsageError(
                f"model.fit() has no argument {name!r}{_belongs(name, allowed)}; it accepts "
                f"{', '.join(sorted(allowed - {'x', 'y'}))}, and stability.fit() also takes steps, seed and check"
            )
    for name, least in _FIT_COUNTS.items():
        value = fit_kwargs.get(name)
        problem = None if value is None else _count_problem(name, value, least)
        if problem:
            raise StabilityUsageError(problem)
    freq = fit_kwargs.get("validation_freq")
    if freq is not None:
        problems = [_count_problem("validation_freq", f, 1) for f in (freq if isinstance(freq, list) else [freq])]
        if any(problems):
            raise StabilityUsageError(
                f"validation_freq must be an int >= 1 (validate every that many epochs) or a list of them (the "
                f"epochs to validate after), received {freq!r}"
            )
    split = fit_kwargs.get("validation_split")
    if split and not (isinstance(split, numbers.Real) and not isinstance(split, bool) and 0 < float(split) < 1):
        # Keras' fit slices at floor(n * (1 - split)) without a word: 1.5 holds out the last half, -0.5 nothing
        raise StabilityUsageError(
            f"validation_split must be a number between 0 and 1, the fraction of the samples held out for "
            f"validation; received {split!r}"
        )
    epochs, initial = fit_kwargs.get("epochs"), int(fit_kwargs.get("initial_epoch") or 0)
    if epochs is not None and epochs <= initial:
        raise StabilityUsageError(
            f"epochs={epochs} with initial_epoch={initial} trains no epoch: fit trains from epoch initial_epoch up "
            "to epochs (an index, not a count), so epochs must be above initial_epoch"
        )


def _belongs(name: str, allowed: set[str]) -> str:
    """Where a keyword that fit() does not take belongs: a setting of the run goes in the marker, a near miss of
    a fit() argument is named, the learning rate and clipping are the optimizer's; else ''."""
    import difflib

    if name in OPTIONS_BY_NAME:
        return (
            f" ({name} is a setting of the run: @pytest.mark.stable_training({name}=...) or "
            f"{cli_name(name)}=..., not a fit() argument)"
        )
    if hint := optimizer_keyword_hint(name):
        return hint
    close = difflib.get_close_matches(name, sorted(allowed | {"steps", "seed", "check"}), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _usage_from_keras(exc: BaseException, setup: FitSetup, model: Model, keras: ModuleType) -> StabilityUsageError:
    """Keras' own error at the first step, before any update: mostly the data or arguments (shapes, targets), but
    not always (under JAX, a layer a callback froze after fit built the optimizer), so the message says where it
    came from, not why; except for arrays given without ``y`` to a model compiled with a loss, or with class names
    as ``y``, whose errors are the backend's own words ("None values not supported", "Invalid dtype: str32")."""
    hint = ""
    if setup.no_targets and loss_needs_targets(keras, model, "train_step"):
        hint = (
            f" (y is None, and the model is compiled with loss={getattr(model.loss, '__name__', model.loss)!r}, "
            "which compares its outputs with targets: pass the targets as y, or a dataset of (x, y) pairs)"
        )
    elif setup.string_targets is not None:
        hint = (
            f" (y holds strings, the first {setup.string_targets!r}: a loss takes numbers; encode the classes as "
            "integers, e.g. classes, y = np.unique(y, return_inverse=True), or a keras.layers.StringLookup)"
        )
    elif setup.string_inputs is not None:
        hint = (
            f" (x holds text in a numpy array, the first {setup.string_inputs!r}: Keras' fit takes numpy arrays "
            "of numbers only; give the text as a tf.data.Dataset of (text, y) pairs, which runs a "
            "TextVectorization layer on every backend in its map, or as a tf.constant on TensorFlow)"
        )
    return StabilityUsageError(
        f"model.fit() raised at its first step, before any update: {type(exc).__name__}: {short_message(exc)}" + hint
    )


def _stopped_trace(
    recs: list[Recorder], cb: Readback, validation: ValidationProbe, setup: FitSetup, *, backend: str
) -> Trace | None:
    """The trace of a run that an exception stopped, from what was read back before it (host arrays only: no
    framework call while that exception is on its way): the raw loss, gradient norms, learning rate and
    validation loss of the steps recorded, for the report to show how far training got and how.  No check
    judges it.  None when no step was recorded, or when what was recorded cannot be put together."""
    try:
        recorded = _recorded(recs, cb.rowsets, cb.reference, cb.multiples)
        if recorded.steps == 0:
            return None
        loss, loss_recorded = _loss_or_nan(recorded, None, [])
        val_steps, val_loss = validation.val_loss()
        if val_steps is not None and val_loss is not None:
            within = val_steps < recorded.steps
            val_steps, val_loss = val_steps[within], val_loss[within]
        return Trace(
            loss=loss,
            grad_norm=recorded.grad_norm if recorded.applied else None,
            nonfinite=recorded.flags,
            lr=recorded.rows[:, RowLayout.LR],
            val_steps=val_steps,
            val_loss=val_loss,
            steps_planned=int(setup.run_steps),
            info={"backend": backend, "loss_recorded": loss_recorded},
        )
    except Exception:  # never in the way of the exception that stopped the run
        return None


def _read_after_failure(rec: Recorder, cb: Readback) -> tuple[bool, int, bool]:
    """After ``fit`` raised: read back what was recorded; returns whether that could be read (the state may
    be half-updated, or gone: JAX donates its buffers to the step that raised), the step it failed in (the
    steps recorded so far) and whether that step's input batch held NaN/Inf (the train_step wrapper flags
    it before the step runs)."""
    try:
        cb.read(measure=False)
        read = True
    except Exception:
        read = False
    try:
        bad = rec.input_was_bad()
    except Exception:
        bad = False
    return read, cb.rows.done, bad


def _raised_row(rec: Recorder, rows: ChunkRows) -> np.ndarray:
    """The record of a step that raised before its update: gradient norms unknown (NaN), no update, the
    rate of the step before, flagged for its input batch."""
    layout = rec.layout
    row = np.zeros(layout.width, np.float32)
    row[layout.GNORM] = np.nan
    row[layout.var_gnorm] = np.nan
    row[layout.extras] = np.nan
    done = [r for r in rows.rows if len(r)]
    row[layout.LR] = done[-1][-1, layout.LR] if done else np.nan
    row[layout.FLAGS] = INPUT
    return row


def _framework_roots() -> tuple[str, ...]:
    """Folders whose code is not the user's: the frameworks, the standard library, pytest-stability."""
    import os
    import sysconfig

    roots = [sysconfig.get_paths()["stdlib"], os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for name in ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "optree", "tree"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            roots.append(os.path.dirname(os.path.abspath(path)))
    return tuple(os.path.normcase(r) + os.sep for r in roots)


def _frames(exc: BaseException) -> list[FrameType]:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _raised_in_callback(frames: list[FrameType], callbacks: list[Callback]) -> str | None:
    """``in <Callback>.<hook>`` for the innermost frame of one of the user's callbacks, else None."""
    ids = {id(c) for c in callbacks}
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in ids:
            return f"in {type(owner).__name__}.{frame.f_code.co_name}"
    return None


def raised_where(exc: BaseException, callbacks: list[Callback], model: Model) -> str | None:
    """Where the user's own code raised ``exc`` inside ``fit`` (a callback's hook, the model's code), or None
    when it came from the frameworks (a shape Keras rejects, a NaN a kernel refuses).

    A frame of one of the user's callbacks names it; else the innermost frame outside the frameworks, the
    standard library and the plugin is the user's (a custom ``train_step``, a loss function).
    """
    import os

    frames = _frames(exc)
    in_callback = _raised_in_callback(frames, callbacks)
    if in_callback is not None:
        return in_callback
    roots = _framework_roots()
    inner = frames[-1] if frames else None
    if inner is not None and not os.path.normcase(os.path.abspath(inner.f_code.co_filename)).startswith(roots):
        return f"in {inner.f_code.co_name} ({os.path.basename(inner.f_code.co_filename)}:{inner.f_lineno})"
    return None


def _is_keras_input_error(exc: BaseException) -> bool:
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)):
        return True
    # PyTorch reports bad targets and shapes as RuntimeError; only on the first step is that the data's fault
    return type(exc).__name__ in ("InvalidArgumentError", "UnimplementedError", "RuntimeError")


def train(
    model: Model,
    x: Data,
    y: Data = None,
    *,
    fit_kwargs: dict[str, Any] | None = None,
    steps: int,
    seed: int,
    spec: RunSpec,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    fix_at: tuple[int, Callable[[Model], None]] | None = None,
    stop_after: int | None = None,
    keep_initial_state: bool = False,
    random_start: dict[str, Any] | None = None,
    on_raise: OnRaise | None = None,
) -> RunResult:
    """Train ``model`` with its own ``fit`` for ``steps`` optimizer steps and record a Trace.

    Args:
        fit_kwargs: anything ``keras.Model.fit`` accepts (callbacks, class_weight,
            sample_weight, validation_data, validation_split, epochs, ...).
        batch_size: used for array inputs when ``fit_kwargs`` has none.
        progress: called with the steps done at each read-back.
        fix_at: ``(step, apply)``: at the last read-back at or before ``step``
            (before the first step when none is), call ``apply(model)``: the
            what-if replay changes the optimizer there; ``trace.info["fix_applied_at"]``
            says at which step.
        stop_after: stop after this many steps (the replay's horizon); the
            trace still says ``steps`` were planned.
        keep_initial_state: copy the model's and optimizer's variables to the
            host before the first step (``RunResult.initial_state``), so that
            the what-if replay can re-run the same training from the start.
        random_start: the random state at the first batch of an earlier run
            (``RunResult.random_start``), put back at this run's first batch.
        on_raise: called with the exception, a sentence saying where it
            was raised (the step, the callback) and what the run recorded
            before it (a :class:`StoppedRun`; None when no step was recorded,
            or the record could not be put together) when ``fit`` raises an
            exception of the user's (a callback's, the model's own code) or is
            stopped from outside (Ctrl-C, pytest-timeout): that exception then
            propagates unchanged, as from plain ``fit``.
    """
    keras = import_keras()
    backend = keras.backend.backend()
    validate_model(model)
    fit_kwargs = dict(fit_kwargs or {})
    check_fit_kwargs(keras, fit_kwargs)
    device, label = resolve_device(spec.device)
    seed_everything(seed)
    # the inputs: pandas frames as arrays, checked, fit's arguments completed, the validation batches read, the
    # short-epoch decision
    x, y = frames_as_arrays(x, y, fit_kwargs)
    asked_batch = fit_kwargs.get("batch_size") is not None or batch_size is not None
    setup = prepare_fit(
        keras,
        x,
        y,
        fit_kwargs,
        spec=spec,
        steps=steps,
        stop_after=stop_after,
        batch_size=batch_size,
        integer_inputs=integer_inputs_are_features(model),
        integer_targets=integer_targets_are_values(model),
    )
    if setup.kind == "arrays":  # integer labels the loss cannot take (on JAX, silently dropped)
        val = setup.fit_kwargs.get("validation_data")
        val_y = val[1] if isinstance(val, (tuple, list)) and len(val) > 1 else None
        for what, labels in (("y", y), ("validation y", val_y)):
            problem = label_range_error(model, labels, what)
            if problem is not None:
                raise StabilityUsageError(problem)
    notes: list[str] = []
    one_class = split_one_class(y, setup.fit_kwargs) if setup.kind == "arrays" else None
    if one_class is not None:
        notes.append(one_class)
    n_train = _train_samples(x, setup.fit_kwargs) if setup.kind == "arrays" else None
    if asked_batch and n_train and setup.batch_size > n_train:  # plain fit takes every sample: said, as it was asked
        notes.append(
            f"batch_size={setup.batch_size} is larger than the {n_train} training samples: every step trains on "
            f"all {n_train} (a full batch), as plain fit does"
        )
    # how the epochs and batches were presented for speed (a full batch as one long epoch; short epochs or single
    # batches kept for what observes them): the report shows these apart from the notes that qualify the verdict
    speed_notes: list[str] = []
    validation = ValidationProbe(
        keras, model, x, y, kind=setup.kind, fit_kwargs=setup.fit_kwargs, batch_size=setup.batch_size, notes=notes
    )
    x_fit, y_fit, setup = full_batch_as_one_epoch(keras, model, x, y, setup, speed_notes)
    yielded = _YieldCount()
    if inspect.isgenerator(x_fit):  # how many batches it gives, for the error if it runs out (a generator still,
        x_fit = yielded.counting(x_fit)  # as Keras requires; an iterator of another type it refuses, as plain fit)

    # what the plugin adds to fit: recorders in the optimizers, curves in the metrics, its callbacks
    distributed = _under_strategy(keras, model)
    # the user's callbacks, and Keras' progress bar, that see single batches (they keep steps_per_execution)
    observers = batch_observers(setup.callbacks, setup.fit_kwargs.get("verbose"))
    grouping = _chunking(
        backend, model, spec, setup, observers, validates=bool(validation.batches), distributed=distributed
    )
    from .curves import Curves

    # every other scalar the train_step reports (a GAN's d_loss, g_loss; metrics), per step; not under a
    # distribution strategy, whose replicas would each update it
    curves = Curves(model, chunk=grouping.chunk) if not distributed else None
    recs = _recorders(
        backend,
        model,
        spec,
        setup,
        chunk=grouping.chunk,
        distributed=distributed,
        loss_from_logs=_loss_from_logs(keras, model, curves),
    )
    meter, no_meter = _curvature_meter(keras, model, spec, setup, x, y, seed=seed, distributed=distributed)
    curvature = CurvatureAtReadbacks(meter, model, recs[0]) if meter is not None else None
    fix = FixAt(*fix_at, chunk=grouping.chunk, model=model, rec=recs[0]) if fix_at is not None else None
    cb = _readback(
        recs, setup, grouping, spec, validation, curvature, fix, curves, progress, keep_initial_state, distributed
    )
    from .readback import RandomStart

    start = RandomStart(random_start)
    plan, tail = _batch_plan(backend, x, setup, seed=seed, distributed=distributed)
    _note_single_batches(observers, grouping, speed_notes)

    # the run
    parts = Instruments(recs, curves, cb, start, tail, validation, curvature)
    wall = _run_fit(keras, model, x_fit, y_fit, setup, parts, grouping.spe, device, spec, on_raise, notes, label)

    # the trace, from what was recorded
    recorded = _recorded(recs, cb.rowsets, cb.reference, cb.multiples)
    notes.extend(recorded.notes)
    _check_steps_ran(model, setup, cb, recorded.steps, notes, yielded=yielded.n)
    loss, loss_recorded = _loss_or_nan(recorded, curves, notes)
    if loss_recorded and recs[recorded.reference].loss_taken_from_logs:
        notes.append(
            "the raw loss is the 'loss' this model's train_step returns (it leaves the model's loss tracker "
            "alone): return each step's own loss there, not a running mean, or loss_spike cannot see a spike"
        )
    info = model_info(
        keras,
        model,
        recs[recorded.reference],
        backend=backend,
        spe=grouping.spe,
        kind=setup.kind,
        distributed=distributed,
    )
    trace = _trace(recs, recorded, loss, validation, steps=steps, info=info)
    if curves is not None:
        _add_curves(trace, curves, recorded.steps, cb.keras_steps, notes)
        loss_recorded = loss_recorded or _own_loss_metric(trace)
    _optimizer_facts(trace.info, recs, recorded)
    trace.info["loss_recorded"] = loss_recorded
    accumulation = max(accumulation_steps(rec.inner) for rec in recs)
    if accumulation > 1:  # the weights change at every n-th step only (the update ratios between are NaN)
        trace.info["gradient_accumulation_steps"] = accumulation
    setters = rate_callbacks(setup.callbacks)
    if setters:  # what set the recorded rate, where the optimizer's own is a constant (the diagnosis names it)
        trace.info["lr_callbacks"] = setters
    if distributed:
        _replica_facts(trace, model, cb.rowsets[recorded.reference].replicas, recorded.steps)
    if fix is not None and fix.applied_at is not None:
        trace.info["fix_applied_at"] = fix.applied_at
    _curvature_facts(trace, meter, no_meter)
    # array inputs are checked for NaN/Inf on the host before training, other pipelines' batches on the device
    # in every step (not under a distribution strategy: there the failing step's batch is read again below)
    trace.info["inputs_checked"] = setup.kind == "arrays" or recs[0].check_inputs
    trace.info.update(setup.data_rms)  # how far array data is from unit scale (input_rms, target_rms)
    trace.info.update(setup.data_outliers)  # the few samples that make it so, where a few do
    for side in ("target", "input"):
        few = setup.data_outliers.get(f"{side}_outliers")
        if few is not None:
            notes.append(few_samples_note(side, few, float(setup.data_rms[f"{side}_rms"])))
    # a model that rescales its inputs first, or its outputs last: the raw scale on that side is not what trains
    for side, key, find in (
        ("input_rms", "inputs_rescaled_by", input_rescaler),
        ("target_rms", "targets_rescaled_by", output_rescaler),
    ):
        rescaler = find(model) if side in setup.data_rms else None
        if rescaler is not None:
            trace.info[key] = rescaler
    # a loss on probabilities that the output layer does not make, a softmax of one unit, targets a bounded output
    # cannot reach
    wiring = output_wiring(model, y if setup.kind == "arrays" else None)
    if wiring is not None:
        trace.info["output_wiring"] = wiring
        notes.append(wiring_note(wiring, backend))
    lossless = outputs_without_loss(model)
    if lossless is not None:  # outputs compiled without a loss: what feeds only them gets no gradient
        trace.info["outputs_without_loss"] = lossless
    if setup.kind == "arrays":  # the samples a step trains on (the diagnosis of BatchNorm's statistics reads it)
        trace.info["batch_size"] = min(setup.batch_size, n_train) if n_train else setup.batch_size
    one = batchnorm_over_one_sample(model, setup.batch_size if setup.kind == "arrays" else None)
    if one is not None:  # BatchNorm over features, in batches of one sample
        trace.info["batchnorm_one_sample"] = one
        notes.append(batchnorm_note(one))
    if notes:
        trace.info["notes"] = list(notes)
    if speed_notes:
        trace.info["speed_notes"] = list(speed_notes)
    validation.record_gap(trace.info)
    _first_nonfinite(keras, model, recs, trace, x, setup)
    return RunResult(
        trace,
        cb.device or label,
        wall,
        setup.kind,
        _final_metrics(keras, model),
        backend,
        notes,
        cb.initial_state,
        start.kept,
        plan,
    )


def _chunking(
    backend: str,
    model: Model,
    spec: RunSpec,
    setup: FitSetup,
    observers: list[str],
    *,
    validates: bool,
    distributed: bool,
) -> Chunking:
    """The steps per call of ``fit``'s train function and between read-backs (:func:`.plan.chunking`).

    Raises:
        StabilityUsageError: a model compiled with ``steps_per_execution > 1`` on PyTorch (Keras' fit refuses it).
    """
    if backend == "torch" and int(getattr(model, "steps_per_execution", 1) or 1) > 1:
        raise StabilityUsageError(
            f"the model {model.name!r} is compiled with steps_per_execution={model.steps_per_execution}, which Keras' "
            "fit refuses on the PyTorch backend (it must be 1): compile it with steps_per_execution=1"
        )
    per_epoch = setup.per_epoch
    return chunking(
        backend=backend,
        readback_every=int(spec.readback_every),
        validate_every=int(spec.validate_every),
        validates=validates,
        user_spe=int(getattr(model, "steps_per_execution", 1) or 1),
        batch_observers=bool(observers),
        distributed=distributed,
        user_steps_per_epoch=setup.user_steps_per_epoch,
        per_epoch=int(per_epoch) if per_epoch else None,
        # the last call is cut to the steps left only where the epochs' steps are known exactly (_readback), and
        # the calls shortened only where the plugin sizes the epochs (a steps_per_epoch of the user's: not)
        run_steps=setup.run_steps if setup.exact_epoch and _exact_epoch_steps(setup, distributed) is not None else 0,
        data_ends_epochs=_data_ends_epochs(setup),
    )


def _exact_epoch_steps(setup: FitSetup, distributed: bool) -> int | None:
    """The steps of every epoch when known exactly (arrays, or the one epoch the plugin sizes), else None: the
    read-back cuts the last call to the steps left only then, and the plan shortens the calls only then."""
    per_epoch = setup.per_epoch
    # a steps_per_epoch of the user's: over finite data it does not divide, known epoch by epoch (Readback); over
    # a dataset that repeats forever, exactly that
    exact = setup.exact_epoch or setup.pass_length is not None or setup.endless
    return int(per_epoch) if exact and per_epoch is not None and not distributed else None


def _data_ends_epochs(setup: FitSetup) -> bool:
    """The data runs out at each epoch's end (arrays; finite data where a steps_per_epoch of the user's ends
    some epochs early at a pass's end), so that a call of the train function ends there too."""
    return (setup.kind == "arrays" or setup.pass_length is not None) and not setup.full_batch


def _loss_from_logs(keras: ModuleType, model: Model, curves: Curves | None) -> bool:
    """Whether a step that leaves the loss tracker alone has its raw loss read from the ``"loss"`` it returns: a
    ``train_step`` of the user's own, with no metric of its own named like a loss.  Such a step returns the
    running mean of one as ``"loss"`` (Keras' VAE example: ``"loss": self.total_loss_tracker.result()``, and its
    guide to a lower-level ``train_step``); its losses are recorded step by step as curves instead."""
    if curves is None or type(model).train_step is keras.Model.train_step:
        return False
    return not any("loss" in name for name in curves.names)


def _recorders(
    backend: str,
    model: Model,
    spec: RunSpec,
    setup: FitSetup,
    *,
    chunk: int,
    distributed: bool,
    loss_from_logs: bool = False,
) -> list[Recorder]:
    """One recorder per optimizer the model holds (model.optimizer's first): a GAN's train_step applies two.

    Another optimizer may apply several times a step (a critic's inner loop): its buffers hold more rows, and
    it has no step limit of its own (fit itself ends after exactly ``run_steps`` steps)."""
    run_steps = setup.run_steps
    return [
        make_recorder(
            backend,
            model,
            optimizer=opt,
            name=name,
            chunk=chunk if opt is model.optimizer else chunk * MAX_APPLIES,
            limit=run_steps if opt is model.optimizer else min(run_steps * MAX_APPLIES, 2**24 - 1),
            diagnostics=spec.diagnostics,
            distributed=distributed,
            check_inputs=setup.kind != "arrays",
            loss_from_logs=loss_from_logs,
        )
        for name, opt in find_optimizers(model)
    ]


def _batch_plan(
    backend: str, x: Data, setup: FitSetup, *, seed: int, distributed: bool
) -> tuple[BatchPlan | None, list[Callback]]:
    """How the steps map to batches of the data (None under a distribution strategy), and the callbacks that
    plan needs after the read-back's (the epochs' shuffling states)."""
    if distributed:
        return None, []
    from .batches import BatchPlan, EpochStates

    kind, fit_kwargs, per_epoch = setup.kind, setup.fit_kwargs, setup.per_epoch
    plan = BatchPlan(
        backend,
        kind,
        int(seed),
        setup.batch_size,
        n=_train_samples(x, fit_kwargs) if kind == "arrays" else None,
        shuffle=fit_kwargs.get("shuffle", True) if kind == "arrays" else False,
        per_epoch=int(per_epoch) if setup.exact_epoch and per_epoch else None,
        initial_epoch=setup.initial_epoch,
        full_batch=kind == "arrays" and setup.full_batch,
    )
    return plan, [EpochStates(plan)] if plan.needs_epoch_states else []


@dataclass(frozen=True)
class Instruments:
    """What the plugin adds to the user's ``fit``: a recorder in each optimizer, the curves in the metrics, its
    callbacks around the user's, and what it measures at the read-backs and after ``fit``."""

    recs: list[Recorder]
    curves: Curves | None
    readback: Readback
    start: RandomStart
    #: callbacks after the read-back's (:class:`.batches.EpochStates`)
    tail: list[Callback]
    validation: ValidationProbe
    curvature: CurvatureAtReadbacks | None


def _run_fit(
    keras: ModuleType,
    model: Model,
    x_fit: Data,
    y_fit: Data,
    setup: FitSetup,
    parts: Instruments,
    spe: int,
    device: str | None,
    spec: RunSpec,
    on_raise: OnRaise | None,
    notes: list[str],
    label: str,
) -> float:
    """Run the user's ``fit`` with the recorders installed and the plugin's callbacks around the user's, read the
    last rows and take the measurements after it, and put the model back as it was, whatever happened.  Returns
    the wall time.  An exception of ``fit`` propagates, or ends the run with a note (see :func:`_ended_by`)."""
    backend = keras.backend.backend()
    recs, curves, cb = parts.recs, parts.curves, parts.readback
    rec = recs[0]
    raised: Callable[[BaseException, str], None] | None = None
    if on_raise is not None:
        tell = on_raise

        def raised(exc: BaseException, where: str) -> None:
            # the steps recorded before it (read back by _read_after_failure), for the report of the stopped run
            trace = _stopped_trace(recs, cb, parts.validation, setup, backend=backend)
            stopped = None if trace is None else StoppedRun(trace, cb.device or label, time.perf_counter() - started)
            tell(exc, where, stopped)

    saved_spe = getattr(model, "steps_per_execution", 1)
    gradients_before = isolation.gradient_registrations()
    started = time.perf_counter()
    try:
        for r in recs:
            r.install()
        if curves is not None:
            curves.install()
        if backend == "torch":
            from . import readback

            readback.read_after_each_call(rec, model, cb)
        model.steps_per_execution = spe
        model.train_function = None
        model.test_function = None
        with (
            _device_scope(keras, device),
            isolation.op_determinism(keras, model, spec.deterministic) as det,
            isolation.quiet_own_retracing(keras),
            isolation.batch_logs_read_before_keras(setup.callbacks),
        ):
            if det:
                notes.append(det)
            try:
                model.fit(
                    x_fit, y_fit, callbacks=[parts.start] + setup.callbacks + [cb] + parts.tail, **setup.fit_kwargs
                )
            except StabilityUsageError:
                raise
            except Exception as exc:
                if not _ended_by(exc, model, rec, cb, setup, on_raise=raised, notes=notes):
                    raise
            except BaseException as exc:
                # stopped from outside Keras' fit (Ctrl-C, pytest-timeout's signal handler, pytest.fail() or
                # pytest.skip() in a callback): it propagates unchanged, and the report says how far training got
                if raised is not None:
                    _, done, _ = _read_after_failure(rec, cb)
                    where = _raised_in_callback(_frames(exc), setup.callbacks) or "during fit"
                    raised(exc, f"{where}, after {done} of {setup.run_steps} steps")
                raise
            finally:
                # stopped at the planned step (or by an exception), fit's epoch iterator sits in a reference
                # cycle: freed now, not by a garbage collection that may wait up to a minute in TensorFlow's
                # iterator destructor then
                close_epoch_iterator(cb.epoch_iterator)
        cb.read()
        sync_variables(model)
        if parts.curvature is not None and not cb.stopped_nonfinite and cb.rows.done:
            parts.curvature.at_end(cb.rows.done)
        parts.validation.at_end(cb.rows.done)
    finally:
        wall = time.perf_counter() - started
        if curves is not None:
            curves.uninstall()
        for r in reversed(recs):
            r.uninstall()
        model.steps_per_execution = saved_spe
        model.train_function = None
        model.test_function = None
        model.predict_function = None
        # TensorFlow keeps a gradient registration per tf.custom_gradient traced, which holds its graph: the
        # ones this fit's train function traced are read by nothing now that the function is discarded
        isolation.drop_gradient_registrations(gradients_before)
    return wall


def _ended_by(
    exc: Exception,
    model: Model,
    rec: Recorder,
    cb: Readback,
    setup: FitSetup,
    *,
    on_raise: Callable[[BaseException, str], None] | None,
    notes: list[str],
) -> bool:
    """``fit`` raised ``exc``: True when the run ends there and is reported on the steps recorded (a step that
    went non-finite, or whose input batch held NaN/Inf, and what followed from it), with a note; False when
    ``exc`` propagates unchanged, as from plain ``fit`` (the user's own exception: ``on_raise`` is told where).

    Raises:
        StabilityUsageError: ``fit`` raised at the first step (Keras' own error), or a NaN/Inf input batch raised.
    """
    read, failed_at, input_bad = _read_after_failure(rec, cb)
    where = raised_where(exc, setup.callbacks, model)
    if where is not None:  # the user's own exception: it propagates as from plain fit
        if on_raise is not None:
            on_raise(exc, f"{where}, after {failed_at} of {setup.run_steps} steps")
        return False
    if failed_at == 0 and _is_keras_input_error(exc) and not input_bad:
        raise _usage_from_keras(exc, setup, model, import_keras()) from None
    if read and cb.stopped_nonfinite:
        # an earlier step went non-finite and a later one raised on it (a user's callback or
        # check that refuses the NaN; PyTorch itself runs no step after a non-finite one): the run
        # stopped at that step, as it would have at the read-back, and the report is of it
        notes.append(
            f"after the non-finite step, training raised {type(exc).__name__} "
            f"({short_message(exc, 200)}), which followed from it"
        )
    elif read and input_bad and rec.built:
        # PyTorch does not run a step on a NaN batch (BatchNotRun: its binary cross-entropy would
        # refuse the NaN probabilities, on a GPU with an assert), and a loss may raise on one where
        # the others compute a NaN loss: the run ends at that step the same way, a non-finite step
        # whose input batch held NaN/Inf (its loss and gradients: none)
        cb.rowsets[0].add_step(_raised_row(rec, cb.rowsets[0]), np.nan)
        cb.stopped_nonfinite = True
        if not isinstance(exc, BatchNotRun):
            notes.append(
                f"training on the NaN/Inf input batch of step {failed_at} raised "
                f"{type(exc).__name__} ({short_message(exc, 200)})"
            )
    elif input_bad:
        raise StabilityUsageError(
            f"the input batch of step {failed_at} holds NaN/Inf, and training on it raised "
            f"{type(exc).__name__}: {short_message(exc, 300)}. Clean the data pipeline first: a NaN in the "
            "data would be reported as the model's instability"
        ) from None
    else:
        return False
    return True


#: the most times a step may apply an optimizer other than model.optimizer (a critic's inner loop) and
#: still be recorded step by step (its buffers hold that many rows per step)
MAX_APPLIES = 4


@dataclass
class Recorded:
    """What the recorders recorded, one row per step (of the reference recorder; see
    :attr:`~.readback.Readback.reference`), the optimizers' rows put side by side."""

    steps: int
    reference: int
    rows: np.ndarray
    loss: np.ndarray | None
    flags: np.ndarray
    grad_norm: np.ndarray
    update_ratio: np.ndarray
    var_grad_norms: np.ndarray
    var_update_ratio: np.ndarray
    var_names: tuple[str, ...]
    #: per optimizer that applied, when more than one did: its own grad_norm, update_ratio and lr per step
    optimizers: dict[str, dict[str, np.ndarray]]
    #: (name, index into the recorders) of the optimizers that applied
    applied: list[tuple[str, int]]
    notes: list[str]
    #: per optimizer that applied: its variables' columns in var_grad_norms, [start, stop)
    columns: dict[str, list[int]] = field(default_factory=dict)


def _per_step(rows: np.ndarray, steps: int, k: int) -> np.ndarray:
    """An optimizer's rows (one per apply) as one row per step: ``k`` applies a step (the rows of the steps it
    did not reach are zeros: an optimizer that stopped at an earlier non-finite step); of a step's applies the
    largest gradient norms and updates, every flag, the last learning rate."""
    width = rows.shape[1]
    out = np.zeros((steps * k, width))
    n = min(rows.shape[0], steps * k)
    out[:n] = rows[:n]
    if k == 1:
        return out
    blocks = out.reshape(steps, k, width)
    combined: np.ndarray = np.asarray(np.nanmax(np.where(np.isnan(blocks), -np.inf, blocks), axis=1))
    combined[np.isinf(combined)] = np.nan
    combined[:, RowLayout.LR] = blocks[:, -1, RowLayout.LR]
    combined[:, RowLayout.FLAGS] = np.bitwise_or.reduce(blocks[:, :, RowLayout.FLAGS].astype(np.int64), axis=1)
    return combined


def _mask_accumulating_steps(per_step: np.ndarray, rec: Recorder) -> np.ndarray:
    """Under gradient accumulation, the steps that only accumulated applied no update by design: their update
    ratios (global and per variable) become NaN, "no update at this step", so that the checks and the diagnosis
    judge the updates the optimizer made, not the zeros between them (a healthy run read as stuck, its median
    |dw|/|w| 0).  Returns those steps."""
    mask = accumulating_steps(per_step[:, RowLayout.UPDATE], accumulation_steps(rec.inner))
    if mask.any():
        per_step[mask, RowLayout.UPDATE] = np.nan
        per_step[np.ix_(mask, np.arange(per_step.shape[1])[rec.layout.var_update])] = np.nan
    return mask


def _recorded(recs: list[Recorder], rowsets: list[ChunkRows], reference: int, multiples: dict[int, int]) -> Recorded:
    """The trace's per-step arrays from every recorder's rows: one recorder's alone (a single optimizer, the
    common case), or the optimizers' side by side, the global gradient norm over all their gradients."""
    ref_rows, _ = rowsets[reference].arrays(recs[reference].layout.width)
    steps = ref_rows.shape[0]
    notes: list[str] = []
    applied: list[tuple[str, int]] = []
    parts: list[tuple[Recorder, np.ndarray, np.ndarray]] = []
    #: per part, its steps that only accumulated gradients (see _mask_accumulating_steps)
    accumulating: list[np.ndarray] = []
    loss = None
    for i, (rec, rowset) in enumerate(zip(recs, rowsets, strict=True)):
        if not rec.built or not rowset.done:
            continue
        if rowset.overflow:
            notes.append(
                f"{rec.name} applied more than {MAX_APPLIES} times in a step: its statistics are not "
                "recorded step by step"
            )
            continue
        rows, rec_loss = rowset.arrays(rec.layout.width)
        k = multiples.get(i, 1) if i != reference else 1
        if k > 1:
            notes.append(f"{rec.name} applied {k} times a step: its gradient norms and updates are each step's largest")
        per_step = _per_step(rows, steps, k)
        if i == 0 and rec_loss is not None and not rowset.loss_mismatch and rec_loss.shape[0] >= steps and k == 1:
            loss = rec_loss[:steps]
        flags = host_flags(per_step, loss if i == 0 else None, rec.is_loss_scaled)
        per_step[:, RowLayout.FLAGS] = flags
        accumulating.append(_mask_accumulating_steps(per_step, rec))
        applied.append((rec.name, i))
        parts.append((rec, per_step, flags))
    if not parts:
        empty = np.zeros((steps, 0))
        return Recorded(
            steps,
            reference,
            ref_rows,
            None,
            np.zeros(steps, np.int32),
            np.zeros(steps),
            np.zeros(steps),
            empty,
            empty,
            (),
            {},
            [],
            notes,
        )
    ref_index = (
        next(j for j, (_, i) in enumerate(applied) if i == reference) if any(i == reference for _, i in applied) else 0
    )
    rows = parts[ref_index][1]
    flags = np.bitwise_or.reduce(np.stack([f for _, _, f in parts]), axis=0).astype(np.int32)
    gnorm = np.sqrt(np.sum(np.stack([p[:, RowLayout.GNORM] ** 2 for _, p, _ in parts]), axis=0))
    # the largest update of the optimizers that made one (a step one of them only accumulated is the others'),
    # NaN where every one only accumulated; a NaN update (weights gone non-finite) is kept
    ups = [np.where(m, -np.inf, p[:, RowLayout.UPDATE]) for (_, p, _), m in zip(parts, accumulating, strict=True)]
    update = np.max(np.stack(ups), axis=0)
    update[np.isneginf(update)] = np.nan
    # per variable: the columns of the variables some apply was given (a layer frozen before the first step is
    # left out, as if the optimizer had been built without it, as TensorFlow's is)
    kept = [[j for j in range(r.layout.n_vars) if j not in skip] for r, _, _ in parts for skip in [r.unapplied()]]
    var_g = np.concatenate([p[:, r.layout.var_gnorm][:, c] for (r, p, _), c in zip(parts, kept, strict=True)], axis=1)
    var_u = np.concatenate([p[:, r.layout.var_update][:, c] for (r, p, _), c in zip(parts, kept, strict=True)], axis=1)
    names = tuple(r.var_names[j] for (r, _, _), c in zip(parts, kept, strict=True) for j in c)
    optimizers = {}
    columns: dict[str, list[int]] = {}
    if len(parts) > 1:
        optimizers = {
            r.name: {
                "grad_norm": p[:, RowLayout.GNORM],
                "update_ratio": p[:, RowLayout.UPDATE],
                "lr": p[:, RowLayout.LR],
            }
            for r, p, _ in parts
        }
        start = 0
        for (r, _, _), c in zip(parts, kept, strict=True):
            columns[r.name] = [start, start + len(c)]
            start += len(c)
    return Recorded(
        steps, reference, rows, loss, flags, gnorm, update, var_g, var_u, names, optimizers, applied, notes, columns
    )


def _curvature_meter(
    keras: ModuleType, model: Model, spec: RunSpec, setup: FitSetup, x: Data, y: Data, *, seed: int, distributed: bool
) -> tuple[Meter | None, str]:
    """``(meter, "")`` for a run with ``spec.curvature`` (see :mod:`.curvature`); ``(None, why)`` when it cannot
    be measured; ``(None, "")`` without ``spec.curvature``."""
    kind, fit_kwargs, batch_size, steps = setup.kind, setup.fit_kwargs, setup.batch_size, setup.run_steps
    if not getattr(spec, "curvature", False):
        return None, ""
    from . import curvature

    if distributed:
        return None, "the curvature is not measured under a tf.distribute strategy"
    size = int(spec.curvature_batch_size or batch_size)
    try:
        batch, why = curvature.fixed_batch(keras, kind, x, y, fit_kwargs, size)
    except Exception as exc:
        batch, why = (
            None,
            (f"the fixed batch for the curvature could not be read ({type(exc).__name__}: {short_message(exc, 200)})"),
        )
    if batch is None:
        return None, why
    return curvature.Meter(
        keras,
        model,
        batch,
        targets=curvature.measurement_steps(steps, spec.curvature_points),
        iterations=int(spec.curvature_iterations),
        seed=seed,
    ), ""


def _readback(
    recs: list[Recorder],
    setup: FitSetup,
    grouping: Chunking,
    spec: RunSpec,
    validation: ValidationProbe,
    curvature: CurvatureAtReadbacks | None,
    fix: FixAt | None,
    curves: Curves | None,
    progress: Callable[[int], None] | None,
    keep_initial_state: bool,
    distributed: bool,
) -> Readback:
    """The read-back callback (:mod:`.readback`): it reads the recorders every ``grouping.chunk`` steps, stops
    ``fit`` after ``setup.run_steps``, and runs the validation, the curvature and the fix at read-backs.  It
    is the validation's step counter (``validation.readback``)."""
    from . import readback

    cb = readback.readback_class()(
        recs,
        steps=setup.run_steps,
        chunk=grouping.chunk,
        validate=validation if validation.batches else None,
        validate_every=int(spec.validate_every),
        progress=progress,
        on_boundary=fix,
        measure=curvature,
        epoch_steps=_exact_epoch_steps(setup, distributed),
        pass_length=setup.pass_length if not distributed else None,
        virtual_call=grouping.virtual_call,
        keep_initial_state=keep_initial_state,
        callbacks=setup.callbacks,
        curves=curves,
        data_ends_epochs=_data_ends_epochs(setup),
        read_every=grouping.read_every,
    )
    validation.readback = cb
    return cb


def _note_single_batches(observers: list[str], grouping: Chunking, speed_notes: list[str]) -> None:
    """A callback of the user's (or Keras' progress bar) that sees single batches keeps fit at the model's own
    steps_per_execution: say so."""
    if observers and grouping.spe < grouping.chunk:
        speed_notes.append(
            f"steps_per_execution={grouping.spe} kept for {observers[0]}, which sees single batches (the recording "
            f"still read back every {grouping.chunk} steps)"
        )


def _trace(
    recs: list[Recorder],
    recorded: Recorded,
    loss: np.ndarray,
    validation: ValidationProbe,
    *,
    steps: int,
    info: dict[str, Any],
) -> Trace:
    """The trace of what the recorders recorded, with the validation loss and the model's facts."""
    ref = recs[recorded.reference]
    val_steps, val_loss = validation.val_loss()
    return Trace(
        loss=loss,
        grad_norm=recorded.grad_norm,
        var_grad_norms=recorded.var_grad_norms,
        var_names=recorded.var_names,
        nonfinite=recorded.flags,
        lr=recorded.rows[:, RowLayout.LR],
        val_steps=val_steps,
        val_loss=val_loss,
        opt_stats=_opt_stats(ref, recorded.rows),
        update_ratio=recorded.update_ratio,
        var_update_ratio=recorded.var_update_ratio,
        steps_planned=int(steps),
        optimizers=recorded.optimizers,
        info=info,
    )


class _YieldCount:
    """Counts the batches a generator of the user's gives ``fit``."""

    def __init__(self) -> None:
        self.n = 0

    def counting(self, batches: Iterator[object]) -> Iterator[object]:
        for batch in batches:
            self.n += 1
            yield batch


def _check_steps_ran(
    model: Model, setup: FitSetup, cb: Readback, done: int, notes: list[str], yielded: int = 0
) -> None:
    """After ``fit``: a run that ran fewer steps than planned, and not for a non-finite step, is judged on the
    steps it ran, with a note (a callback stopped it, the user's ``epochs`` ended it), or is a usage error (a
    generator ran out, no optimizer applied, no batch).  ``yielded``: the batches a generator gave; fewer than
    the steps that ran where the user's ``steps_per_epoch`` made several epochs, in each of which, once the
    generator is exhausted, Keras' ``fit`` trains again on the batches it read ahead of the first.

    Raises:
        StabilityUsageError: as said.
    """
    run_steps = setup.run_steps
    if cb.stopped_by is not None and not cb.stopped_nonfinite and done < run_steps:
        notes.append(
            f"{cb.stopped_by[1]} after step {cb.stopped_by[0]}: the run is judged on the {done} steps that ran"
        )
    elif done < run_steps and not cb.stopped_nonfinite:
        if setup.kind == "generator":
            given = min(yielded, done) if yielded else done
            again = (
                f" (fit ran {done} steps: once a generator is exhausted, each later epoch of Keras' fit trains again "
                "on the batches it read ahead of the first)"
                if done > given
                else ""
            )
            raise StabilityUsageError(
                f"the training data ran out after {given} batches, but steps={run_steps} needs {run_steps}{again}: "
                "a generator can be read only once. Pass arrays, a tf.data.Dataset, a keras.utils.PyDataset "
                f"or a zero-argument function returning a fresh generator, or lower steps to <= {given}."
            )
        if setup.user_epochs is not None:
            cut = (
                f" (Keras ends an epoch early where a pass over the data ends, every {setup.pass_length} batches, "
                f"which steps_per_epoch={setup.user_steps_per_epoch} does not divide)"
                if setup.pass_length
                else ""
            )
            since = f" (from initial_epoch={setup.initial_epoch})" if setup.initial_epoch else ""
            notes.append(
                f"the run ended after {done} of {run_steps} steps: epochs={setup.user_epochs}{since} ended it{cut}"
            )
        elif done == 0 and cb.keras_steps:
            raise StabilityUsageError(
                f"model.fit() ran {cb.keras_steps} training step(s), but the model's train_step applied no Keras "
                f"optimizer (model.optimizer is {type(model.optimizer).__name__}, never applied): pytest-stability "
                "records what an optimizer's apply() receives. Apply the gradients with a keras.optimizers "
                "optimizer (model.optimizer.apply(grads, variables), or one kept on the model as an attribute)"
            )
        elif done == 0:
            raise StabilityUsageError("model.fit() ran no optimizer step: the training data yielded no batch")


def _loss_or_nan(recorded: Recorded, curves: Curves | None, notes: list[str]) -> tuple[np.ndarray, bool]:
    """The raw loss per step and whether it was recorded (NaN per step, with a note, when the train_step does
    not update the model's loss tracker)."""
    done, loss = recorded.steps, recorded.loss
    loss_recorded = loss is not None and loss.shape[0] == done
    if loss is None or not loss_recorded:
        loss = np.full(done, np.nan)
    loss_curves = [name for name in (curves.names if curves is not None else ()) if "loss" in name]
    if not loss_recorded and "loss" in loss_curves:
        return loss, loss_recorded  # a Mean of the train_step's own named "loss" is the loss: _own_loss_metric
    if not loss_recorded and loss_curves:
        notes.append(
            f"loss_spike judges the losses this model's train_step reports, step by step: {', '.join(loss_curves)} "
            "(it does not update the model's own loss tracker, self._loss_tracker / the 'loss' metric)"
        )
    elif not loss_recorded:
        notes.append(
            "the raw loss was not recorded: this model's train_step neither updates the model's loss "
            "tracker (self._loss_tracker / the 'loss' metric) nor returns a 'loss', so loss_spike is not "
            "judged; gradient norms, non-finite values and updates are"
        )
    return loss, loss_recorded


def _add_curves(trace: Trace, curves: Curves, done: int, keras_steps: int, notes: list[str]) -> None:
    """The train_step's other scalars per step in ``trace.curves``; a loss among them that went NaN/Inf flags
    its step as a non-finite loss."""
    nonfinite = trace.nonfinite
    assert nonfinite is not None  # Trace derives it when not given
    trace.curves, curve_notes = curves.per_step(done, max(done, keras_steps))
    notes.extend(curve_notes)
    for name, values in trace.curves.items():
        if "loss" in name:  # a loss that went NaN/Inf is a non-finite loss, whichever it is
            nonfinite |= np.where(np.isfinite(values), 0, LOSS).astype(np.int32)


def _own_loss_metric(trace: Trace) -> bool:
    """A ``train_step`` that keeps its loss in a ``Mean`` of its own named ``loss`` and leaves the model's loss
    tracker alone (Keras' guide to a lower-level ``train_step``): that metric's per-step value is the step's raw
    loss, so it becomes the trace's loss instead of a curve beside a loss of NaN.  Whether it did."""
    own = trace.curves.get("loss")
    if own is None or own.shape != trace.loss.shape:
        return False
    trace.loss = np.asarray(own, np.float64)
    trace.curves = {name: values for name, values in trace.curves.items() if name != "loss"}
    return True


def _optimizer_facts(info: dict[str, Any], recs: list[Recorder], recorded: Recorded) -> None:
    """With more than one optimizer applied: each one's class, settings and columns, and the reference's name."""
    if len(recorded.optimizers) > 1:
        info["optimizers"] = {name: type(recs[i].inner).__name__ for name, i in recorded.applied}
        info["optimizer_configs"] = {name: optimizer_config(recs[i].inner) for name, i in recorded.applied}
        info["optimizer_columns"] = recorded.columns
        info["optimizer_name"] = recs[recorded.reference].name


def _replica_facts(trace: Trace, model: Model, replicas: list[np.ndarray], done: int) -> None:
    """Under a distribution strategy: each replica's own gradient norm per step (before the all-reduce), and
    how far the replicas' weights drifted apart."""
    if replicas:
        per_step = np.concatenate(replicas)[:done]
        if per_step.shape[1] > 1:  # each replica's own gradient norm, before the all-reduce
            trace.curves = {
                **trace.curves,
                **{f"grad_norm/replica_{i}": per_step[:, i].copy() for i in range(per_step.shape[1])},
            }
    trace.info["replica_weight_drift"] = _replica_weight_drift(model)


def _curvature_facts(trace: Trace, meter: Meter | None, no_meter: str) -> None:
    """The curvature's summary in ``trace.info["curvature"]``, or why it could not be measured."""
    if meter is not None:
        trace.info["curvature"] = meter.summary(trace.lr)
    elif no_meter:
        from .curvature import Rule, summarize

        trace.info["curvature"] = summarize(
            [], None, Rule("", "unknown", 0.0, None, False, ""), batch_size=None, notes=[no_meter]
        )


def _first_nonfinite(
    keras: ModuleType, model: Model, recs: list[Recorder], trace: Trace, x: Data, setup: FitSetup
) -> None:
    """Where the first non-finite step went non-finite (``trace.first_nonfinite``); where the batches were not
    checked in the step, that step's batch read again from the pipeline (an INPUT flag when it holds NaN/Inf)."""
    nonfinite = trace.nonfinite
    assert nonfinite is not None  # Trace derives it when not given
    stop_bits = LOSS | GRADS | WEIGHTS | OPTIMIZER | INPUT
    bad = np.flatnonzero(nonfinite & stop_bits)
    if bad.size:
        step = int(bad[0])
        verdict = (
            None
            if recs[0].check_inputs
            else _reread_batch_finite(keras, setup.kind, x, step, shuffled=setup.fit_kwargs.get("shuffle", True))
        )
        if verdict is not None:  # the batch of that step, read again from the pipeline after training
            trace.info["inputs_checked"] = True
            trace.info["input_batch_reread"] = step
            if not verdict:
                nonfinite[step] |= INPUT
        trace.first_nonfinite = _locate_nonfinite(keras, model, recs, trace, step)


class CurvatureAtReadbacks:
    """The curvature meter (see :mod:`.curvature`) run at the read-backs where a measurement is due."""

    def __init__(self, meter: Meter, model: Model, rec: Recorder) -> None:
        self.meter, self.model, self.rec = meter, model, rec

    def __call__(self, done: int) -> None:
        # at a read-back, like the validation: under JAX the variables hold the state only after sync_variables
        if not self.meter.due(done):
            return
        sync_variables(self.model, read_only=True)
        self.rec.recording_loss = False  # a compute_loss that updates the loss tracker must not write a row
        try:
            self.meter.measure(done)
        finally:
            self.rec.recording_loss = True

    def at_end(self, done: int) -> None:
        """After ``fit``, ``done`` steps done: a run that ended early is measured at its end."""
        self.meter.targets = [min(t, done) for t in self.meter.targets]
        self(done)


class FixAt:
    """The what-if replay's change of the optimizer (``train(fix_at=(step, apply))``): ``apply(model)`` at the
    last read-back at or before ``step`` (before the first step when none is), then the step compiled again."""

    def __init__(self, step: int, apply: Callable[[Model], None], *, chunk: int, model: Model, rec: Recorder) -> None:
        self.step, self.apply, self.chunk, self.model, self.rec = step, apply, chunk, model, rec
        #: the steps done when the change was applied, None until it is
        self.applied_at: int | None = None

    def __call__(self, done: int) -> None:
        # at the latest execution boundary at or before the fix step: read-backs are at most `chunk` steps apart
        # (the buffer's size), so the next one could be past the step
        if self.applied_at is None and done + self.chunk > self.step:
            self.applied_at = done
            if done:
                sync_variables(self.model)
            self.apply(self.model)
            if done:
                self.rec.retrace()
                self.model.make_train_function(force=True)


def _reread_batch_finite(keras: ModuleType, kind: str, x: Data, step: int, shuffled: bool | str = True) -> bool | None:
    """Whether the batch trained at ``step`` was finite, read again from a re-readable pipeline after training:
    the fallback where the batches are not checked in the step (under a distribution strategy).  None when it
    cannot be read again (a generator, a loader, a PyDataset that ``fit`` shuffled) or the data are arrays
    (checked before training).  Assumes a tf.data pipeline yields the same batches when read again (a
    ``shuffle(reshuffle_each_iteration=True)`` inside it breaks that)."""
    try:
        if kind == "dataset":
            card = int(x.cardinality().numpy())
            index = step % card if card > 0 else step
            batch = next(iter(x.skip(index).take(1)))
        elif kind == "pydataset" and shuffled is False:
            batch = x[step % len(x)]
        else:
            return None
    except Exception:
        return None
    leaves = [host_numpy(leaf) for leaf in _leaves(list(batch) if isinstance(batch, tuple) else batch)]
    return all(np.all(np.isfinite(a)) for a in leaves if a.dtype.kind in "fc")


def _replica_weight_drift(model: Model) -> dict[str, Any] | None:
    """How far the replicas' copies of the trainable weights differ after training (a mirrored variable's
    copies must stay equal): the largest difference relative to the variable's largest value, and where."""
    from .keras_internals import tf_variable

    strategy = model.distribute_strategy
    worst: dict[str, Any] | None = None
    for v in model.trainable_variables:
        copies = [host_numpy(c) for c in strategy.experimental_local_results(tf_variable(v))]
        if len(copies) < 2:
            continue
        scale = max(float(np.max(np.abs(copies[0]))) if copies[0].size else 0.0, 1e-12)
        diff = max(float(np.max(np.abs(c - copies[0]))) if c.size else 0.0 for c in copies[1:]) / scale
        if worst is None or diff > worst["value"]:
            worst = {"value": diff, "variable": var_name(v), "replicas": len(copies)}
    return worst


class _NullScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _device_scope(keras: ModuleType, device: str | None) -> Any:
    if device is None:
        return _NullScope()
    return keras.device(device)


def _final_metrics(keras: ModuleType, model: Model) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in model.metrics:
        try:
            result = m.result()
            if isinstance(result, dict):
                out.update({k: float(host_numpy(v)) for k, v in result.items()})
            else:
                out[m.name] = float(host_numpy(result))
        except Exception:  # metrics are informational only
            pass
    return out


def _locate_nonfinite(keras: ModuleType, model: Model, recs: list[Recorder], trace: Trace, step: int) -> dict[str, Any]:
    """Name the first quantity / variable that went non-finite at ``step`` (the model is in that step's state)."""
    assert trace.nonfinite is not None  # Trace derives it when not given
    flags = int(trace.nonfinite[step])
    out: dict[str, Any] = {"step": step}
    if flags & INPUT:  # the batch itself: whatever went non-finite after it followed from it
        out.update(source="input batch", variable=None)
        return out
    if flags & LOSS and not flags & GRADS:
        out.update(source="loss", variable=None)
        return out
    if flags & GRADS and trace.var_grad_norms is not None and trace.var_grad_norms.shape[1]:
        row = trace.var_grad_norms[step]
        k = int(np.argmax(~np.isfinite(row))) if (~np.isfinite(row)).any() else None
        out.update(
            source="gradients" if not flags & LOSS else "loss", variable=None if k is None else trace.var_names[k]
        )
        return out
    state = [v for rec in recs for v in rec.opt.variables if id(v) not in rec.own_ids()]
    for source, variables in (("weights", model.trainable_variables), ("optimizer state", state)):
        for v in variables:
            try:
                value = np.asarray(host_numpy(v.value), dtype=np.float64)
            except Exception:
                continue
            if not np.all(np.isfinite(value)):
                out.update(source=source, variable=var_name(v))
                return out
    out.update(source="loss", variable=None)
    return out


def _compute_dtypes(model: Model) -> dict[str, int]:
    """How many of the model's layers that hold weights computed in each dtype."""
    out: dict[str, int] = {}
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "_trainable_variables", None):
            dtype = str(getattr(layer, "compute_dtype", "") or "")
            out[dtype] = out.get(dtype, 0) + 1
    return dict(sorted(out.items()))


def _opt_stats(rec: Recorder, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The optimizer's extra per-step columns: Adam's slot statistics (``diagnostics``), the loss scale."""
    if not rec.built:
        return {}
    return rec.layout.extra_columns(rows)


def optimizer_config(inner: Optimizer) -> dict[str, Any]:
    """The settings of an optimizer that diagnosis reads, builtins only."""
    config = optimizer_config_silently(inner)
    keep = (
        "learning_rate",
        "epsilon",
        "amsgrad",
        "beta_1",
        "beta_2",
        "momentum",
        "nesterov",
        "clipnorm",
        "clipvalue",
        "global_clipnorm",
        "weight_decay",
        "rho",
    )
    out = {}
    for k in keep:
        if k in config:
            v = config[k]
            out[k] = v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)[:80]
    return out


def model_info(
    keras: ModuleType, model: Model, rec: Recorder, *, backend: str, spe: int, kind: str, distributed: bool
) -> dict[str, Any]:
    """Builtins-only facts about the model and optimizer, for diagnosis and reports."""
    inner = rec.inner
    opt_cfg = optimizer_config(inner)
    layers = [type(layer).__name__ for layer in model._flatten_layers(include_self=False)]
    bn = _batchnorm_layers(model)
    return {
        "model": model.name,
        "model_class": type(model).__name__,
        "custom_train_step": type(model).train_step is not keras.Model.train_step,
        "parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
        "optimizer": type(inner).__name__,
        "optimizer_config": opt_cfg,
        "loss_scale": rec.is_loss_scaled,
        "dtype_policy": str(getattr(getattr(model, "dtype_policy", None), "name", "")),
        # what the layers with weights computed in (a mixed-precision policy set after the model was built,
        # or layers given their own dtype, show here): {dtype: layers}
        "compute_dtypes": _compute_dtypes(model),
        "layers": sorted(set(layers)),
        "batchnorm_layers": len(bn),
        "batchnorm_momentum": [float(layer.momentum) for layer in bn][:5],
        "jit_compile": bool(getattr(model, "jit_compile", False)),
        "diagnostics": rec.built and rec.velocities is not None,
        "backend": backend,
        "steps_per_execution": int(spe),
        "data": kind,
        "distributed": distributed,
    }


__all__ = [
    "RunResult",
    "StoppedRun",
    "train",
    "seed_everything",
    "resolve_device",
    "validate_model",
    "import_keras",
    "has_gpu",
]
