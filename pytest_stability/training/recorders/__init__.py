"""Record what every Keras trainer already passes through: the optimizer and the loss tracker.

Keras' ``fit`` runs the user's ``train_step`` on the chosen backend; every
trainer (TensorFlow, JAX, PyTorch, and the custom ``train_step`` of Keras'
"customizing fit()" guides) hands its gradients to ``model.optimizer`` and its
unscaled loss to the model's loss tracker.  So a recorder instruments those
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
  one row (:class:`RowLayout`) of a ``(chunk, width)`` buffer;
* the loss tracker's ``update_state`` writes the raw minibatch loss (not the
  running mean ``logs["loss"]`` shows) into a ``(chunk,)`` buffer (JAX: into a
  ``(1,)`` one, which the ``train_step`` wrapper files in the step's row of the
  optimizer's buffer after the step).

A :class:`~pytest_stability.training.readback.Readback` callback reads both buffers at execution boundaries
(``steps_per_execution``), once per chunk.  Once a step went non-finite, or the
planned number of steps is reached, later steps apply no update to the weights
(on the device: a zero learning rate where the optimizer's update scales with
it, else a ``cond`` or a select; see :meth:`.CompiledRecorder._rate_variable`), so the
weights and the report are those of the failing step; the callback then stops
``fit``.  A wrapper around the model's ``train_step`` checks pipeline batches for
NaN/Inf in the step and, under JAX, files the step's loss and carries a non-finite one into the halt flag.

One recorder class per backend, as Keras keeps one trainer per backend (``keras/src/backend/<name>/trainer.py``):

* :mod:`.base`: :class:`Recorder`, what they share (install and uninstall, patching, the row layout, the
  recorder's own variables) and the hooks a backend fills in;
* :mod:`.compiled`: the statistics written once in backend-neutral ``keras.ops``, which TensorFlow and JAX
  compile into the step;
* :mod:`.tensorflow`, :mod:`.jax`: that backend's apply, loss tracking, ``train_step`` wrapper and read-back;
* :mod:`.torch`: PyTorch runs every step eagerly, where each tensor op costs its dispatch on every step:
  there a step stacks a few raw values with torch's own multi-tensor ops into a vector kept on the device,
  and the host derives the same row from them at read-back;
* :mod:`.layout`: the row's columns, and the rows read back on the host (:class:`ChunkRows`, :func:`host_flags`).

Buffers are Keras variables (PyTorch: Python lists of device tensors).  Under JAX they are appended to the
optimizer's and the loss tracker's variable lists so that ``fit`` threads them as state; on TensorFlow
they stand alone.  :meth:`Recorder.uninstall` removes every trace of the instrumentation: the user's
optimizer and tracker, no extra variables, nothing that ``model.save`` would write.

What the engine and the read-back use of a recorder (nothing else):

* :func:`make_recorder` (once per optimizer), then :meth:`~Recorder.install` before ``fit`` and
  :meth:`~Recorder.uninstall` after it; :meth:`~Recorder.retrace` before the train function is remade;
  :meth:`~Recorder.patch` for another patch that ``uninstall`` puts back;
* :meth:`~Recorder.read`: the buffers as numpy (its docstring gives the keys), taken in by :class:`ChunkRows`;
* :attr:`~Recorder.layout` (:class:`RowLayout`), ``var_names``, ``velocities`` (once ``built``); ``name``,
  ``opt``, ``inner``, ``primary``, ``chunk``, ``is_loss_scaled``, ``check_inputs``, and ``recording_loss``
  (the switch that keeps evaluation's losses out);
* :meth:`~Recorder.own_ids` (the recorder's variables among the optimizer's), :meth:`~Recorder.device_of_buffer`,
  :meth:`~Recorder.input_was_bad` (after ``fit`` raised) and :meth:`~Recorder.last_step_nonfinite` (after
  each step, PyTorch).
"""

from __future__ import annotations

from typing import Any

from ...framework_types import Model
from .base import BatchNotRun, Recorder
from .common import find_optimizers, host_numpy, var_name
from .layout import STOP_BITS, ChunkRows, RowLayout, host_flags


def make_recorder(backend: str, model: Model, **kwargs: Any) -> Recorder:
    """The recorder of ``backend`` (``keras.backend.backend()``) for one optimizer of ``model``; ``kwargs`` as
    :class:`Recorder` takes them."""
    if backend == "tensorflow":
        from .tensorflow import TensorFlowRecorder

        return TensorFlowRecorder(model, **kwargs)
    if backend == "jax":
        from .jax import JaxRecorder

        return JaxRecorder(model, **kwargs)
    if backend == "torch":
        from .torch import TorchRecorder

        return TorchRecorder(model, **kwargs)
    raise ValueError(f"no recorder for the Keras backend {backend!r}")


__all__ = [
    "STOP_BITS",
    "BatchNotRun",
    "ChunkRows",
    "Recorder",
    "RowLayout",
    "find_optimizers",
    "host_flags",
    "host_numpy",
    "make_recorder",
    "var_name",
]
