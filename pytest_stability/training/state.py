"""The model's and its optimizers' state, copied to the host and put back (the what-if replay and the margin
probes re-run a finished run from its start, or from its end).

Imports the training layer's recorder module (Keras): reached only from a test that trains.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..framework_types import Model, Variable
from .recorders import Recorder, find_optimizers, host_numpy


def _optimizer_variables(model: Model, recs: Iterable[Recorder] = ()) -> list[Variable]:
    """The variables of every optimizer the model holds (see :func:`~.recorders.find_optimizers`), without
    the recorders' own."""
    mine: set[int] = set()
    for rec in recs:
        if rec.built:
            mine |= rec.own_ids()
    return [v for _, opt in find_optimizers(model) for v in opt.variables if id(v) not in mine]


def take_state(model: Model, recs: Iterable[Recorder] = ()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Host copies of every model variable and of the optimizers' own variables (not the recorders')."""
    return (
        [np.array(host_numpy(v.value)) for v in model.variables],
        [np.array(host_numpy(v.value)) for v in _optimizer_variables(model, recs)],
    )


def restore_state(model: Model, state: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Inverse of :func:`take_state`."""
    model_values, opt_values = state
    opt_vars = _optimizer_variables(model)
    if len(model_values) != len(model.variables) or len(opt_values) != len(opt_vars):
        raise RuntimeError(
            f"the saved state has {len(model_values)} model and {len(opt_values)} optimizer "
            f"variables, the model now {len(model.variables)} and {len(opt_vars)}"
        )
    for v, value in zip(model.variables, model_values, strict=True):
        v.assign(value)
    for v, value in zip(opt_vars, opt_values, strict=True):
        v.assign(value)


__all__ = ["restore_state", "take_state"]
