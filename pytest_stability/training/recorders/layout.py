"""The recorded row, the same on every backend, and its host side: the rows read back, step by step.

Every recorder writes one row per optimizer step (TensorFlow and JAX on the device, PyTorch derives it on the
host at read-back), laid out by :class:`RowLayout`::

    [grad_norm, lr, flags, update | per-variable grad norms | per-variable update ratios | extras]

the extras being Adam's ``g2_over_v_max`` and ``v_rms`` (``diagnostics``) and the loss scale (under loss
scaling).  Whoever reads rows (the read-back, the engine) names the columns through the layout, never by index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...trace import GRADS, INPUT, LOSS, OPTIMIZER, OVERFLOW, WEIGHTS

#: columns of a row before the per-variable blocks
COL_GNORM, COL_LR, COL_FLAGS, COL_UPDATE = 0, 1, 2, 3
N_FIXED = 4
#: device-side stop rule: these bits stop the run (the update of that step is kept)
STOP_BITS = GRADS | WEIGHTS | OPTIMIZER | INPUT


@dataclass(frozen=True)
class RowLayout:
    """The columns of one optimizer's rows.  A recorder holds ``RowLayout()`` (the fixed columns alone) until
    it is built, then the layout of its optimizer's variables.

    Args:
        n_vars: the optimizer's trainable variables (one gradient norm and one update ratio each).
        n_diag: Adam's slot statistics (2 with ``diagnostics``, else 0).
        n_scale: the loss scale each step's gradients carried (1 under loss scaling, else 0).
    """

    n_vars: int = 0
    n_diag: int = 0
    n_scale: int = 0

    #: the global gradient norm (unscaled), before clipping
    GNORM: ClassVar[int] = COL_GNORM
    #: the learning rate in effect
    LR: ClassVar[int] = COL_LR
    #: the step's non-finite bits (:mod:`pytest_stability.trace`), as a float
    FLAGS: ClassVar[int] = COL_FLAGS
    #: the relative update ``|w_after - w_before| / |w_before|`` over every variable
    UPDATE: ClassVar[int] = COL_UPDATE
    #: the number of fixed columns
    FIXED: ClassVar[int] = N_FIXED

    @property
    def width(self) -> int:
        return N_FIXED + 2 * self.n_vars + self.n_diag + self.n_scale

    @property
    def var_gnorm(self) -> slice:
        """Each variable's gradient norm (unscaled)."""
        return slice(N_FIXED, N_FIXED + self.n_vars)

    @property
    def var_update(self) -> slice:
        """Each variable's relative update."""
        return slice(N_FIXED + self.n_vars, N_FIXED + 2 * self.n_vars)

    @property
    def extras(self) -> slice:
        """The columns after the per-variable blocks (see :attr:`extra_names`)."""
        return slice(N_FIXED + 2 * self.n_vars, self.width)

    @property
    def extra_names(self) -> tuple[str, ...]:
        """The extra columns' names, in order."""
        return ("g2_over_v_max", "v_rms")[: self.n_diag] + ("loss_scale",) * self.n_scale

    def extra_columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The extra columns of ``rows``, by name."""
        start = self.extras.start
        return {name: rows[:, start + k] for k, name in enumerate(self.extra_names)}


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
    "COL_FLAGS",
    "COL_GNORM",
    "COL_LR",
    "COL_UPDATE",
    "N_FIXED",
    "STOP_BITS",
    "ChunkRows",
    "RowLayout",
    "host_flags",
]
