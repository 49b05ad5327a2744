"""Facts about the user's compiled model that the report and the diagnosis read.

:func:`output_wiring` finds the commonest wiring bugs of a Keras classifier's output, which training survives,
badly, and which a learning-rate fix would only treat the symptoms of:

* a loss that takes probabilities (a cross-entropy with ``from_logits=False``, Keras' default) on an output
  layer without a sigmoid or softmax (:func:`probabilities_from_unbounded_output`).  Keras then clips the
  outputs to [1e-7, 1 - 1e-7] inside the loss: an output beyond gets no gradient, and near the edges the
  gradient of ``-log(p)`` reaches 1e7;
* a softmax over a single unit (:func:`softmax_over_one_unit`): it is 1 whatever its input, so no gradient
  reaches the model.  On TensorFlow, Keras' ``binary_crossentropy`` computes from the logits under a softmax or
  sigmoid, so the same model trains there as if the activation were a sigmoid, and not on JAX or PyTorch;
* a loss compiled with ``from_logits=True`` on an output layer whose sigmoid or softmax makes probabilities
  (:func:`logits_from_probabilities`): on JAX and PyTorch the loss reads the probabilities, in (0, 1), as logits,
  so it cannot fall below a floor (over K classes under a softmax ``ln(1 + (K - 1)/e)``) and its gradients shrink;
  TensorFlow's Keras takes the logits under the activation instead, with a warning, so the same model trains as
  intended there and not on the other backends;
* a regression loss on an output whose activation bounds it (a sigmoid's (0, 1), a tanh's (-1, 1)), with targets
  outside that range (:func:`bounded_output_misses_targets`): the model cannot reach them, and chasing them
  saturates the activation (the model outputs its bound and the loss barely moves).

Imports no framework: the model is read through its attributes (``loss``, ``layers``, ``outputs``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..framework_types import Layer, Model, Tensor

#: Keras' losses that take probabilities unless ``from_logits=True``: the name ``compile`` takes -> the class,
#: and the activation whose outputs they take
PROBABILITY_LOSSES = {
    "binary_crossentropy": ("BinaryCrossentropy", "sigmoid"),
    "binary_focal_crossentropy": ("BinaryFocalCrossentropy", "sigmoid"),
    "categorical_crossentropy": ("CategoricalCrossentropy", "softmax"),
    "categorical_focal_crossentropy": ("CategoricalFocalCrossentropy", "softmax"),
    "sparse_categorical_crossentropy": ("SparseCategoricalCrossentropy", "softmax"),
}
_BY_CLASS = {cls: name for name, (cls, _) in PROBABILITY_LOSSES.items()}

#: activations known to leave [0, 1] (a user's own function is not judged)
UNBOUNDED = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "glu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "mish",
        "softplus",
        "softsign",
        "sparse_plus",
        "squareplus",
        "tanh",
        "hard_tanh",
        "tanh_shrink",
        "exponential",
        "log_softmax",
        "log_sigmoid",
    }
)

#: output activations whose values stay within a range: (low, high)
BOUNDED = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
}
#: Keras' regression losses: the name ``compile`` takes -> the class
REGRESSION_LOSSES = {
    "mse": "MeanSquaredError",
    "mean_squared_error": "MeanSquaredError",
    "mae": "MeanAbsoluteError",
    "mean_absolute_error": "MeanAbsoluteError",
    "huber": "Huber",
    "log_cosh": "LogCosh",
    "mape": "MeanAbsolutePercentageError",
    "mean_absolute_percentage_error": "MeanAbsolutePercentageError",
    "msle": "MeanSquaredLogarithmicError",
    "mean_squared_logarithmic_error": "MeanSquaredLogarithmicError",
}
#: the fraction of the targets outside a bounded output's range from which the model is said not to reach them
OUT_OF_RANGE = 0.1

#: layers that only reshape, crop or drop values: the layer before them made the output
PASSTHROUGH = frozenset(
    {
        "Reshape",
        "Flatten",
        "Permute",
        "Identity",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
    }
)


def optimizer_config_silently(optimizer: object) -> dict[str, Any]:
    """``optimizer.get_config()``, read without showing a warning ({} when it cannot be read): the user did not
    ask for the plugin's read, and nothing it warns about is theirs.  Keras' ``get_config`` reads a learning-rate
    variable with ``np.array(variable)``, which numpy 2 warns about for JAX's variables, and serialises a
    learning rate given as a lambda with a warning that it is unsafe."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = optimizer.get_config()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - exotic optimizers
        return {}
    return config if isinstance(config, dict) else {}


