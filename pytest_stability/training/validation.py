"""The plugin's own validation loss, and the BatchNorm train/inference gap, measured during a run.

:func:`validation_batches` reads the fixed validation batches once, from ``validation_data`` or
``validation_split``; :class:`ValidationProbe` measures the loss on them at read-backs, in inference mode and
with nothing updated (:func:`_loss_of`), and with BatchNorm layers the gap between the training-mode and the
inference-mode loss of one batch.  Keras' own per-epoch validation still runs when the user asks for it.

Imports Keras' internals lazily: reached only from :func:`~pytest_stability.training.engine.train`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import StabilityUsageError
from ..framework_types import Data, Layer, Model, Tensor, Variable
from . import isolation
from .fitsetup import _is_arrays, _leaves, _n_samples, check_finite, refuse_python_values, short_message
from .keras_internals import sync_variables
from .recorders import host_numpy

if TYPE_CHECKING:  # the read-back callback subclasses a Keras class
    from .readback import Readback


def has_own_test_step(keras: ModuleType, model: Model) -> bool:
    """Whether the model's ``test_step``, where Keras' ``val_loss`` comes from, is its own, not Keras'."""
    return getattr(type(model), "test_step", None) is not getattr(keras.Model, "test_step", None)


def _measuring(keras: ModuleType) -> contextlib.AbstractContextManager[object]:
    """No autograd graph for a measurement under PyTorch, as Keras' evaluate runs its ``test_step``
    (``torch.no_grad``); nothing elsewhere."""
    if keras.backend.backend() == "torch":
        import torch

        off: contextlib.AbstractContextManager[object] = torch.no_grad()
        return off
    return contextlib.nullcontext()


#: the measurements compiled (:class:`CompiledMeasure`); ``benchmarks/validation_compile.py`` turns it off to measure
#: them op by op, as before
COMPILE_MEASUREMENTS = True

#: the values of a list of variables, as a jitted function takes them
Values = list[Tensor]
#: a JAX ``test_step``'s state: the trainable, non-trainable and metrics variables' values
State = tuple[Values, Values, Values]
#: what a compiled test_step threads from batch to batch (the metrics' values, JAX's whole state)
C = TypeVar("C")


