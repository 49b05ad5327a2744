"""The run's arithmetic: how many epochs ``fit`` is asked for, how its steps are grouped into calls and
read-backs, and which steps update the weights under gradient accumulation.  Pure: no Keras, no framework (tested
in ``tests/unit/test_plan.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The most calls of the train function that aligning the last call may add (:func:`chunking`): a call costs
#: about a millisecond on TensorFlow, the retrace it saves 0.35 s on the smallest model and seconds on large ones.
ALIGN_MAX_EXTRA_CALLS = 200


def epochs_for(run_steps: int, per_epoch: int | None, initial_epoch: int = 0, pass_length: int | None = None) -> int:
    """The ``epochs`` to give ``fit`` so that it runs at least ``run_steps`` steps of ``per_epoch`` each (the
    plugin's read-back stops it after exactly ``run_steps``).

    ``pass_length``: the batches of one pass over finite data, when ``per_epoch`` is the user's
    ``steps_per_epoch``.  Keras then carries its data iterator from one epoch into the next and ends an epoch
    early where a pass ends ("Your input ran out of data"; the next epoch starts the next pass), so a pass of
    ``pass_length`` batches takes ``ceil(pass_length / per_epoch)`` epochs."""
    per_epoch = max(1, per_epoch or run_steps)
    if not pass_length:
        return initial_epoch + max(1, math.ceil(run_steps / per_epoch))
    passes, rest = divmod(run_steps, pass_length)
    return initial_epoch + max(1, passes * math.ceil(pass_length / per_epoch) + math.ceil(rest / per_epoch))


def short_epochs_at_pass_ends(per_epoch: int | None, pass_length: int | None) -> bool:
    """Whether a ``steps_per_epoch`` of ``per_epoch`` over finite data of ``pass_length`` batches makes Keras end
    some epochs early (see :func:`epochs_for`)."""
    return bool(per_epoch and pass_length and pass_length % per_epoch)


@dataclass(frozen=True)
class Chunking:
    """How the steps are grouped.

    Attributes:
        chunk: steps between two read-backs (the recorder's buffer holds that many rows).
        spe: the ``steps_per_execution`` ``fit`` runs with.
        steps_per_call: steps one call of the train function runs (an epoch's end cuts a call short).
        virtual_call: PyTorch (one step a call): read back where TensorFlow's and JAX's calls of ``chunk``
            steps would end, else None.
        read_every: calls of the train function between two read-backs: ``chunk // steps_per_call`` (a call
            runs at most ``steps_per_call`` steps, so the buffers never wrap), or more when the calls were
            shortened (see :func:`chunking`).  Left at 0, it is the former.
    """

    chunk: int
    spe: int
    steps_per_call: int
    virtual_call: int | None
    read_every: int = 0

    def __post_init__(self) -> None:
        if not self.read_every:
            object.__setattr__(self, "read_every", max(1, self.chunk // max(1, self.steps_per_call)))


def chunking(
    *,
    backend: str,
    readback_every: int,
    validate_every: int,
    validates: bool,
    user_spe: int = 1,
    batch_observers: bool = False,
    distributed: bool = False,
    user_steps_per_epoch: int = 0,
    per_epoch: int | None = None,
    run_steps: int = 0,
    data_ends_epochs: bool = True,
) -> Chunking:
    """The chunking of one ``fit``.

    One compiled call runs ``chunk`` steps (TensorFlow, JAX); PyTorch runs one step per call.  A user's callback
    that sees single batches (``batch_observers``) keeps the model's own ``steps_per_execution`` (``user_spe``),
    so that it sees the same batches as in plain fit; the recorder still reads back once per chunk.  With
    validation (``validates``), read-backs come at least every ``validate_every`` steps.  Under a distribution
    strategy ``fit`` runs one step a call.

    On TensorFlow, where the number of steps of a call is compiled into the train function, a run whose
    ``run_steps`` end inside a call would trace the step again for a shorter last call (0.35 s on a tiny model,
    seconds on a large one).  When every call runs the same number of steps (an epoch is one call, or whole
    calls fill it) and ``per_epoch`` is known, the calls are made shorter instead, by a divisor of their length
    that the last call's end falls on; every earlier call boundary stays one, and the read-backs (with them the
    validation points) fall at the same steps, because ``read_every`` counts the shorter calls.  Only when that
    adds at most :data:`ALIGN_MAX_EXTRA_CALLS` calls.
    """
    chunk = max(int(readback_every), user_spe)
    if validates:
        chunk = max(min(chunk, int(validate_every)), user_spe)
    spe = 1 if backend == "torch" or distributed else chunk
    if (user_spe > 1 or batch_observers) and backend != "torch":
        spe = user_spe
    elif spe > 1 and user_steps_per_epoch:
        # Keras starts an epoch's calls every steps_per_execution steps up to the user's steps_per_epoch, and a
        # call on data that does not end there runs all its steps: whole calls must fill the epoch exactly
        spe = max(d for d in range(1, min(spe, user_steps_per_epoch) + 1) if user_steps_per_epoch % d == 0)
    chunk = max(chunk, spe)  # Keras' fit reads a chunk's callbacks once
    steps_per_call = spe if not per_epoch else max(1, min(spe, int(per_epoch)))
    virtual_call = None
    if backend == "torch":
        virtual_call = steps_per_call = chunk if not per_epoch else max(1, min(chunk, int(per_epoch)))
    aligned = None
    if backend == "tensorflow" and not distributed and not (user_spe > 1 or batch_observers):
        aligned = _aligned_call(spe, int(per_epoch or 0), int(run_steps), data_ends_epochs)
    if aligned is not None:
        return Chunking(chunk, aligned, aligned, None, (chunk // steps_per_call) * (steps_per_call // aligned))
    return Chunking(chunk, spe, steps_per_call, virtual_call)


def _aligned_call(spe: int, per_epoch: int, run_steps: int, data_ends_epochs: bool) -> int | None:
    """The shorter call length on which the run's last call ends, or None (no shorter call needed, or none
    that keeps the calls equal and adds at most ``ALIGN_MAX_EXTRA_CALLS``); see :func:`chunking`."""
    if spe <= 1 or per_epoch <= 0 or run_steps <= 0:
        return None
    if data_ends_epochs and per_epoch <= spe:
        length = per_epoch  # an epoch is one call
    elif per_epoch % spe == 0:
        length = spe  # whole calls fill an epoch
    else:
        return None  # an epoch's last call is shorter than the others
    last = run_steps - ((run_steps - 1) // per_epoch) * per_epoch  # where the run ends in its epoch, 1..per_epoch
    if last % length == 0:
        return None  # it ends on a call's end already
    shorter = math.gcd(last, length)
    if run_steps // shorter - run_steps // length > ALIGN_MAX_EXTRA_CALLS:
        return None
    return shorter


def accumulation_steps(optimizer: object) -> int:
    """The optimizer's ``gradient_accumulation_steps`` (Keras 3: it adds each step's gradients to accumulators and
    updates the weights at every n-th step only, with their mean), 1 without."""
    n = getattr(optimizer, "gradient_accumulation_steps", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def accumulating_steps(update: np.ndarray, n: int) -> np.ndarray:
    """Per step, whether it only accumulated gradients under ``gradient_accumulation_steps=n``: its update is
    exactly 0 and it is off the phase of the steps that updated the weights (the commonest index modulo ``n`` among
    the steps whose update is not 0; the optimizer's iteration count at the start sets it).  A step off that phase
    whose weights did change (a callback of the user's that set them) is not masked, and none is when no step
    updated: there is no phase to take, and a run whose weights never moved is judged as such."""
    update = np.asarray(update, dtype=np.float64)
    mask = np.zeros(update.shape[0], dtype=bool)
    moved = np.flatnonzero(np.isfinite(update) & (update != 0))
    if n <= 1 or not moved.size:
        return mask
    phase = int(np.argmax(np.bincount(moved % n, minlength=n)))
    mask[(np.arange(update.shape[0]) % n != phase) & (update == 0)] = True
    return mask


__all__ = [
    "ALIGN_MAX_EXTRA_CALLS",
    "Chunking",
    "accumulating_steps",
    "accumulation_steps",
    "chunking",
    "epochs_for",
    "short_epochs_at_pass_ends",
]