#: Keras' callbacks that set the optimizer's learning rate during ``fit``, and the settings of each that a
#: diagnosis quotes
RATE_CALLBACKS: dict[str, tuple[str, ...]] = {
    "ReduceLROnPlateau": ("monitor", "factor", "patience", "cooldown", "min_lr"),
    "LearningRateScheduler": (),
}


def rate_callbacks(callbacks: list[object]) -> list[dict[str, Any]]:
    """The user's callbacks that set the learning rate during ``fit``: Keras' ``ReduceLROnPlateau`` and
    ``LearningRateScheduler``, subclasses included, each as ``{"callback": its class's name, "kind": the Keras
    class it is, and its settings of RATE_CALLBACKS}`` (builtins only).  A callback of another class that sets
    the rate is not known here: the diagnosis says the rate was set from outside the optimizer."""
    found: list[dict[str, Any]] = []
    for callback in callbacks:
        kind = next(
            (
                cls.__name__
                for cls in type(callback).__mro__
                if cls.__name__ in RATE_CALLBACKS and str(cls.__module__).startswith("keras")
            ),
            None,
        )
        if kind is None:
            continue
        entry: dict[str, Any] = {"callback": type(callback).__name__, "kind": kind}
        for key in RATE_CALLBACKS[kind]:
            value = getattr(callback, key, None)
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                entry[key] = value
        found.append(entry)
    return found


def _single_loss(loss: object) -> object:
    """The one loss ``compile`` was given, also as a list or dict of one; several losses are returned as given."""
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        return loss[0]
    if isinstance(loss, dict) and len(loss) == 1:
        return next(iter(loss.values()))
    return loss


def _logits_loss(loss: object) -> tuple[str, str, str] | None:
    """``(name, class, activation)`` of a compiled cross-entropy instance with ``from_logits=True``; None for any
    other loss (a name or function cannot say from_logits)."""
    loss = _single_loss(loss)
    name = _BY_CLASS.get(type(loss).__name__)
    if name is None or not str(type(loss).__module__).startswith("keras"):
        return None
    try:
        if not getattr(loss, "get_config")().get("from_logits"):  # noqa: B009 - loss is any object
            return None
    except Exception:  # a loss whose config cannot be read: nothing to say
        return None
    cls, activation = PROBABILITY_LOSSES[name]
    return name, cls, activation


def _probability_loss(loss: object) -> tuple[str, str, str] | None:
    """``(name, class, activation)`` of a compiled loss that takes probabilities; None for any other loss, several
    losses, or ``from_logits=True``."""
    loss = _single_loss(loss)
    if isinstance(loss, str):
        name = _BY_CLASS.get(loss, loss)  # compile takes the class's name too: "BinaryCrossentropy"
    elif type(loss).__name__ in _BY_CLASS:  # keras.losses.BinaryCrossentropy(...)
        try:
            if getattr(loss, "get_config")().get("from_logits"):  # noqa: B009 - loss is any object
                return None
        except Exception:  # a loss whose config cannot be read: nothing to say
            return None
        name = _BY_CLASS[type(loss).__name__]
    elif callable(loss) and str(getattr(loss, "__module__", "")).startswith("keras"):  # keras.losses.binary_...
        name = getattr(loss, "__name__", "")
    else:
        return None
    if name not in PROBABILITY_LOSSES:
        return None
    cls, activation = PROBABILITY_LOSSES[name]
    return name, cls, activation


def _activation(layer: Layer) -> str | None:
    """The name of the activation that makes ``layer``'s output, None when it is not known."""
    if type(layer).__name__ == "Softmax":
        return "softmax"
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