class CompiledMeasure:
    """The plugin's measurements compiled as Keras compiles its own ``evaluate``, for one run.

    Under TensorFlow, a model's own ``test_step`` (which may compute any loss, so it is run itself, in the batches
    ``fit`` validates in): in a ``tf.function``, as ``evaluate`` runs it, the metrics' state passed in and out,
    the batches of one shape in one call, a graph loop over them.  Run eagerly, a batch-1 epoch of such a model
    with 512 validation samples took 14.5x plain ``fit``'s time, 0.94x compiled
    (``benchmarks/epochs_and_validation.py``).  A model that ``fit`` runs eagerly keeps it eager; PyTorch's
    ``evaluate`` runs it eagerly.

    Under JAX, every measurement: one jitted function per run (per training flag, one for the batching probe,
    and a model's own ``test_step`` scanned over the batches of one shape), compiled once for each batch shape,
    the model's variables passed in.

    Run op by op, JAX compiles each operation of the forward and the loss for every batch shape the process has
    not met yet: the first run of a process paid seconds for it (a stability run with validation of a small
    transformer block 3.6x plain ``fit``'s time, 1.4x compiled), a later run of the same shapes nothing (1.3x
    op by op, 1.5x compiled; ``benchmarks/validation_compile.py``).  The loss is Keras' own, as its
    ``test_step`` computes it (``compute_loss_and_updates``: the forward with its added losses and the weights'
    regularization, then ``compute_loss``), nothing of it kept.  Not used where ``fit`` itself runs eagerly
    (``run_eagerly``, ``jit_compile=False``: the model may not trace), nor for a model with no compiled loss and
    Keras' ``compute_loss``, whose loss may be nothing to compute (op by op, that raises as ``evaluate`` does).
    Where a compiled measurement raises, the run measures op by op from then on: the same computation, which
    raises its own error if it has one."""

    def __init__(self, keras: ModuleType, model: Model) -> None:
        self.keras, self.model = keras, model
        self.usable = (
            COMPILE_MEASUREMENTS
            and keras.backend.backend() == "jax"
            and not model.run_eagerly
            and bool(model.jit_compile)
        )
        self._maybe_nothing = type(model).compute_loss is keras.Model.compute_loss and (
            getattr(model, "_compile_loss", None) is None
        )
        #: the model's own test_step compiled: under JAX with the rest, under TensorFlow wherever fit compiles
        self.usable_test_step = self.usable or (
            COMPILE_MEASUREMENTS and keras.backend.backend() == "tensorflow" and not model.run_eagerly
        )
        self._loss_fns: dict[bool, Callable[..., Tensor]] = {}
        self._test_step: Callable[..., tuple[object, State]] | None = None
        self._tf_test_step: Callable[[Values, tuple[Data, ...]], tuple[object, Values]] | None = None
        self._tf_test_steps: Callable[[Values, tuple[Data, ...]], tuple[object, Values]] | None = None
        self._jax_test_steps: Callable[[State, tuple[Data, ...]], tuple[object, State]] | None = None
        self._loop_ok = True
        #: the batches last run (the same list at each measurement), grouped into runs of one shape, stacked
        self._groups: tuple[object, list[tuple[list[tuple[Data, ...]], tuple[Data, ...] | None]]] | None = None
        self._probe: Callable[..., tuple[Tensor, Tensor]] | None = None

    def _state(self) -> State:
        """The values of the model's trainable, non-trainable and metrics variables, as they are now."""
        model = self.model
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
        )

    def _keras_loss(self, state: State, ov: Values | None, x: Data, y: Data, w: Data, training: bool) -> Tensor:
        """The loss Keras' own ``test_step`` (``training=False``) or ``train_step`` computes, unscaled, nothing of
        it kept (traced inside the jitted functions below)."""
        _, (unscaled, _, _, _) = self.model.compute_loss_and_updates(
            *state, x, y, w, training=training, optimizer_variables=ov
        )
        return unscaled

    def loss(self, x: Data, y: Data, w: Data, training: bool) -> float | None:
        """The batch's loss, None where this measurement is not for the model (op by op then)."""
        if not self.usable or self._maybe_nothing:
            return None
        fn = self._loss_fns.get(training)
        if fn is None:
            import jax

            def loss_of(state: State, ov: Values | None, x: Data, y: Data, w: Data) -> Tensor:
                return self._keras_loss(state, ov, x, y, w, training)

            fn = self._loss_fns[training] = jax.jit(loss_of)
        # (a loss-scaled optimizer scales the training-mode loss with its variables; the unscaled one is kept)
        opt = self.model.optimizer
        ov = [v.value for v in opt.variables] if training and opt is not None else None
        try:
            with isolation.kept_random_state():
                out = fn(self._state(), ov, x, y, w)
            return float(host_numpy(out))
        except Exception:
            self.usable = False
            return None

    def joined_and_apart(self, x: Data, y: Data, w: Data) -> tuple[float, float] | None:
        """The loss of the samples batched together, and the mean of their losses one by one, in one compiled
        call (the samples one by one mapped with ``jax.vmap``, each as a batch of one): None where this
        measurement is not for the model."""
        if not self.usable or self._maybe_nothing:
            return None
        if self._probe is None:
            import jax
            import jax.numpy as jnp

            tree = self.keras.tree

            def both(state: State, x: Data, y: Data, w: Data) -> tuple[Tensor, Tensor]:
                def alone(xi: Data, yi: Data, wi: Data) -> Tensor:
                    def one(part: Data) -> Data:
                        return None if part is None else tree.map_structure(lambda a: a[None], part)

                    return self._keras_loss(state, None, one(xi), one(yi), one(wi), False)

                return self._keras_loss(state, None, x, y, w, False), jnp.mean(jax.vmap(alone)(x, y, w))

            self._probe = jax.jit(both)
        try:
            with isolation.kept_random_state():
                together, apart = self._probe(self._state(), x, y, w)
            return float(host_numpy(together)), float(host_numpy(apart))
        except Exception:
            self.usable = False
            return None

    def test_step(self) -> Callable[..., tuple[object, State]] | None:
        """The model's own ``test_step``, jitted as Keras' ``make_test_function`` jits it; None where not used."""
        if not self.usable:
            return None
        if self._test_step is None:
            import jax

            self._test_step = jax.jit(self.model.test_step)
        return self._test_step

    def tf_test_step(self) -> Callable[[Values, tuple[Data, ...]], tuple[object, Values]] | None:
        """TensorFlow: the model's own ``test_step`` in a ``tf.function`` that takes the metrics variables' values
        and gives them back updated, with the step's logs (nothing assigned to a variable is kept); None where not
        used."""
        if not self.usable_test_step or self.keras.backend.backend() != "tensorflow":
            return None
        if self._tf_test_step is None:
            import tensorflow as tf

            from .keras_internals import load

            StatelessScope = load("StatelessScope")
            model = self.model

            def stateless_test_step(values: Values, data: tuple[Data, ...]) -> tuple[object, Values]:
                variables = model.metrics_variables
                mapping = list(zip(variables, values, strict=True)) + _regularized(model)
                with StatelessScope(state_mapping=mapping) as scope:
                    logs = model.test_step(data)
                return logs, [scope.get_current_value(v) for v in variables]

            tree = self.keras.tree

            def stateless_test_steps(values: Values, stacked: tuple[Data, ...]) -> tuple[object, Values]:
                """The steps over batches of one shape stacked along a new first axis, in one graph loop."""

                def at(i: Tensor | int) -> tuple[Data, ...]:
                    batch: tuple[Data, ...] = tree.map_structure(lambda t: t[i], stacked)
                    return batch

                def tensors(logs: object) -> object:
                    return tree.map_structure(tf.convert_to_tensor, logs)

                logs, values = stateless_test_step(values, at(0))

                def body(i: Tensor, logs: object, values: Values) -> tuple[Tensor, object, Values]:
                    logs, values = stateless_test_step(values, at(i))
                    return i + 1, tensors(logs), values

                count = tf.shape(tree.flatten(stacked)[0])[0]
                _, logs, values = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(1), tensors(logs), values))
                return logs, values

            self._tf_test_step = tf.function(stateless_test_step, reduce_retracing=True)
            self._tf_test_steps = tf.function(stateless_test_steps, reduce_retracing=True)
        return self._tf_test_step

    def tf_run(self, values: Values, batches: list[tuple[Data, Data, Data, int]]) -> tuple[object, Values]:
        """TensorFlow: the model's own ``test_step`` on each batch in turn (see :meth:`tf_test_step`), the
        batches of one shape in one call, each a step of a graph loop (a call a batch cost a millisecond: 512 of
        them at each measurement of a validation in batches of one); raises what the compiled steps raise."""
        step = self.tf_test_step()
        assert step is not None and self._tf_test_steps is not None  # (called where tf_test_step gave one)
        logs, values = self._run_groups(values, batches, step, self._tf_test_steps)
        return logs, values

    def jax_run(self, state: State, batches: list[tuple[Data, Data, Data, int]]) -> tuple[object, State]:
        """JAX: the model's own ``test_step`` on each batch in turn, jitted (see :meth:`test_step`), the batches of
        one shape in one call, a ``jax.lax.scan`` over them; raises what the compiled steps raise."""
        step = self.test_step()
        assert step is not None  # (called where test_step gave one)
        if self._jax_test_steps is None:
            import jax

            model, tree = self.model, self.keras.tree

            def test_steps(state: State, stacked: tuple[Data, ...]) -> tuple[object, State]:
                def body(carry: State, batch: tuple[Data, ...]) -> tuple[State, object]:
                    logs, carry = model.test_step(carry, batch)
                    return carry, logs

                state, logs = jax.lax.scan(body, state, stacked)
                return tree.map_structure(lambda t: t[-1], logs), state  # the last step's logs

            self._jax_test_steps = jax.jit(test_steps)
        logs, state = self._run_groups(state, batches, step, self._jax_test_steps)
        return logs, state

    def _run_groups(
        self,
        carry: C,
        batches: list[tuple[Data, Data, Data, int]],
        one: Callable[[C, tuple[Data, ...]], tuple[object, C]],
        many: Callable[[C, tuple[Data, ...]], tuple[object, C]],
    ) -> tuple[object, C]:
        """``one`` on each batch in turn, threading ``carry``, but ``many`` on each run of batches of one shape
        stacked (a call a batch cost a millisecond); ``many`` raising, ``one`` from then on."""
        if self._groups is None or self._groups[0] is not batches:
            self._groups = (batches, _same_shape_runs(self.keras, [_step_data(x, y, w) for x, y, w, _ in batches]))
        logs: object = None
        for group, stacked in self._groups[1]:
            if stacked is not None and self._loop_ok:
                try:
                    logs, carry = many(carry, stacked)
                    continue
                except Exception:
                    self._loop_ok = False  # a call a batch: the same steps
            for data in group:
                logs, carry = one(carry, data)
        return logs, carry


