"""TensorFlow: the optimizer's ``apply`` records each step in the step's graph, into buffers that stand alone
(``tf.function`` reads and writes variables in place); the loss tracker into a ring of the chunk's losses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...framework_types import Data, Metric, Tensor, Variable
from .common import host_numpy, returned_loss
from .compiled import CompiledRecorder

#: the flag of a non-finite loss while no loss was: above every step, so that ``bad_at > count`` lets a step run
NO_BAD_LOSS = 2**31 - 1


def _put(array: Tensor, slot: Tensor, row: Tensor) -> Tensor:
    """``array`` with ``row`` at index ``slot`` of its first axis.  A scatter: ``keras.ops.slice_update`` lowers
    to ``XlaDynamicUpdateSlice``, which TensorFlow's graph runs as an XLA kernel, some 20 us a call on a 2-core
    CPU (the small MLP's instrumented step took 285 us with the two of a step, 243 us with scatters)."""
    import tensorflow as tf

    return tf.tensor_scatter_nd_update(array, tf.reshape(slot, (1, 1)), tf.expand_dims(row, 0))


def _write(variable: Variable, slot: Tensor, row: Tensor) -> None:
    """``row`` written into ``variable`` at index ``slot`` of its first axis, in place: one scatter into the
    variable's buffer (``_put`` and an assign read the whole buffer, copy it and write it back: three ops more
    a step, and two copies)."""
    import tensorflow as tf

    from ..keras_internals import tf_variable

    tf_variable(variable).scatter_nd_update(tf.reshape(slot, (1, 1)), tf.expand_dims(row, 0))


def _dense(gradient: Tensor | None) -> Tensor | None:
    """A gradient as one dense tensor.  An embedding's gradient is ``tf.IndexedSlices``: a row per id the
    batch looked up, an id looked up twice having two rows, and the gradient is their sum.  ``keras.ops``
    square each row alone (``ops.square`` keeps the slices), which gave the sum of the rows' squared norms: a
    norm too small wherever ids repeat (0.031 against 0.047 for a 5-word vocabulary)."""
    import tensorflow as tf

    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def _read(variable: Variable) -> Tensor:
    """The variable's value as one tensor: a Keras variable's ``value`` is TensorFlow's variable itself, which
    each op that takes it reads again (the graph runs op by op, and every read is an op)."""
    import tensorflow as tf

    return tf.convert_to_tensor(variable.value)


class TensorFlowRecorder(CompiledRecorder):
    """The recorder of the TensorFlow backend (see :class:`~.base.Recorder`)."""

    def _build_device_buffers(self) -> None:
        # Keras' TensorFlow trainer builds an optimizer in the first trace of the train step, where this runs:
        # a variable made in a function being traced has its initializer lifted out of the graph (some 25 ms
        # each on a 2-core CPU, against 0.5 ms eagerly: 0.1 s of a tiny model's run), so the recorder's own are
        # made eagerly, and the traced step captures them
        import tensorflow as tf

        with tf.init_scope():
            self._make_device_buffers()

    def _make_device_buffers(self) -> None:
        # one row more than the chunk: where a step must not count but runs (the masked form, see apply), its
        # row goes there, a select of one index instead of one of the whole buffer; never read back
        rows = self.chunk if self.distributed else self.chunk + 1
        self.buf = self._variable(np.zeros((rows, self.width), np.float32), "float32", "stability_record", None)
        self.count = self._variable(0, "int32", "stability_count", None)
        self.halt = self._variable(0, "int32", "stability_halt", None)
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

    def _train_step_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops

        def train_step(data: Data) -> Any:
            if self.check_inputs:
                bad = self._inputs_bad(data)
                if bad is not None:
                    self.input_bad.assign(ops.cast(bad, "int32"))
            took = self._losses_taken  # counted while the step is traced (or run, eagerly)
            logs = original(data)
            if self.loss_from_logs and self._losses_taken == took and self.lbuf is not None:
                value = returned_loss(logs)
                if value is not None:
                    self.loss_taken_from_logs = True
                    self._file_loss(value)
            return logs

        return train_step

    def _instrument_tracker(self, tracker: Metric) -> None:
        self.lbuf = self._variable(np.zeros((self.chunk,), np.float32), "float32", "stability_loss", None)
        self.lcount = self._variable(0, "int32", "stability_loss_count", None)
        # the optimizer reads it, so a non-finite loss stops the next update even when its gradients stay
        # finite (an overflowing MSE); under JAX the train_step wrapper carries the loss buffer's flag into
        # the halt, on PyTorch the host checks each step's loss (see TorchRecorder.last_step_nonfinite)
        self.loss_bad = (
            None if self.is_loss_scaled else self._variable(NO_BAD_LOSS, "int32", "stability_loss_bad", None)
        )
        original = tracker.update_state
        ops = self.ops

        def update_state(values: Tensor, sample_weight: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            if self.recording_loss:
                self._losses_taken += 1
                self._file_loss(ops.cast(ops.mean(ops.stop_gradient(values)), "float32"))
            return out

        self.patch(tracker, "update_state", update_state)

    def _file_loss(self, loss: Tensor) -> None:
        """The step's raw loss (a float32 scalar) into the ring of losses, and a non-finite one into the flag
        the optimizer reads."""
        ops = self.ops
        taken = _read(self.lcount)
        slot = ops.mod(taken, self.chunk)
        if self.distributed:  # a mirrored variable takes no scatter: written whole
            self.lbuf.assign(_put(self.lbuf.value, slot, loss))
        else:
            _write(self.lbuf, slot, loss)
        taken = taken + 1
        self.lcount.assign(taken)
        if self.loss_bad is not None:  # the 1-based step of the first non-finite loss, NO_BAD_LOSS while none
            here = ops.where(ops.isfinite(loss), NO_BAD_LOSS, taken)
            self.loss_bad.assign(ops.minimum(_read(self.loss_bad), here))

    def _squared_sums(
        self,
        grads: list[Tensor],
        index: list[int],
        before: list[Tensor],
        after: list[Tensor],
        state_after: list[Tensor],
        zero: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, set[int]]:
        # TensorFlow runs the step's graph op by op: the fewest ops win (measured: stacking the reductions
        # cost +0.1x on a small model's step and its first call).  So each sum of squares is one L2Loss op
        # (half the sum of squares; halving and doubling are exact), not a square and a sum: three ops fewer
        # per variable, 4 % of the small MLP's step.  The optimizer state is summed on its own.
        import tensorflow as tf

        ops = self.ops
        f32 = "float32"
        g_sq = [zero] * self.n_vars
        d_sq = [zero] * self.n_vars
        w_sq = [zero] * self.n_vars
        for g, k, b, a in zip(grads, index, before, after, strict=True):
            bf = ops.cast(b, f32)
            w_sq[k] = tf.nn.l2_loss(bf)
            d_sq[k] = tf.nn.l2_loss(ops.cast(a, f32) - bf)
            if g is not None:
                g_sq[k] = tf.nn.l2_loss(ops.cast(g, f32))
        return ops.stack(g_sq) * 2.0, ops.stack(d_sq) * 2.0, ops.stack(w_sq) * 2.0, None, set()

    # -- apply: the statistics in the step's graph --------------------

    def _instrumented(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        opt = self.opt

        def apply(grads: Sequence[Tensor], trainable_variables: Sequence[Variable] | None = None) -> None:
            grads = list(grads)  # the optimizer's, as given; the statistics read them dense
            dense = [_dense(g) for g in grads]
            tvars = list(trainable_variables) if trainable_variables is not None else list(opt._trainable_variables)
            index = [opt._get_variable_index(v) for v in tvars]
            count = _read(self.count)
            halted = _read(self.halt)
            go = ops.logical_and(ops.equal(halted, 0), ops.less(count, self.limit))
            loss_bad = self.loss_bad
            bad_at = None
            if loss_bad is not None and not self.is_loss_scaled:
                # the tracker saw this step's loss first (Keras' trainers) or the previous one's (a custom
                # train_step that updates metrics after applying): either way no update after a bad loss
                bad_at = _read(loss_bad)
                go = ops.logical_and(go, ops.greater(bad_at, count))

            use_rate = self.rate is not None and not self.distributed
            masked = use_rate or self.distributed

            def run() -> Tensor:
                # values read before the update are what they were then: TensorFlow copies a variable's
                # buffer before updating it in place while a tensor read from it is still in use (no
                # ops.copy needed, an Identity op that would not copy anyway)
                # the step's rate; in the masked form the rate variable's value, read once (the property
                # would read it again, and the row's reshape of a variable once more)
                rate = _read(self.rate) if use_rate else None
                lr = rate if use_rate else ops.convert_to_tensor(opt.learning_rate) if masked else opt.learning_rate
                # the scale this step's gradients carry, read before the update may change it
                scale = _read(opt.dynamic_scale) if self.is_loss_scaled else None
                before = [_read(v) for v in tvars]
                vel = [_read(v) for v in self.velocities] if self.velocities is not None else None
                if use_rate:  # a step that must not count is applied with a zero rate
                    self.rate.assign(ops.where(go, rate, ops.zeros_like(rate)))
                    original(grads, trainable_variables)
                    self.rate.assign(rate)
                else:
                    original(grads, trainable_variables)
                after = [v.value for v in tvars]
                state = [_read(v) for v in self.state_vars]  # a variable summed whole is read twice
                vel_after = [v.value for v in self.velocities] if self.velocities is not None else None
                in_bad = None if self.input_bad is None else ops.not_equal(self.input_bad.value, 0)
                row, stop = self._row(dense, index, before, after, state, lr, scale, vel, vel_after, in_bad)
                slot = ops.mod(count, self.chunk)
                if self.replica_norm is not None:  # this replica's gradients, before the all-reduce
                    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in dense if g is not None]
                    norm = ops.sqrt(ops.sum(ops.stack(squares))) if squares else ops.convert_to_tensor(0.0)
                    self.replica_norm.assign(_put(self.replica_norm.value, slot, norm))
                if bad_at is not None:  # this step's own loss was non-finite
                    stop = ops.logical_or(stop, ops.equal(bad_at, count + 1))
                if self.distributed:  # a mirrored variable takes no scatter: written whole
                    kept = _read(self.buf)
                    self.buf.assign(ops.where(go, _put(kept, slot, row), kept))
                elif masked:  # the row of a step that does not count goes to the spare row
                    _write(self.buf, ops.where(go, slot, self.chunk), row)
                else:
                    _write(self.buf, slot, row)
                if masked:  # the count and the halt flag of a step that counts, only
                    self.halt.assign(ops.where(go, ops.cast(stop, "int32"), halted))
                    self.count.assign(count + ops.cast(go, "int32"))
                else:
                    self.halt.assign(ops.cast(stop, "int32"))
                    self.count.assign(count + 1)
                return ops.convert_to_tensor(0, "int32")

            def skip() -> Tensor:
                return ops.convert_to_tensor(0, "int32")

            if masked:
                # under MirroredStrategy no cond may wrap the apply (it synchronises replicas); the host
                # stops after every step there, so only the rate keeps a halted step out
                run()
            else:
                ops.cond(go, run, skip)

        return apply

    # -- read back ---------------------------------------------------------------

    def halted(self) -> bool:
        return bool(int(host_numpy(self.halt.value)))

    def read(self) -> dict[str, np.ndarray | int]:
        out: dict[str, np.ndarray | int] = {
            "buf": host_numpy(self.buf.value)[: self.chunk],
            "count": int(host_numpy(self.count.value)),
            "halt": int(host_numpy(self.halt.value)),
        }
        if self.lbuf is not None:
            out["lbuf"] = host_numpy(self.lbuf.value)
            out["lcount"] = int(host_numpy(self.lcount.value))
        if self.replica_norm is not None:
            from ..keras_internals import tf_variable

            local = self.model.distribute_strategy.experimental_local_results(tf_variable(self.replica_norm))
            out["replicas"] = np.stack([np.asarray(host_numpy(v), np.float64) for v in local], axis=1)  # (chunk, R)
        return out


__all__ = ["TensorFlowRecorder"]