def _output_layer(model: Model) -> Layer | None:
    """The layer that makes a single-output model's output, past reshapes and dropout; None where it cannot be
    told (several outputs, a subclassed model's ``call``)."""
    if type(model).__name__ == "Sequential":
        layers = list(getattr(model, "layers", None) or [])
        for layer in reversed(layers):
            if type(layer).__name__ in ("Sequential", "Functional"):
                return _output_layer(layer)
            if type(layer).__name__ not in PASSTHROUGH:
                return layer
        return None
    try:
        outputs = list(model.outputs)
    except Exception:  # a subclassed model: its call() makes the output
        return None
    if len(outputs) != 1:
        return None
    tensor = outputs[0]
    for _ in range(16):
        layer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
        if layer is None or type(layer).__name__ not in PASSTHROUGH:
            return layer
        tensor = getattr(layer, "input", None)
    return None


def probabilities_from_unbounded_output(model: Model) -> dict[str, str] | None:
    """The loss takes probabilities, and the layer that makes the model's output has an activation known to
    leave [0, 1] (``linear`` when none was given): ``{"loss", "loss_class", "layer", "activation", "expects"}``.
    None otherwise, and wherever it cannot be told."""
    try:
        loss = _probability_loss(getattr(model, "loss", None))
        layer = _output_layer(model) if loss is not None else None
    except Exception:  # reading a model must never fail a run
        return None
    if loss is None or layer is None:
        return None
    activation = _activation(layer)
    if activation not in UNBOUNDED:
        return None
    name, cls, expects = loss
    return {
        "loss": name,
        "loss_class": cls,
        "layer": f"{type(layer).__name__} {layer.name!r}",
        "activation": activation,
        "expects": expects,
    }


def logits_from_probabilities(model: Model) -> dict[str, Any] | None:
    """The loss takes logits (``from_logits=True``), and the layer that makes the model's output is a sigmoid or a
    softmax: ``{"loss", "loss_class", "layer", "activation", "classes", "floor"}``, ``floor`` the least the loss can
    be on any sample when it reads probabilities as logits (a softmax over ``classes``: ``ln(1 + (classes - 1)/e)``;
    a sigmoid: ``ln(1 + 1/e)``, a positive's, a negative's being ``ln 2``).  None otherwise, and wherever it cannot be
    told."""
    try:
        loss = _logits_loss(getattr(model, "loss", None))
        layer = _output_layer(model) if loss is not None else None
        activation = _activation(layer) if layer is not None else None
        if loss is None or layer is None or activation not in ("sigmoid", "softmax"):
            return None
        classes = getattr(layer, "units", None)
        if classes is None:
            classes = tuple(model.outputs[0].shape)[-1]
        classes = int(classes)
    except Exception:  # reading a model must never fail a run
        return None
    if activation == "softmax":
        if classes < 2:
            return None  # softmax_over_one_unit's
        floor = float(np.log1p((classes - 1) / np.e))
    else:
        floor = float(np.log1p(1 / np.e))  # a positive's: ln(1 + e^-1); a negative's is ln(1 + e^0) = ln 2
    name, cls, _ = loss
    return {
        "loss": name,
        "loss_class": cls,
        "layer": f"{type(layer).__name__} {layer.name!r}",
        "activation": activation,
        "classes": classes,
        "floor": floor,
    }


def softmax_over_one_unit(model: Model) -> dict[str, str] | None:
    """The layer that makes the model's single output is a softmax over one unit: ``{"layer"}``; else None."""
    try:
        layer = _output_layer(model)
        if layer is None or _activation(layer) != "softmax":
            return None
        units = getattr(layer, "units", None)
        if units is None:  # a Softmax or Activation layer: the width of what it normalises
            units = tuple(model.outputs[0].shape)[-1]
    except Exception:  # reading a model must never fail a run
        return None
    return {"layer": f"{type(layer).__name__} {layer.name!r}"} if units == 1 else None