def _same_shape_runs(
    keras: ModuleType, batches: list[tuple[Data, ...]]
) -> list[tuple[list[tuple[Data, ...]], tuple[Data, ...] | None]]:
    """Consecutive batches of one structure, shapes and dtypes, each run with its batches stacked along a new
    first axis (None for a run of one batch)."""

    def signature(batch: tuple[Data, ...]) -> object:
        leaves = keras.tree.flatten(batch)
        return (keras.tree.map_structure(lambda _: 0, batch), [(tuple(t.shape), str(t.dtype)) for t in leaves])

    runs: list[list[tuple[Data, ...]]] = []
    last: object = None
    for batch in batches:
        sig = signature(batch)
        if runs and sig == last:
            runs[-1].append(batch)
        else:
            runs.append([batch])
        last = sig
    return [
        (run, keras.tree.map_structure(lambda *t: keras.ops.stack(t), *run) if len(run) > 1 else None) for run in runs
    ]


def _check_validation_fits(
    keras: ModuleType,
    model: Model,
    exc: BaseException,
    val_batches: list[tuple[Data, Data, Data]] | None,
    training_batch: tuple[Data, Data] | None,
    fit_kwargs: dict[str, Any],
) -> None:
    """The validation loss before the first step raised: when the model takes a training batch, the
    validation set is what it cannot take, and that is a usage error naming both shapes."""
    if training_batch is None or not val_batches:
        return
    try:
        if has_own_test_step(keras, model):
            own_test_step_loss(keras, model, as_given(keras, [(training_batch[0], training_batch[1], None)]))
        else:
            _loss_of(keras, model, training_batch[0], training_batch[1], None, False)
    except Exception:
        return  # the training data fails too: fit reports that itself, or the measurement is what fails
    vx, vy, _ = val_batches[0]
    source = "validation_data" if fit_kwargs.get("validation_data") is not None else "validation_split"

    def shapes(obj: Data) -> str:
        found = [tuple(np.shape(leaf)) for leaf in _leaves(obj)]
        return str(found[0]) if len(found) == 1 else str(found)

    raise StabilityUsageError(
        f"{source} does not fit the model: its batches have x of shape {shapes(vx)} and y of shape {shapes(vy)}, "
        f"the training batches x {shapes(training_batch[0])} and y {shapes(training_batch[1])}; the model "
        f"raised {type(exc).__name__}: {short_message(exc, 300)}"
    ) from None


