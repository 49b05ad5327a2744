"""Every other scalar a ``train_step`` reports through metrics of the model's own, recorded per step: a GAN's
``d_loss`` and ``g_loss``, a VAE's ``kl_loss``.

``logs`` show each as a running mean over the epoch (Keras' ``Mean`` metrics), which hides a spike as it hides
one in the loss.  Each such metric (one with a ``total`` and a ``count``: ``keras.metrics.Mean`` and its kin)
gets its ``update_state`` wrapped on the instance:
the step's raw value is what the update added to the total over what it added to the count, written on the
device into a ``(chunk, curves)`` buffer and read back with the recorder's buffers, once per chunk.  The model's
own loss tracker is the recorder's (see :mod:`.recorders`), not a curve.

What ``compile`` set up is no curve: the compiled metrics (``metrics=["accuracy"]``) and the per-output loss
trackers of a model with several outputs.  ``fit`` builds those when it starts, after the curves are installed, so
a model's first run could not record them while a later one (the what-if replay, a model fit before) would: its
verdict would then judge per-output losses its first run did not.  The total loss, which they add up to, is
recorded and judged either way.

Under JAX each metric's buffer rides in the state ``fit`` threads through each step as one of that metric's own
variables (so that a ``train_step`` that updates each metric in a scope of its own, ``stateless_update_state``,
reaches it; its ``reset_state``, which Keras calls at each epoch's start and before each evaluation, leaves the
buffer as it is); on TensorFlow they stand alone; PyTorch keeps each step's value in a list on the device.
:meth:`Curves.uninstall` puts every metric back as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..framework_types import Metric, Model, Tensor, Variable
from .recorders.common import ABSENT, host_numpy, index_of


def curve_metrics(model: Model) -> list[tuple[str, Metric]]:
    """``(name, metric)`` of each metric of the model whose per-step value can be recorded: metrics with a
    ``total`` and a ``count`` (``keras.metrics.Mean`` and its kin), but the model's own loss tracker and what
    ``compile`` set up (the compiled metrics, the per-output loss trackers; see the module's docstring)."""
    import keras

    tracker = getattr(model, "_loss_tracker", None)
    found: list[tuple[str, Metric]] = []
    # the per-output loss trackers, once fit has built them
    seen: set[int] = {id(m) for m in getattr(getattr(model, "_compile_loss", None), "metrics", None) or ()}

    def visit(metric: Metric) -> None:
        if metric is tracker or id(metric) in seen or type(metric).__name__ == "CompileMetrics":
            return
        seen.add(id(metric))
        total, count = getattr(metric, "total", None), getattr(metric, "count", None)
        if isinstance(total, keras.Variable) and isinstance(count, keras.Variable):
            name = str(metric.name)
            taken = {n for n, _ in found}
            k = 1
            while name in taken:
                k += 1
                name = f"{metric.name}_{k}"
            found.append((name, metric))

    try:
        metrics = list(model.metrics)
    except Exception:  # a model whose metrics property fails outside fit: nothing to record
        return []
    for metric in metrics:
        visit(metric)
    return found


class Curves:
    """Records the per-step value of each of :func:`curve_metrics` during one ``fit``.

    Args:
        model: the model.
        chunk: rows the buffer holds: ``fit`` reads back at least every ``chunk`` steps.
    """

    def __init__(self, model: Model, *, chunk: int) -> None:
        import keras

        self.keras = keras
        self.ops = keras.ops
        self.backend = keras.backend.backend()
        self.model = model
        self.chunk = int(chunk)
        self.metrics = curve_metrics(model)
        self.names = tuple(name for name, _ in self.metrics)
        #: switched off while Keras evaluates (its test step updates the same metrics)
        self.recording = True
        self._patched: list[tuple[object, str, object]] = []
        #: per metric: its buffer (JAX: its count in one more row) and, on TensorFlow, its count
        self.bufs: list[Variable] = []
        self.counts: list[Variable] = []
        self.taken = np.zeros(len(self.names), np.int64)
        self.values: list[list[float]] = [[] for _ in self.names]
        self.t_values: list[list[Tensor]] = [[] for _ in self.names]

    # -- install / uninstall ---------------------------------------------------------

    def install(self) -> None:
        if not self.metrics:
            return
        for j, (_, metric) in enumerate(self.metrics):
            if self.backend == "jax":  # the count rides in one more slot, after the values (float32: exact to 2**24)
                buf = self.keras.Variable(
                    np.zeros((self.chunk + 1,), np.float32), dtype="float32", trainable=False, name="stability_curve"
                )
                metric._variables.append(buf)
                self.bufs.append(buf)
                self._patch(metric, "reset_state", self._keep_on_reset(buf, metric.reset_state))
            elif self.backend == "tensorflow":
                self.bufs.append(
                    self.keras.Variable(
                        np.zeros((self.chunk,), np.float32), dtype="float32", trainable=False, name="stability_curve"
                    )
                )
                self.counts.append(self.keras.Variable(0, dtype="int32", trainable=False, name="stability_curve_count"))
            self._patch(metric, "update_state", self._update_state(j, metric, metric.update_state))

    def uninstall(self) -> None:
        for obj, name, previous in reversed(self._patched):
            if previous is ABSENT:
                with contextlib.suppress(AttributeError):  # already gone
                    delattr(obj, name)
            else:
                object.__setattr__(obj, name, previous)
        self._patched.clear()
        if self.backend == "jax":
            # after an install that stopped part-way, fewer buffers than metrics
            for (_, metric), buf in zip(self.metrics, self.bufs, strict=False):
                k = index_of(metric._variables, buf)
                if k is not None:
                    del metric._variables[k]

    def _patch(self, obj: object, name: str, fn: Callable[..., Any]) -> None:
        previous = vars(obj).get(name, ABSENT)
        object.__setattr__(obj, name, fn)
        self._patched.append((obj, name, previous))

    @staticmethod
    def _keep_on_reset(buf: Variable, original: Callable[..., Any]) -> Callable[..., Any]:
        def reset_state() -> Any:
            kept = buf.value
            out = original()
            buf.assign(kept)
            return out

        return reset_state

    # -- the step's value ------------------------------------------------------------

    def _update_state(self, j: int, metric: Metric, original: Callable[..., Any]) -> Callable[..., Any]:
        ops = self.ops
        f32 = "float32"

        def raw(t0: Tensor, c0: Tensor) -> Tensor:
            dt = ops.cast(metric.total.value, f32) - t0
            dc = ops.cast(metric.count.value, f32) - c0
            return ops.where(
                ops.equal(dc, 0.0),
                ops.full_like(dt, float("nan")),
                dt / ops.where(ops.equal(dc, 0.0), ops.ones_like(dc), dc),
            )

        if self.backend == "torch":
            import torch

            def torch_update_state(*args: Any, **kwargs: Any) -> Any:
                if not self.recording:
                    return original(*args, **kwargs)
                with torch.no_grad():
                    t0 = metric.total.value.detach().to(torch.float32).clone()
                    c0 = metric.count.value.detach().to(torch.float32).clone()
                out = original(*args, **kwargs)
                with torch.no_grad():
                    dt = metric.total.value.detach().to(torch.float32) - t0
                    dc = metric.count.value.detach().to(torch.float32) - c0
                    self.t_values[j].append(dt / dc)  # 0/0 is NaN: no count added
                return out

            return torch_update_state

        def update_state(*args: Any, **kwargs: Any) -> Any:
            if not self.recording:  # read when the step is traced: evaluate's test step records nothing
                return original(*args, **kwargs)
            t0 = ops.cast(ops.copy(metric.total.value), f32)
            c0 = ops.cast(ops.copy(metric.count.value), f32)
            out = original(*args, **kwargs)
            value = ops.reshape(raw(t0, c0), (1,))
            buf_var = self.bufs[j]
            if self.backend == "jax":
                buf = buf_var.value
                count = buf[self.chunk]
                buf = ops.slice_update(buf, ops.reshape(ops.cast(ops.mod(count, self.chunk), "int32"), (1,)), value)
                buf_var.assign(ops.slice_update(buf, (self.chunk,), ops.reshape(count + 1.0, (1,))))
            else:
                count_var = self.counts[j]
                count = count_var.value
                buf_var.assign(ops.slice_update(buf_var.value, ops.reshape(ops.mod(count, self.chunk), (1,)), value))
                count_var.assign(count + 1)
            return out

        return update_state

    # -- read back -------------------------------------------------------------------

    def read(self) -> None:
        """Takes the values recorded since the last read (at most ``chunk`` a curve)."""
        if not self.metrics:
            return
        if self.backend == "torch":
            for j, pending in enumerate(self.t_values):
                if pending:
                    import torch

                    self.values[j].extend(torch.stack(pending).cpu().tolist())
                    pending.clear()
            return
        state = getattr(self.model, "_jax_state", None) if self.backend == "jax" else None
        variables = self.model.metrics_variables if state else []
        for j in range(len(self.names)):
            if self.backend == "jax":
                k = index_of(variables, self.bufs[j]) if state else None
                buf = np.asarray(
                    state["metrics_variables"][k]
                    if state is not None and k is not None
                    else host_numpy(self.bufs[j].value)
                )
                values, count = buf[: self.chunk], int(buf[self.chunk])
            else:
                values, count = host_numpy(self.bufs[j].value), int(host_numpy(self.counts[j].value))
            new = count - int(self.taken[j])
            if new > self.chunk:  # more values than the buffer holds (updated several times a step)
                new = self.chunk
                self.taken[j] = count - new
            slots = [(int(self.taken[j]) + k) % self.chunk for k in range(new)]
            self.values[j].extend(values[slots].astype(np.float64).tolist())
            self.taken[j] = count

    def per_step(self, steps: int, keras_steps: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Each curve's value at each of the first ``steps`` steps, and notes on the curves that are not.

        A metric updated once a step has one value per step Keras ran (``keras_steps``, at least ``steps``);
        one updated ``k`` times a step, its last value of each step."""
        out: dict[str, np.ndarray] = {}
        notes: list[str] = []
        for name, values in zip(self.names, self.values, strict=True):
            if not values and not steps:
                continue
            k = max(1, round(len(values) / keras_steps)) if keras_steps else 1
            picked = np.asarray(values[k - 1 :: k], dtype=np.float64)[:steps]
            if picked.shape[0] < steps:
                notes.append(
                    f"{name} was not updated in every step ({len(values)} values in {keras_steps} steps): "
                    "it is not recorded per step"
                )
                continue
            out[name] = picked
        return out, notes


__all__ = ["Curves", "curve_metrics"]