def _regression_loss(loss: object) -> str | None:
    """The name of ``loss`` when it is one of Keras' regression losses (:data:`REGRESSION_LOSSES`), as ``compile``
    takes it (its name, its class's name, an instance, the function ``keras.losses.mean_squared_error``), else
    None."""
    loss = _single_loss(loss)
    if isinstance(loss, str):
        name = loss
    elif callable(loss) and str(getattr(loss, "__module__", "")).startswith("keras") and hasattr(loss, "__name__"):
        name = loss.__name__  # keras.losses.mean_squared_error (a class is callable too: its name is the class's)
    else:
        name = type(loss).__name__
    return name if name in REGRESSION_LOSSES or name in REGRESSION_LOSSES.values() else None


#: layers that take their inputs as values with a scale (an integer input fed to one is a count, a year, a price);
#: the rescaling ones among them (``fitsetup.RESCALING_LAYERS``) are told apart after the measurement, as for a
#: float input
VALUE_LAYERS = frozenset(
    {
        "Dense",
        "EinsumDense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "Normalization",
        "UnitNormalization",
        "Rescaling",
        "SimpleRNN",
        "LSTM",
        "GRU",
    }
)
#: layers and ``keras.ops`` that pass values on unchanged in scale: the walk from an input goes on through them
_SCALE_KEEPING = frozenset(
    {"Flatten", "Reshape", "Permute", "Concatenate", "Cast", "ExpandDims", "Squeeze", "Transpose"}
)


def _consumed_as_values(tensor: Tensor) -> bool:
    """Whether every path from the symbolic ``tensor`` (a model's input) reaches a layer of :data:`VALUE_LAYERS`
    through layers and ops that keep its scale (:data:`_SCALE_KEEPING`): its values reach the model as they are.
    False at anything else (a lookup, a ``Lambda``, arithmetic such as ``inputs / 1000``, a user's layer, a nested
    model), where the values may be ids or the model may rescale them unseen."""
    seen: set[int] = set()
    stack = [getattr(getattr(tensor, "_keras_history", None), "operation", None)]
    while stack:
        op = stack.pop()
        if op is None:
            return False
        if id(op) in seen:
            continue
        seen.add(id(op))
        nodes = list(op._outbound_nodes)
        if not nodes:
            return False  # an input nothing takes, or an op the model ends on
        for node in nodes:
            name = type(node.operation).__name__
            if name in _SCALE_KEEPING:
                stack.append(node.operation)
            elif name not in VALUE_LAYERS:
                return False
    return True


def integer_inputs_are_features(model: Model) -> bool:
    """Whether the model takes integer input arrays as values with a scale (counts, years, prices in cents), not as
    ids: no layer of it looks ids up (:data:`~pytest_stability.diagnosis.ID_LAYERS`), and each input it declares is
    floating-point (Keras casts an integer array fed to one) or, declared integer, reaches only layers that take
    values (:data:`VALUE_LAYERS`: a ``Dense``, a convolution, a normalization), through ones that keep its scale
    (a ``Flatten``, a ``Concatenate``, a cast).  False where that cannot be told: a model that declares no
    inputs (subclassed, or not built), or an integer input taken by a ``Lambda`` or a layer of the user's, which
    may gather ids itself."""
    from ..diagnosis import ID_LAYERS

    try:
        import keras

        inputs = list(model.inputs or ())
        if not inputs:
            return False
        for t in inputs:
            if "float" not in keras.backend.standardize_dtype(t.dtype) and not _consumed_as_values(t):
                return False
        layers = {type(layer).__name__ for layer in model._flatten_layers(include_self=False)}
    except Exception:  # reading a model must never fail a run
        return False
    return ID_LAYERS.isdisjoint(layers)


def integer_targets_are_values(model: Model) -> bool:
    """Whether the model's loss takes integer targets as values with a scale (a regression loss of Keras',
    :data:`REGRESSION_LOSSES`: prices, counts), not as class labels."""
    try:
        return _regression_loss(getattr(model, "loss", None)) is not None
    except Exception:  # reading a model must never fail a run
        return False