def validation_batches(
    keras: ModuleType, model: Model, x: Data, y: Data, fit_kwargs: dict[str, Any], batch_size: int
) -> list[tuple[Data, Data, Data]] | None:
    """The fixed validation batches (numpy), from ``validation_data`` or ``validation_split``."""
    from .keras_internals import load

    array_slicing, data_adapter_utils = load("array_slicing"), load("data_adapter_utils")
    get_data_adapter = load("get_data_adapter")

    vd = fit_kwargs.get("validation_data")
    split = fit_kwargs.get("validation_split")
    if vd is None and not split:
        return None
    if vd is None:
        assert split is not None  # (returned above without either)
        (_, _, _), (vx, vy, vw) = array_slicing.train_validation_split(
            (x, y, fit_kwargs.get("sample_weight")), validation_split=float(split)
        )
    elif isinstance(vd, (tuple, list)):
        if len(vd) not in (1, 2, 3):  # (x_val,): a model whose loss needs no targets (add_loss), as fit takes it
            raise StabilityUsageError(
                f"validation_data must be (x_val, y_val), (x_val, y_val, sample_weight_val) or (x_val,); received a "
                f"{type(vd).__name__} of length {len(vd)}"
            )
        vx, vy, vw = data_adapter_utils.unpack_x_y_sample_weight(tuple(vd))
    else:  # a dataset, a generator, or arrays alone: fit reads bare arrays (or a dict of them) as x_val
        vx, vy, vw = vd, None, None
    for name, part in (("validation x_val", vx), ("validation y_val", vy), ("validation sample_weight_val", vw)):
        refuse_python_values(name, part)
    if vy is None and _is_arrays(vx):
        _refuse_missing_targets(keras, model, vd)
    # a one-shot iterator (a generator): what is read here is given back to fit, ahead of the rest (below)
    one_shot = vd if isinstance(vd, Iterator) else None
    taken: list[object] = []
    if one_shot is not None:
        vx = _tapped(one_shot, taken)
    if _is_arrays(vx):
        check_finite("validation x", vx)
        check_finite("validation y", vy)
    size = fit_kwargs.get("validation_batch_size") or batch_size
    steps = fit_kwargs.get("validation_steps")
    endless = None if steps else _endless(vx)
    if endless is not None:
        raise StabilityUsageError(
            f"validation_data is {endless}, and validation_steps is not given: fit's validation would never end "
            "(plain fit evaluates it forever at the first epoch's end); pass validation_steps=N, the batches one "
            "validation takes"
        )
    batches = []
    try:
        # the global random states put back after the read: each iterator of a torch DataLoader draws its base
        # seed from torch's global generator, shuffled or not, and a PyDataset may draw from numpy's to augment; a
        # draw here moved every later shuffle of the training data (a DataLoader's, or that of Keras' own pipeline
        # for arrays on PyTorch, itself a DataLoader)
        with isolation.kept_random_state():
            adapter = get_data_adapter(
                vx, vy, vw, batch_size=size, shuffle=False, steps_per_epoch=fit_kwargs.get("validation_steps")
            )
            for batch in adapter.get_numpy_iterator():
                batches.append(data_adapter_utils.unpack_x_y_sample_weight(batch))
                if steps and len(batches) >= int(steps):
                    break
                if not steps and len(batches) > MAX_VALIDATION_BATCHES:
                    raise StabilityUsageError(
                        f"validation_data gave more than {MAX_VALIDATION_BATCHES} batches and validation_steps is "
                        "not given: if it never ends (a generator that loops), fit's validation would not either; "
                        "pass validation_steps=N, the batches one validation takes"
                    )
    except StabilityUsageError:
        raise
    except Exception as exc:
        raise StabilityUsageError(
            f"validation_data could not be read: {type(exc).__name__}: {short_message(exc)}"
        ) from None
    if one_shot is not None:
        # fit's own validation (at each epoch's end, for the user's callbacks) gets the same items in the same order
        fit_kwargs["validation_data"] = _resumed(taken, one_shot)
    if not batches:
        raise StabilityUsageError("validation_data is empty")
    return batches


#: validation batches read without ``validation_steps`` beyond which the data is taken for endless (the plugin
#: keeps every batch in memory: a generator that loops would fill it)
MAX_VALIDATION_BATCHES = 100_000


def _endless(data: Data) -> str | None:
    """What validation data that says it never ends is: a ``tf.data.Dataset`` whose cardinality is infinite (it
    repeats), a ``PyDataset`` with no ``num_batches``; None for any other (a generator cannot say)."""
    cardinality = getattr(data, "cardinality", None)
    if callable(cardinality):
        try:
            infinite = int(cardinality()) == -1  # tf.data.INFINITE_CARDINALITY (-2: unknown, as after filter)
        except Exception:
            infinite = False
        if infinite:
            return "a tf.data.Dataset that repeats forever (its cardinality is infinite)"
    if any(cls.__name__ == "PyDataset" for cls in type(data).__mro__):
        try:
            batches = data.num_batches
        except Exception:  # neither num_batches nor __len__: Keras' own error, when fit reads it
            return None
        if batches is None:
            return f"a PyDataset ({type(data).__name__}) whose num_batches is None, which Keras takes for infinite"
    return None


def loss_needs_targets(keras: ModuleType, model: Model, step: str) -> bool:
    """Whether the model is compiled with a loss and computes it Keras' way (its own ``compute_loss`` and ``step``,
    ``"train_step"`` or ``"test_step"``, are Keras'): then that loss compares the outputs with targets.  A custom
    one may need none (an autoencoder's, a loss added with ``add_loss``)."""
    default_loss = type(model).compute_loss is keras.Model.compute_loss
    default_step = getattr(type(model), step) is getattr(keras.Model, step)
    return getattr(model, "_compile_loss", None) is not None and default_loss and default_step


def _refuse_missing_targets(keras: ModuleType, model: Model, vd: object) -> None:
    """Validation arrays without targets, for a model whose compiled loss needs them: ``fit`` reads them as
    ``x_val`` alone (right for a model whose loss needs no targets, ``add_loss``) and then fails inside its
    loss, on each backend with another message (``None values not supported``, ``Invalid dtype: object``)."""
    if not loss_needs_targets(keras, model, "test_step"):
        return
    given = (
        f", a {type(vd).__name__} of length 1," if isinstance(vd, (tuple, list)) else f" of type {type(vd).__name__}"
    )
    raise StabilityUsageError(
        f"validation_data{given} is read by fit as x_val alone, with no targets, but the model "
        f"{model.name!r} is compiled with a loss that needs them: pass validation_data=(x_val, y_val) (x_val "
        "alone suits a model whose loss needs no targets, one that adds its loss with add_loss)"
    )


def _tapped(items: Iterator[object], taken: list[object]) -> Iterator[object]:
    """``items``, each also kept in ``taken``."""
    for item in items:
        taken.append(item)
        yield item


def _resumed(taken: list[object], rest: Iterator[object]) -> Iterator[object]:
    """A generator (Keras takes no other iterator) of ``taken``, then of what ``rest`` still holds."""
    yield from taken
    yield from rest


#: the plugin's own validation measurements run in inference mode, where the batch size changes nothing but
#: float rounding for a loss that is a mean over samples: in batches of at most this many samples and bytes of
#: input (few calls, bounded memory)
EVAL_MAX_SAMPLES, EVAL_MAX_BYTES = 4096, 16 * 2**20

