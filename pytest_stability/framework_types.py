"""Names for the framework objects the plugin handles: a Keras model, its optimizer, a backend tensor...

Keras, TensorFlow, JAX and PyTorch are untyped for the type checker here (pyproject.toml: their modules are
not followed), so every object they make is ``Any`` to it, and each name below is an alias of ``Any``.  The
names exist for the reader: ``model: Model`` says what the value is where ``model: Any`` would not.  The
modules themselves (``keras``, ``tf``, ``jax``, ``torch``), imported lazily and passed around, are typed
``types.ModuleType``.

Nothing here imports a framework: the module loads in the unit tier.
"""

from __future__ import annotations

from typing import Any, TypeAlias

Model: TypeAlias = Any
"""A ``keras.Model`` (functional, sequential or subclassed), compiled by the user."""

Layer: TypeAlias = Any
"""A ``keras.layers.Layer`` (a model's layer)."""

Metric: TypeAlias = Any
"""A ``keras.metrics.Metric``: a compiled metric, or the model's loss tracker (a ``Mean``)."""

Optimizer: TypeAlias = Any
"""A Keras optimizer (``keras.optimizers.Optimizer``), possibly wrapped (``LossScaleOptimizer``)."""

Callback: TypeAlias = Any
"""A ``keras.callbacks.Callback``: the user's, or one of the plugin's."""

Variable: TypeAlias = Any
"""A ``keras.Variable`` (a weight, an optimizer slot, a metric's state)."""

Tensor: TypeAlias = Any
"""A backend tensor (``tf.Tensor``, ``jax.Array``, ``torch.Tensor``) or a Keras variable's value."""

Data: TypeAlias = Any
"""What a user passes as ``x`` / ``y`` / ``sample_weight`` / validation data: a numpy array, a backend tensor, a
dict, list or tuple of them, a ``tf.data.Dataset``, a ``keras.utils.PyDataset`` or a generator."""
