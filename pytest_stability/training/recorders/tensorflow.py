"""TensorFlow: the optimizer's ``apply`` records each step in the step's graph, into buffers that stand alone
(``tf.function`` reads and writes variables in place); the loss tracker into a ring of the chunk's losses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...framework_types import Data, Metric, Tensor, Variable
from .common import host_numpy, returned_loss
from .compiled import CompiledRecorder


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
        self.buf = self._variable(np.zeros((self.chunk, self.width), np.float32), "float32", "stability_record", None)
        self.count = self._variable(0, "int32", "stability_count", None)
        self.halt = self._variable(0, "int32", "stability_halt", None)
        self.limit_var = self._variable(self.limit, "int32", "stability_limit", None)
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
        self.loss_bad = None if self.is_loss_scaled else self._variable(0, "int32", "stability_loss_bad", None)
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
        value = ops.reshape(loss, (1,))
        slot = ops.mod(self.lcount.value, self.chunk)
        self.lbuf.assign(ops.slice_update(self.lbuf.value, ops.reshape(slot, (1,)), value))
        self.lcount.assign(self.lcount.value + 1)
        if self.loss_bad is not None:  # the 1-based step of the first non-finite loss, 0 while none
            first = ops.logical_and(ops.equal(self.loss_bad.value, 0), ops.logical_not(ops.isfinite(value[0])))
            self.loss_bad.assign(ops.where(first, self.lcount.value, self.loss_bad.value))

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
        # cost +0.1x on a small model's step and its first call); the optimizer state is summed on its own
        ops = self.ops
        f32 = "float32"
        g_sq = [zero] * self.n_vars
        d_sq = [zero] * self.n_vars
        w_sq = [zero] * self.n_vars
        for g, k, b, a in zip(grads, index, before, after, strict=True):
            bf = ops.cast(b, f32)
            w_sq[k] = ops.sum(ops.square(bf))
            d_sq[k] = ops.sum(ops.square(ops.cast(a, f32) - bf))
            if g is not None:
                g_sq[k] = ops.sum(ops.square(ops.cast(g, f32)))
        return ops.stack(g_sq), ops.stack(d_sq), ops.stack(w_sq), None, set()

    # -- apply: the statistics in the step's graph --------------------

    def _instrumented(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        opt = self.opt

        def apply(grads: Sequence[Tensor], trainable_variables: Sequence[Variable] | None = None) -> None:
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

            def run() -> Tensor:
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
            "buf": host_numpy(self.buf.value),
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