#: a loss that is not a mean over samples (a ``"sum"`` reduction, a Dice loss over the whole batch, in-batch
#: negatives) changes with the batching: the first validation samples, one by one and together, tell (beyond
#: this relative difference: float32 rounding is a few parts in 1e6; a wrong call only costs speed)
JOIN_PROBE_SAMPLES, JOIN_RTOL = 4, 1e-4


def fixed_batch_size(model: Model) -> int | None:
    """The batch size the model's inputs are declared with (``keras.Input(batch_shape=(8, ...))``, which a
    stateful RNN needs), None where it takes any."""
    try:
        sizes = {tuple(t.shape)[0] for t in model.inputs}
    except Exception:  # a subclassed model, or one not built from Inputs: any batch size
        return None
    size = sizes.pop() if len(sizes) == 1 else None
    return size if isinstance(size, int) and size > 0 else None


def _joined(keras: ModuleType, batches: list[tuple[Data, Data, Data]]) -> tuple[Data, Data, Data]:
    """``x``, ``y`` and ``sample_weight`` of the batches, each joined into one (numpy)."""

    def cat(parts: list[Data]) -> Data:
        if parts[0] is None:
            return None
        return keras.tree.map_structure(lambda *a: np.concatenate([np.asarray(v) for v in a]), *parts)

    x, y, w = (cat([b[i] for b in batches]) for i in range(3))
    return x, y, w


