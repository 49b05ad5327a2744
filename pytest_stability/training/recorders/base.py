"""What every backend's recorder shares: installing on the optimizer and the loss tracker and putting them
back, the buffers' row layout, the recorder's own variables.

A backend's recorder (:mod:`.tensorflow`, :mod:`.jax`, :mod:`.torch`, as Keras keeps a trainer per backend in
``keras/src/backend/<name>/trainer.py``) fills in the hooks below: which optimizer method it wraps
(:attr:`Recorder.APPLY`), the buffers it keeps (:meth:`Recorder._build_device_buffers`), the instrumented
update (:meth:`Recorder._instrumented`), the loss tracker's (:meth:`Recorder._instrument_tracker`), the
``train_step`` wrapper (:meth:`Recorder._train_step_wrapper`) and the read-back (:meth:`Recorder.read`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ...framework_types import Metric, Model, Optimizer, Tensor, Variable
from ..keras_internals import build_optimizer
from .common import ABSENT, device_label, float_name, host_numpy, var_name
from .layout import RowLayout


class BatchNotRun(Exception):
    """PyTorch: a step was not run because its input batch holds NaN/Inf (see ``torch_train_step``)."""


class Recorder:
    """Instruments one optimizer of the model (and, for ``model.optimizer``, the loss tracker and the
    ``train_step``) for one ``fit`` call.  Made by :func:`~pytest_stability.training.recorders.make_recorder`
    for the backend Keras runs on.

    Args:
        model: the compiled model (its optimizer may be built or not yet).
        optimizer: the optimizer to instrument: ``model.optimizer`` (the default), or another one the model's
            ``train_step`` applies (a GAN's ``d_optimizer``).
        name: how findings and reports name the optimizer (its attribute on the model).
        chunk: rows in the device buffers; ``fit`` must read back at least every
            ``chunk`` applies of the optimizer (``steps_per_execution <= chunk``).
        limit: optimizer steps after which no further update is applied.
        diagnostics: also record Adam's max ``g^2/v`` and ``sqrt(mean v)``.
        loss_from_logs: a ``train_step`` of the user's own: when a step leaves the loss tracker alone, its
            raw loss is the ``"loss"`` that step returns (see :meth:`_patch_train_step`).
    """

    #: the optimizer method the recorder wraps: ``apply``, or ``stateless_apply`` (JAX)
    APPLY: ClassVar[str] = "apply"
    #: whether an optimizer not built yet is recorded from its first ``apply`` on (see :meth:`_lazy_apply`)
    LAZY_APPLY: ClassVar[bool] = True
    #: whether the ``train_step`` is wrapped even when no input batch is checked (JAX files the loss there)
    WRAPS_TRAIN_STEP: ClassVar[bool] = False

    # Keras variables, or None where the recorder keeps none (the type checker sees Keras as Any)
    buf: Variable
    lbuf: Variable
    lcount: Variable
    loss_bad: Variable
    input_bad: Variable
    rate: Variable

    def __init__(
        self,
        model: Model,
        *,
        chunk: int,
        limit: int,
        diagnostics: bool,
        distributed: bool = False,
        check_inputs: bool = False,
        optimizer: Optimizer | None = None,
        name: str = "optimizer",
        loss_from_logs: bool = False,
    ) -> None:
        import keras

        self.keras = keras
        self.ops = keras.ops
        self.model = model
        self.opt = model.optimizer if optimizer is None else optimizer
        self.name = name
        #: the recorder of model.optimizer: it also records the loss and wraps the train_step
        self.primary = self.opt is model.optimizer
        #: suffix of the recorder's variable names (unique per optimizer)
        self._suffix = "" if self.primary else f"_{name}"
        self.is_loss_scaled = isinstance(self.opt, keras.optimizers.LossScaleOptimizer)
        self.inner = self.opt.inner_optimizer if self.is_loss_scaled else self.opt
        #: 1 / the optimizer's static ``loss_scale_factor``, or None: Keras multiplies the loss by that factor
        #: before taking the gradients and the optimizer divides the gradients it is given by it before the
        #: update, so the norms (and Adam's g^2/v) are recorded of the gradients the update uses, not 1024x them
        factor = getattr(self.opt, "loss_scale_factor", None)
        self.grad_unscale: float | None = None
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0 and factor != 1:
            self.grad_unscale = 1.0 / float(factor)
        self.chunk = int(chunk)
        self.limit = int(limit)
        self.diagnostics = diagnostics
        #: under tf.distribute.MirroredStrategy: the optimizer's apply synchronises replicas (merge_call), which
        #: no cond may wrap; fit runs one step per call there, so the host stops training after each step instead
        self.distributed = distributed
        self.tracker = getattr(model, "_loss_tracker", None) if self.primary else None
        #: Python-side switch: the tracker records only while ``fit`` trains (not in ``evaluate``)
        self.recording_loss = True
        self._patched: list[tuple[object, str, object]] = []
        self._added: list[tuple[list[Variable], Variable]] = []
        self.loss_bad = None
        #: check every input batch for NaN/Inf on the device, in the step (pipelines: arrays are checked
        #: on the host before training); not under a distribution strategy, where each replica sees a shard
        self.check_inputs = bool(check_inputs) and not distributed and self.primary
        self.input_bad = None
        #: file the ``"loss"`` a step returns as its raw loss when the step leaves the loss tracker alone
        self.loss_from_logs = bool(loss_from_logs) and not distributed and self.primary
        #: whether some step's loss came from what it returned (see _patch_train_step)
        self.loss_taken_from_logs = False
        #: losses the loss tracker took, counted on the host (TensorFlow and JAX: while the step is traced)
        self._losses_taken = 0
        #: TensorFlow under a distribution strategy: each replica's gradient norm of the step (see _build_buffers)
        self.replica_norm: Variable | None = None
        self.built = False
        #: the columns of the rows :meth:`read` returns (the fixed ones alone until built)
        self.layout = RowLayout()
        #: the learning-rate variable a step that must not count is applied with a zero rate through, or None
        self.rate = None

    @property
    def width(self) -> int:
        """Columns of a row (see :attr:`layout`)."""
        return self.layout.width

    @property
    def n_vars(self) -> int:
        """The optimizer's trainable variables (see :attr:`layout`)."""
        return self.layout.n_vars

    # -- install / uninstall ---------------------------------------------------

    def install(self) -> None:
        opt = self.opt
        self._start()
        #: the optimizer's own update, which the instrumented one wraps (see _build_buffers)
        self._apply_original = getattr(opt, self.APPLY)
        if opt.built:
            self._build_buffers(list(opt._trainable_variables))
        else:
            original_build = opt.build

            def build(variables: list[Variable], *args: Any, **kwargs: Any) -> Any:
                out = original_build(variables, *args, **kwargs)
                if not self.built:
                    self._build_buffers(list(opt._trainable_variables))
                return out

            self.patch(opt, "build", build)
            if self.LAZY_APPLY:
                self.patch(opt, "apply", self._lazy_apply())
        self._build_input_flag()
        self._build_loss_buffers()
        if self.primary and (self.check_inputs or self.WRAPS_TRAIN_STEP or self.loss_from_logs):
            self._patch_train_step()

    def uninstall(self) -> None:
        for obj, name, previous in reversed(self._patched):
            try:
                if previous is ABSENT:
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

    def _start(self) -> None:
        """At install, before anything is patched: the host-side state of a fresh recording (PyTorch)."""

    def _lazy_apply(self) -> Callable[..., Any]:
        """An optimizer that is not built yet builds itself in its first ``apply`` (eager steps, an optimizer
        kept on the model beside ``model.optimizer``): build it there as Keras would, and record that first
        step too (the instrumented update replaces this one once built)."""
        opt = self.opt

        def apply(grads: Sequence[Tensor], trainable_variables: Sequence[Variable] | None = None) -> Any:
            if not opt.built and trainable_variables is not None and len(grads):
                build_optimizer(opt, list(trainable_variables))
            if self.built:
                return self._apply(grads, trainable_variables)
            return self._apply_original(grads, trainable_variables)

        return apply

    def patch(self, obj: object, name: str, fn: Callable[..., Any]) -> None:
        """Set ``obj.name`` to ``fn`` on the instance; :meth:`uninstall` puts back what was there."""
        previous = vars(obj).get(name, ABSENT)  # an attribute of the instance itself is put back after
        object.__setattr__(obj, name, fn)
        self._patched.append((obj, name, previous))

    def _patch_train_step(self) -> None:
        """Wraps the model's ``train_step`` (Keras' or the user's own) on the instance, around the step:

        * before it, checks the input batch for NaN/Inf on the device (every pipeline: tf.data,
          PyDataset, generators, DataLoader) into a flag the optimizer's apply reads;
        * after it, under JAX, files the step's loss (the loss tracker keeps it in state the optimizer
          does not get) in the two columns after the step's row, and carries a non-finite one into the
          optimizer's halt flag, so that no later step of the chunk is applied;
        * after it, for a ``train_step`` of the user's own (:attr:`loss_from_logs`) that did not update the
          loss tracker, files the ``"loss"`` the step returned as its raw loss, as the tracker would have
          (``return {"loss": loss}``; a loss kept in a ``Mean`` of the user's own is a curve instead,
          see :mod:`..curves`).
        """
        self._train_step = self.model.train_step
        self.patch(self.model, "train_step", self._train_step_wrapper(self._train_step))

    def retrace(self) -> None:
        """Before ``make_train_function(force=True)`` (the what-if replay changed a setting the step reads
        when it is traced, such as Adam's epsilon): a new wrapper function, because ``jax.jit`` keeps the
        traces of a function object it has seen, so a new jit of the same wrapper would run the old trace."""
        if getattr(self, "_train_step", None) is not None:
            object.__setattr__(self.model, "train_step", self._train_step_wrapper(self._train_step))

    def _train_step_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """The backend's wrapper around the model's ``train_step`` (see :meth:`_patch_train_step`)."""
        raise NotImplementedError

    # -- the recorder's variables ---------------------------------------------------

    def _variable(self, value: np.ndarray | int, dtype: str, name: str, owner_list: list[Variable] | None) -> Variable:
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

    def _build_buffers(self, tvars: list[Variable]) -> None:
        velocities = None
        if self.diagnostics and hasattr(self.inner, "_velocities") and self.inner._velocities:
            velocities = list(self.inner._velocities)
        self.velocities = velocities
        self.var_names = tuple(var_name(v) for v in tvars)
        #: the number of second-moment entries (sqrt(mean v) divides by it)
        self.v_size = float(sum(int(np.prod(v.shape)) for v in velocities)) if velocities else 1.0
        # under loss scaling, one more column: the loss scale each step's gradients carried
        self.layout = RowLayout(
            n_vars=len(tvars), n_diag=2 if velocities is not None else 0, n_scale=1 if self.is_loss_scaled else 0
        )
        self._build_device_buffers()
        mine = self.own_ids()
        self.state_vars = [v for v in self.opt.variables if id(v) not in mine and float_name(v)]
        self._instrument_apply(tvars)
        self.built = True

    def _build_device_buffers(self) -> None:
        """The buffers the instrumented update writes (:attr:`layout` is set)."""
        raise NotImplementedError

    def _instrument_apply(self, tvars: list[Variable]) -> None:
        """Once the buffers are built: the optimizer's :attr:`APPLY` replaced by the instrumented one."""
        self._apply = self._instrumented(self._apply_original)
        self.patch(self.opt, self.APPLY, self._apply)

    def _instrumented(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """The optimizer's update ``original``, recording each step into the buffers."""
        raise NotImplementedError

    def _build_input_flag(self) -> None:
        """The flag the ``train_step`` wrapper sets when a step's input batch holds NaN/Inf."""
        if self.check_inputs:
            self.input_bad = self._variable(0, "int32", "stability_input_bad", None)

    def unapplied(self) -> set[int]:
        """The columns (indices into :attr:`var_names`) of variables the optimizer was built for but that no
        ``apply`` was given: none, but under PyTorch, where Keras builds the optimizer before the callbacks run
        and one may freeze a layer (see :class:`~.torch.TorchRecorder`)."""
        return set()

    def own_ids(self) -> set[int]:
        """``id``s of the recorder's variables among the optimizer's (none of the user's state)."""
        return {
            id(v)
            for v in (
                getattr(self, "buf", None),
                getattr(self, "count", None),
                getattr(self, "halt", None),
                getattr(self, "replica_norm", None),
                self.input_bad,
            )
            if v is not None
        }

    def _build_loss_buffers(self) -> None:
        if self.tracker is None:
            self.lbuf = self.lcount = None
            return
        self._instrument_tracker(self.tracker)

    def _instrument_tracker(self, tracker: Metric) -> None:
        """The loss tracker's ``update_state`` replaced by one that records each step's raw loss."""
        raise NotImplementedError

    # -- read back ---------------------------------------------------------------

    def read(self) -> dict[str, np.ndarray | int]:
        """Current buffer contents and counters, as numpy (the one host sync per chunk):

        * ``buf``: ``(chunk, layout.width)`` rows, step ``i``'s in slot ``i % chunk``;
        * ``count``: the steps recorded since install; ``halt``: 1 once a step stopped the run;
        * ``lbuf``, ``lcount``: the losses the tracker took, loss ``i`` in slot ``i % chunk``; or (JAX)
          ``lrow``, ``ltaken``: each row's own loss, and how many losses the tracker took in its step;
        * ``replicas``: under a distribution strategy, ``(chunk, replicas)`` per-replica gradient norms.
        """
        raise NotImplementedError

    def device_of_buffer(self) -> str:
        """Where the recorded buffer lives (read from the tensor, not from what was asked)."""
        try:
            dev = self._buffer_device()
        except Exception:  # pragma: no cover - informational only
            return "unknown"
        return device_label(dev)

    def _buffer_device(self) -> str:
        return str(getattr(self.buf.value, "device", "") or "")

    def input_was_bad(self) -> bool:
        """After ``fit`` raised: whether the flag of the failing step's input batch is set (JAX keeps none
        apart from the buffer, which may be gone)."""
        return self.input_bad is not None and bool(host_numpy(self.input_bad.value))

    def last_step_nonfinite(self) -> bool:
        """After each step (PyTorch, where the host runs each step): whether it was non-finite."""
        return False

    def halted(self) -> bool:
        """Whether a step stopped the run (the halt flag, one scalar read from the device; TensorFlow, JAX)."""
        return False

    def ran_planned_steps(self) -> bool:
        """Whether the planned steps have run, known on the host (PyTorch)."""
        return False


__all__ = ["BatchNotRun", "Recorder"]
