"""PyTorch: raw per-step values, derived on the host at read-back.

PyTorch runs every step eagerly: each tensor op costs its Python dispatch (several microseconds on a CPU, a
kernel launch on a GPU) on every step.  So a step records only what must be taken from that step, in a
handful of ops (one multi-tensor norm call for the weights, the update and the gradients), into one vector
kept on the device in a Python list; ratios, square roots, flags and the step count are derived on the host
once per chunk (:meth:`TorchRecorder.read`), into the rows the other backends write on the device.  The host
checks each step's vector after it ran (:meth:`TorchRecorder.last_step_nonfinite`) and runs no step after a
non-finite one, and it knows how many steps ran, so the planned number of steps needs no device counter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...framework_types import Data, Metric, Tensor, Variable
from ...trace import GRADS, OPTIMIZER, WEIGHTS
from .base import BatchNotRun, Recorder
from .common import returned_loss

#: what a step's record takes before the update: the learning rate, the weights, Adam's velocities, the loss scale
_Taken = tuple[Tensor, list[Tensor], list[Tensor] | None, Tensor | None]


class TorchRecorder(Recorder):
    """The recorder of the PyTorch backend (see :class:`~.base.Recorder`).  It needs no rate variable: its
    host runs no step past the planned ones or after a non-finite one."""

    def _layout_raw(self) -> None:
        """Offsets in the raw vector: ``[w_n | d_n | state sum | g_n | lr, loss, (scale) | (diag)]``.  No input
        flag: a NaN/Inf pipeline batch's step is not run (torch_train_step)."""
        n = self.n_vars
        #: the columns some apply was given (None: every one; see unapplied)
        self.t_applied: set[int] | None = set()
        self.t_w, self.t_d, self.t_s, self.t_g = 0, n, 2 * n, 2 * n + 1
        self.t_lr = 3 * n + 1
        self.t_loss = self.t_lr + 1  # the loss the tracker saw before this step's update (else 0)
        self.t_scale = self.t_lr + 2  # under loss scaling
        # the values whose non-finiteness stops the run: weights, update, state (and gradients, unless an
        # overflow of the scaled gradient under loss scaling, which the optimizer skips)
        self.t_stop = self.t_g if self.is_loss_scaled else self.t_lr

    @property
    def compiled(self) -> bool:
        """Whether Keras compiles this model's step with torch.compile (``jit_compile=True``)."""
        return bool(getattr(self.model, "jit_compile", False))

    def _start(self) -> None:
        self.t_raw: list[Tensor] = []  # one vector per step that ran, not yet read back
        self.t_calls = 0  # steps that ran, since install
        self.t_losses: list[Tensor] = []
        self.t_raw_checked = 0  # t_raw[:this] have been checked by last_step_nonfinite
        self.t_loss_used = 0  # t_losses[:this] are in a raw vector or have been checked

    def _build_device_buffers(self) -> None:
        """None: the raw vectors go to a list, the count is kept on the host (see _instrumented)."""

    def _train_step_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        def torch_inputs_bad(data: Data) -> bool:
            for t in self.keras.tree.flatten(data):
                try:
                    t = t if torch.is_tensor(t) else torch.as_tensor(np.asarray(t))
                except (TypeError, ValueError, RuntimeError):  # not numeric (strings, objects)
                    continue
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return True
            return False

        def losses_so_far() -> int:
            return self._losses_taken

        def file_returned_loss(logs: object, took: int) -> None:
            """A step that left the loss tracker alone: the loss it returned, as the tracker would take it."""
            if self._losses_taken == took and self.tracker is not None:
                value = returned_loss(logs)
                if value is not None:
                    self.loss_taken_from_logs = True
                    self._record_loss(value)

        if self.compiled:  # eagerly, outside torch.compile's graphs, as the tracker's record (see _update_state)
            losses_so_far = torch.compiler.disable(losses_so_far)
            file_returned_loss = torch.compiler.disable(file_returned_loss)

        def torch_train_step(data: Data) -> Any:
            # checked where the batch is (on the host for Keras' own pipelines) before the step runs:
            # a NaN batch on a GPU can make a kernel assert, which no later step or test recovers from
            if self.check_inputs and torch_inputs_bad(data):
                self.input_bad.assign(1)
                raise BatchNotRun("the input batch holds NaN/Inf: its step was not run")
            if not self.loss_from_logs:
                return original(data)
            took = losses_so_far()
            logs = original(data)
            file_returned_loss(logs, took)
            return logs

        return torch_train_step

    def _instrument_tracker(self, tracker: Metric) -> None:
        # the losses go to a list (see _update_state)
        self.lbuf = self.lcount = self.loss_bad = None
        self.patch(tracker, "update_state", self._update_state(tracker.update_state))

    def _instrumented(self, original: Callable[..., Any]) -> Callable[..., Any]:
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
        self._layout_raw()
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

        def tensors(variables: list[Variable]) -> list[Tensor]:
            return [v._value for v in variables] if stored else [v.value for v in variables]

        # float32 norms of every tensor; torch's norm refuses to narrow float64 to the float32 it is asked for, so
        # a float64 model (keras.config.set_floatx("float64")) takes its norms in float64, cast after (decided
        # once: the gradients and updates have their variables' dtypes)
        wide = any(v.value.dtype == torch.float64 for v in [*opt._trainable_variables, *(self.velocities or [])])

        def norms(ts: list[Tensor], order: int) -> list[Tensor]:
            if not wide:
                return list(torch._foreach_norm(ts, order, dtype=f32))
            return [n.to(f32) for n in torch._foreach_norm([t.to(torch.float64) for t in ts], order)]

        def copies(ts: list[Tensor]) -> list[Tensor]:
            # a multi-tensor op on an accelerator (one launch); on the CPU, where foreach ops loop over the
            # tensors anyway, plain clones cost half as much
            return list(torch._foreach_mul(ts, 1.0)) if device.type != "cpu" else [t.clone() for t in ts]

        def before_update(tvars: list[Variable]) -> _Taken | None:
            """What the step's record needs from before the update (None once the planned steps ran: the host
            counts them, no device read)."""
            if self.t_calls >= self.limit:
                return None
            # no step runs after a non-finite one: the host checks each step's raw vector (last_step_nonfinite)
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
            return lr, before, vel, scale

        def after_update(
            grads: list[Tensor],
            tvars: list[Variable],
            taken: _Taken,
        ) -> None:
            lr, before, vel, scale = taken
            with torch.no_grad():
                delta = list(torch._foreach_sub(tensors(tvars), before))
                index = [opt._get_variable_index(v) for v in tvars]
                if self.t_applied is not None:  # until one apply was given every variable
                    self.t_applied = None if len(index) == n else self.t_applied | set(index)
                have = [(g, k) for g, k in zip(grads, index, strict=True) if g is not None]
                norms_ = norms(before + delta + [g for g, _ in have], 2)
                m = len(tvars)
                w_n, d_n, g_have = list(norms_[:m]), list(norms_[m : 2 * m]), list(norms_[2 * m :])
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
                tail = [lr, self._pending_loss(zero)]
                if scale is not None:
                    tail.append(scale)
                if vel is not None:
                    tail += self._diag(have, vel, scale, norms)
                self.t_raw.append(torch.stack(w_n + d_n + [s_sum] + g_n + tail))

        if self.compiled:
            # under torch.compile (jit_compile=True) the recording runs eagerly, outside the compiled graphs:
            # traced, its host-side count and lists would fail dynamo's guards at every step, and each step
            # would compile the user's update again until dynamo gave up compiling it at all
            before_update = torch.compiler.disable(before_update)
            after_update = torch.compiler.disable(after_update)

        def apply(grads: Sequence[Tensor], trainable_variables: Sequence[Variable] | None = None) -> None:
            grads = list(grads)
            tvars = list(trainable_variables) if trainable_variables is not None else list(opt._trainable_variables)
            taken = before_update(tvars)
            if taken is None:
                return
            original(grads, trainable_variables)
            after_update(grads, tvars, taken)

        return apply

    def unapplied(self) -> set[int]:
        """Keras' PyTorch ``fit`` builds the optimizer for the variables trainable before the callbacks run; a
        layer a callback froze then is never given to ``apply``: its columns hold no gradient, not a zero one."""
        applied = getattr(self, "t_applied", None)
        return set() if applied is None else set(range(self.n_vars)) - applied

    def _diag(
        self,
        have: list[tuple[Tensor, int]],
        vel: list[Tensor],
        scale: Tensor | None,
        norms: Callable[[list[Tensor], int], list[Tensor]],
    ) -> list[Tensor]:
        """Adam's max ``g^2/v`` (with the second moments before the step) and the sum of ``v`` after it."""
        import torch

        f32 = torch.float32
        eps = float(getattr(self.inner, "epsilon", 1e-7) or 1e-7)
        gs = [g if g.dtype == f32 else g.to(f32) for g, _ in have]
        if scale is not None:
            gs = torch._foreach_div(gs, scale)
        if self.grad_unscale is not None:  # a static loss_scale_factor (see Recorder.grad_unscale)
            gs = torch._foreach_mul(gs, self.grad_unscale)
        vs = [vel[k] if vel[k].dtype == f32 else vel[k].to(f32) for _, k in have]
        ratios = torch._foreach_div(torch._foreach_mul(gs, gs), torch._foreach_add(vs, eps * eps))
        assert self.velocities is not None  # vel is read from them
        v_sum = torch.sum(torch.stack(norms([v.value for v in self.velocities], 1)))
        return [torch.max(torch.stack(torch._foreach_max(ratios))), v_sum]

    def _update_state(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        def record(values: Tensor) -> None:
            if self.recording_loss:
                with torch.no_grad():
                    value = torch.as_tensor(values).detach()
                    self._record_loss((value if value.dtype == torch.float32 else value.to(torch.float32)).mean())

        if self.compiled:  # eagerly, outside torch.compile's graphs (see _instrumented)
            record = torch.compiler.disable(record)

        def update_state(values: Tensor, sample_weight: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
            out = original(values, *args, sample_weight=sample_weight, **kwargs)
            record(values)
            return out

        return update_state

    def _record_loss(self, value: Tensor) -> None:
        """The step's raw loss (a float32 scalar on the device), kept until the read-back."""
        self._losses_taken += 1
        self.t_losses.append(value)

    def ran_planned_steps(self) -> bool:
        """Whether the planned steps have run (the host counts them), so that the run can stop right there
        instead of at the chunk's end: the steps after it would still run the forward pass (BatchNorm
        statistics, metrics) with no update."""
        return self.built and self.t_calls >= self.limit

    def _pending_loss(self, zero: Tensor) -> Tensor:
        """The loss the tracker saw since the last step (Keras' trainers update it before the optimizer's
        apply), for the step's raw vector, so that last_step_nonfinite reads it in the same copy; 0 if none."""
        import torch

        pending = self.t_losses[self.t_loss_used :]
        self.t_loss_used = len(self.t_losses)
        if not pending:
            return zero
        return pending[0] if len(pending) == 1 else torch.stack(pending).sum()

    def last_step_nonfinite(self) -> bool:
        """After each step: whether this step was non-finite (its statistics or its loss).  One small
        device-to-host copy, which waits for the step to finish.  It is read so that no step runs after a
        non-finite one: on a GPU the next step's forward pass would feed the NaN weights to kernels that
        assert on them (the binary cross-entropy of probabilities does), and a device-side assert leaves the
        process's CUDA context unusable, for every later test too.  Keras' own copy of each host batch to
        the GPU waits for the step before it in the same way."""
        if not self.built:
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

    def read(self) -> dict[str, np.ndarray | int]:
        """The steps recorded since the last read: one device-to-host copy, the rows derived here, in the
        buffer layout the other backends write on the device (the same quantities and flags)."""
        if not self.built:
            return {"buf": np.zeros((0, 0), np.float32), "count": 0, "halt": 0}
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
            rows, stops = self._derive(raw)
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

    def _derive(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The steps' buffer rows from their raw vectors (rows of ``r``, float64), and which stop the run:
        all rows at once (numpy per row would cost tens of microseconds a step)."""
        n = self.n_vars
        w_n, d_n = r[:, self.t_w : self.t_w + n], r[:, self.t_d : self.t_d + n]
        g_n = r[:, self.t_g : self.t_g + n]
        lr = r[:, self.t_lr]
        with np.errstate(all="ignore"):
            if self.is_loss_scaled:
                g_n = g_n / r[:, self.t_scale : self.t_scale + 1]
            if self.grad_unscale is not None:  # a static loss_scale_factor (see Recorder.grad_unscale)
                g_n = g_n * self.grad_unscale
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
        # the columns of RowLayout, in order
        cols = [gnorm[:, None], lr[:, None], flags[:, None].astype(np.float64), upd[:, None], g_n, var_upd]
        if self.layout.n_diag:
            cols += [r[:, -2:-1], np.sqrt(r[:, -1:] / self.v_size)]
        if self.layout.n_scale:
            cols.append(r[:, self.t_scale : self.t_scale + 1])
        return np.concatenate(cols, axis=1).astype(np.float32), stop

    def _buffer_device(self) -> str:
        return str(getattr(self.t_zero, "device", "") or "")


__all__ = ["TorchRecorder"]
