"""Turn what a test passes (arrays, ``tf.data``, ``PyDataset``, generators) into a
seeded ``tf.data`` pipeline, rejecting bad input with a clear message.

Imports TensorFlow: only reached from a test that trains.
"""

from __future__ import annotations

import itertools
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StabilityUsageError


@dataclass
class TrainData:
    dataset: Any  # tf.data.Dataset yielding (x, y, sample_weight) batches
    kind: str  # "arrays", "dataset", "pydataset", "generator"
    one_shot: bool  # cannot be cycled: running out is an error
    n_samples: int | None
    first_batch: Any  # one (x, y, sw) batch, for building the model


def _leaves(obj: Any) -> list[Any]:
    if obj is None:
        return []
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [leaf for v in obj for leaf in _leaves(v)]
    return [obj]


def _is_array_like(obj: Any) -> bool:
    leaves = _leaves(obj)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or type(leaf).__name__ in ("EagerTensor", "Tensor", "ResourceVariable")
        or isinstance(leaf, (int, float)) for leaf in leaves
    )


def _to_numpy_tree(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return {k: _to_numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
        return np.asarray(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy_tree(v) for v in obj)
    return np.asarray(obj)


def _check_finite(name: str, obj: Any) -> None:
    for i, leaf in enumerate(_leaves(obj)):
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and arr.size and not np.all(np.isfinite(arr)):
            flat = np.argwhere(~np.isfinite(arr))[0]
            where = f"{name}" + (f" (input {i})" if len(_leaves(obj)) > 1 else "")
            kind = "NaN" if np.isnan(arr[tuple(flat)]) else "Inf"
            count = int(np.count_nonzero(~np.isfinite(arr)))
            raise StabilityUsageError(
                f"{where} holds {count} non-finite value(s) before training starts: the first is "
                f"{kind} at index {tuple(int(v) for v in flat)}. Training on it would report a "
                "NaN that the model did not cause; clean the data (np.nan_to_num, drop the rows) first."
            )


def _n_samples(name: str, obj: Any) -> int | None:
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in _leaves(obj)}
    if not lengths:
        return None
    if None in lengths:
        raise StabilityUsageError(f"{name} must be arrays with a leading sample dimension; received a scalar")
    if len(lengths) > 1:
        raise StabilityUsageError(f"the arrays in {name} have different numbers of samples: {sorted(lengths)}")
    return lengths.pop()


def _shape_of(obj: Any) -> str:
    leaves = _leaves(obj)
    shapes = [tuple(np.shape(leaf)) for leaf in leaves]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def _from_arrays(tf: Any, x: Any, y: Any, sample_weight: Any, batch_size: int, seed: int,
                 shuffle: bool, what: str) -> tuple[Any, int]:
    x, y, sample_weight = _to_numpy_tree(x), _to_numpy_tree(y), _to_numpy_tree(sample_weight)
    nx = _n_samples(f"{what}x", x)
    ny = _n_samples(f"{what}y", y)
    nw = _n_samples(f"{what}sample_weight", sample_weight)
    if nx == 0:
        raise StabilityUsageError(f"{what}x is empty (shape {_shape_of(x)}): there is nothing to train on")
    if ny is not None and ny != nx:
        raise StabilityUsageError(
            f"{what}x and {what}y have different numbers of samples: x has {nx} (shape {_shape_of(x)}), "
            f"y has {ny} (shape {_shape_of(y)})"
        )
    if nw is not None and nw != nx:
        raise StabilityUsageError(f"{what}sample_weight has {nw} samples, x has {nx}")
    _check_finite(f"{what}x", x)
    _check_finite(f"{what}y", y)
    _check_finite(f"{what}sample_weight", sample_weight)
    parts = tuple(p for p in (x, y, sample_weight) if p is not None)
    ds = tf.data.Dataset.from_tensor_slices(parts if len(parts) > 1 else (parts[0],))
    if shuffle:
        ds = ds.shuffle(nx, seed=seed, reshuffle_each_iteration=True)
    has_y, has_w = y is not None, sample_weight is not None

    def pack(*p: Any) -> Any:
        p = list(p)
        xx = p.pop(0)
        yy = p.pop(0) if has_y else None
        ww = p.pop(0) if has_w else None
        return xx, yy, ww

    ds = ds.batch(batch_size).map(pack)
    return ds, nx


def _normalise_element(element: Any) -> Any:
    import keras

    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3 and not isinstance(element, dict):
        x, y, w = keras.utils.unpack_x_y_sample_weight(tuple(element))
    else:
        x, y, w = element, None, None
    return x, y, w


def make_train_data(x: Any, y: Any, sample_weight: Any, *, batch_size: int,
                    batch_size_explicit: bool, seed: int, shuffle: bool) -> TrainData:
    """Build the (not yet repeated) training pipeline.  See :class:`TrainData`."""
    import keras
    import tensorflow as tf

    if x is None:
        raise StabilityUsageError("stability.train() needs training data: received x=None")
    if isinstance(x, tf.data.Dataset):
        _no_extra("a tf.data.Dataset", y, sample_weight, batch_size_explicit)
        ds = x.map(lambda *e: _normalise_element(e if len(e) > 1 else e[0]))
        card = int(x.cardinality().numpy())
        if card == 0:
            raise StabilityUsageError("the tf.data.Dataset passed as x is empty (cardinality 0)")
        return TrainData(ds, "dataset", False, None, _first(ds, "the tf.data.Dataset passed as x"))
    if isinstance(x, keras.utils.PyDataset):
        _no_extra("a keras.utils.PyDataset", y, sample_weight, batch_size_explicit)
        n = len(x)
        if not n:
            raise StabilityUsageError("the keras.utils.PyDataset passed as x has length 0")
        first = _normalise_element(x[0])

        def cycle() -> Any:
            while True:
                for i in range(len(x)):
                    yield _normalise_element(x[i])
                x.on_epoch_end()

        return TrainData(_from_python(tf, cycle, first), "pydataset", False, None, first)
    if isinstance(x, types.GeneratorType) or (hasattr(x, "__next__") and not _is_array_like(x)):
        _no_extra("a generator", y, sample_weight, batch_size_explicit)
        try:
            first_raw = next(x)
        except StopIteration:
            raise StabilityUsageError("the generator passed as x yielded nothing") from None
        first = _normalise_element(first_raw)
        chained = itertools.chain([first_raw], x)
        ds = _from_python(tf, lambda: (_normalise_element(e) for e in chained), first)
        return TrainData(ds, "generator", True, None, first)
    if not _is_array_like(x):
        raise StabilityUsageError(
            "stability.train() expects x as numpy arrays (or a list/dict of them), a tf.data.Dataset, "
            f"a keras.utils.PyDataset or a generator; received {type(x).__name__}"
        )
    ds, n = _from_arrays(tf, x, y, sample_weight, batch_size, seed, shuffle, "")
    if batch_size > n:
        raise StabilityUsageError(
            f"batch_size={batch_size} is larger than the training data ({n} samples); "
            f"use batch_size <= {n}"
        )
    return TrainData(ds, "arrays", False, n, _first(ds, "x"))


def make_validation_data(validation_data: Any, *, batch_size: int) -> Any:
    """Fixed, cached validation batches as a finite ``tf.data.Dataset`` of (x, y, sw)."""
    import keras
    import tensorflow as tf

    if validation_data is None:
        return None
    if isinstance(validation_data, tf.data.Dataset):
        card = int(validation_data.cardinality().numpy())
        if card == tf.data.INFINITE_CARDINALITY:
            raise StabilityUsageError(
                "validation_data is an infinite tf.data.Dataset; pass a finite one, e.g. ds.take(10)"
            )
        if card == 0:
            raise StabilityUsageError("validation_data is an empty tf.data.Dataset")
        return validation_data.map(lambda *e: _normalise_element(e if len(e) > 1 else e[0])).cache()
    if isinstance(validation_data, keras.utils.PyDataset):
        batches = [_normalise_element(validation_data[i]) for i in range(len(validation_data))]
        if not batches:
            raise StabilityUsageError("validation_data is an empty keras.utils.PyDataset")
        return _from_python(tf, lambda: iter(batches), batches[0]).cache()
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise StabilityUsageError(
            "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val), "
            "a tf.data.Dataset or a keras.utils.PyDataset; received "
            + (f"a {type(validation_data).__name__} of length {len(validation_data)}"
               if isinstance(validation_data, (tuple, list)) else type(validation_data).__name__)
        )
    vx, vy, vw = (list(validation_data) + [None])[:3]
    ds, n = _from_arrays(tf, vx, vy, vw, min(batch_size, max(1, _n_samples("validation x", vx) or 1)),
                         0, False, "validation ")
    return ds.cache()


def _no_extra(what: str, y: Any, sample_weight: Any, batch_size_explicit: bool) -> None:
    if y is not None:
        raise StabilityUsageError(f"y must be None when x is {what} (it yields (x, y) itself); received y of type {type(y).__name__}")
    if sample_weight is not None:
        raise StabilityUsageError(f"sample_weight must be None when x is {what}")
    if batch_size_explicit:
        raise StabilityUsageError(f"batch_size must not be given when x is {what}: it is already batched")


def _from_python(tf: Any, make_iter: Any, first: Any) -> Any:
    """A dataset over Python-produced (x, y, sw) batches.

    ``tf.data.Dataset.from_generator`` cannot carry None components, so the
    absent ones (no y, no sample weights) are dropped and put back in a map.
    """
    present = tuple(part is not None for part in first)
    signature = tuple(_signature(tf, part) for part in first if part is not None)

    def parts() -> Any:
        for element in make_iter():
            yield tuple(part for part in element if part is not None)

    def rebuild(*values: Any) -> Any:
        it = iter(values)
        return tuple(next(it) if here else None for here in present)

    return tf.data.Dataset.from_generator(parts, output_signature=signature).map(rebuild)


def _signature(tf: Any, element: Any) -> Any:
    def spec(v: Any) -> Any:
        if v is None:
            return None
        t = tf.convert_to_tensor(v)
        return tf.TensorSpec(shape=[None] + list(t.shape[1:]) if t.shape.rank else [], dtype=t.dtype)

    return tf.nest.map_structure(spec, element)


def _first(ds: Any, what: str) -> Any:
    for batch in ds.take(1):
        return batch
    raise StabilityUsageError(f"{what} yielded no batches")
