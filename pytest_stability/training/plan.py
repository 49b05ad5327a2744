"""The run's arithmetic: how many epochs ``fit`` is asked for, and how its steps are grouped into calls and
read-backs.  Pure: no Keras, no framework (tested in ``tests/unit/test_plan.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def epochs_for(run_steps: int, per_epoch: int | None, initial_epoch: int = 0) -> int:
    """The ``epochs`` to give ``fit`` so that it runs at least ``run_steps`` steps of ``per_epoch`` each (the
    plugin's read-back stops it after exactly ``run_steps``)."""
    return initial_epoch + max(1, math.ceil(run_steps / max(1, per_epoch or run_steps)))


@dataclass(frozen=True)
class Chunking:
    """How the steps are grouped.

    Attributes:
        chunk: steps between two read-backs (the recorder's buffer holds that many rows).
        spe: the ``steps_per_execution`` ``fit`` runs with.
        steps_per_call: steps one call of the train function runs (an epoch's end cuts a call short).
        virtual_call: PyTorch (one step a call): read back where TensorFlow's and JAX's calls of ``chunk``
            steps would end, else None.
    """

    chunk: int
    spe: int
    steps_per_call: int
    virtual_call: int | None


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
) -> Chunking:
    """The chunking of one ``fit``.

    One compiled call runs ``chunk`` steps (TensorFlow, JAX); PyTorch runs one step per call.  A user's callback
    that sees single batches (``batch_observers``) keeps the model's own ``steps_per_execution`` (``user_spe``),
    so that it sees the same batches as in plain fit; the recorder still reads back once per chunk.  With
    validation (``validates``), read-backs come at least every ``validate_every`` steps.  Under a distribution
    strategy ``fit`` runs one step a call.
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
    return Chunking(chunk, spe, steps_per_call, virtual_call)


__all__ = ["Chunking", "chunking", "epochs_for"]
