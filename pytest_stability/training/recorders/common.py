"""Helpers the recorders share with the rest of the training layer: finding a model's optimizers, naming a
variable, copying a tensor to the host, patching an attribute so that it can be put back."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...framework_types import Model, Optimizer, Tensor, Variable

#: marks an attribute that was not on the instance before it was patched (see :meth:`.Recorder.patch`)
ABSENT = object()


def float_name(v: Tensor) -> bool:
    """Whether ``v``'s dtype is a floating-point one."""
    dtype = getattr(v, "dtype", None)
    name = getattr(dtype, "name", dtype)
    return isinstance(name, str) and ("float" in name or name == "bfloat16")


def find_optimizers(model: Model) -> list[tuple[str, Optimizer]]:
    """Every Keras optimizer the model holds, named: ``model.optimizer`` first (as ``optimizer``), then each one
    kept as an attribute of the model (a GAN's ``d_optimizer`` and ``g_optimizer``), in attribute order, or in
    a list or dict attribute (``name[0]``, ``name['key']``).  Those are the optimizers a ``train_step`` can
    apply; which of them it does apply shows in the recording."""
    import keras

    base = keras.optimizers.Optimizer
    found: list[tuple[str, Optimizer]] = []

    def add(name: str, value: object) -> None:
        if isinstance(value, base) and all(value is not other for _, other in found):
            found.append((name, value))

    add("optimizer", getattr(model, "optimizer", None))
    for name, value in vars(model).items():
        add(name, value)
        if name.startswith("_"):  # private containers: the frameworks' own bookkeeping
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}[{key!r}]", item)
    return found


def returned_loss(logs: object) -> Tensor | None:
    """The ``"loss"`` a ``train_step`` returned (``return {"loss": loss}``), as float32, averaged when it is a
    tensor of per-sample losses; None when the logs hold none, or a value that is no number."""
    import keras

    value = logs.get("loss") if isinstance(logs, dict) else None
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        value = keras.ops.convert_to_tensor(value)
    except (TypeError, ValueError):
        return None
    dtype = keras.backend.standardize_dtype(value.dtype)
    if not ("float" in dtype or "int" in dtype):
        return None
    ops = keras.ops
    return ops.cast(ops.mean(ops.stop_gradient(value)), "float32")


def host_numpy(x: Tensor) -> np.ndarray:
    """``keras.ops.convert_to_numpy`` without a DeprecationWarning per call: numpy 2 passes ``copy`` to
    ``__array__``, which TensorFlow's variables, this PyTorch's tensors and Keras' variables do not take, so
    Keras' ``np.array(x)`` warns (the example project's run printed ~670 of them on TensorFlow, from the
    plugin's read-backs).  The tensor's own conversion makes the same copy without it."""
    import keras

    backend = keras.backend.backend()
    if isinstance(x, keras.Variable):  # its __array__ takes no `copy` either
        x = x.value
    if backend == "tensorflow":
        own = getattr(x, "numpy", None)
        if callable(own):
            try:
                return np.asarray(own())
            except Exception:  # pragma: no cover - not an eager tensor: Keras' own conversion below
                pass
    elif backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            t = x.detach().cpu()
            return np.asarray((t.float() if t.dtype == torch.bfloat16 else t).numpy())
    return np.asarray(keras.ops.convert_to_numpy(x))


def index_of(variables: Iterable[Variable], var: Variable) -> int | None:
    for i, v in enumerate(variables):
        if v is var:
            return i
    return None


def var_name(v: Variable) -> str:
    """A variable's name as findings show it (``sequential/dense/kernel``)."""
    return str(getattr(v, "path", None) or getattr(v, "name", "variable"))


def device_label(dev: str) -> str:
    """``GPU:<n>``, ``TPU`` or ``CPU`` for a backend's device string."""
    up = dev.upper()
    if "GPU" in up or "CUDA" in up:
        digits = "".join(ch for ch in dev.rsplit(":", 1)[-1] if ch.isdigit())
        return "GPU:" + (digits or "0")
    if "TPU" in up:
        return "TPU"
    return "CPU"


__all__ = ["ABSENT", "device_label", "find_optimizers", "float_name", "host_numpy", "index_of", "var_name"]