def eval_batches(
    keras: ModuleType, batches: list[tuple[Data, Data, Data]], fixed: int | None = None
) -> list[tuple[Data, Data, Data, int]]:
    """The validation batches joined into batches as large as :data:`EVAL_MAX_SAMPLES` and
    :data:`EVAL_MAX_BYTES` allow, as the backend's tensors (converted once, not at every measurement), each
    with its number of samples.  A model that takes only batches of ``fixed`` samples gets those, the samples
    left over after the last whole batch out."""

    x, y, w = _joined(keras, batches)
    n = _n_samples(x) or 1
    per_sample = max(1, sum(int(np.asarray(leaf).nbytes) for leaf in _leaves(x)) // n)
    size = max(1, min(EVAL_MAX_SAMPLES, EVAL_MAX_BYTES // per_sample))
    size = max(size, _n_samples(batches[0][0]) or 1)  # never smaller than the batches given
    if fixed is not None:
        size, n = fixed, n - n % fixed

    def part(obj: Data, a: int, b: int) -> Data:
        if obj is None:
            return None
        return keras.tree.map_structure(lambda v: keras.ops.convert_to_tensor(v[a:b]), obj)

    return [
        (part(x, a, min(a + size, n)), part(y, a, min(a + size, n)), part(w, a, min(a + size, n)), min(a + size, n) - a)
        for a in range(0, n, size)
    ]


def as_given(keras: ModuleType, batches: list[tuple[Data, Data, Data]]) -> list[tuple[Data, Data, Data, int]]:
    """The validation batches as the backend's tensors, each with its number of samples, in the batching they
    were given (the batch size ``fit`` validates in)."""

    def tensors(obj: Data) -> Data:
        return None if obj is None else keras.tree.map_structure(keras.ops.convert_to_tensor, obj)

    return [(tensors(bx), tensors(by), tensors(bw), _n_samples(bx) or 1) for bx, by, bw in batches]


def _mean_loss(
    keras: ModuleType, model: Model, parts: list[tuple[Data, Data, Data, int]], measure: CompiledMeasure | None = None
) -> float:
    """The loss over batches as ``evaluate`` averages it: each batch's loss weighted by its samples."""
    total, count = 0.0, 0
    for bx, by, bw, n in parts:
        total += _loss_of(keras, model, bx, by, bw, False, measure=measure) * n
        count += n
    return total / max(count, 1)


def depends_on_batching(
    keras: ModuleType, model: Model, batches: list[tuple[Data, Data, Data]], measure: CompiledMeasure | None = None
) -> bool | None:
    """Whether the loss of the first :data:`JOIN_PROBE_SAMPLES` validation samples changes when they are
    batched together instead of one by one (beyond :data:`JOIN_RTOL`): then only the batching ``fit`` uses gives
    Keras' ``val_loss``.  One sample at a time is the batching farthest from the joined one: a loss over the whole
    batch whose batches of 32 happen to agree within 1e-4 (a Dice loss at initialisation) differs there.  None
    where it cannot tell: a model that takes no batch of one sample, or a loss that cannot be computed."""
    take, n = _probe_samples(keras, batches)
    if n < 2:
        return False
    try:
        compiled = None if measure is None else measure.joined_and_apart(*as_given(keras, [take(0, n)])[0][:3])
        if compiled is not None:
            together, apart = compiled
        else:
            apart = _mean_loss(keras, model, as_given(keras, [take(i, i + 1) for i in range(n)]), measure)
            together = _mean_loss(keras, model, as_given(keras, [take(0, n)]), measure)
    except Exception:
        return None
    return not bool(np.isclose(together, apart, rtol=JOIN_RTOL, atol=1e-7, equal_nan=True))


def _probe_samples(
    keras: ModuleType, batches: list[tuple[Data, Data, Data]]
) -> tuple[Callable[[int, int], tuple[Data, Data, Data]], int]:
    """The first :data:`JOIN_PROBE_SAMPLES` validation samples (numpy): a function giving samples ``a`` to ``b``
    of them as ``(x, y, sample_weight)``, and how many there are.  Each batch is cut to the samples taken before
    the batches are joined (four batches of 4096 images would otherwise be copied for four samples)."""

    def cut(obj: Data, a: int, b: int) -> Data:
        return None if obj is None else keras.tree.map_structure(lambda v: v[a:b], obj)

    k = JOIN_PROBE_SAMPLES
    x, y, w = _joined(keras, [(cut(bx, 0, k), cut(by, 0, k), cut(bw, 0, k)) for bx, by, bw in batches[:k]])

    def take(a: int, b: int) -> tuple[Data, Data, Data]:
        return cut(x, a, b), cut(y, a, b), cut(w, a, b)

    return take, min(JOIN_PROBE_SAMPLES, _n_samples(x) or 0)


def own_depends_on_batching(keras: ModuleType, model: Model, batches: list[tuple[Data, Data, Data]]) -> bool | None:
    """For a model whose ``test_step`` is its own (run eagerly here): whether the loss it reports over fit's validation
    batches ``batches`` could change (beyond :data:`JOIN_RTOL`) were they joined into larger ones.  Probed on the
    first :data:`JOIN_PROBE_SAMPLES` samples, in one batch, one by one, and (where fit's batches are not all of one
    size) as one sample and then the rest.  A mean over samples gives the same all three ways.  So does, where
    fit's batches are all of one size, a mean of each batch's mean that weighs every batch the same (a loss
    tracker updated without ``sample_weight``, as Keras' guide writes a ``test_step``), but not as one sample and
    then three.  A loss over the whole batch (a Dice loss), a sum, the last batch's loss alone, or a random one
    change.  None where it cannot tell: a single sample, or a ``test_step`` that raises on these batches."""
    take, n = _probe_samples(keras, batches)
    if n < 2:
        return None

    def loss(parts: list[tuple[Data, Data, Data]]) -> float:
        return own_test_step_loss(keras, model, as_given(keras, parts))

    def close(a: float, b: float) -> bool:
        return bool(np.isclose(a, b, rtol=JOIN_RTOL, atol=1e-7, equal_nan=True))

    try:
        together = loss([take(0, n)])
        if not close(together, loss([take(i, i + 1) for i in range(n)])):
            return True
        if len({_n_samples(b[0]) for b in batches}) == 1:
            return False
        if n < 3:
            return None
        return not close(together, loss([take(0, 1), take(1, n)]))
    except Exception:
        return None


def _batchnorm_layers(model: Model) -> list[Layer]:
    layers = model._flatten_layers(include_self=False)
    return [layer for layer in layers if type(layer).__name__ == "BatchNormalization"]


def _regularized(model: Model) -> list[tuple[Variable, Variable]]:
    """Each regularized weight mapped to itself, for a stateless scope: a regularizer reads its weight from the
    scope it runs in, and an unmapped one is None there."""
    return [(v, v) for v in model.trainable_weights if getattr(v, "regularizer", None) is not None]


def _loss_of(
    keras: ModuleType,
    model: Model,
    x: Data,
    y: Data,
    w: Data,
    training: bool,
    *,
    measure: CompiledMeasure | None = None,
) -> float:
    """The loss of one batch as ``evaluate`` computes it (the compiled loss, the losses the layers add and the
    weights' regularization), with nothing updated (BatchNorm statistics, metrics, and the global random states:
    a training-mode forward through PyTorch's Dropout draws from torch's global generator).

    The scope collects what the layers add with ``add_loss`` (without it they are dropped) and maps each
    regularized weight to itself: a regularizer reads its weight from the scope, and an unmapped one is None.
    The weights are read at each call, not once: a callback may (un)freeze layers, and a model built lazily (a
    Sequential without an Input) creates its weights in the first forward, inside the scope and so unmapped:
    that first forward is done again once they exist.

    ``measure``: the run's compiled measurement under JAX (see :class:`CompiledMeasure`), used where it applies."""
    if measure is not None:
        compiled = measure.loss(x, y, w, training)
        if compiled is not None:
            return compiled
    from .keras_internals import load

    StatelessScope = load("StatelessScope")

    for attempt in (0, 1):
        mapping = _regularized(model)
        with (
            StatelessScope(state_mapping=mapping, collect_losses=True),
            isolation.kept_random_state(),
            _measuring(keras),
        ):
            y_pred = model(x, training=training) if model._call_has_training_arg else model(x)
            if attempt == 0 and len(_regularized(model)) != len(mapping):
                continue  # the forward built regularized weights: again, with them mapped
            if nothing_to_compute(keras, model):  # JAX's compute_loss gives 0.0 there, the others raise this
                raise ValueError("No loss to compute. Provide a `loss` argument in `compile()`.")
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w, training=False)
        break
    return float(host_numpy(loss))


def own_test_step_loss(
    keras: ModuleType, model: Model, batches: list[tuple[Data, Data, Data, int]], measure: CompiledMeasure | None = None
) -> float:
    """The validation loss as ``evaluate`` reports it for a model with a ``test_step`` of its own: that
    ``test_step`` on each batch, from reset metrics, and its last logs' ``"loss"``, with nothing kept (the metrics'
    and the layers' updates go to a stateless scope, or, under JAX, whose ``test_step`` is stateless, to a state
    of their own)."""
    from .keras_internals import load

    StatelessScope = load("StatelessScope")
    logs: object = None

    def reset_values() -> Values:
        """The metrics' reset values, left unapplied."""
        with StatelessScope() as reset:
            for metric in model.metrics:
                metric.reset_state()
        return [
            value if (value := reset.get_current_value(v)) is not None else v.value for v in model.metrics_variables
        ]

    with isolation.kept_random_state(), _measuring(keras):
        metrics_values = reset_values()
        if keras.backend.backend() == "jax":
            state: State = (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                metrics_values,
            )
            compiled = measure is not None and measure.test_step() is not None
            if compiled:
                assert measure is not None  # (compiled: it gave a test_step)
                try:
                    logs, state = measure.jax_run(state, batches)
                except Exception:
                    measure.usable = False  # op by op: the same steps, which raise their own error if they have one
                    compiled = False
            if not compiled:
                for bx, by, bw, _ in batches:
                    logs, state = model.test_step(state, _step_data(bx, by, bw))
        else:
            # compiled once the compiled metrics are built (by the first step's trace; before it, the measurement
            # before the first step would build them inside its own trace, which a tf.function refuses)
            if measure is not None and _compiled_metrics_built(model) and measure.tf_test_step() is not None:
                try:
                    logs, values = measure.tf_run(metrics_values, batches)
                    with StatelessScope(state_mapping=list(zip(model.metrics_variables, values, strict=True))):
                        return _val_loss(model, logs)
                except Exception:
                    measure.usable_test_step = False  # eagerly: the same steps, which raise their own error if any
                    metrics_values = reset_values()  # (of the metrics as they are now, should the trace build any)
            # (the regularized weights mapped to themselves: else a test_step that computes the loss with its
            # regularization raised, and the run had no validation loss)
            mapping = list(zip(model.metrics_variables, metrics_values, strict=True)) + _regularized(model)
            with StatelessScope(state_mapping=mapping):
                for bx, by, bw, _ in batches:
                    logs = model.test_step(_step_data(bx, by, bw))
                return _val_loss(model, logs)
        with StatelessScope(state_mapping=list(zip(model.metrics_variables, state[2], strict=True))):
            return _val_loss(model, logs)


def _compiled_metrics_built(model: Model) -> bool:
    """Whether the metrics and the loss trackers that ``compile`` set up are built: Keras' TensorFlow trainer
    leaves them to the first trace of a step (where the plugin builds them right before the first training step's
    trace: ``keras_internals.build_before_first_trace``)."""
    parts = (getattr(model, "_compile_metrics", None), getattr(model, "_compile_loss", None))
    return all(getattr(part, "built", True) for part in parts if part is not None)


def _val_loss(model: Model, logs: object) -> float:
    """The ``"loss"`` that ``evaluate`` reports after the last batch's ``logs``: the metrics' results where the logs
    name the same metrics (Keras' ``_get_metrics_result_or_logs``), else the logs."""
    pick = getattr(model, "_get_metrics_result_or_logs", None)
    final = pick(logs) if pick is not None else logs
    loss = final.get("loss") if isinstance(final, dict) else None
    if loss is None:
        given = sorted(final) if isinstance(final, dict) else repr(final)
        raise ValueError(f"the model's test_step returned no 'loss' (its logs: {given})")
    return float(host_numpy(loss))


def _step_data(x: Data, y: Data, w: Data) -> tuple[Data, ...]:
    """A batch as Keras' iterators give ``test_step`` one: ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``."""
    return (x,) if y is None and w is None else (x, y) if w is None else (x, y, w)


def nothing_to_compute(keras: ModuleType, model: Model) -> bool:
    """Whether Keras' own ``compute_loss`` has no loss to add up: none compiled, none a layer added (in the
    stateless scope the forward ran in) and no regularizer.  A model whose ``compute_loss`` is its own may still
    have one."""
    if type(model).compute_loss is not keras.Model.compute_loss or getattr(model, "_compile_loss", None) is not None:
        return False
    return not model.losses


def _relative_gap(train_loss: float, infer_loss: float) -> float:
    """|inference - training| / training loss of the same batch (NaN when undefined)."""
    if not (np.isfinite(train_loss) and np.isfinite(infer_loss)) or train_loss <= 0:
        return float("nan")
    return abs(infer_loss - train_loss) / train_loss


class ValidationProbe:
    """The validation loss at read-backs and the BatchNorm train/inference gap, for one run.

    The read-back callback calls it (``validate``) at the first read-back and every ``validate_every`` steps;
    the engine calls :meth:`at_end` after ``fit``.  A loss that cannot be computed ends the measurements with
    a note (``val_loss`` is then not judged); before the first step, when the model takes a training batch but
    not the validation batches, that is a usage error.

    Attributes:
        batches: the fixed validation batches (numpy), None without validation data.
        steps: the steps done at each measurement.
        losses: the validation loss at each measurement.
        gaps: the relative BatchNorm gap at each measurement (at the end only, without validation data).
        ok: whether every measurement so far could be computed.
        readback: the read-back callback, whose rows count the steps done (set once it exists).
    """

    def __init__(
        self,
        keras: ModuleType,
        model: Model,
        x: Data,
        y: Data,
        *,
        kind: str,
        fit_kwargs: dict[str, Any],
        batch_size: int,
        notes: list[str],
    ) -> None:
        self.keras, self.model = keras, model
        self.batches = validation_batches(keras, model, x, y, fit_kwargs, batch_size)
        fixed = fixed_batch_size(model)
        self._eval = eval_batches(keras, self.batches, fixed) if self.batches else []
        # joined batches are judged once, at the first measurement (a model built lazily has no weights before)
        self._probe_joined = bool(self.batches) and fixed is None and len(self._eval) < len(self.batches or [])
        if self.batches and fixed is not None:
            left = sum(part[3] for part in self._eval)
            total = sum(_n_samples(b[0]) or 0 for b in self.batches)
            if not self._eval:
                self.batches, self._eval = None, []
                notes.append(
                    f"the model takes batches of exactly {fixed} samples (its Input's batch_shape), more than the "
                    f"{total} validation samples: its validation loss is not measured, and val_loss is not judged"
                )
            elif left < total:
                notes.append(
                    f"the model takes batches of exactly {fixed} samples (its Input's batch_shape): the validation "
                    f"loss is measured on {left} of the {total} validation samples, in whole batches"
                )
        self._fit_kwargs = fit_kwargs
        self._notes = notes
        # Keras' val_loss comes from the model's test_step: one of the model's own (which may compute any loss) is
        # run itself, in fit's validation batches (a model of a fixed batch size: in the whole ones above); Keras'
        # own computes the compiled loss, measured directly
        self._own_test_step = has_own_test_step(keras, model)
        self._measure = CompiledMeasure(keras, model)
        #: a model's own test_step, run in fit's batches, in the joined ones where a probe at the first measurement
        #: finds that this changes nothing (see own_depends_on_batching): these until then.  Run eagerly, a call a
        #: batch of 512 batches of one cost a batch-1 epoch 5.7x plain fit's time on PyTorch; TensorFlow runs the
        #: measurement before the first step eagerly (2.4x).  Not under JAX, which compiles it throughout (the probe
        #: would compile it for three more shapes).
        self._own_joined: list[tuple[Data, Data, Data, int]] | None = None
        if self._own_test_step and self.batches:
            self._probe_joined = False
            if fixed is None:
                jax_compiled = keras.backend.backend() == "jax" and self._measure.usable_test_step
                if len(self._eval) < len(self.batches) and not jax_compiled:
                    self._own_joined = self._eval
                self._eval = as_given(keras, self.batches)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.gaps: list[float] = []
        self.ok = True
        self.readback: Readback | None = None
        self._bn = bool(_batchnorm_layers(model))
        bs = batch_size
        # the gap's batch: the first validation batch, else (arrays) the first training batch
        self._gap_batch: tuple[Data, Data, Data] | None = self.batches[0] if self.batches else None
        if self._gap_batch is None and self._bn and kind == "arrays":
            yy = None if y is None else keras.tree.map_structure(lambda a: a[:bs], y)
            self._gap_batch = (keras.tree.map_structure(lambda a: a[:bs], x), yy, None)
        self._training_batch = (
            (
                keras.tree.map_structure(lambda a: a[:bs], x),
                None if y is None else keras.tree.map_structure(lambda a: a[:bs], y),
            )
            if kind == "arrays"
            else None
        )

    def __call__(self, first: bool = False) -> None:
        """Measure at a read-back (``first``: the one before the first step)."""
        if not self.ok:
            return
        keras, model = self.keras, self.model
        sync_variables(model, read_only=True)
        done = self.readback.rows.done if self.readback is not None else 0
        try:
            if self._probe_joined:
                self._probe_joined = False
                assert self.batches is not None  # (probed only with batches)
                depends = depends_on_batching(keras, model, self.batches, self._measure)
                if depends is not False:  # (None: it could not tell, and fit's own batches are the safe side)
                    self._eval = as_given(keras, self.batches)
                if depends:
                    self._notes.append(
                        "the loss changes with how the samples are batched (a sum, or a loss over the whole batch), "
                        f"so the validation loss is measured in the {len(self.batches)} validation batches fit "
                        "uses, as Keras' val_loss is"
                    )
            if self._own_test_step:
                # its loss tracker's and metrics' updates are no training step's: recorded as Keras' evaluate is
                quiet = self.readback
                if quiet is not None:
                    quiet.on_test_begin()
                try:
                    if self._own_joined is not None:
                        assert self.batches is not None  # (joined only with batches)
                        joined, self._own_joined = self._own_joined, None
                        if own_depends_on_batching(keras, model, self.batches) is False:
                            self._eval = joined
                    loss = own_test_step_loss(keras, model, self._eval, self._measure)
                finally:
                    if quiet is not None:
                        quiet.on_test_end()
            else:
                loss = _mean_loss(keras, model, self._eval, self._measure)
            self.steps.append(done)
            self.losses.append(loss)
        except Exception as exc:
            if first:
                _check_validation_fits(keras, model, exc, self.batches, self._training_batch, self._fit_kwargs)
            self.ok = False
            how = "its own test_step" if self._own_test_step else "the model's compute_loss"
            self._notes.append(
                f"the validation loss could not be computed with {how} "
                f"({type(exc).__name__}: {short_message(exc, 200)}); val_loss is not judged"
            )
            return
        # the BatchNorm gap is informational, and measured with compute_loss, which a model whose test_step is its
        # own may not have: it never fails the validation loss
        if self._bn and self._gap_batch is not None:
            try:
                self.gaps.append(self._gap())
            except Exception as exc:
                self._bn = False
                self._notes.append(f"the BatchNorm train/inference gap could not be measured ({type(exc).__name__})")

    def _gap(self) -> float:
        assert self._gap_batch is not None
        keras, model = self.keras, self.model
        return _relative_gap(
            _loss_of(keras, model, *self._gap_batch, True, measure=self._measure),
            _loss_of(keras, model, *self._gap_batch, False, measure=self._measure),
        )

    def at_end(self, done: int) -> None:
        """After ``fit`` (``done`` steps): without validation data, the gap is measured once, at the end, on the
        first training batch."""
        if self._bn and not self.batches and self._gap_batch is not None and done:
            try:
                self.gaps.append(self._gap())
            except Exception as exc:  # informational: never fail the run on it
                self._notes.append(f"the BatchNorm train/inference gap could not be measured ({type(exc).__name__})")

    def val_loss(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(val_steps, val_loss)`` for the trace; ``(None, None)`` without validation data or when a
        measurement failed."""
        if self.batches and self.ok:
            return np.asarray(self.steps, dtype=np.int64), np.asarray(self.losses, dtype=np.float64)
        return None, None

    def record_gap(self, info: dict[str, Any]) -> None:
        """The BatchNorm gap's facts in ``info``: the largest finite gap, the last, and which batch it was."""
        gaps = self.gaps
        if gaps:
            finite_gaps = [g for g in gaps if np.isfinite(g)]
            info["bn_train_infer_gap"] = max(finite_gaps) if finite_gaps else None
            info["bn_train_infer_gap_last"] = gaps[-1] if np.isfinite(gaps[-1]) else None
            info["bn_gap_batch"] = "validation" if self.batches else "training"


__all__ = [
    "ValidationProbe",
    "as_given",
    "depends_on_batching",
    "eval_batches",
    "own_depends_on_batching",
    "validation_batches",
]
