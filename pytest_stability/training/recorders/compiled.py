"""The statistics of a step written once in backend-neutral ``keras.ops``, which TensorFlow and JAX compile
into the step (:class:`CompiledRecorder`, the base of :mod:`.tensorflow` and :mod:`.jax`); and the learning
rate through which a step that must not count is applied as a no-op."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ...framework_types import Data, Model, Tensor, Variable
from ...trace import GRADS, INPUT, OPTIMIZER, WEIGHTS
from .base import Recorder
from .common import float_name
from .layout import STOP_BITS

#: Keras optimizers whose whole update of the weights (weight decay included) is proportional to the learning
#: rate in effect, so that a zero rate applies none; SGD and RMSprop only without momentum, whose buffer
#: carries earlier rates into the update.  Matched by exact class: a subclass may update otherwise.
_RATE_LINEAR = frozenset({"Adam", "AdamW", "Adamax", "Nadam", "Adagrad", "Lion", "Lamb"})
_RATE_LINEAR_WITHOUT_MOMENTUM = frozenset({"SGD", "RMSprop"})


def _sum_all(ops: ModuleType, tensors: list[Tensor]) -> Tensor:
    """One sum over every float tensor: non-finite iff an element is (or the sum overflows float32,
    itself a sign of divergence); far cheaper than an elementwise isfinite per tensor."""
    sums = [ops.sum(ops.cast(t, "float32")) for t in tensors if t is not None and float_name(t)]
    if not sums:
        return ops.convert_to_tensor(0.0, "float32")
    return ops.sum(ops.stack(sums))


class CompiledRecorder(Recorder):
    """A recorder whose statistics are computed on the device, in the step (:meth:`_row`); a backend gives
    the per-variable sums of squares its compiler runs fastest (:meth:`_squared_sums`)."""

    def __init__(self, model: Model, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.rate = self._rate_variable()

    def _rate_variable(self) -> Variable | None:
        """The learning-rate variable through which a step is made a no-op, or None.

        After the planned steps, or after a non-finite step, the rest of a chunk must apply no update.
        Where the optimizer's update is proportional to its learning rate (see ``_RATE_LINEAR``), the
        recorder feeds it a rate of 0 for those steps: one scalar select.  Otherwise it keeps the update
        out with a ``cond`` (TensorFlow) or a select of every variable (JAX), which on a small model
        costs as much as the step itself.  With a zero rate the weights stay those of the last step that
        counts, the optimizer's moment estimates still take in the gradients of the skipped steps (their
        learning rate is 0, their buffers are not the weights).  PyTorch, eager, runs no such step (see
        ``TorchRecorder.last_step_nonfinite``), so it needs none.
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

    def _inputs_bad(self, data: Data) -> Tensor | None:
        """Whether the batch holds NaN/Inf, as a device boolean; None if it holds no float tensor."""
        ops = self.ops
        standardize = self.keras.backend.standardize_dtype
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

    def _squared_sums(
        self,
        grads: list[Tensor],
        index: list[int],
        before: list[Tensor],
        after: list[Tensor],
        state_after: list[Tensor],
        zero: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, set[int]]:
        """Per variable (by the optimizer's index, one ``(n_vars,)`` tensor each): the sums of squares of the
        gradient, of the update and of the weights before it, and the plain sums of optimizer state taken in
        with them (or None); and the indices (into ``state_after``) of the state those cover."""
        raise NotImplementedError

    def _totals(self, *per_variable: Tensor) -> list[Tensor]:
        """The sum of each ``(n_vars,)`` tensor."""
        return [self.ops.sum(t) for t in per_variable]

    def _row(
        self,
        grads: list[Tensor],
        index: list[int],
        before: list[Tensor],
        after: list[Tensor],
        state_after: list[Tensor],
        lr: Tensor,
        scale: Tensor | None,
        velocities: list[Tensor] | None,
        velocities_after: list[Tensor] | None,
        input_bad: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One buffer row (see :class:`.RowLayout`) and the device-side stop flag for one step."""
        ops = self.ops
        f32 = "float32"
        zero = ops.convert_to_tensor(0.0, f32)
        inv_scale = None if scale is None else 1.0 / ops.cast(scale, f32)
        if self.grad_unscale is not None:  # a static loss_scale_factor (see Recorder.grad_unscale)
            unscale = ops.convert_to_tensor(self.grad_unscale, f32)
            inv_scale = unscale if inv_scale is None else inv_scale * unscale
        g_sq_t, d_sq_t, w_sq_t, state_sq, checked = self._squared_sums(grads, index, before, after, state_after, zero)
        if inv_scale is not None:
            g_sq_t = g_sq_t * ops.square(inv_scale)
        var_gnorm = ops.sqrt(g_sq_t)
        g_tot, d_tot, w_tot, *state_tot = self._totals(
            g_sq_t, d_sq_t, w_sq_t, *([] if state_sq is None else [state_sq])
        )
        gnorm = ops.sqrt(g_tot)
        tiny = 1e-30
        var_upd = ops.sqrt(d_sq_t) / ops.sqrt(w_sq_t + tiny)
        upd = ops.sqrt(d_tot) / ops.sqrt(w_tot + tiny)
        # the flags as one vector: TensorFlow runs the step op by op, and three finiteness tests in one op
        # are two ops fewer each.  After = before + delta: finite iff both sums of squares are (no second
        # pass over the weights); the state not covered by the sums is summed once
        rest = [t for j, t in enumerate(state_after) if j not in checked]
        checks = ops.stack([gnorm, w_tot + d_tot, _sum_all(ops, rest) + sum(state_tot, zero)])
        bits = ops.convert_to_tensor(np.array([GRADS, WEIGHTS, OPTIMIZER], np.int32))
        flags = ops.sum(ops.cast(ops.logical_not(ops.isfinite(checks)), "int32") * bits)
        if input_bad is not None:
            flags = flags + ops.cast(input_bad, "int32") * INPUT
        # Under loss scaling a non-finite *scaled* gradient is an overflow the
        # optimizer skips: not a reason to stop (the host tells the two apart
        # with the loss, which it reads from the tracker).
        stop_mask = (WEIGHTS | OPTIMIZER | INPUT) if self.is_loss_scaled else STOP_BITS
        stop = ops.not_equal(ops.bitwise_and(flags, stop_mask), 0)
        head = ops.stack([gnorm, ops.reshape(ops.cast(lr, f32), ()), ops.cast(flags, f32), upd])
        parts = [head, var_gnorm, var_upd]
        tail = []
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
            tail += [ops.max(ops.stack(ratios)), ops.sqrt(v_sum / self.v_size)]
        if scale is not None:
            tail.append(ops.cast(scale, f32))
        if tail:
            parts.append(ops.stack(tail))
        return ops.concatenate(parts, axis=0), stop


__all__ = ["CompiledRecorder"]
