"""A skip-step guard for any Keras optimizer, on every backend: the update of a step whose gradient norm is an
outlier is skipped.

Large-model trainers guard their runs this way (OLMo-core's ``SkipStepOptimizer``, Levanter's
``SkipStepConfig``, MaxText's ``skip_step_on_spikes``): an update is skipped when the global gradient norm is
above the mean plus ``sigmas`` standard deviations of the last ``window`` steps' norms (6 and 128 there),
or not finite.  Every step's norm enters the window, skipped or not, so a lasting change of scale is skipped
for a step or two, not for the rest of the run.  The what-if replay (:mod:`.whatif`) re-runs a failing run
with the guard to say whether it would have saved it; users add it to their own optimizer in one line::

    from pytest_stability import SkipStepGuard

    model.compile(optimizer=SkipStepGuard(keras.optimizers.Adam(1e-3)), loss=...)

Those trainers also skip on the loss; a Keras optimizer never sees the loss (``apply`` is given gradients), so
this guard judges the gradient norm alone, which a loss spike's step carries too.  Built like Keras'
``LossScaleOptimizer`` (it wraps the optimizer, ``apply`` and ``stateless_apply`` with ``ops.cond``), so it runs
under TensorFlow, JAX and PyTorch alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from ..framework_types import Optimizer, Tensor, Variable


class SkipStepGuard(keras.optimizers.Optimizer):  # type: ignore[misc]  # Keras is untyped
    """Wraps ``inner_optimizer``; skips an update whose gradient norm is an outlier of the recent ones.

    Args:
        inner_optimizer: the optimizer that applies the updates.
        window: how many of the latest steps' gradient norms the rule looks at (skipped steps' included).
        sigmas: an update is skipped when its gradient norm exceeds the window's mean by this many standard
            deviations.
        min_history: updates applied before the rule judges any (default: half the window).

    Attributes:
        skipped: a variable counting the updates skipped so far.
    """

    built: bool  # Keras' Optimizer sets it; declared for the type checker, whose view of Keras is Any

    def __init__(
        self,
        inner_optimizer: Optimizer,
        window: int = 128,
        sigmas: float = 6.0,
        min_history: int | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"SkipStepGuard wraps a keras.optimizers.Optimizer; received {type(inner_optimizer).__name__}"
            )
        if int(window) < 2 or not float(sigmas) > 0:
            raise ValueError(
                f"SkipStepGuard needs window >= 2 and sigmas > 0; received window={window!r}, sigmas={sigmas!r}"
            )
        super().__init__(learning_rate=0.0, name=name or f"skip_step_{inner_optimizer.name}")
        self.inner_optimizer = inner_optimizer
        self.window = int(window)
        self.sigmas = float(sigmas)
        self.min_history = int(min_history) if min_history is not None else self.window // 2

    def build(self, var_list: Sequence[Variable] | None) -> None:
        self.norms = self.add_variable(
            shape=(self.window,),
            dtype="float32",
            initializer=keras.initializers.Zeros(),
            aggregation="none",
            name="norms",
        )
        self.seen = self.add_variable(
            shape=(), dtype="float32", initializer=keras.initializers.Zeros(), aggregation="none", name="seen"
        )
        self.skipped = self.add_variable(
            shape=(), dtype="float32", initializer=keras.initializers.Zeros(), aggregation="none", name="skipped"
        )
        if not self.inner_optimizer.built:  # a trained optimizer keeps its state when it is guarded
            self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables) + list(self.inner_optimizer.variables)

    # -- the rule ------------------------------------------------------------------

    def _norm(self, grads: list[Tensor]) -> Tensor:
        squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads if g is not None]
        return ops.sqrt(ops.sum(ops.stack(squares))) if squares else ops.convert_to_tensor(0.0, "float32")

    def _outlier(self, norm: Tensor, norms: Tensor, seen: Tensor) -> Tensor:
        """Whether ``norm`` is to be skipped, given the window's norms and how many updates it has seen."""
        n = ops.minimum(seen, float(self.window))
        filled = ops.cast(ops.arange(self.window), "float32") < n
        count = ops.maximum(n, 1.0)
        mean = ops.sum(ops.where(filled, norms, 0.0)) / count
        var = ops.sum(ops.where(filled, ops.square(norms - mean), 0.0)) / count
        judged = n >= float(self.min_history)
        above = ops.greater(norm, mean + self.sigmas * ops.sqrt(var))
        return ops.logical_or(ops.logical_not(ops.isfinite(norm)), ops.logical_and(judged, above))

    def _remember(self, norm: Tensor, norms: Tensor, seen: Tensor) -> tuple[Tensor, Tensor]:
        """The window with ``norm`` in it, whether its update is applied or skipped (as Levanter and OLMo-core keep
        every step's): a lasting change of scale is skipped for a few steps, not for the rest of the run.  A
        non-finite norm is not remembered."""
        finite = ops.isfinite(norm)
        slot = ops.cast(ops.mod(seen, float(self.window)), "int32")
        updated = ops.slice_update(norms, ops.reshape(slot, (1,)), ops.reshape(ops.where(finite, norm, 0.0), (1,)))
        return ops.where(finite, updated, norms), ops.where(finite, seen + 1.0, seen)

    # -- TensorFlow and PyTorch -------------------------------------------------------

    def apply(self, grads: Sequence[Tensor], trainable_variables: Sequence[Variable] | None = None) -> None:
        grads = list(grads)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        norm = self._norm(grads)
        skip = self._outlier(norm, self.norms.value, self.seen.value)
        norms, seen = self._remember(norm, self.norms.value, self.seen.value)

        def applied() -> Tensor:
            self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)
            return ops.convert_to_tensor(0, "int32")

        def skipped() -> Tensor:
            self.skipped.assign(self.skipped.value + 1.0)
            return ops.convert_to_tensor(0, "int32")

        ops.cond(skip, skipped, applied)
        self.norms.assign(norms)
        self.seen.assign(seen)

    # -- JAX ------------------------------------------------------------------------------

    def stateless_apply(
        self, optimizer_variables: Sequence[Tensor], grads: Sequence[Tensor], trainable_variables: Sequence[Tensor]
    ) -> Any:
        own = list(optimizer_variables)[: len(self._variables)]
        inner = list(optimizer_variables)[len(self._variables) :]
        index = {id(v): i for i, v in enumerate(self._variables)}
        norms, seen, skipped = (own[index[id(v)]] for v in (self.norms, self.seen, self.skipped))
        norm = self._norm(list(grads))
        skip = self._outlier(norm, norms, seen)
        new_norms, new_seen = self._remember(norm, norms, seen)
        remembered = list(own)
        remembered[index[id(self.norms)]], remembered[index[id(self.seen)]] = new_norms, new_seen

        def applied() -> tuple[list[Tensor], list[Tensor]]:
            new_trainable, new_inner = self.inner_optimizer.stateless_apply(inner, grads, trainable_variables)
            return list(new_trainable), remembered + list(new_inner)

        def skipped_step() -> tuple[list[Tensor], list[Tensor]]:
            new_own = list(remembered)
            new_own[index[id(self.skipped)]] = skipped + 1.0
            return list(trainable_variables), new_own + list(inner)

        return ops.cond(skip, skipped_step, applied)

    # -- what the model and Keras read through the optimizer ------------------------------

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Variable:
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list: list[Variable]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "window": self.window,
            "sigmas": self.sigmas,
            "min_history": self.min_history,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> SkipStepGuard:
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


__all__ = ["SkipStepGuard"]
