"""The recorded training trajectory: plain numpy arrays.

A :class:`Trace` is what the training engine records and what every check
reads.  It knows nothing of TensorFlow or pytest, so a trace from your own
training loop works too::

    from pytest_stability import Trace, run_checks
    trace = Trace(loss=np.array(my_losses), grad_norm=np.array(my_norms))
    for result in run_checks(trace):
        print(result.name, result.status)

Steps are 0-based optimizer steps: ``loss[k]`` is the raw minibatch loss of the
k-th update.  ``val_steps[j]`` is the number of updates done when
``val_loss[j]`` was measured (0 = before training).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

# re-exported: checks and reports use them
from ._floats import decode_float as decode_float
from ._floats import encode_float as encode_float

# Bits of Trace.nonfinite: which quantity was NaN/Inf at a step.
LOSS = 1
GRADS = 2
WEIGHTS = 4
OPTIMIZER = 8
INPUT = 16
#: A mixed-precision loss-scale overflow: the optimizer skipped the update and
#: lowered the scale.  Expected behaviour, never counted as instability.
OVERFLOW = 32

FLAG_NAMES = {
    LOSS: "loss",
    GRADS: "gradients",
    WEIGHTS: "weights",
    OPTIMIZER: "optimizer state",
    INPUT: "input batch",
    OVERFLOW: "loss-scale overflow",
}


def _array(value: Any, dtype: npt.DTypeLike, name: str, ndim: int = 1) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        # numpy reads None as NaN: a step that was not recorded would be judged as a NaN loss
        missing = next((i for i, v in enumerate(value) if v is None), None)
        if missing is not None:
            raise ValueError(
                f"Trace.{name}[{missing}] is None: give every step a number (float('nan') for a step whose "
                "value was NaN)"
            )
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:  # a string, a tensor that still requires grad, ...
        raise ValueError(
            f"Trace.{name} must be numbers, one per step (a list of floats or a numpy array; from a training "
            f"loop, record float(loss) or loss.item()); reading it as numbers raised {type(e).__name__}: {e}"
        ) from None
    if arr.ndim != ndim:
        raise ValueError(f"Trace.{name} must be a {ndim}-d array, received shape {arr.shape}")
    return arr


@dataclass
class Trace:
    """Per-step training data.

    Args:
        loss: raw minibatch loss per step (float).  Required.
        grad_norm: global L2 norm of the gradients before clipping, per step.
        var_grad_norms: per-variable gradient norms, shape ``(steps, n_vars)``.
        var_names: names of the variables, ``len == var_grad_norms.shape[1]``.
        nonfinite: per-step bitmask of :data:`LOSS`, :data:`GRADS`, ... .  When
            omitted it is derived from ``loss`` and ``grad_norm``.
        lr: learning rate in effect at each step.
        val_steps / val_loss: validation measurements.
        opt_stats: optional per-step optimizer statistics (diagnostics), e.g.
            ``{"v_median": ..., "g2_over_v_max": ...}`` for Adam.
        first_nonfinite: where non-finite values first appeared, when they did:
            ``{"step": k, "source": "weights", "variable": "dense/kernel"}``.
        update_ratio: per step, the global relative update ``|w_after - w_before| / |w_before|``
            over all trainable variables (0 when the step applied no update; NaN at a step that by design
            applies none: under ``gradient_accumulation_steps=n`` the optimizer only accumulates the gradients of
            the steps between its updates, and the checks judge the updates it made).
        var_update_ratio: the same per variable, shape ``(steps, n_vars)``, columns as
            ``var_grad_norms``.
        steps_planned: how many steps training was asked to run.
        optimizers: per optimizer, when the model's ``train_step`` applies more than one (a GAN's
            ``d_optimizer`` and ``g_optimizer``): ``{"grad_norm": ..., "update_ratio": ..., "lr": ...}``,
            each per step; ``grad_norm`` above is then the norm of all their gradients together.
        curves: every other scalar the ``train_step`` reports, per step, by name (a GAN's ``d_loss`` and
            ``g_loss``, a metric): the raw value of each step, not the running mean its logs show.
        info: facts about the run (optimizer name and config, model layers,
            device...), builtins only.
    """

    loss: np.ndarray
    grad_norm: np.ndarray | None = None
    var_grad_norms: np.ndarray | None = None
    var_names: tuple[str, ...] = ()
    nonfinite: np.ndarray | None = None
    lr: np.ndarray | None = None
    val_steps: np.ndarray | None = None
    val_loss: np.ndarray | None = None
    opt_stats: dict[str, np.ndarray] = field(default_factory=dict)
    first_nonfinite: dict[str, Any] | None = None
    update_ratio: np.ndarray | None = None
    var_update_ratio: np.ndarray | None = None
    steps_planned: int | None = None
    optimizers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A trace pickled by an older version (a saved benchmark run) lacks the fields added since: their defaults.
        for f in fields(self):
            if f.name not in state:
                # (typeshed types default_factory as a union with MISSING, which is not callable)
                state[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[operator]
        self.__dict__.update(state)

    def __post_init__(self) -> None:
        self.loss = _array(self.loss, np.float64, "loss")
        n = self.loss.shape[0]
        if self.grad_norm is not None:
            self.grad_norm = _array(self.grad_norm, np.float64, "grad_norm")
            self._same_length("grad_norm", self.grad_norm, n)
        if self.var_grad_norms is not None:
            self.var_grad_norms = _array(self.var_grad_norms, np.float64, "var_grad_norms", ndim=2)
            self._same_length("var_grad_norms", self.var_grad_norms, n)
            self.var_names = tuple(self.var_names) or tuple(f"var{i}" for i in range(self.var_grad_norms.shape[1]))
            if len(self.var_names) != self.var_grad_norms.shape[1]:
                raise ValueError(
                    f"Trace.var_names has {len(self.var_names)} names but var_grad_norms "
                    f"has {self.var_grad_norms.shape[1]} columns"
                )
        if self.nonfinite is None:
            mask = np.where(np.isfinite(self.loss), 0, LOSS)
            if self.grad_norm is not None:
                mask = mask | np.where(np.isfinite(self.grad_norm), 0, GRADS)
            self.nonfinite = mask.astype(np.int32)
        else:
            self.nonfinite = _array(self.nonfinite, np.int32, "nonfinite")
            self._same_length("nonfinite", self.nonfinite, n)
        if self.lr is not None:
            self.lr = _array(self.lr, np.float64, "lr")
            self._same_length("lr", self.lr, n)
        if self.update_ratio is not None:
            self.update_ratio = _array(self.update_ratio, np.float64, "update_ratio")
            self._same_length("update_ratio", self.update_ratio, n)
        if self.var_update_ratio is not None:
            self.var_update_ratio = _array(self.var_update_ratio, np.float64, "var_update_ratio", ndim=2)
            self._same_length("var_update_ratio", self.var_update_ratio, n)
        if (self.val_steps is None) != (self.val_loss is None):
            raise ValueError("Trace.val_steps and Trace.val_loss must be given together")
        if self.val_steps is not None:
            self.val_steps = _array(self.val_steps, np.int64, "val_steps")
            self.val_loss = _array(self.val_loss, np.float64, "val_loss")
            self._same_length("val_loss", self.val_loss, self.val_steps.shape[0])
        self.opt_stats = {k: self._same_length(k, _array(v, np.float64, k), n) for k, v in self.opt_stats.items()}
        self.optimizers = {
            name: {
                k: self._same_length(f"optimizers[{name!r}][{k!r}]", _array(v, np.float64, k), n)
                for k, v in stats.items()
            }
            for name, stats in self.optimizers.items()
        }
        self.curves = {
            name: self._same_length(f"curves[{name!r}]", _array(v, np.float64, name), n)
            for name, v in self.curves.items()
        }

    def __repr__(self) -> str:
        # One line, not the arrays (the dataclass' own repr printed every value of every field: thousands of
        # lines for a trace of a few hundred steps, in a REPL, a print or pytest's -vv assertion output)
        planned = f" of {self.steps_planned}" if self.steps_planned is not None else ""
        finite = self.loss[np.isfinite(self.loss)]
        loss = f", loss {finite[0]:.4g} -> {finite[-1]:.4g}" if finite.size else ""
        bad = int(np.count_nonzero(self.nonfinite)) if self.nonfinite is not None else 0
        nonfinite = f", {bad} non-finite step{'s' if bad != 1 else ''}" if bad else ""
        recorded = [
            name + (f"[{value.shape[1]}]" if isinstance(value, np.ndarray) and value.ndim == 2 else "")
            for name in ("grad_norm", "var_grad_norms", "lr", "update_ratio", "var_update_ratio", "val_loss")
            if (value := getattr(self, name)) is not None
        ]
        recorded += [
            f"{name}{{{', '.join(map(str, values))}}}"
            for name, values in (
                ("opt_stats", self.opt_stats),
                ("optimizers", self.optimizers),
                ("curves", self.curves),
            )
            if values
        ]
        return f"Trace(steps={self.steps}{planned}{loss}{nonfinite}, recorded: {', '.join(recorded) or 'loss only'})"

    @staticmethod
    def _same_length(name: str, arr: np.ndarray, n: int) -> np.ndarray:
        if arr.shape[0] != n:
            raise ValueError(f"Trace.{name} has {arr.shape[0]} steps, loss has {n}")
        return arr

    @property
    def steps(self) -> int:
        """Number of recorded optimizer steps."""
        return int(self.loss.shape[0])

    @property
    def has_validation(self) -> bool:
        return self.val_loss is not None and self.val_loss.shape[0] > 0

    @property
    def loss_recorded(self) -> bool:
        """Whether :attr:`loss` holds the raw loss of each step (False when the ``train_step`` does not update the
        model's loss tracker: then it is NaN throughout)."""
        return bool((self.info or {}).get("loss_recorded", True))

    @property
    def loss_curves(self) -> dict[str, np.ndarray]:
        """Every recorded loss, by name: ``loss`` when it was recorded, then each curve named like a loss
        (``d_loss``, ``g_loss``, ``kl_loss``)."""
        out = {"loss": self.loss} if self.loss_recorded or not self.curves else {}
        out.update({name: v for name, v in self.curves.items() if name != "loss" and "loss" in name})
        return out


def describe_flags(mask: int) -> list[str]:
    """Names of the quantities set in a :attr:`Trace.nonfinite` bitmask."""
    return [name for bit, name in FLAG_NAMES.items() if mask & bit]


def describe_samples(few: Mapping[str, Any]) -> str:
    """The samples of ``trace.info["target_outliers"]`` / ``["input_outliers"]`` (``samples``, ``values``,
    ``count``), as the note and the diagnosis name them: ``sample 77 (1e+04)``, ``samples 5 (-9999), 9 (5000) and 1
    more``."""
    samples = list(few["samples"])
    shown = ", ".join(f"{int(i)} ({float(v):.4g})" for i, v in zip(samples, few["values"], strict=False))
    more = int(few.get("count") or 0) - len(samples)
    return ("sample " if len(samples) == 1 else "samples ") + shown + (f" and {more} more" if more > 0 else "")