def bounded_output_misses_targets(model: Model, y: object) -> dict[str, Any] | None:
    """A regression loss on an output layer whose activation bounds its values (a sigmoid's (0, 1), a tanh's
    (-1, 1)), with at least :data:`OUT_OF_RANGE` of the targets ``y`` (an array) outside that range: the model
    cannot reach them, and chasing them saturates the activation.  ``{"layer", "activation", "low", "high",
    "outside", "target_min", "target_max", "loss"}``; None otherwise, and wherever it cannot be told."""
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.number):
        return None
    try:
        loss = _regression_loss(getattr(model, "loss", None))
        layer = _output_layer(model) if loss is not None else None
        activation = _activation(layer) if layer is not None else None
        if layer is None or activation not in BOUNDED:
            return None
        low, high = BOUNDED[activation]
        values = np.asarray(y, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
    except Exception:  # reading a model must never fail a run
        return None
    if not values.size:
        return None
    outside = float(np.mean((values < low) | (values > high)))
    if outside < OUT_OF_RANGE:
        return None
    return {
        "layer": f"{type(layer).__name__} {layer.name!r}",
        "activation": activation,
        "low": low,
        "high": high,
        "outside": outside,
        "target_min": float(values.min()),
        "target_max": float(values.max()),
        "loss": loss,
    }


def output_wiring(model: Model, y: object = None) -> dict[str, Any] | None:
    """The wiring bug of the model's output (see the module docstring), as ``trace.info["output_wiring"]``
    records it: ``key`` (the diagnosis' cause key) and the facts its note and cause quote; None without one.
    ``y``: the training targets, when they are an array (for :func:`bounded_output_misses_targets`)."""
    fact: dict[str, Any] | None = softmax_over_one_unit(model)
    if fact is not None:
        return {"key": "softmax_one_unit", **fact}
    fact = probabilities_from_unbounded_output(model)
    if fact is not None:
        return {"key": "probabilities_from_unbounded", **fact}
    fact = logits_from_probabilities(model)
    if fact is not None:
        return {"key": "logits_from_probabilities", **fact}
    fact = bounded_output_misses_targets(model, y)
    if fact is not None:
        return {"key": "targets_out_of_range", **fact}
    return None


def wiring_note(fact: dict[str, Any], backend: str | None = None) -> str:
    """The report's note on :func:`output_wiring`'s finding, trained on Keras' ``backend``."""
    if fact["key"] == "targets_out_of_range":
        return (
            f"the model's output comes from {fact['layer']} with activation {fact['activation']!r}, which stays "
            f"within ({fact['low']:g}, {fact['high']:g}), but {fact['outside']:.0%} of the targets (from "
            f"{fact['target_min']:.4g} to {fact['target_max']:.4g}) lie outside it: the model cannot reach them; "
            "give that layer no activation (linear), or scale the targets into its range"
        )
    if fact["key"] == "logits_from_probabilities":
        floor = (
            f"over {fact['classes']} classes it cannot fall below ln(1 + {fact['classes'] - 1}/e) = {fact['floor']:.3g}"
            if fact["activation"] == "softmax"
            else f"it cannot fall below ln(1 + 1/e) = {fact['floor']:.3g} on a positive, ln 2 = 0.693 on a negative"
        )
        head = (
            f"the loss {fact['loss_class']}(from_logits=True) takes logits, but the model's output comes from "
            f"{fact['layer']} with activation {fact['activation']!r}: "
        )
        fix = "; give that layer no activation (linear), or compile with from_logits=False"
        if backend == "tensorflow":
            return (
                head + "TensorFlow's Keras takes the logits under the activation instead (with a warning), so it "
                "trains as intended here, but on JAX and PyTorch the loss reads the probabilities as logits and "
                + floor
                + fix
            )
        return (
            head + f"the loss reads its probabilities, in (0, 1), as logits, so {floor}, and its gradients shrink" + fix
        )
    if fact["key"] == "softmax_one_unit":
        return (
            f"the model's output comes from {fact['layer']}, a softmax over a single unit: it is 1 whatever its "
            "input, so no gradient reaches the model (TensorFlow's binary_crossentropy computes from the logits "
            "under it, so there the model trains as with a sigmoid, and not on JAX or PyTorch); use "
            "activation='sigmoid' for one unit, or one unit per class under a softmax"
        )
    return (
        f"the loss {fact['loss']} takes probabilities (from_logits=False), but the model's output comes from "
        f"{fact['layer']} with activation {fact['activation']!r}: Keras clips the outputs to [1e-07, 1 - 1e-07], "
        "so an output beyond gets no gradient; give that layer "
        f"activation={fact['expects']!r}, or compile with keras.losses.{fact['loss_class']}(from_logits=True)"
    )


def _named_outputs(model: Model) -> dict[str, Tensor] | None:
    """A functional model's output tensors by the names ``compile``'s loss is keyed by (the keys of a dict of
    outputs, else the output layers' names), in the order of ``model.outputs``; None without a graph."""
    try:
        outputs = list(model.outputs)
        names = list(model.output_names)
    except Exception:  # a subclassed model: its call() makes the outputs
        return None
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and len(struct) == len(outputs):
        return {str(k): v for k, v in struct.items()}
    if len(names) != len(outputs):
        return None
    return {str(n): t for n, t in zip(names, outputs, strict=True)}


def _upstream_variables(tensors: list[Tensor]) -> set[int] | None:
    """The ids of the variables of every layer the (symbolic) ``tensors`` are computed from (a nested model
    counts whole); None where the graph cannot be read."""
    seen_ops: set[int] = set()
    found: set[int] = set()
    stack = list(tensors)
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        op = getattr(history, "operation", None)
        if history is None or op is None or id(op) in seen_ops:
            continue  # an input (or a layer already walked)
        seen_ops.add(id(op))
        found.update(id(v) for v in getattr(op, "variables", None) or [])
        try:
            node = op._inbound_nodes[int(history.node_index)]
        except Exception:  # not a graph this reads
            return None
        stack.extend(getattr(node, "input_tensors", None) or [])
    return found


def _per_output(value: object, names: list[str]) -> list[object] | None:
    """``compile``'s ``loss`` or ``loss_weights`` per output (in the order of ``names``): a dict by name (absent:
    None), a list in order, one value for all; None when it cannot be matched to the outputs."""
    if isinstance(value, dict):
        return None if any(str(k) not in names for k in value) else [value.get(n) for n in names]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListWrapper":
        entries = list(value)  # type: ignore[call-overload]  # a ListWrapper iterates
        return entries if len(entries) == len(names) else None
    return [value] * len(names)


def outputs_without_loss(model: Model) -> dict[str, Any] | None:
    """The outputs of a functional model that ``compile`` gave no loss (a dict of losses without their name, a
    list with None in their place) or a loss weight of 0, and the trainable variables that feed only them: no
    gradient reaches those, as plain ``fit`` trains the model.  ``{"outputs": [names], "zero_weight": [names],
    "variables": [paths]}``, None when every output trains, for a subclassed model, or when the graph cannot be
    read."""
    named = _named_outputs(model)
    if named is None or len(named) < 2 or getattr(model, "loss", None) is None:
        return None
    names = list(named)
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    losses = _per_output(model.loss, names)
    weights = _per_output(config.get("loss_weights") if isinstance(config, dict) else None, names)
    if losses is None or weights is None:
        return None
    zero_weight = [n for n, lo, w in zip(names, losses, weights, strict=True) if lo is not None and w == 0]
    lossless = [n for n, lo in zip(names, losses, strict=True) if lo is None] + zero_weight
    if not lossless or len(lossless) == len(names):
        return None
    trained = _upstream_variables([t for name, t in named.items() if name not in lossless])
    if trained is None:
        return None
    from .recorders.common import var_name

    left = [var_name(v) for v in getattr(model, "trainable_variables", None) or [] if id(v) not in trained]
    return {"outputs": [n for n in names if n in lossless], "zero_weight": zero_weight, "variables": left}


def _sparse_loss(loss: object) -> tuple[str, int | None] | None:
    """``(name, ignore_class)`` when the compiled loss is Keras' sparse categorical cross-entropy (one loss)."""
    loss = _single_loss(loss)
    name = "sparse_categorical_crossentropy"
    if loss in (name, "SparseCategoricalCrossentropy") or (callable(loss) and getattr(loss, "__name__", "") == name):
        return name, None
    if type(loss).__name__ == "SparseCategoricalCrossentropy":
        try:
            ignore = getattr(loss, "get_config")().get("ignore_class")  # noqa: B009 - loss is any object
        except Exception:  # a loss whose config cannot be read: nothing to say
            return None
        return name, None if ignore is None else int(ignore)
    return None


def label_range_error(model: Model, y: object, what: str = "y") -> str | None:
    """Why integer labels ``y`` (an array) do not fit a model compiled with ``sparse_categorical_crossentropy``:
    a label below 0, or at or above its output's number of units.  TensorFlow and PyTorch raise deep inside
    training; on JAX, Keras' one-hot of such a label is all zeros, and the sample silently stops counting.
    None when the labels fit, or where nothing can be told (another loss, several outputs, not an array)."""
    try:
        loss = _sparse_loss(getattr(model, "loss", None))
        if loss is None or not isinstance(y, np.ndarray) or y.size == 0:
            return None
        try:
            outputs = list(model.outputs)
        except Exception:  # a Sequential without an Input, not built before fit: its last layer's units
            layer = _output_layer(model) if type(model).__name__ == "Sequential" else None
            units = getattr(layer, "units", None)
        else:
            if len(outputs) != 1:
                return None
            units = tuple(outputs[0].shape)[-1]
    except Exception:  # a subclassed model (no outputs), a loss of its own: nothing to say
        return None
    if not isinstance(units, int) or units < 1:
        return None
    labels = y[y != loss[1]] if loss[1] is not None else y
    if labels.size == 0:
        return None
    low, high = labels.min(), labels.max()
    if not np.all(np.isfinite([low, high])) or (low >= 0 and high < units):
        return None
    name = loss[0]
    if low > 0 and high - low < units:
        hint = f"they start at {low:g}: shift them to start at 0 ({what} - {low:g})"
    elif low >= 0:
        hint = f"give the output layer {int(high) + 1} units, one per class, or map the labels to 0 .. {units - 1}"
    else:
        hint = f"map the labels to 0 .. {units - 1}, or name the negative one ignore_class in the loss"
    return (
        f"{what} holds labels from {low:g} to {high:g}, but {name} takes labels 0 to {units - 1} for the model's "
        f"{units} output units: a label out of that range fails inside training on TensorFlow and PyTorch, and on "
        f"JAX silently counts for nothing (its one-hot is all zeros); {hint}"
    )


def batchnorm_over_one_sample(model: Model, batch_size: int | None) -> dict[str, str] | None:
    """A ``BatchNormalization`` over features alone (a rank-2 input, after a ``Dense``), trained on batches of
    one sample: in training it normalises each feature over the batch, and one sample has no spread, so every
    feature becomes the layer's ``beta`` and no gradient reaches the layers before it.  ``{"layer"}`` of the
    first such layer; None otherwise (over images or sequences, the batch's positions give the spread)."""
    if batch_size != 1:
        return None
    try:
        layers = model._flatten_layers(include_self=False)
        for layer in layers:
            if type(layer).__name__ == "BatchNormalization" and len(tuple(layer.input.shape)) == 2:
                return {"layer": f"{type(layer).__name__} {layer.name!r}"}
    except Exception:  # reading a model must never fail a run
        return None
    return None


def batchnorm_note(fact: dict[str, str]) -> str:
    """The report's note on :func:`batchnorm_over_one_sample`'s finding."""
    return (
        f"{fact['layer']} normalises each feature over the batch, and the batches hold one sample (batch_size=1): "
        "with no spread, every feature becomes the layer's beta and no gradient reaches the layers before it; "
        "train with batches of 16 or more, or use LayerNormalization"
    )
