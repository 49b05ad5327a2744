"""JAX: the optimizer's ``stateless_apply`` records each step, its buffer threaded through ``fit`` as optimizer
state (the way ``LossScaleOptimizer`` threads its loss scale); the ``train_step`` wrapper files the step's
loss in the step's row after the step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...framework_types import Data, Metric, Model, Tensor, Variable
from ..keras_internals import sync_variables
from .common import host_numpy, index_of, returned_loss
from .compiled import CompiledRecorder

#: the optimizer-side buffer has one more row, its header, holding these (float32: exact up to 2**24)
H_COUNT, H_HALT, H_LIMIT, H_INPUT = 0, 1, 2, 3
#: and two more columns after each row: the step's loss and how many losses the tracker took in it
N_LOSS_COLS = 2

#: the per-variable sums of a step are taken in one reduction over fixed-size blocks while the model
#: is at most this many weights and variables (see _jax_row_sums)
BLOCK_MAX_WEIGHTS, BLOCK_MAX_VARIABLES = 1 << 20, 128


def _keras_threads_model_optimizer(model: Model) -> bool:
    """Whether ``fit`` threads ``model.optimizer.variables`` as its state's optimizer variables (Keras' own
    ``_get_jax_state``; a model trained by several optimizers overrides it to thread all of theirs)."""
    from ..keras_internals import load

    JAXTrainer = load("JAXTrainer")

    return getattr(type(model), "_get_jax_state", None) is JAXTrainer._get_jax_state


def _jax_row_sums(mats: list[Tensor]) -> Tensor:
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


class JaxRecorder(CompiledRecorder):
    """The recorder of the JAX backend (see :class:`~.base.Recorder`).

    JAX threads every variable through each step's call, and each one costs there (about a microsecond on
    the CPU): the counters ride in a header row under the rows, one variable in all, appended to the
    optimizer's variables so that ``fit`` threads it as state; the loss buffer likewise rides in the loss
    tracker's."""

    APPLY = "stateless_apply"
    LAZY_APPLY = False
    WRAPS_TRAIN_STEP = True

    def __init__(self, model: Model, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        #: fit threads model.optimizer's variables as the state's optimizer variables, in their order (Keras'
        #: own trainer); a model that threads several optimizers' says how itself (``_get_jax_state``)
        self.standard_state = self.primary and _keras_threads_model_optimizer(model)
        #: while a step is traced: what its optimizer apply left for the train_step wrapper, and how many
        #: losses the loss tracker took (see _train_step_wrapper)
        self._jax_step: tuple[Tensor, Tensor, Tensor] | None = None
        if self.limit >= 2**24:  # JAX counts in the float32 buffer's header
            from ...errors import StabilityUsageError

            raise StabilityUsageError(f"steps must be below {2**24} under JAX; received steps={self.limit}")

    def _build_input_flag(self) -> None:
        """None: the flag is the header's ``H_INPUT`` (see _build_device_buffers)."""

    def _build_device_buffers(self) -> None:
        # the row's two loss columns are written after the step by the train_step wrapper
        header = np.zeros((1, self.width + N_LOSS_COLS), np.float32)
        header[0, H_LIMIT] = self.limit
        self.buf = self._variable(
            np.concatenate([np.zeros((self.chunk, self.width + N_LOSS_COLS), np.float32), header]),
            "float32",
            "stability_record",
            self.opt._variables,
        )

    def _instrument_apply(self, tvars: list[Variable]) -> None:
        # the optimizer state is checked in the variables' own reductions: the slots of a shape (Adam's m and
        # v of each variable) are shared out among the variables of that shape, whichever owns which (the
        # check is of all the state at once); the rest (the step counter, scalars) is summed on its own
        self.slots: list[list[int]] = [[] for _ in tvars]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, v in enumerate(tvars):
            by_shape.setdefault(tuple(v.shape), []).append(k)
        turn: dict[tuple[int, ...], int] = {}
        for j, v in enumerate(self.state_vars):
            owners = by_shape.get(tuple(v.shape))
            if not owners:
                continue
            i = turn.get(tuple(v.shape), 0)
            self.slots[owners[i % len(owners)]].append(j)
            turn[tuple(v.shape)] = i + 1
        super()._instrument_apply(tvars)
        self._hide_from_saving()

    def _hide_from_saving(self) -> None:
        """The recorder's variables ride in the optimizer's variable list, which Keras saves as they are
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

        self.patch(opt, "save_own_variables", save_own_variables)
        self.patch(opt, "load_own_variables", load_own_variables)

    def _instrument_tracker(self, tracker: Metric) -> None:
        # the step's loss, taken into the optimizer's buffer after the step (see _train_step_wrapper)
        self.lbuf = self._variable(np.zeros((1,), np.float32), "float32", "stability_loss", tracker._variables)
        self.lcount = self.loss_bad = None
        original = tracker.update_state
        ops = self.ops

        def update_state(values: Tensor, sample_weight: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            if self.recording_loss:  # the step's raw loss: the train_step wrapper files it in the step's row
                self.lbuf.assign(ops.reshape(ops.cast(ops.mean(ops.stop_gradient(values)), "float32"), (1,)))
                self._losses_taken += 1  # while the step is traced
            return out

        self.patch(tracker, "update_state", update_state)

    def _train_step_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        model = self.model
        ops = self.ops

        def stateless_train_step(state: Any, data: Data) -> Any:
            four = isinstance(state, (tuple, list)) and len(state) == 4 and self.built and self.standard_state
            chunk = self.chunk
            if four and self.check_inputs:
                bad = self._inputs_bad(data)
                if bad is not None:  # into the header the optimizer's apply reads
                    trainable, non_trainable, ov, mv = state
                    ov = list(ov)
                    p = index_of(self.opt.variables, self.buf)
                    assert p is not None  # the buffer is one of the optimizer's variables once built
                    ov[p] = ops.slice_update(ov[p], (chunk, H_INPUT), ops.reshape(ops.cast(bad, "float32"), (1, 1)))
                    state = (trainable, non_trainable, ov, mv)
            self._jax_step, self._losses_taken = None, 0  # set while `original` is traced (see below)
            logs, new_state = original(state, data)
            step, taken = self._jax_step, self._losses_taken
            self._jax_step = None  # no tracer kept past its trace
            if (
                four
                and step is not None
                and self.lbuf is not None
                and isinstance(new_state, (tuple, list))
                and len(new_state) == 4
            ):
                p_lb = index_of(model.metrics_variables, self.lbuf)
                # a step that left the loss tracker alone: the loss it returned, for a train_step of the
                # user's own (see Recorder._patch_train_step)
                returned = returned_loss(logs) if taken == 0 and self.loss_from_logs else None
                if returned is not None:
                    self.loss_taken_from_logs = True
                    taken = 1
                if p_lb is not None or returned is not None:  # (else: the tracker is left out of the
                    # model's metrics and the step returns no loss, so no loss is recorded)
                    # the step's loss into the two columns after its row (a step that counted; else the
                    # header's, never read), with how many losses the tracker took in the step: known when
                    # the step is traced, so no count is kept on the device
                    go, slot, halt = step
                    trainable, non_trainable, ov, mv = new_state
                    ov = list(ov)
                    p = index_of(self.opt.variables, self.buf)
                    if returned is not None:
                        loss = returned
                    elif taken == 1 and p_lb is not None:
                        loss = mv[p_lb][0]
                    else:
                        loss = ops.convert_to_tensor(float("nan"), "float32")
                    at = ops.where(go, slot, chunk)
                    buf = ops.slice_update(
                        ov[p],
                        (at, ops.cast(self.width, "int32")),  # one index type (int64 under jax_enable_x64)
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

    def _squared_sums(
        self,
        grads: list[Tensor],
        index: list[int],
        before: list[Tensor],
        after: list[Tensor],
        state_after: list[Tensor],
        zero: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, set[int]]:
        ops = self.ops
        f32 = "float32"
        checked: set[int] = set()
        mats = []
        for g, k, b, a in zip(grads, index, before, after, strict=True):
            bf = ops.cast(b, f32)
            # four rows per variable, summed together below: the squares of the weights, of the update
            # and of the gradient, and the plain sum of the variable's optimizer slots (finite iff they are)
            flat = ops.reshape(bf, (-1,))
            slots = [state_after[j] for j in self.slots[k]] if len(state_after) == len(self.state_vars) else []
            checked.update(self.slots[k] if slots else ())
            zeros = ops.zeros_like(flat)
            mats.append(
                ops.stack(
                    [
                        ops.square(flat),
                        ops.square(ops.reshape(ops.cast(a, f32), (-1,)) - flat),
                        ops.square(ops.reshape(ops.cast(g, f32), (-1,))) if g is not None else zeros,
                        sum(ops.reshape(ops.cast(t, f32), (-1,)) for t in slots) if slots else zeros,
                    ]
                )
            )
        if not mats:
            none = ops.zeros((self.n_vars,), f32)
            return none, none, none, None, checked
        # (4, variables): stateless_apply passes every trainable variable, in the optimizer's order
        sums = _jax_row_sums(mats)
        # whole rows, never a scalar per variable: XLA compiles each slice of a scalar into a kernel of its own
        # (on a transformer block, 54 of them: a fifth of the step's compilation)
        return sums[2], sums[1], sums[0], sums[3], checked

    def _totals(self, *per_variable: Tensor) -> list[Tensor]:
        # in one reduction: XLA compiles each reduction into a kernel of its own
        return list(self.ops.unstack(self.ops.sum(self.ops.stack(per_variable), axis=1)))

    # -- stateless_apply, the recorder's variables threaded as state -------

    def _instrumented(self, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        opt = self.opt
        from ..keras_internals import load

        StatelessScope = load("StatelessScope")

        def stateless_apply(
            optimizer_variables: Sequence[Tensor], grads: Sequence[Tensor], trainable_variables: Sequence[Tensor]
        ) -> tuple[list[Tensor], list[Tensor]]:
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
            # the start indices of one type: a Python 0 would be int64 under jax_enable_x64, beside the int32 slot
            buf = ops.slice_update(buf, (slot, ops.cast(0, "int32")), ops.expand_dims(row, 0))
            new_o[p_buf] = ops.slice_update(
                buf, (self.chunk, H_COUNT), ops.reshape(ops.stack([count + ops.cast(go, f32), halt]), (1, 2))
            )
            self._jax_step = (go, slot, halt)  # for the train_step wrapper, in the same trace
            return new_t, new_o

        return stateless_apply

    # -- read back ---------------------------------------------------------------

    def _device_buffer(self) -> Tensor:
        """The buffer as the running fit holds it."""
        jax_state = getattr(self.model, "_jax_state", None)
        if jax_state and self.standard_state:  # fit holds the state (the variables are emptied while it runs)
            return jax_state["optimizer_variables"][index_of(self.opt.variables, self.buf)]
        # another optimizer's variables ride in the state where the model's own trainer puts them: its
        # jax_state_sync puts them back in the variables (Keras' way for callbacks that read variables), and fit
        # goes on from the state it holds (a read, see sync_variables)
        if not self.standard_state:
            sync_variables(self.model, read_only=True)
        return self.buf.value

    def halted(self) -> bool:
        return bool(float(self._device_buffer()[self.chunk, H_HALT]))  # the one element, sliced on the device

    def read(self) -> dict[str, np.ndarray | int]:
        """The header row holds the counters, the two columns after each row its loss (see
        _build_device_buffers)."""
        buf = host_numpy(self._device_buffer())
        # a model whose metrics leave out the loss tracker records no loss (the wrapper writes none)
        tracked = self.lbuf is not None and index_of(self.model.metrics_variables, self.lbuf) is not None
        w = self.width
        out: dict[str, np.ndarray | int] = {
            "buf": buf[: self.chunk, :w],
            "count": int(buf[self.chunk, H_COUNT]),
            "halt": int(buf[self.chunk, H_HALT]),
        }
        if tracked:  # per row: its step's loss, and how many losses the tracker took in that step
            out["lrow"], out["ltaken"] = buf[: self.chunk, w], buf[: self.chunk, w + 1]
        return out

    def _buffer_device(self) -> str:
        jax_state = getattr(self.model, "_jax_state", None)
        if jax_state and self.standard_state:
            arr = jax_state["optimizer_variables"][index_of(self.opt.variables, self.buf)]
            return str(next(iter(arr.devices())))
        return super()._buffer_device()


__all__ = ["JaxRecorder"]
