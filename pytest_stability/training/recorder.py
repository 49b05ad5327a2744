"""Record what every Keras trainer already passes through: the optimizer and the loss tracker.

Keras' ``fit`` runs the user's ``train_step`` on the chosen backend; every
trainer (TensorFlow, JAX, PyTorch, and the custom ``train_step`` of Keras'
"customizing fit()" guides) hands its gradients to ``model.optimizer`` and its
unscaled loss to the model's loss tracker.  So this module instruments those
two objects *on the instance*, for the duration of one ``fit`` call, and puts
them back afterwards:

* the optimizer's ``apply`` (TensorFlow, PyTorch) or ``stateless_apply``
  (JAX, where the optimizer's variables are threaded through ``fit`` as state,
  the way ``LossScaleOptimizer`` threads its loss scale) computes, per step and
  on the device: the global and per-variable gradient norms before clipping
  (unscaled under loss scaling), the learning rate in effect, finiteness of the
  gradients, of the weights and of the optimizer state after the update, the
  relative update ``|w_after - w_before| / |w_before|`` per variable and
  overall, and (``diagnostics``) Adam's slot statistics; and writes them into
  one row of a ``(chunk, width)`` buffer;
* the loss tracker's ``update_state`` writes the raw minibatch loss (not the
  running mean ``logs["loss"]`` shows) into a ``(chunk,)`` buffer (JAX: into a
  ``(1,)`` one, which the ``train_step`` wrapper files in the step's row of the
  optimizer's buffer after the step).

A :class:`Readback` callback reads both buffers at execution boundaries
(``steps_per_execution``), once per chunk.  Once a step went non-finite, or the
planned number of steps is reached, later steps apply no update to the weights
(on the device: a zero learning rate where the optimizer's update scales with
it, else a ``cond`` or a select; see :meth:`Recorder._rate_variable`), so the
weights and the report are those of the failing step; the callback then stops
``fit``.  A wrapper around the model's ``train_step`` checks pipeline batches for
NaN/Inf in the step and, under JAX, files the step's loss and carries a non-finite one into the halt flag.

The statistics are written once in backend-neutral ``keras.ops`` (:meth:`Recorder._row`), which
TensorFlow and JAX compile into the step.  PyTorch runs every step eagerly, where each tensor op costs its
dispatch on every step: there a step stacks a few raw values (norms, one sum, the rate) with torch's own
multi-tensor ops into a vector kept on the device, and the host derives the same row from them at read-back
(:meth:`Recorder._torch_apply`, :meth:`Recorder._torch_read`).

Buffers are Keras variables (PyTorch: Python lists of device tensors).  Under JAX they are appended to the
optimizer's and the loss tracker's variable lists so that ``fit`` threads them as state; on TensorFlow
they stand alone.  :meth:`Recorder.uninstall` removes
every trace of the instrumentation: the user's optimizer and tracker, no extra
variables, nothing that ``model.save`` would write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, OVERFLOW, WEIGHTS

#: columns of the optimizer-side buffer before the per-variable blocks
COL_GNORM, COL_LR, COL_FLAGS, COL_UPDATE = 0, 1, 2, 3
N_FIXED = 4
#: JAX: the optimizer-side buffer has one more row, its header, holding these (float32: exact up to 2**24)
H_COUNT, H_HALT, H_LIMIT, H_INPUT = 0, 1, 2, 3
#: JAX: and two more columns after each row: the step's loss and how many losses the tracker took in it
N_LOSS_COLS = 2
#: device-side stop rule: these bits stop the run (the update of that step is kept)
STOP_BITS = GRADS | WEIGHTS | OPTIMIZER | INPUT


#: Keras optimizers whose whole update of the weights (weight decay included) is proportional to the learning
#: rate in effect, so that a zero rate applies none; SGD and RMSprop only without momentum, whose buffer
#: carries earlier rates into the update.  Matched by exact class: a subclass may update otherwise.
_RATE_LINEAR = frozenset({"Adam", "AdamW", "Adamax", "Nadam", "Adagrad", "Lion", "Lamb"})
_RATE_LINEAR_WITHOUT_MOMENTUM = frozenset({"SGD", "RMSprop"})


def _float_name(v: Any) -> bool:
    dtype = getattr(v, "dtype", None)
    name = getattr(dtype, "name", dtype)
    return isinstance(name, str) and ("float" in name or name == "bfloat16")


class BatchNotRun(Exception):
    """PyTorch: a step was not run because its input batch holds NaN/Inf (see ``torch_train_step``)."""


class Recorder:
    """Instruments one optimizer of the model (and, for ``model.optimizer``, the loss tracker and the
    ``train_step``) for one ``fit`` call.

    Args:
        model: the compiled model (its optimizer may be built or not yet).
        optimizer: the optimizer to instrument: ``model.optimizer`` (the default), or another one the model's
            ``train_step`` applies (a GAN's ``d_optimizer``).
        name: how findings and reports name the optimizer (its attribute on the model).
        chunk: rows in the device buffers; ``fit`` must read back at least every
            ``chunk`` applies of the optimizer (``steps_per_execution <= chunk``).
        limit: optimizer steps after which no further update is applied.
        diagnostics: also record Adam's max ``g^2/v`` and ``sqrt(mean v)``.
    """

    # Keras variables, or None where the recorder keeps none (the type checker sees Keras as Any)
    lbuf: Any
    lcount: Any
    loss_bad: Any
    input_bad: Any
    rate: Any

    def __init__(
        self,
        model: Any,
        *,
        chunk: int,
        limit: int,
        diagnostics: bool,
        distributed: bool = False,
        check_inputs: bool = False,
        optimizer: Any = None,
        name: str = "optimizer",
    ) -> None:
        import keras

        self.keras = keras
        self.ops = keras.ops
        self.backend = keras.backend.backend()
        self.stateless = self.backend == "jax"
        self.model = model
        self.opt = model.optimizer if optimizer is None else optimizer
        self.name = name
        #: the recorder of model.optimizer: it also records the loss and wraps the train_step
        self.primary = self.opt is model.optimizer
        #: suffix of the recorder's variable names (unique per optimizer)
        self._suffix = "" if self.primary else f"_{name}"
        #: JAX: fit threads model.optimizer's variables as the state's optimizer variables, in their order (Keras'
        #: own trainer); a model that threads several optimizers' says how itself (``_get_jax_state``)
        self.standard_state = self.stateless and self.primary and _keras_threads_model_optimizer(model)
        self.is_loss_scaled = isinstance(self.opt, keras.optimizers.LossScaleOptimizer)
        self.inner = self.opt.inner_optimizer if self.is_loss_scaled else self.opt
        self.chunk = int(chunk)
        self.limit = int(limit)
        self.diagnostics = diagnostics
        #: under tf.distribute.MirroredStrategy: the optimizer's apply synchronises replicas (merge_call), which
        #: no cond may wrap; fit runs one step per call there, so the host stops training after each step instead
        self.distributed = distributed
        self.tracker = getattr(model, "_loss_tracker", None) if self.primary else None
        #: Python-side switch: the tracker records only while ``fit`` trains (not in ``evaluate``)
        self.recording_loss = True
        self._patched: list[tuple[Any, str, Any]] = []
        self._added: list[tuple[list[Any], Any]] = []
        self.loss_bad = None
        #: check every input batch for NaN/Inf on the device, in the step (pipelines: arrays are checked
        #: on the host before training); not under a distribution strategy, where each replica sees a shard
        self.check_inputs = bool(check_inputs) and not distributed and self.primary
        self.input_bad = None
        #: TensorFlow under a distribution strategy: each replica's gradient norm of the step (see _build_buffers)
        self.replica_norm: Any = None
        self.built = False
        #: JAX, while a step is traced: what its optimizer apply left for the train_step wrapper, and how many
        #: losses the loss tracker took (see _train_step_wrapper)
        self._jax_step: tuple[Any, Any, Any] | None = None
        self._loss_calls = 0
        # PyTorch needs none: its host runs no step past the planned ones or after a non-finite one
        self.rate = None if self.backend == "torch" else self._rate_variable()
        if self.stateless and self.limit >= 2**24:  # JAX counts in the float32 buffer's header
            from ..errors import StabilityUsageError

            raise StabilityUsageError(f"steps must be below {2**24} under JAX; received steps={self.limit}")

    def _rate_variable(self) -> Any:
        """The learning-rate variable through which a step is made a no-op, or None.

        After the planned steps, or after a non-finite step, the rest of a chunk must apply no update.
        Where the optimizer's update is proportional to its learning rate (see ``_RATE_LINEAR``), the
        recorder feeds it a rate of 0 for those steps: one scalar select.  Otherwise it keeps the update
        out with a ``cond`` (TensorFlow) or a select of every variable (JAX), which on a small model
        costs as much as the step itself.  With a zero rate the weights stay those of the last step that
        counts, the optimizer's moment estimates still take in the gradients of the skipped steps (their
        learning rate is 0, their buffers are not the weights).  PyTorch, eager, runs no such step (see
        ``torch_halted``), so it needs none.
        """
        inner = self.inner
        cls = type(inner)
        if cls.__module__.split(".")[0] != "keras":
            return None
        name = cls.__name__
        if name not in _RATE_LINEAR and not (
            name in _RATE_LINEAR_WITHOUT_MOMENTUM and not getattr(inner, "momentum", 0)
        ):
            return None
        if getattr(inner, "use_ema", False):  # the moving average would overwrite the weights
            return None
        rate = getattr(inner, "_learning_rate", None)
        return rate if isinstance(rate, self.keras.Variable) else None  # a schedule is not settable

    # -- install / uninstall ---------------------------------------------------

    def install(self) -> None:
        opt = self.opt
        if self.backend == "torch":
            self._torch_init()
        #: the optimizer's own update, which the instrumented one wraps (see _build_buffers)
        self._apply_original = opt.stateless_apply if self.stateless else opt.apply
        if opt.built:
            self._build_buffers(list(opt._trainable_variables))
        else:
            original_build = opt.build

            def build(variables: Any, *args: Any, **kwargs: Any) -> Any:
                out = original_build(variables, *args, **kwargs)
                if not self.built:
                    self._build_buffers(list(opt._trainable_variables))
                return out

            self._patch(opt, "build", build)
            if not self.stateless:
                self._patch(opt, "apply", self._lazy_apply())
        if self.check_inputs and not self.stateless:  # under JAX: an optimizer variable (see _build_buffers)
            self.input_bad = self._variable(0, "int32", "stability_input_bad", None)
        self._build_loss_buffers()
        if self.primary and (self.check_inputs or self.stateless):
            self._patch_train_step()

    def uninstall(self) -> None:
        for obj, name, previous in reversed(self._patched):
            try:
                if previous is _ABSENT:
                    delattr(obj, name)
                else:
                    object.__setattr__(obj, name, previous)
            except AttributeError:  # pragma: no cover - already gone
                pass
        self._patched.clear()
        for container, var in self._added:
            for i, v in enumerate(container):
                if v is var:
                    del container[i]
                    break
        self._added.clear()

    def _lazy_apply(self) -> Callable[..., Any]:
        """An optimizer that is not built yet builds itself in its first ``apply`` (eager steps, an optimizer
        kept on the model beside ``model.optimizer``): build it there as Keras would, and record that first
        step too (the instrumented update replaces this one once built)."""
        opt = self.opt

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            if not opt.built and trainable_variables is not None and len(grads):
                with self.keras.name_scope(opt.name, caller=opt):
                    opt.build(list(trainable_variables))
                opt.built = True
            if self.built:
                return self._apply(grads, trainable_variables)
            return self._apply_original(grads, trainable_variables)

        return apply

    def _patch(self, obj: Any, name: str, fn: Callable[..., Any]) -> None:
        previous = vars(obj).get(name, _ABSENT)  # an attribute of the instance itself is put back after
        object.__setattr__(obj, name, fn)
        self._patched.append((obj, name, previous))

    def _patch_train_step(self) -> None:
        """Wraps the model's ``train_step`` (Keras' or the user's own) on the instance, around the step:

        * before it, checks the input batch for NaN/Inf on the device (every pipeline: tf.data,
          PyDataset, generators, DataLoader) into a flag the optimizer's apply reads;
        * after it, under JAX, files the step's loss (the loss tracker keeps it in state the optimizer
          does not get) in the two columns after the step's row, and carries a non-finite one into the
          optimizer's halt flag, so that no later step of the chunk is applied.
        """
        self._train_step = self.model.train_step
        self._patch(self.model, "train_step", self._train_step_wrapper(self._train_step))

    def retrace(self) -> None:
        """Before ``make_train_function(force=True)`` (the what-if replay changed a setting the step reads
        when it is traced, such as Adam's epsilon): a new wrapper function, because ``jax.jit`` keeps the
        traces of a function object it has seen, so a new jit of the same wrapper would run the old trace."""
        if getattr(self, "_train_step", None) is not None:
            object.__setattr__(self.model, "train_step", self._train_step_wrapper(self._train_step))

    def _train_step_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        model = self.model
        ops = self.ops
        standardize = self.keras.backend.standardize_dtype

        def inputs_bad(data: Any) -> Any:
            leaves = []
            for t in self.keras.tree.flatten(data):
                try:
                    if t is not None and "float" in standardize(getattr(t, "dtype", None)):
                        leaves.append(t)
                except (TypeError, ValueError):  # not a tensor (a string, an object): nothing to check
                    continue
            if not leaves:
                return None
            return ops.logical_not(ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in leaves])))

        if self.backend == "torch":
            import torch

            def torch_inputs_bad(data: Any) -> bool:
                for t in self.keras.tree.flatten(data):
                    try:
                        t = t if torch.is_tensor(t) else torch.as_tensor(np.asarray(t))
                    except (TypeError, ValueError, RuntimeError):  # not numeric (strings, objects)
                        continue
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return True
                return False

            def torch_train_step(data: Any) -> Any:
                # checked where the batch is (on the host for Keras' own pipelines) before the step runs:
                # a NaN batch on a GPU can make a kernel assert, which no later step or test recovers from
                if torch_inputs_bad(data):
                    self.input_bad.assign(1)
                    raise BatchNotRun("the input batch holds NaN/Inf: its step was not run")
                return original(data)

            return torch_train_step

        if not self.stateless:

            def train_step(data: Any) -> Any:
                bad = inputs_bad(data)
                if bad is not None:
                    self.input_bad.assign(ops.cast(bad, "int32"))
                return original(data)

            return train_step

        def stateless_train_step(state: Any, data: Any) -> Any:
            four = isinstance(state, (tuple, list)) and len(state) == 4 and self.built and self.standard_state
            chunk = self.chunk
            if four and self.check_inputs:
                bad = inputs_bad(data)
                if bad is not None:  # into the header the optimizer's apply reads
                    trainable, non_trainable, ov, mv = state
                    ov = list(ov)
                    p = _index_of(self.opt.variables, self.buf)
                    assert p is not None  # the buffer is one of the optimizer's variables once built
                    ov[p] = ops.slice_update(ov[p], (chunk, H_INPUT), ops.reshape(ops.cast(bad, "float32"), (1, 1)))
                    state = (trainable, non_trainable, ov, mv)
            self._jax_step, self._loss_calls = None, 0  # set while `original` is traced (see below)
            logs, new_state = original(state, data)
            step, taken = self._jax_step, self._loss_calls
            self._jax_step = None  # no tracer kept past its trace
            if (
                four
                and step is not None
                and self.lbuf is not None
                and isinstance(new_state, (tuple, list))
                and len(new_state) == 4
            ):
                p_lb = _index_of(model.metrics_variables, self.lbuf)
                if p_lb is not None:  # a model whose metrics leave out the loss tracker records no loss
                    # the step's loss into the two columns after its row (a step that counted; else the
                    # header's, never read), with how many losses the tracker took in the step: known when
                    # the step is traced, so no count is kept on the device
                    go, slot, halt = step
                    trainable, non_trainable, ov, mv = new_state
                    ov = list(ov)
                    p = _index_of(self.opt.variables, self.buf)
                    loss = mv[p_lb][0] if taken == 1 else ops.convert_to_tensor(float("nan"), "float32")
                    at = ops.where(go, slot, chunk)
                    buf = ops.slice_update(
                        ov[p],
                        (at, self.width),
                        ops.reshape(
                            ops.stack([loss, ops.convert_to_tensor(float(taken), "float32")]), (1, N_LOSS_COLS)
                        ),
                    )
                    if taken == 1 and not self.is_loss_scaled:  # a non-finite loss stops the next update
                        bad = ops.logical_and(go, ops.logical_not(ops.isfinite(loss)))  # (scaled: an overflow)
                        buf = ops.slice_update(
                            buf, (chunk, H_HALT), ops.reshape(ops.where(bad, ops.ones_like(halt), halt), (1, 1))
                        )
                    ov[p] = buf
                    new_state = (trainable, non_trainable, ov, mv)
            return logs, new_state

        return stateless_train_step

    def _variable(self, value: Any, dtype: str, name: str, owner_list: list[Any] | None) -> Any:
        name += self._suffix
        if self.distributed:  # a MirroredVariable that replicas may write: replica 0's value is kept
            with self.model.distribute_strategy.scope():
                return self.keras.Variable(
                    value, dtype=dtype, trainable=False, name=name, aggregation="only_first_replica"
                )
        var = self.keras.Variable(value, dtype=dtype, trainable=False, name=name)
        if owner_list is not None:  # JAX: threaded through fit as the owner's state
            owner_list.append(var)
            self._added.append((owner_list, var))
        return var

    def _build_buffers(self, tvars: list[Any]) -> None:
        self.n_vars = len(tvars)
        self.var_names = tuple(var_name(v) for v in tvars)
        self.velocities = None
        if self.diagnostics and hasattr(self.inner, "_velocities") and self.inner._velocities:
            self.velocities = list(self.inner._velocities)
        #: the number of second-moment entries (sqrt(mean v) divides by it)
        self.v_size = float(sum(int(np.prod(v.shape)) for v in self.velocities)) if self.velocities else 1.0
        self.n_diag = 2 if self.velocities is not None else 0
        #: under loss scaling, one more column: the loss scale each step's gradients carried
        self.n_scale = 1 if self.is_loss_scaled else 0
        self.width = N_FIXED + 2 * self.n_vars + self.n_diag + self.n_scale
        own = self.opt._variables if self.stateless else None
        if self.stateless:
            # JAX threads every variable through each step's call, and each one costs there (about a
            # microsecond on the CPU): the counters ride in a header row under the rows, one variable in all
            # the row's two loss columns are written after the step by the train_step wrapper
            header = np.zeros((1, self.width + N_LOSS_COLS), np.float32)
            header[0, H_LIMIT] = self.limit
            self.buf = self._variable(
                np.concatenate([np.zeros((self.chunk, self.width + N_LOSS_COLS), np.float32), header]),
                "float32",
                "stability_record",
                own,
            )
        elif self.backend != "torch":  # PyTorch keeps its raw values in a list, the count on the host
            self.buf = self._variable(
                np.zeros((self.chunk, self.width), np.float32), "float32", "stability_record", own
            )
            self.count = self._variable(0, "int32", "stability_count", own)
            self.halt = self._variable(0, "int32", "stability_halt", own)
            self.limit_var = self._variable(self.limit, "int32", "stability_limit", own)
            if self.distributed:
                # each replica's own gradient norm (before the all-reduce), in the step's slot: a buffer each
                # replica keeps a copy of, read per replica at the read-back
                with self.model.distribute_strategy.scope():
                    self.replica_norm = self.keras.Variable(
                        np.zeros((self.chunk,), np.float32),
                        dtype="float32",
                        trainable=False,
                        name="stability_replica_norm" + self._suffix,
                        synchronization="on_read",
                        aggregation="sum",
                    )
        mine = self.own_ids()
        self.state_vars = [v for v in self.opt.variables if id(v) not in mine and _float_name(v)]
        # JAX: the optimizer state is checked in the variables' own reductions: the slots of a shape (Adam's
        # m and v of each variable) are shared out among the variables of that shape, whichever owns which
        # (the check is of all the state at once); the rest (the step counter, scalars) is summed on its own
        self.slots: list[list[int]] = [[] for _ in tvars]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, v in enumerate(tvars if self.stateless else ()):
            by_shape.setdefault(tuple(v.shape), []).append(k)
        turn: dict[tuple[int, ...], int] = {}
        for j, v in enumerate(self.state_vars if self.stateless else ()):
            owners = by_shape.get(tuple(v.shape))
            if not owners:
                continue
            i = turn.get(tuple(v.shape), 0)
            self.slots[owners[i % len(owners)]].append(j)
            turn[tuple(v.shape)] = i + 1
        if self.stateless:
            self._apply = self._stateless_apply(self._apply_original)
            self._patch(self.opt, "stateless_apply", self._apply)
            self._hide_from_saving()
        else:
            self._apply = (self._torch_apply if self.backend == "torch" else self._stateful_apply)(self._apply_original)
            self._patch(self.opt, "apply", self._apply)
        self.built = True

    def _hide_from_saving(self) -> None:
        """JAX: the recorder's variables ride in the optimizer's variable list, which Keras saves as they are
        (``save_own_variables``: a ModelCheckpoint or BackupAndRestore during ``fit``).  A checkpoint must hold
        the user's variables alone, in their own order, so that it loads into the model as it would have."""
        opt = self.opt

        def mine() -> set[int]:
            return self.own_ids()

        def save_own_variables(store: Any) -> None:
            own = mine()
            for i, variable in enumerate(v for v in opt.variables if id(v) not in own):
                store[str(i)] = variable.numpy()

        original_load = opt.load_own_variables

        def load_own_variables(store: Any) -> None:
            own = mine()
            kept = list(opt._variables)
            opt._variables[:] = [v for v in kept if id(v) not in own]  # the user's alone while Keras loads them
            try:
                original_load(store)
            finally:
                opt._variables[:] = kept

        self._patch(opt, "save_own_variables", save_own_variables)
        self._patch(opt, "load_own_variables", load_own_variables)

    def own_ids(self) -> set[int]:
        """``id``s of the recorder's variables among the optimizer's (none of the user's state)."""
        return {
            id(v)
            for v in (
                getattr(self, "buf", None),
                getattr(self, "count", None),
                getattr(self, "halt", None),
                getattr(self, "limit_var", None),
                getattr(self, "replica_norm", None),
                self.input_bad,
            )
            if v is not None
        }

    def _build_loss_buffers(self) -> None:
        if self.tracker is None:
            self.lbuf = self.lcount = None
            return
        if self.backend == "torch":  # the losses go to a list (see _torch_update_state)
            self.lbuf = self.lcount = self.loss_bad = None
            self._patch(self.tracker, "update_state", self._torch_update_state(self.tracker.update_state))
            return
        if self.stateless:  # the step's loss, taken into the optimizer's buffer after the step (see above)
            self.lbuf = self._variable(np.zeros((1,), np.float32), "float32", "stability_loss", self.tracker._variables)
            self.lcount = self.loss_bad = None
            self._patch(self.tracker, "update_state", self._jax_update_state(self.tracker.update_state))
            return
        # TensorFlow
        self.lbuf = self._variable(np.zeros((self.chunk,), np.float32), "float32", "stability_loss", None)
        self.lcount = self._variable(0, "int32", "stability_loss_count", None)
        # the optimizer reads it, so a non-finite loss stops the next update even when its gradients stay
        # finite (an overflowing MSE); under JAX the train_step wrapper carries the loss buffer's flag into
        # the halt, on PyTorch the host checks each step's loss (see torch_halted)
        self.loss_bad = None if self.is_loss_scaled else self._variable(0, "int32", "stability_loss_bad", None)
        original = self.tracker.update_state
        ops = self.ops

        def update_state(values: Any, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            if self.recording_loss:
                value = ops.reshape(ops.cast(ops.mean(ops.stop_gradient(values)), "float32"), (1,))
                slot = ops.mod(self.lcount.value, self.chunk)
                self.lbuf.assign(ops.slice_update(self.lbuf.value, ops.reshape(slot, (1,)), value))
                self.lcount.assign(self.lcount.value + 1)
                if self.loss_bad is not None:  # the 1-based step of the first non-finite loss, 0 while none
                    first = ops.logical_and(ops.equal(self.loss_bad.value, 0), ops.logical_not(ops.isfinite(value[0])))
                    self.loss_bad.assign(ops.where(first, self.lcount.value, self.loss_bad.value))
            return out

        self._patch(self.tracker, "update_state", update_state)

    def _jax_update_state(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops

        def update_state(values: Any, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            if self.recording_loss:  # the step's raw loss: the train_step wrapper files it in the step's row
                self.lbuf.assign(ops.reshape(ops.cast(ops.mean(ops.stop_gradient(values)), "float32"), (1,)))
                self._loss_calls += 1  # while the step is traced
            return out

        return update_state

    # -- the per-step statistics (backend-neutral keras.ops) --------------------

    def _row(
        self,
        grads: list[Any],
        index: list[int],
        before: list[Any],
        after: list[Any],
        state_after: list[Any],
        lr: Any,
        scale: Any,
        velocities: list[Any] | None,
        velocities_after: list[Any] | None,
        input_bad: Any = None,
    ) -> tuple[Any, Any]:
        """One buffer row and the device-side stop flag for one step."""
        ops = self.ops
        f32 = "float32"
        zero = ops.convert_to_tensor(0.0, f32)
        inv_scale = None if scale is None else 1.0 / ops.cast(scale, f32)
        g_sq = [zero] * self.n_vars
        d_sq = [zero] * self.n_vars
        w_sq = [zero] * self.n_vars
        state_sums = []
        checked: set[int] = set()
        jax_rows = []
        for g, k, b, a in zip(grads, index, before, after, strict=True):
            bf = ops.cast(b, f32)
            if not self.stateless:
                # TensorFlow runs the step's graph op by op: the fewest ops win (measured: stacking the
                # reductions below cost +0.1x on a small model's step and its first call)
                w_sq[k] = ops.sum(ops.square(bf))
                d_sq[k] = ops.sum(ops.square(ops.cast(a, f32) - bf))
                if g is not None:
                    g_sq[k] = ops.sum(ops.square(ops.cast(g, f32)))
                continue
            # JAX: four rows per variable, summed together below: the squares of the weights, of the update
            # and of the gradient, and the plain sum of the variable's optimizer slots (finite iff they are)
            flat = ops.reshape(bf, (-1,))
            slots = [state_after[j] for j in self.slots[k]] if len(state_after) == len(self.state_vars) else []
            checked.update(self.slots[k] if slots else ())
            zeros = ops.zeros_like(flat)
            jax_rows.append(
                (
                    k,
                    ops.stack(
                        [
                            ops.square(flat),
                            ops.square(ops.reshape(ops.cast(a, f32), (-1,)) - flat),
                            ops.square(ops.reshape(ops.cast(g, f32), (-1,))) if g is not None else zeros,
                            sum(ops.reshape(ops.cast(t, f32), (-1,)) for t in slots) if slots else zeros,
                        ]
                    ),
                )
            )
        if jax_rows:
            sums = _jax_row_sums([m for _, m in jax_rows])  # (4, variables)
            for j, (k, _) in enumerate(jax_rows):
                w_sq[k], d_sq[k], g_sq[k] = sums[0, j], sums[1, j], sums[2, j]
            state_sums.append(ops.sum(sums[3]))
        g_sq_t = ops.stack(g_sq)
        if inv_scale is not None:
            g_sq_t = g_sq_t * ops.square(inv_scale)
        var_gnorm = ops.sqrt(g_sq_t)
        gnorm = ops.sqrt(ops.sum(g_sq_t))
        w_sq_t, d_sq_t = ops.stack(w_sq), ops.stack(d_sq)
        tiny = 1e-30
        var_upd = ops.sqrt(d_sq_t) / ops.sqrt(w_sq_t + tiny)
        upd = ops.sqrt(ops.sum(d_sq_t)) / ops.sqrt(ops.sum(w_sq_t) + tiny)
        grads_bad = ops.logical_not(ops.isfinite(gnorm))
        # after = before + delta: finite iff both sums of squares are (no second pass over the weights)
        weights_bad = ops.logical_not(ops.isfinite(ops.sum(w_sq_t) + ops.sum(d_sq_t)))
        rest = [t for j, t in enumerate(state_after) if j not in checked]
        state_bad = ops.logical_not(ops.isfinite(_sum_all(ops, rest) + sum(state_sums, zero)))
        flags = (
            ops.cast(grads_bad, "int32") * GRADS
            + ops.cast(weights_bad, "int32") * WEIGHTS
            + ops.cast(state_bad, "int32") * OPTIMIZER
        )
        if input_bad is not None:
            flags = flags + ops.cast(input_bad, "int32") * INPUT
        # Under loss scaling a non-finite *scaled* gradient is an overflow the
        # optimizer skips: not a reason to stop (the host tells the two apart
        # with the loss, which it reads from the tracker).
        stop_mask = (WEIGHTS | OPTIMIZER | INPUT) if self.is_loss_scaled else STOP_BITS
        stop = ops.not_equal(ops.bitwise_and(flags, stop_mask), 0)
        parts = [
            ops.reshape(gnorm, (1,)),
            ops.reshape(ops.cast(lr, f32), (1,)),
            ops.reshape(ops.cast(flags, f32), (1,)),
            ops.reshape(upd, (1,)),
            var_gnorm,
            var_upd,
        ]
        if velocities is not None:
            eps = float(getattr(self.inner, "epsilon", 1e-7) or 1e-7)
            ratios = []
            for g, k in zip(grads, index, strict=True):
                if g is None:
                    continue
                gf = ops.cast(g, f32) if inv_scale is None else ops.cast(g, f32) * inv_scale
                ratios.append(ops.max(ops.square(gf) / (ops.cast(velocities[k], f32) + eps * eps)))
            assert velocities_after is not None  # given with velocities
            v_sum = ops.sum(ops.stack([ops.sum(ops.cast(v, f32)) for v in velocities_after]))
            parts += [ops.reshape(ops.max(ops.stack(ratios)), (1,)), ops.reshape(ops.sqrt(v_sum / self.v_size), (1,))]
        if scale is not None:
            parts.append(ops.reshape(ops.cast(scale, f32), (1,)))
        return ops.concatenate(parts, axis=0), stop

    # -- TensorFlow: apply, the statistics in the step's graph --------------------

    def _stateful_apply(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        opt = self.opt

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            grads = list(grads)
            tvars = list(trainable_variables) if trainable_variables is not None else list(opt._trainable_variables)
            index = [opt._get_variable_index(v) for v in tvars]
            go = ops.logical_and(ops.equal(self.halt.value, 0), ops.less(self.count.value, self.limit_var.value))
            loss_bad = self.loss_bad
            if loss_bad is not None and not self.is_loss_scaled:
                # the tracker saw this step's loss first (Keras' trainers) or the previous one's (a custom
                # train_step that updates metrics after applying): either way no update after a bad loss
                bad_at = loss_bad.value
                go = ops.logical_and(go, ops.logical_or(ops.equal(bad_at, 0), ops.greater(bad_at, self.count.value)))

            use_rate = self.rate is not None and not self.distributed
            masked = use_rate or self.distributed

            def run() -> Any:
                lr = ops.copy(ops.convert_to_tensor(opt.learning_rate)) if masked else opt.learning_rate
                # the scale this step's gradients carry, read before the update may change it
                scale = ops.copy(opt.dynamic_scale.value) if self.is_loss_scaled else None
                before = [ops.copy(v.value) for v in tvars]
                vel = [ops.copy(v.value) for v in self.velocities] if self.velocities is not None else None
                if use_rate:  # a step that must not count is applied with a zero rate
                    rate = ops.copy(self.rate.value)
                    self.rate.assign(ops.where(go, rate, ops.zeros_like(rate)))
                    original(grads, trainable_variables)
                    self.rate.assign(rate)
                else:
                    original(grads, trainable_variables)
                after = [v.value for v in tvars]
                state = [v.value for v in self.state_vars]
                vel_after = [v.value for v in self.velocities] if self.velocities is not None else None
                in_bad = None if self.input_bad is None else ops.not_equal(self.input_bad.value, 0)
                row, stop = self._row(grads, index, before, after, state, lr, scale, vel, vel_after, in_bad)
                if self.replica_norm is not None:  # this replica's gradients, before the all-reduce
                    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads if g is not None]
                    norm = ops.sqrt(ops.sum(ops.stack(squares))) if squares else ops.convert_to_tensor(0.0)
                    self.replica_norm.assign(
                        ops.slice_update(
                            self.replica_norm.value,
                            ops.reshape(ops.mod(self.count.value, self.chunk), (1,)),
                            ops.reshape(norm, (1,)),
                        )
                    )
                slot = ops.mod(self.count.value, self.chunk)
                written = ops.slice_update(
                    self.buf.value,
                    ops.stack([slot, ops.convert_to_tensor(0, "int32")]),
                    ops.reshape(row, (1, self.width)),
                )
                if loss_bad is not None and not self.is_loss_scaled:  # this step's own loss was non-finite
                    stop = ops.logical_or(stop, ops.equal(loss_bad.value, self.count.value + 1))
                if masked:  # the row, the count and the halt flag of a step that counts, only
                    self.buf.assign(ops.where(go, written, self.buf.value))
                    self.halt.assign(ops.where(go, ops.cast(stop, "int32"), self.halt.value))
                    self.count.assign(self.count.value + ops.cast(go, "int32"))
                else:
                    self.buf.assign(written)
                    self.halt.assign(ops.cast(stop, "int32"))
                    self.count.assign(self.count.value + 1)
                return ops.convert_to_tensor(0, "int32")

            def skip() -> Any:
                return ops.convert_to_tensor(0, "int32")

            if masked:
                # under MirroredStrategy no cond may wrap the apply (it synchronises replicas); the host
                # stops after every step there, so only the rate keeps a halted step out
                run()
            else:
                ops.cond(go, run, skip)

        return apply

    # -- PyTorch: raw per-step values, derived on the host at read-back ---------------
    #
    # PyTorch runs every step eagerly: each tensor op costs its Python dispatch (several microseconds on a
    # CPU, a kernel launch on a GPU) on every step.  So a step records only what must be taken from that
    # step, in a handful of ops (one multi-tensor norm call for the weights, the update and the gradients),
    # into one vector kept on the device in a Python list; ratios, square roots, flags and the step count are
    # derived on the host once per chunk (:meth:`_torch_read`).  The device keeps one value, the halt
    # (0, or NaN once a step went non-finite), which zeroes the learning rate of the steps after it.  The host
    # knows how many steps ran, so the planned number of steps needs no device counter.

    def _torch_layout(self) -> None:
        """Offsets in the raw vector: ``[w_n | d_n | state sum | g_n | lr, loss, (scale) | (diag)]``.  No input
        flag: a NaN/Inf pipeline batch's step is not run (torch_train_step)."""
        n = self.n_vars
        self.t_w, self.t_d, self.t_s, self.t_g = 0, n, 2 * n, 2 * n + 1
        self.t_lr = 3 * n + 1
        self.t_loss = self.t_lr + 1  # the loss the tracker saw before this step's update (else 0)
        self.t_scale = self.t_lr + 2  # under loss scaling
        # the values whose non-finiteness stops the run: weights, update, state (and gradients, unless an
        # overflow of the scaled gradient under loss scaling, which the optimizer skips)
        self.t_stop = self.t_g if self.is_loss_scaled else self.t_lr

    def _torch_init(self) -> None:
        self.t_raw: list[Any] = []  # one vector per step that ran, not yet read back
        self.t_calls = 0  # steps that ran, since install
        self.t_losses: list[Any] = []
        self.t_raw_checked = 0  # t_raw[:this] have been checked by torch_halted
        self.t_loss_used = 0  # t_losses[:this] are in a raw vector or have been checked

    def _torch_apply(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        opt = self.opt
        f32 = torch.float32
        self.t_host: dict[str, Any] = {
            "count": 0,
            "halt": False,
            "lcount": 0,
            "buf": np.zeros((self.chunk, self.width), np.float32),
            "lbuf": np.zeros((self.chunk,), np.float32),
            "losses": [],
        }
        state_floats = [v for v in self.state_vars if v.value.is_floating_point()]
        self._torch_layout()
        first = list(opt._trainable_variables)[:1]
        device = first[0].value.device if first else torch.device("cpu")
        self.t_zero = zero = torch.zeros((), dtype=f32, device=device)
        n = self.n_vars

        # the stored tensors, which Keras updates in place: ``Variable.value`` asks for the device on every
        # read (microseconds each, dozens of variables per step)
        stored = all(
            isinstance(getattr(v, "_value", None), torch.Tensor)
            for v in [*opt._trainable_variables, *self.state_vars, *(self.velocities or [])]
        )

        def tensors(variables: list[Any]) -> list[Any]:
            return [v._value for v in variables] if stored else [v.value for v in variables]

        def copies(ts: list[Any]) -> list[Any]:
            # a multi-tensor op on an accelerator (one launch); on the CPU, where foreach ops loop over the
            # tensors anyway, plain clones cost half as much
            return list(torch._foreach_mul(ts, 1.0)) if device.type != "cpu" else [t.clone() for t in ts]

        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            if self.t_calls >= self.limit:  # the planned steps ran (the host counts them: no device read)
                return
            grads = list(grads)
            tvars = list(trainable_variables) if trainable_variables is not None else list(opt._trainable_variables)
            # no step runs after a non-finite one: the host checks each step's raw vector (torch_halted)
            with torch.no_grad():
                self.t_calls += 1
                # the rate this step is applied with (the update may change it)
                lr = opt.learning_rate  # a Variable, or a schedule's tensor
                lr = (lr.value if hasattr(lr, "value") else torch.as_tensor(lr)).detach().to(f32).clone()
                before = copies(tensors(tvars))  # (x * 1.0 is x, NaN and -0.0 included)
                vel = None
                if self.velocities is not None:
                    vel = copies(tensors(self.velocities))
                # the loss scale this step's gradients carry (the update may change it)
                scale = self.opt.dynamic_scale.value.detach().to(f32).clone() if self.is_loss_scaled else None
            original(grads, trainable_variables)
            with torch.no_grad():
                delta = list(torch._foreach_sub(tensors(tvars), before))
                index = [opt._get_variable_index(v) for v in tvars]
                have = [(g, k) for g, k in zip(grads, index, strict=True) if g is not None]
                norms = torch._foreach_norm(before + delta + [g for g, _ in have], 2, dtype=f32)
                m = len(tvars)
                w_n, d_n, g_have = list(norms[:m]), list(norms[m : 2 * m]), list(norms[2 * m :])
                if len(have) == n and index == list(range(n)):
                    g_n = g_have
                else:  # variables without a gradient, or given in another order: by the optimizer's index
                    g_n, w_k, d_k = [zero] * n, [zero] * n, [zero] * n
                    for (_, k), t in zip(have, g_have, strict=True):
                        g_n[k] = t
                    for k, a, b in zip(index, w_n, d_n, strict=True):
                        w_k[k], d_k[k] = a, b
                    w_n, d_n = w_k, d_k
                # the optimizer state: one sum, finite iff every entry is (or it overflows float32: divergence)
                s_sum = (
                    torch.cat([t.reshape(-1) for t in tensors(state_floats)]).sum(dtype=f32) if state_floats else zero
                )
                tail = [lr, self._torch_pending_loss(zero)]
                if scale is not None:
                    tail.append(scale)
                if vel is not None:
                    tail += self._torch_diag(have, vel, scale)
                self.t_raw.append(torch.stack(w_n + d_n + [s_sum] + g_n + tail))

        return apply

    def _torch_diag(self, have: list[tuple[Any, int]], vel: list[Any], scale: Any) -> list[Any]:
        """Adam's max ``g^2/v`` (with the second moments before the step) and the sum of ``v`` after it."""
        import torch

        f32 = torch.float32
        eps = float(getattr(self.inner, "epsilon", 1e-7) or 1e-7)
        gs = [g if g.dtype == f32 else g.to(f32) for g, _ in have]
        if scale is not None:
            gs = torch._foreach_div(gs, scale)
        vs = [vel[k] if vel[k].dtype == f32 else vel[k].to(f32) for _, k in have]
        ratios = torch._foreach_div(torch._foreach_mul(gs, gs), torch._foreach_add(vs, eps * eps))
        assert self.velocities is not None  # vel is read from them
        v_sum = torch.sum(torch.stack(torch._foreach_norm([v.value for v in self.velocities], 1, dtype=f32)))
        return [torch.max(torch.stack(torch._foreach_max(ratios))), v_sum]

    def _torch_update_state(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        def update_state(values: Any, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            if self.recording_loss:
                with torch.no_grad():
                    value = torch.as_tensor(values).detach()
                    value = (value if value.dtype == torch.float32 else value.to(torch.float32)).mean()
                    self.t_losses.append(value)
            return out

        return update_state

    def ran_planned_steps(self) -> bool:
        """PyTorch: whether the planned steps have run (the host counts them), so that the run can stop
        right there instead of at the chunk's end: the steps after it would still run the forward pass
        (BatchNorm statistics, metrics) with no update."""
        return self.backend == "torch" and self.built and self.t_calls >= self.limit

    def _torch_pending_loss(self, zero: Any) -> Any:
        """The loss the tracker saw since the last step (Keras' trainers update it before the optimizer's
        apply), for the step's raw vector, so that torch_halted reads it in the same copy; 0 if none."""
        import torch

        pending = self.t_losses[self.t_loss_used :]
        self.t_loss_used = len(self.t_losses)
        if not pending:
            return zero
        return pending[0] if len(pending) == 1 else torch.stack(pending).sum()

    def torch_halted(self) -> bool:
        """PyTorch, after each step: whether this step was non-finite (its statistics or its loss).  One
        small device-to-host copy, which waits for the step to finish.  It is read so that no step runs
        after a non-finite one: on a GPU the next step's forward pass would feed the NaN weights to kernels
        that assert on them (the binary cross-entropy of probabilities does), and a device-side assert
        leaves the process's CUDA context unusable, for every later test too.  Keras' own copy of each
        host batch to the GPU waits for the step before it in the same way."""
        if self.backend != "torch" or not self.built:
            return False
        raws, self.t_raw_checked = self.t_raw[self.t_raw_checked :], len(self.t_raw)
        # losses the tracker saw after the step's update (a train_step that updates its metrics last)
        late, self.t_loss_used = self.t_losses[self.t_loss_used :], len(self.t_losses)
        scaled = self.is_loss_scaled  # under loss scaling a non-finite loss is an overflow, skipped
        for r in raws:
            r = r.tolist()  # plain floats: numpy's ufuncs cost more than the copy here, tens of microseconds
            if not (math.isfinite(sum(r[: self.t_stop])) and (scaled or math.isfinite(r[self.t_loss]))):
                return True
        if scaled or not late:
            return False
        import torch

        return not bool(torch.isfinite(torch.stack(late)).all())

    def _torch_read(self) -> dict[str, Any]:
        """The steps recorded since the last read: one device-to-host copy, the rows derived here, in the
        buffer layout the other backends write on the device (the same quantities and flags)."""
        import torch

        host = self.t_host
        if self.t_losses:  # first: a step's own loss may stop it
            losses = torch.stack(self.t_losses).cpu().numpy()
            self.t_losses = []
            self.t_loss_used = 0
            for v in losses:
                host["lbuf"][host["lcount"] % self.chunk] = v
                host["lcount"] += 1
            host["losses"].extend(float(v) for v in losses)
        if self.t_raw:
            raw = torch.stack(self.t_raw).cpu().numpy().astype(np.float64)
            self.t_raw = []
            self.t_raw_checked = 0
            rows, stops = self._torch_derive(raw)
            for row, stop in zip(rows, stops, strict=True):
                if host["halt"]:  # past a stop (the host runs no step after one: a guard)
                    break
                i = host["count"]
                if not self.is_loss_scaled and i < len(host["losses"]) and not np.isfinite(host["losses"][i]):
                    stop = True
                host["buf"][i % self.chunk] = row
                host["count"] = i + 1
                host["halt"] = bool(stop)
        return {
            "buf": host["buf"],
            "count": host["count"],
            "halt": int(host["halt"]),
            **({"lbuf": host["lbuf"], "lcount": host["lcount"]} if self.tracker is not None else {}),
        }

    def _torch_derive(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The steps' buffer rows from their raw vectors (rows of ``r``, float64), and which stop the run:
        all rows at once (numpy per row would cost tens of microseconds a step)."""
        n = self.n_vars
        w_n, d_n = r[:, self.t_w : self.t_w + n], r[:, self.t_d : self.t_d + n]
        g_n = r[:, self.t_g : self.t_g + n]
        lr = r[:, self.t_lr]
        with np.errstate(all="ignore"):
            if self.is_loss_scaled:
                g_n = g_n / r[:, self.t_scale : self.t_scale + 1]
            gnorm = np.sqrt(np.sum(g_n * g_n, axis=1))
            w_sq, d_sq = np.sum(w_n * w_n, axis=1), np.sum(d_n * d_n, axis=1)
            tiny = 1e-30
            upd = np.sqrt(d_sq) / np.sqrt(w_sq + tiny)
            var_upd = d_n / np.sqrt(w_n * w_n + tiny)
        finite = np.isfinite(r)
        grads_bad = ~finite[:, self.t_g : self.t_g + n].all(axis=1)
        weights_bad = ~(finite[:, self.t_w : self.t_w + n].all(axis=1) & finite[:, self.t_d : self.t_d + n].all(axis=1))
        state_bad = ~finite[:, self.t_s : self.t_g].all(axis=1)
        flags = GRADS * grads_bad + WEIGHTS * weights_bad + OPTIMIZER * state_bad
        stop = ~finite[:, : self.t_stop].all(axis=1)
        cols = [gnorm[:, None], lr[:, None], flags[:, None].astype(np.float64), upd[:, None], g_n, var_upd]
        if self.n_diag:
            cols += [r[:, -2:-1], np.sqrt(r[:, -1:] / self.v_size)]
        if self.n_scale:
            cols.append(r[:, self.t_scale : self.t_scale + 1])
        return np.concatenate(cols, axis=1).astype(np.float32), stop

    # -- JAX: stateless_apply, the recorder's variables threaded as state -------

    def _stateless_apply(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        opt = self.opt
        from .keras_internals import load

        StatelessScope = load("StatelessScope")

        def stateless_apply(optimizer_variables: Any, grads: Any, trainable_variables: Any) -> Any:
            ov = list(optimizer_variables)
            tv = list(trainable_variables)
            grads = list(grads)
            pos = {id(v): i for i, v in enumerate(opt.variables)}
            p_buf = pos[id(self.buf)]
            buf = ov[p_buf]
            header = buf[self.chunk]
            count, halted = header[H_COUNT], header[H_HALT]
            go = ops.logical_and(ops.equal(halted, 0), ops.less(count, header[H_LIMIT]))
            with StatelessScope(state_mapping=list(zip(opt.variables, ov, strict=True))):
                lr = ops.convert_to_tensor(opt.learning_rate)
                scale = ops.convert_to_tensor(opt.dynamic_scale) if self.is_loss_scaled else None
            vel_pos = [pos[id(v)] for v in self.velocities] if self.velocities is not None else None

            p_rate = pos.get(id(self.rate)) if self.rate is not None else None
            if p_rate is not None:  # the update is applied with a zero rate when it must not count
                fed = list(ov)
                fed[p_rate] = ops.where(go, ov[p_rate], ops.zeros_like(ov[p_rate]))
                new_t, new_o = (list(t) for t in original(fed, grads, tv))
                new_o[p_rate] = ov[p_rate]
            else:
                # a select of every variable (measured on the CPU: a `cond` around the update costs about
                # the same): for optimizers whose update does not scale with the rate
                new_t, new_o = original(ov, grads, tv)
                new_t = [ops.where(go, n, o) for n, o in zip(new_t, tv, strict=True)]
                new_o = [ops.where(go, n, o) for n, o in zip(new_o, ov, strict=True)]
            state_after = [new_o[pos[id(v)]] for v in self.state_vars]
            vel = [ov[p] for p in vel_pos] if vel_pos is not None else None
            vel_after = [new_o[p] for p in vel_pos] if vel_pos is not None else None
            in_bad = ops.not_equal(header[H_INPUT], 0) if self.check_inputs else None
            row, stop = self._row(
                grads, list(range(len(tv))), tv, new_t, state_after, lr, scale, vel, vel_after, in_bad
            )
            # the step's row in its slot, written in place whether the step counts or not: the slot of a step
            # that does not count is the next one's, which the host does not read until a step fills it
            f32 = "float32"
            slot = ops.cast(ops.mod(count, self.chunk), "int32")
            halt = ops.where(go, ops.cast(stop, f32), halted)  # once halted, it stays so
            buf = ops.slice_update(buf, (slot, 0), ops.expand_dims(row, 0))
            new_o[p_buf] = ops.slice_update(
                buf, (self.chunk, H_COUNT), ops.reshape(ops.stack([count + ops.cast(go, f32), halt]), (1, 2))
            )
            self._jax_step = (go, slot, halt)  # for the train_step wrapper, in the same trace
            return new_t, new_o

        return stateless_apply

    # -- read back ---------------------------------------------------------------

    def read(self) -> dict[str, np.ndarray | int]:
        """Current buffer contents and counters, as numpy (the one host sync per chunk)."""
        if self.backend == "torch":
            return self._torch_read() if self.built else {"buf": np.zeros((0, 0), np.float32), "count": 0, "halt": 0}
        if self.stateless:
            return self._jax_read()
        out: dict[str, np.ndarray | int] = {
            "buf": host_numpy(self.buf.value),
            "count": int(host_numpy(self.count.value)),
            "halt": int(host_numpy(self.halt.value)),
        }
        if self.lbuf is not None:
            out["lbuf"] = host_numpy(self.lbuf.value)
            out["lcount"] = int(host_numpy(self.lcount.value))
        if self.replica_norm is not None:
            from .keras_internals import tf_variable

            local = self.model.distribute_strategy.experimental_local_results(tf_variable(self.replica_norm))
            out["replicas"] = np.stack([np.asarray(host_numpy(v), np.float64) for v in local], axis=1)  # (chunk, R)
        return out

    def _jax_read(self) -> dict[str, np.ndarray | int]:
        """The header row holds the counters, the two columns after each row its loss (see _build_buffers)."""
        jax_state = getattr(self.model, "_jax_state", None)
        if jax_state and self.standard_state:  # fit holds the state (the variables are emptied while it runs)
            buf = np.asarray(jax_state["optimizer_variables"][_index_of(self.opt.variables, self.buf)])
        else:
            # another optimizer's variables ride in the state where the model's own trainer puts them: its
            # jax_state_sync puts them back in the variables (Keras' way for callbacks that read variables)
            sync = getattr(self.model, "jax_state_sync", None) if not self.standard_state else None
            if sync is not None:
                sync()
            buf = host_numpy(self.buf.value)
        # a model whose metrics leave out the loss tracker records no loss (the wrapper writes none)
        tracked = self.lbuf is not None and _index_of(self.model.metrics_variables, self.lbuf) is not None
        w = self.width
        out: dict[str, np.ndarray | int] = {
            "buf": buf[: self.chunk, :w],
            "count": int(buf[self.chunk, H_COUNT]),
            "halt": int(buf[self.chunk, H_HALT]),
        }
        if tracked:  # per row: its step's loss, and how many losses the tracker took in that step
            out["lrow"], out["ltaken"] = buf[: self.chunk, w], buf[: self.chunk, w + 1]
        return out

    def device_of_buffer(self) -> str:
        """Where the recorded buffer lives (read from the tensor, not from what was asked)."""
        jax_state = getattr(self.model, "_jax_state", None) if self.stateless else None
        try:
            if jax_state and self.standard_state:
                arr = jax_state["optimizer_variables"][_index_of(self.opt.variables, self.buf)]
                dev = str(next(iter(arr.devices())))
            else:
                value = self.t_zero if self.backend == "torch" else self.buf.value
                dev = str(getattr(value, "device", "") or "")
        except Exception:  # pragma: no cover - informational only
            return "unknown"
        return _device_label(dev)


_ABSENT = object()


def _keras_threads_model_optimizer(model: Any) -> bool:
    """JAX: whether ``fit`` threads ``model.optimizer.variables`` as its state's optimizer variables (Keras' own
    ``_get_jax_state``; a model trained by several optimizers overrides it to thread all of theirs)."""
    from .keras_internals import load

    JAXTrainer = load("JAXTrainer")

    return getattr(type(model), "_get_jax_state", None) is JAXTrainer._get_jax_state


def find_optimizers(model: Any) -> list[tuple[str, Any]]:
    """Every Keras optimizer the model holds, named: ``model.optimizer`` first (as ``optimizer``), then each one
    kept as an attribute of the model (a GAN's ``d_optimizer`` and ``g_optimizer``), in attribute order, or in
    a list or dict attribute (``name[0]``, ``name['key']``).  Those are the optimizers a ``train_step`` can
    apply; which of them it does apply shows in the recording."""
    import keras

    base = keras.optimizers.Optimizer
    found: list[tuple[str, Any]] = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, base) and all(value is not other for _, other in found):
            found.append((name, value))

    add("optimizer", getattr(model, "optimizer", None))
    for name, value in vars(model).items():
        add(name, value)
        if name.startswith("_"):  # private containers: the frameworks' own bookkeeping
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}[{key!r}]", item)
    return found


def host_numpy(x: Any) -> np.ndarray:
    """``keras.ops.convert_to_numpy`` without a DeprecationWarning per call: numpy 2 passes ``copy`` to
    ``__array__``, which TensorFlow's variables, this PyTorch's tensors and Keras' variables do not take, so
    Keras' ``np.array(x)`` warns (the example project's run printed ~670 of them on TensorFlow, from the
    plugin's read-backs).  The tensor's own conversion makes the same copy without it."""
    import keras

    backend = keras.backend.backend()
    if isinstance(x, keras.Variable):  # its __array__ takes no `copy` either
        x = x.value
    if backend == "tensorflow":
        own = getattr(x, "numpy", None)
        if callable(own):
            try:
                return np.asarray(own())
            except Exception:  # pragma: no cover - not an eager tensor: Keras' own conversion below
                pass
    elif backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            t = x.detach().cpu()
            return np.asarray((t.float() if t.dtype == torch.bfloat16 else t).numpy())
    return np.asarray(keras.ops.convert_to_numpy(x))


def _index_of(variables: Any, var: Any) -> int | None:
    for i, v in enumerate(variables):
        if v is var:
            return i
    return None


def var_name(v: Any) -> str:
    """A variable's name as findings show it (``sequential/dense/kernel``)."""
    return str(getattr(v, "path", None) or getattr(v, "name", "variable"))


#: JAX: the per-variable sums of a step are taken in one reduction over fixed-size blocks while the model
#: is at most this many weights and variables (see _jax_row_sums)
BLOCK_MAX_WEIGHTS, BLOCK_MAX_VARIABLES = 1 << 20, 128


def _jax_row_sums(mats: list[Any]) -> Any:
    """The row sums of each ``(rows, n_k)`` matrix (one per variable), as one ``(rows, len(mats))`` array.

    XLA compiles a reduction per variable into a kernel of its own, and on a CPU each has a fixed cost per
    step however small the variable (``benchmarks/recording_floor.py --form var`` and ``--form blocks``
    measure both forms).  So on a small model every variable's rows are padded to whole
    blocks and laid side by side, one reduction sums each block, and a product with a constant 0/1 matrix
    adds up each variable's blocks (at full float32 precision: a GPU's default for float32 products may
    round to TF32).  On a large model the reductions are the work itself, and the laid-out copy could cost
    memory: one reduction per variable there.
    """
    import jax
    import jax.numpy as jnp

    total = sum(int(m.shape[1]) for m in mats)
    if total > BLOCK_MAX_WEIGHTS or len(mats) > BLOCK_MAX_VARIABLES:
        return jnp.stack([jnp.sum(m, axis=1) for m in mats], axis=1)
    size = 64
    while (total // size) > 1024:  # at most ~1024 blocks (plus one per variable): a small constant matrix
        size *= 2
    ids: list[int] = []
    parts = []
    for k, m in enumerate(mats):
        pad = (-int(m.shape[1])) % size
        parts.append(jnp.pad(m, ((0, 0), (0, pad))) if pad else m)
        ids += [k] * ((int(m.shape[1]) + pad) // size)
    blocks = jnp.concatenate(parts, axis=1)
    block_sums = jnp.sum(jnp.reshape(blocks, (blocks.shape[0], len(ids), size)), axis=2)
    owner = np.zeros((len(ids), len(mats)), np.float32)
    owner[np.arange(len(ids)), ids] = 1.0
    return jnp.dot(block_sums, jnp.asarray(owner), precision=jax.lax.Precision.HIGHEST)


def _sum_all(ops: Any, tensors: list[Any]) -> Any:
    """One sum over every float tensor: non-finite iff an element is (or the sum overflows float32,
    itself a sign of divergence); far cheaper than an elementwise isfinite per tensor."""
    sums = [ops.sum(ops.cast(t, "float32")) for t in tensors if t is not None and _float_name(t)]
    if not sums:
        return ops.convert_to_tensor(0.0, "float32")
    return ops.sum(ops.stack(sums))


def _device_label(dev: str) -> str:
    up = dev.upper()
    if "GPU" in up or "CUDA" in up:
        digits = "".join(ch for ch in dev.rsplit(":", 1)[-1] if ch.isdigit())
        return "GPU:" + (digits or "0")
    if "TPU" in up:
        return "TPU"
    return "CPU"


class ChunkRows:
    """Host-side accumulation of the rows read back, chunk by chunk, in step order."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        #: under a distribution strategy: each step's per-replica gradient norms
        self.replicas: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []
        self.done = 0
        self.loss_done = 0
        self.loss_mismatch = False
        #: more rows between two read-backs than the buffer holds: the rows were overwritten
        self.overflow = False

    def take(self, snap: dict[str, Any], chunk: int, *, strict: bool = True) -> np.ndarray:
        """Append the steps recorded since the last read; returns their rows.  More than ``chunk`` new rows
        means the buffer wrapped: a bug in the read-back schedule (``strict``), or (another optimizer than
        model.optimizer) one applied more often a step than its buffer holds (see engine.MAX_APPLIES)."""
        count = int(snap["count"])
        new = count - self.done
        if new > chunk:
            if strict:
                raise RuntimeError(f"{new} steps between two read-backs, more than the buffer's {chunk}")
            self.overflow = True
            self.done = count
            return np.asarray(snap["buf"][:0])
        slots = [(self.done + k) % chunk for k in range(new)]
        rows = np.asarray(snap["buf"][slots] if new else snap["buf"][:0])
        self.rows.append(np.array(rows))
        if "replicas" in snap and new:  # each step's slot, as the rows
            self.replicas.append(np.array(np.asarray(snap["replicas"])[slots]))
        if "lrow" in snap:  # JAX: each row's own loss; recorded only if the tracker took one loss in its step
            self.losses.append(np.array(snap["lrow"][slots]))
            self.loss_done += new
            if new and np.any(snap["ltaken"][slots] != 1):
                self.loss_mismatch = True
        elif "lbuf" in snap:
            lcount = int(snap["lcount"])
            # the tracker may run a few steps past the optimizer after it halted
            take = max(0, min(count, lcount) - self.loss_done)
            if lcount - self.loss_done > chunk:
                self.loss_mismatch = True
            lslots = [(self.loss_done + k) % chunk for k in range(take)]
            self.losses.append(np.array(snap["lbuf"][lslots]))
            self.loss_done += take
            if lcount < count:
                self.loss_mismatch = True
        self.done = count
        return rows

    def add_step(self, row: np.ndarray, loss: float) -> None:
        """One more step, recorded on the host (a step that raised before its update)."""
        self.rows.append(np.asarray(row, np.float32)[None, :])
        self.done += 1
        if self.losses or self.loss_done:
            self.losses.append(np.asarray([loss], np.float32))
            self.loss_done += 1

    def arrays(self, width: int) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, width), np.float32)
        loss = np.concatenate(self.losses) if self.losses else None
        return rows.astype(np.float64), None if loss is None else loss.astype(np.float64)


def host_flags(rows: np.ndarray, loss: np.ndarray | None, loss_scaled: bool) -> np.ndarray:
    """Per-step non-finite bitmask from the device flags and the recorded loss."""
    flags = rows[:, COL_FLAGS].astype(np.int64) if rows.size else np.zeros(0, np.int64)
    if loss is None or loss.shape[0] != flags.shape[0]:
        return flags.astype(np.int32)
    loss_bad = ~np.isfinite(loss)
    flags = flags | np.where(loss_bad, LOSS, 0)
    if loss_scaled:
        overflow = ((flags & GRADS) != 0) & ~loss_bad
        flags = np.where(overflow, (flags & ~GRADS) | OVERFLOW, flags)
    return flags.astype(np.int32)


__all__ = [
    "ChunkRows",
    "Recorder",
    "find_optimizers",
    "host_flags",
    "host_numpy",
    "N_FIXED",
    "COL_GNORM",
    "COL_LR",
    "COL_FLAGS",
    "COL_UPDATE",
]
