"""The model's and its optimizers' state, copied to the host and put back (the what-if replay and the margin
probes re-run a finished run from its start, or from its end).

Imports the training layer's recorder module (Keras): reached only from a test that trains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..framework_types import Model, Optimizer, Variable
from .keras_internals import build_optimizer
from .recorders import Recorder, find_optimizers, host_numpy


@dataclass(frozen=True)
class OptimizerState:
    """One optimizer's own variables (not the recorders'): their paths and host copies, and whether it was built
    (an optimizer that ``fit`` builds later, inside the first step, has only its iteration count and learning rate
    yet: its slots are put back at their initial values)."""

    name: str
    built: bool
    paths: tuple[str, ...]
    values: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class State:
    """Host copies of every model variable and of every optimizer's own variables."""

    model: tuple[np.ndarray, ...]
    optimizers: tuple[OptimizerState, ...]


def _own_variables(opt: Optimizer, mine: set[int]) -> list[Variable]:
    return [v for v in opt.variables if id(v) not in mine]


def take_state(model: Model, recs: Iterable[Recorder] = ()) -> State:
    """Host copies of every model variable and of the optimizers' own variables (not the recorders'), taken
    without building anything: an optimizer not built yet stays unbuilt, as in the user's own ``fit``."""
    mine: set[int] = set()
    for rec in recs:
        if rec.built:
            mine |= rec.own_ids()
    return State(
        tuple(np.array(host_numpy(v.value)) for v in model.variables),
        tuple(
            OptimizerState(
                name,
                bool(opt.built),
                tuple(v.path for v in own),
                tuple(np.array(host_numpy(v.value)) for v in own),
            )
            for name, opt in find_optimizers(model)
            for own in [_own_variables(opt, mine)]
        ),
    )


def _initial_values(opt: Optimizer) -> list[np.ndarray]:
    """The values an optimizer's variables had when it was built, in its variables' order: those of a twin made
    from its config and built for the same variables (the same variables in the same order), then dropped."""
    twin = type(opt).from_config(opt.get_config())
    build_optimizer(twin, opt._trainable_variables)
    return [np.array(host_numpy(v.value)) for v in twin.variables]


def _restore_optimizer(opt: Optimizer, saved: OptimizerState) -> None:
    now = _own_variables(opt, set())
    if len(now) == len(saved.values):
        for v, value in zip(now, saved.values, strict=True):
            v.assign(value)
        return
    if saved.built or not opt.built:
        raise RuntimeError(
            f"the saved state of optimizer {saved.name!r} has {len(saved.values)} variables, the optimizer now "
            f"{len(now)}"
        )
    # built after the state was taken (TensorFlow builds an optimizer in the first step of the train function):
    # the variables it had then (iterations, learning rate) as they were, the ones its build made (the slots) as
    # they were made
    initial = _initial_values(opt)
    paths = [v.path for v in now]
    kept = dict(zip(saved.paths, saved.values, strict=True))
    if len(initial) != len(now) or len(set(paths)) != len(paths) or not set(kept) <= set(paths):
        raise RuntimeError(f"the variables optimizer {saved.name!r} built cannot be put back to their initial values")
    for v, value in zip(now, initial, strict=True):
        v.assign(kept.get(v.path, value))


def restore_state(model: Model, state: State) -> None:
    """Inverse of :func:`take_state`."""
    opts = find_optimizers(model)
    if len(state.model) != len(model.variables) or len(state.optimizers) != len(opts):
        raise RuntimeError(
            f"the saved state has {len(state.model)} model variables and {len(state.optimizers)} optimizers, the "
            f"model now {len(model.variables)} and {len(opts)}"
        )
    for v, value in zip(model.variables, state.model, strict=True):
        v.assign(value)
    for (_, opt), saved in zip(opts, state.optimizers, strict=True):
        _restore_optimizer(opt, saved)


__all__ = ["OptimizerState", "State", "restore_state", "take_state"]
