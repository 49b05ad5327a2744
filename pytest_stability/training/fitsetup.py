"""What ``fit`` is given: the user's data and ``fit`` arguments checked, and the run's arithmetic.

:func:`prepare_fit` rejects what would make a run report the data's fault as the model's (NaN/Inf in array
inputs, lengths that differ, arguments that do not fit the kind of data) and returns a :class:`FitSetup`: the
``fit`` arguments the plugin completes (``batch_size``, ``shuffle``, ``epochs``, ``steps_per_epoch``), the steps
to run and how they fall into epochs.  :func:`full_batch_as_one_epoch` then decides about short epochs: a
full-batch run whose epochs nothing of the user's observes trains the same batch as one long epoch.

Imports no framework at module level; Keras is passed in by the engine.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StabilityUsageError
from ..framework_types import Callback, Data, Layer, Model, Tensor
from ..trace import describe_samples
from .plan import epochs_for, short_epochs_at_pass_ends

if TYPE_CHECKING:
    from ..options import RunSpec


def _iter_leaves(obj: Data) -> Iterator[Tensor]:
    """The leaves of a structure of dicts, lists and tuples, depth first (None has none)."""
    if obj is None:
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_leaves(v)
    else:
        yield obj


def _leaves(obj: Data) -> list[Tensor]:
    return list(_iter_leaves(obj))


def refuse_python_values(name: str, obj: Data) -> None:
    """Reject Python numbers or strings in a list, tuple or dict of data (``y.tolist()``, a list of rows), where
    ``fit`` takes arrays: Keras refuses them ("Unrecognized data type", with the whole list printed), and the
    plugin's own reads of the data would fail on them first."""
    if isinstance(obj, (list, tuple, dict)):
        # the first one found ends the walk: a list of a million rows is not walked
        python = (v for v in _iter_leaves(obj) if isinstance(v, (bool, int, float, complex, str, bytes)))
        leaf = next(python, None)
        if leaf is not None:
            # a list of numbers or of rows is one array; a dict or a tuple of inputs holds lists among arrays
            whole = isinstance(obj, list) and bool(obj) and isinstance(obj[0], (bool, int, float, str, list))
            convert = f"np.asarray({name.split()[-1]})" if whole else "np.asarray on each list in it"
            raise StabilityUsageError(
                f"{name} is a Python {type(obj).__name__} holding {type(leaf).__name__} values (the first: {leaf!r}), "
                "where model.fit() takes arrays (numpy arrays or tensors, one per input) or a dataset: "
                f"convert it with {convert}"
            )


def _is_pandas(obj: object) -> bool:
    """A pandas DataFrame or Series (told by its class's module: pandas is not imported here)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "to_numpy")


def frames_as_arrays(x: Data, y: Data, fit_kwargs: dict[str, Any]) -> tuple[Data, Data]:
    """``x``, ``y``, ``sample_weight`` and ``validation_data`` with each pandas DataFrame or Series among them
    (at any depth of lists, tuples and dicts) as its numpy array (``to_numpy()``), in place in ``fit_kwargs``.

    Keras' array adapter slices a frame by position and casts its floats to ``floatx`` as it does an array's, so
    ``fit`` trains on the same batches either way; the plugin's own reads of the data (the NaN/Inf check, the
    batch plan, the offending batch) then need no pandas of their own."""

    def convert(obj: Data) -> Data:
        """``obj`` itself when it holds no frame (fit gets the user's own objects)."""
        if _is_pandas(obj):
            return obj.to_numpy()
        if isinstance(obj, dict):
            items = {k: convert(v) for k, v in obj.items()}
            return obj if all(items[k] is v for k, v in obj.items()) else items
        if isinstance(obj, (list, tuple)):
            parts = [convert(v) for v in obj]
            if all(a is b for a, b in zip(parts, obj, strict=True)):
                return obj
            return type(obj)(*parts) if hasattr(obj, "_fields") else type(obj)(parts)  # a namedtuple: by position
        return obj

    for key in ("sample_weight", "validation_data"):
        if fit_kwargs.get(key) is not None:
            fit_kwargs[key] = convert(fit_kwargs[key])
    return convert(x), convert(y)


def _is_arrays(obj: Data) -> bool:
    leaves = _leaves(obj)
    return bool(leaves) and all(
        hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not hasattr(leaf, "element_spec") for leaf in leaves
    )


def data_kind(keras: ModuleType, x: Data) -> str:
    if x is None:
        return "none"
    if _is_arrays(x):
        return "arrays"
    if isinstance(x, keras.utils.PyDataset):
        return "pydataset"
    name = type(x).__module__ + "." + type(x).__name__
    if "tensorflow" in name and hasattr(x, "element_spec"):
        return "dataset"
    if "torch.utils.data" in name:
        return "dataloader"
    if inspect.isgenerator(x) or (hasattr(x, "__next__") and hasattr(x, "__iter__")):
        return "generator"
    if hasattr(x, "__iter__") and hasattr(x, "__len__"):
        return "iterable"
    return type(x).__name__


def check_finite(name: str, obj: Data, *, integers: bool = False) -> float | None:
    """Reject NaN/Inf already in the data (it would be reported as the model's instability); return the largest
    root mean square over its floating-point arrays, how far the data is from unit scale (None without one:
    integer labels, token ids, whose scale means nothing).  With ``integers``, over its integer arrays too: the
    model takes them as values (counts, years, prices in cents; see
    :func:`~.model_facts.integer_inputs_are_features`).

    One pass over each array: its sum of squares, which is finite only when every value is (a sum that
    overflows is searched as well, finds nothing, and gives no scale)."""
    leaves = _leaves(obj)
    best: float | None = None
    for i, leaf in enumerate(leaves):
        arr = np.asarray(leaf)
        if integers and arr.dtype.kind in "iu" and arr.size:  # no NaN to look for; squares in float64
            rms = math.sqrt(float(row_squares(arr.reshape(len(arr) if arr.ndim else 1, -1)).sum()) / arr.size)
            best = rms if best is None else max(best, rms)
            continue
        if arr.dtype.kind not in "fc" or not arr.size:
            continue
        if arr.dtype.kind == "f":
            flat = np.ascontiguousarray(arr, dtype=np.float32 if arr.itemsize < 4 else arr.dtype).reshape(-1)
            rms = math.sqrt(float(np.dot(flat, flat)) / flat.size)  # BLAS, no float64 copy
            if math.isfinite(rms):
                best = rms if best is None else max(best, rms)
                continue
        if not np.all(np.isfinite(arr)):
            flat = np.argwhere(~np.isfinite(arr))[0]
            where = name + (f" (input {i})" if len(leaves) > 1 else "")
            kind = "NaN" if np.isnan(arr[tuple(flat)]) else "Inf"
            count = int(np.count_nonzero(~np.isfinite(arr)))
            use = (
                "Validating on it would report a NaN validation loss"
                if name.startswith("validation")
                else "Training on it would report a NaN"
            )
            raise StabilityUsageError(
                f"{where} holds {count} non-finite value(s) before training starts: the first is "
                f"{kind} at index {tuple(int(v) for v in flat)}. {use} that the model did not cause; clean the "
                "data (np.nan_to_num, drop the rows) first."
            )
    return best


#: the most elements :func:`row_squares` widens at once (8 MB in float64)
SQUARES_BLOCK = 1 << 20


def row_squares(per: np.ndarray) -> np.ndarray:
    """Each row's sum of squares of a 2-D array, as float64.  float32 and float64 rows are summed as they are (no
    copy); integers, whose squares overflow, in float64, and float16, whose squares overflow at 256, in float32,
    a block of rows (:data:`SQUARES_BLOCK` elements) at a time: a dataset of uint8 pixels, the commonest data given
    as integers, is never copied whole (60,000 MNIST images would take 376 MB in float64)."""
    if per.dtype.kind == "f" and per.dtype.itemsize >= 4:
        return np.asarray(np.einsum("ij,ij->i", per, per), dtype=np.float64)
    wide = np.float32 if per.dtype.kind == "f" else np.float64
    rows = max(1, SQUARES_BLOCK // max(1, per.shape[1]))
    out = np.empty(per.shape[0], dtype=np.float64)
    for start in range(0, per.shape[0], rows):
        block = per[start : start + rows].astype(wide)
        out[start : start + rows] = np.einsum("ij,ij->i", block, block)
    return out


#: a root mean square from this far up is far from unit scale (the diagnosis' FAR_FROM_UNIT): only then are the
#: samples that make it looked for (:func:`few_samples_far`)
FAR_SCALE = 100.0
#: the share of samples (at least one) whose removal :func:`few_samples_far` tries
FEW_SHARE = 0.01


def few_samples_far(obj: Data, rms: float | None, *, integers: bool = False) -> dict[str, Any] | None:
    """When the data's root mean square (``rms``, from :func:`check_finite`) is far from unit scale because of a
    few samples: at most :data:`FEW_SHARE` of them (at least one), whose removal leaves a root mean square 10x
    smaller and below :data:`FAR_SCALE` (a target of 1e4 among targets of about 1: a wrong value, a sentinel for
    "missing", a unit mix-up).  ``{"samples": [the largest, up to 5], "values": [each one's value of the
    largest magnitude], "count": how many samples reach 10x the rest's root mean square, "rms_rest", "n"}``;
    None otherwise (data that is far from unit scale as a whole is :func:`check_finite`'s ``rms`` alone).
    ``integers``: integer arrays are values too, as :func:`check_finite` took them."""
    if rms is None or not rms >= FAR_SCALE:
        return None
    # the leaf whose scale was quoted: the one of the largest root mean square (check_finite's float32 sums
    # and these per-sample ones round differently, so the figures are not matched)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for leaf in _leaves(obj):
        arr = np.asarray(leaf)
        kinds = "fiu" if integers else "f"
        if arr.dtype.kind not in kinds or arr.ndim == 0 or arr.shape[0] < 2 or not arr.size:
            continue
        per = arr.reshape(arr.shape[0], -1)  # a view: a dataset of unscaled pixels is not copied
        sq = row_squares(per)
        leaf_rms = math.sqrt(float(sq.sum()) / per.size)
        if best is None or leaf_rms > best[0]:
            best = (leaf_rms, per, sq)
    if best is None or not best[0] >= FAR_SCALE:  # (a complex array's scale was quoted)
        return None
    rms, per, sq = best
    n = per.shape[0]
    k = max(1, int(n * FEW_SHARE))
    top = np.argpartition(sq, n - k)[n - k :]
    rest = np.delete(sq, top)
    rms_rest = math.sqrt(float(rest.sum()) / (rest.size * per.shape[1]))
    if not (rms_rest * 10 <= rms and rms_rest < FAR_SCALE):
        return None
    peak = np.maximum(per.max(axis=1), -per.min(axis=1)).astype(np.float64)
    far = top[peak[top] >= 10 * rms_rest]
    order = far[np.argsort(-peak[far])][:5]
    return {
        "samples": [int(i) for i in order],
        "values": [float(per[i][np.argmax(np.abs(per[i]))]) for i in order],
        "count": int(np.count_nonzero(peak >= 10 * rms_rest)),
        "rms_rest": rms_rest,
        "n": int(n),
    }


def few_samples_note(side: str, few: dict[str, Any], rms: float) -> str:
    """The report's note on :func:`few_samples_far`'s finding for ``side`` ("input" or "target"), whatever the
    verdict: a data bug a stable run may have survived this time."""
    who = describe_samples(few)
    return (
        f"the {side}s' root mean square, {rms:.3g}, is made by {'one sample' if few['count'] <= 1 else 'a few'} of "
        f"the {few['n']}: {who}; the others' is {few['rms_rest']:.3g}. Check {'it' if few['count'] <= 1 else 'them'} "
        "(a wrong value, a unit mix-up, a sentinel for a missing value)"
    )


#: layers that bring the inputs to unit scale inside the model: the raw inputs' scale does not reach the weights
RESCALING_LAYERS = frozenset(
    {
        "Rescaling",
        "Normalization",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
    }
)


def _rescaler(model: Model, names: frozenset[str], *, from_the_end: bool) -> str | None:
    """``"Class 'name'"`` of the first layer of a class in ``names`` met before any layer with weights, walking
    the model's layers in order (or from the end), nested models included; None without one."""

    def walk(layers: list[Layer]) -> Iterator[Layer]:
        for layer in reversed(layers) if from_the_end else layers:
            inner = getattr(layer, "layers", None)
            if isinstance(inner, list) and inner:
                yield from walk(inner)
            else:
                yield layer

    try:
        layers = list(model.layers)
    except Exception:  # a model whose layers cannot be listed: nothing to say
        return None
    for layer in walk(layers):
        if type(layer).__name__ in names:
            return f"{type(layer).__name__} {layer.name!r}"
        if getattr(layer, "weights", None):
            return None
    return None


def input_rescaler(model: Model) -> str | None:
    """The layer that rescales the inputs before the first layer with weights (a ``Rescaling(1/255)`` first, a
    ``Normalization`` adapted to the data, also behind an augmentation ``Sequential``); None without one."""
    return _rescaler(model, RESCALING_LAYERS, from_the_end=False)


def output_rescaler(model: Model) -> str | None:
    """The layer that brings the outputs to the targets' scale after the last layer with weights (a
    ``Normalization(invert=True)`` adapted to the targets, a ``Rescaling(scale, offset)``); None without one."""
    return _rescaler(model, frozenset({"Rescaling", "Normalization"}), from_the_end=True)


def _n_samples(obj: Data) -> int | None:
    leaves = _leaves(obj)
    if not leaves:
        return None
    return int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else None


def _train_samples(x: Data, fit_kwargs: dict[str, Any]) -> int | None:
    """The samples ``fit`` trains on from array inputs: those before a ``validation_split`` (Keras splits
    off the last ones, unshuffled)."""
    n = _n_samples(x)
    split = float(fit_kwargs.get("validation_split") or 0.0)
    return int(math.floor(n * (1.0 - split))) if n and split else n


def split_one_class(y: Data, fit_kwargs: dict[str, Any]) -> str | None:
    """A note when ``validation_split`` takes samples of a single class while the training part holds several:
    Keras splits off the last samples before it shuffles, so labels sorted by class leave the validation set one
    class (its loss then measures one class, not the model).  Array labels of one column only; None otherwise."""
    split = float(fit_kwargs.get("validation_split") or 0.0)
    if not split or not isinstance(y, np.ndarray) or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1):
        return None
    labels = y.reshape(-1)
    if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        return None
    cut = _train_samples(y, fit_kwargs) or 0  # where fit splits
    train, val = np.unique(labels[:cut]), np.unique(labels[cut:])
    if val.size != 1 or train.size < 2 or train.size > 1000:
        return None
    return (
        f"validation_split={split:g} takes the last {labels.shape[0] - cut} samples, before Keras shuffles, and "
        f"every one of them has the label {val[0]:g}, while the training part holds {train.size} classes: the "
        "validation loss measures one class; shuffle x and y together before fit (the labels look sorted)"
    )


def epoch_length(keras: ModuleType, kind: str, x: Data, fit_kwargs: dict[str, Any], batch_size: int) -> int | None:
    """Optimizer steps in one pass over the training data, when knowable without reading it."""
    if fit_kwargs.get("steps_per_epoch") is not None:
        return int(fit_kwargs["steps_per_epoch"])
    if kind == "arrays":
        n = _train_samples(x, fit_kwargs) or 0
        return max(1, math.ceil(n / batch_size)) if n else None
    if kind == "dataset":
        card = int(x.cardinality().numpy())
        return card if card > 0 else None
    if kind in ("pydataset", "dataloader", "iterable"):
        try:
            n = len(x)
        except Exception:
            return None
        return n or None
    return None


_KIND_NAMES = {
    "dataset": "a tf.data.Dataset",
    "pydataset": "a keras.utils.PyDataset",
    "generator": "a generator",
    "dataloader": "a torch DataLoader",
    "iterable": "an iterable of batches",
}


def _same_lengths(x: Data, y: Data, sample_weight: Data) -> None:
    def describe(obj: Data) -> str:
        shapes = [tuple(np.shape(leaf)) for leaf in _leaves(obj)]
        if len(shapes) <= 4:
            return f"shape {shapes[0] if len(shapes) == 1 else shapes}"
        kinds = list(dict.fromkeys(shapes))  # a list of many arrays: each shape once, in order
        listed = ", ".join(map(str, kinds[:3])) + (", ..." if len(kinds) > 3 else "")
        return f"{len(shapes)} arrays of shape{'s' if len(kinds) > 1 else ''} {listed}"

    lengths = {
        name: {int(np.shape(leaf)[0]) for leaf in _leaves(obj) if np.ndim(leaf)}
        for name, obj in (("x", x), ("y", y), ("sample_weight", sample_weight))
    }
    for name, found in lengths.items():
        if len(found) > 1:
            raise StabilityUsageError(f"the arrays in {name} have different numbers of samples: {sorted(found)}")
    nx = next(iter(lengths["x"]), None)
    for name, obj in (("y", y), ("sample_weight", sample_weight)):
        n = next(iter(lengths[name]), None)
        if nx is not None and n is not None and n != nx:
            many = isinstance(x, (list, tuple)) and len(x) == n
            raise StabilityUsageError(
                f"x and {name} have different numbers of samples: x has {nx} ({describe(x)}), "
                f"{name} has {n} ({describe(obj)})"
                + (
                    f"; fit reads a {type(x).__name__} of {n} arrays as {n} inputs: to pass {n} samples, stack "
                    "them (np.stack(x))"
                    if many
                    else ""
                )
            )


def short_message(exc: BaseException, limit: int = 600) -> str:
    """An exception's text on one line (colour codes dropped), cut at ``limit`` characters."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


#: Callback hooks through which a callback sees single batches of training (or of Keras' own validation)
BATCH_HOOKS = (
    "on_batch_begin",
    "on_batch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
)


def _overriders(callbacks: list[Callback], hooks: tuple[str, ...]) -> list[str]:
    """``Class.hook`` of each callback that overrides one of ``hooks`` (Keras marks the hooks a callback leaves
    as they are with ``_is_default``)."""
    found = []
    for callback in callbacks:
        for hook in hooks:
            method = getattr(callback, hook, None)
            if method is not None and not getattr(method, "_is_default", False):
                found.append(f"{type(callback).__name__}.{hook}")
                break
    return found


def progress_observers(verbose: object, *, batches: bool) -> list[str]:
    """Keras' own progress output, by the ``verbose`` given to ``fit``: ``verbose=1`` (or ``"auto"``) shows a bar
    that advances at each batch and a line per epoch, ``verbose=2`` a line per epoch.  Chunked calls would show the
    bar at each chunk's last step (past the epoch's end where a chunk is longer: ``50/20``), and one long epoch
    one line for the run, so it observes batches and epochs as a callback does."""
    shown = 1 if verbose == "auto" else verbose  # True is 1 to Keras too
    if shown not in (1, 2) or (batches and shown != 1):
        return []
    return [f"Keras' progress output (verbose={repr(verbose) if isinstance(verbose, str) else verbose})"]


def batch_observers(callbacks: list[Callback], verbose: object = 0) -> list[str]:
    """``Class.hook`` of each callback that sees single batches (it overrides a batch-level hook), and Keras'
    progress bar where ``verbose`` shows one (:func:`progress_observers`).

    Keras calls the batch hooks once per call of the train function, so with ``steps_per_execution > 1`` such
    a callback would see one batch in every chunk: a training run of the plugin keeps the model's own
    ``steps_per_execution`` when one is there.  ModelCheckpoint and BackupAndRestore count batches only with
    an integer ``save_freq``.
    """

    def counts_batches(callback: Callback) -> bool:
        cls = type(callback)
        return not (
            cls.__module__.startswith("keras.")
            and cls.__name__ in ("ModelCheckpoint", "BackupAndRestore")
            and getattr(callback, "save_freq", None) == "epoch"
        )

    return _overriders([c for c in callbacks if counts_batches(c)], BATCH_HOOKS) + progress_observers(
        verbose, batches=True
    )


#: epochs shorter than this many steps are short: Keras' per-epoch work (callbacks, metrics, the data
#: iterator) then costs about as much as the steps or more
SHORT_EPOCH = 16


#: the epoch-level callback hooks
EPOCH_HOOKS = ("on_epoch_begin", "on_epoch_end")


def epoch_observers(callbacks: list[Callback], verbose: object = 0) -> list[str]:
    """``Class.hook`` of each callback that sees epochs (it overrides an epoch-level hook), and Keras' progress
    output where ``verbose`` shows one."""
    return _overriders(callbacks, EPOCH_HOOKS) + progress_observers(verbose, batches=False)


def _draws_randomness(model: Model) -> bool:
    """Whether a layer of the model draws random numbers (Dropout, noise, augmentation: each holds a seed
    generator)."""
    return any(getattr(layer, "_seed_generators", None) for layer in model._flatten_layers(include_self=True))


def one_long_epoch(
    keras: ModuleType, x: Data, y: Data, fit_kwargs: dict[str, Any], *, steps: int
) -> tuple[Data, None, dict[str, Any]]:
    """A full batch (the whole data set, one step an epoch) presented as one epoch of ``steps`` steps: the same
    batch every step.  TensorFlow: a ``tf.data`` pipeline; JAX and PyTorch: a generator.  Returns
    ``(x, y, fit_kwargs)`` for ``fit``; ``fit_kwargs["_epochs_of"]`` says how many epochs it replaces (popped
    by the caller)."""
    kwargs = dict(fit_kwargs)
    sample_weight = kwargs.pop("sample_weight", None)
    kwargs.pop("batch_size", None)
    kwargs.pop("shuffle", None)
    data = (x, y) if sample_weight is None else (x, y, sample_weight)
    replaced = kwargs.get("epochs")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        source: Data = tf.data.Dataset.from_tensors(data).repeat()
    else:

        def batches() -> Iterator[tuple[Data, ...]]:
            while True:
                yield data

        source = batches()
    # fit shuffles neither (and would warn that it ignores shuffle=True)
    kwargs.update(epochs=1, steps_per_epoch=int(steps), shuffle=False, _epochs_of=replaced)
    kwargs.pop("initial_epoch", None)
    return source, None, kwargs


def _under_strategy(keras: ModuleType, model: Model) -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None) or tf.distribute.get_strategy()
    return type(strategy).__name__ not in ("_DefaultDistributionStrategy", "DefaultDistributionStrategy")


@dataclass(frozen=True)
class FitSetup:
    """The checked inputs of a run and its arithmetic (see :func:`prepare_fit`).

    Attributes:
        kind: the kind of training data (:func:`data_kind`: ``"arrays"``, ``"dataset"``, ``"generator"``, ...).
        run_steps: the steps this run trains (``stop_after`` when given, else ``steps``).
        batch_size: the batch size of array inputs (the plugin's default for other data).
        per_epoch: steps an epoch of ``fit``, when known.
        exact_epoch: whether every epoch runs exactly ``per_epoch`` steps (arrays, which Keras batches the same
            way every epoch, or the one epoch the plugin sizes itself).
        initial_epoch: the user's ``initial_epoch`` (0 without one).
        user_epochs: the user's ``epochs``, None when the plugin sets them.
        user_steps_per_epoch: the user's ``steps_per_epoch``, 0 without one.
        pass_length: with a ``steps_per_epoch`` of the user's over finite data it does not divide, the batches of
            one pass over the data: Keras ends an epoch early at each pass's end (:func:`.plan.epochs_for`).
        endless: a ``steps_per_epoch`` of the user's over a ``tf.data.Dataset`` that repeats forever: every epoch
            runs exactly that many steps.
        user_kwargs: the names of the ``fit`` arguments the user passed.
        fit_kwargs: the arguments ``fit`` is called with, without ``callbacks``.
        callbacks: the user's callbacks.
        full_batch: the full batch is presented as one long epoch (:func:`full_batch_as_one_epoch`).
        data_rms: ``{"input_rms": ..., "target_rms": ...}``, the largest root mean square over the floating-point
            arrays of ``x`` and of ``y``, and their integer arrays where the model takes those as values (array
            inputs only; a side without one is left out): how far the data is from unit scale, which the
            diagnosis quotes.
        data_outliers: ``{"input_outliers": ..., "target_outliers": ...}``, the few samples that make a side's
            root mean square far from unit scale (:func:`few_samples_far`), where a few do.
        no_targets: array inputs given without ``y`` (a model whose loss needs targets then fails in Keras'
            first step with a message of the backend's that does not say so).
        string_targets: the first of ``y``'s values when they are strings (class names a loss cannot take; the
            backend's message is "Invalid dtype: str32" or the like), else None.
        string_inputs: likewise the first string of a numpy array in ``x`` (text for a ``TextVectorization``
            layer: Keras' fit converts numpy arrays to tensors of numbers, and stops on text with the same message).
    """

    kind: str
    run_steps: int
    batch_size: int
    per_epoch: int | None
    exact_epoch: bool
    initial_epoch: int
    user_epochs: int | None
    user_steps_per_epoch: int
    user_kwargs: frozenset[str]
    fit_kwargs: dict[str, Any]
    callbacks: list[Callback]
    full_batch: bool = False
    data_rms: dict[str, float] = field(default_factory=dict)
    data_outliers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pass_length: int | None = None
    endless: bool = False
    no_targets: bool = False
    string_targets: str | None = None
    string_inputs: str | None = None


def prepare_fit(
    keras: ModuleType,
    x: Data,
    y: Data,
    fit_kwargs: dict[str, Any],
    *,
    spec: RunSpec,
    steps: int,
    stop_after: int | None,
    batch_size: int | None,
    integer_inputs: bool = False,
    integer_targets: bool = False,
) -> FitSetup:
    """Check the training data against the ``fit`` arguments and complete those (in place: ``fit_kwargs`` is
    the engine's own copy): the batch size and shuffling of array inputs, the epochs that hold the steps.
    ``integer_inputs`` / ``integer_targets``: the model takes integer arrays on that side as values with a scale
    (see :mod:`.model_facts`), which the data's root mean square then includes.

    Raises:
        StabilityUsageError: no data, NaN/Inf or differing lengths in array inputs, empty arrays, ``y`` or
            ``batch_size`` with data that is already batched.
    """
    user_kwargs = frozenset(fit_kwargs)
    for name, obj in (("x", x), ("y", y), ("sample_weight", fit_kwargs.get("sample_weight"))):
        refuse_python_values(name, obj)
    kind = data_kind(keras, x)
    if kind == "none":
        raise StabilityUsageError("training data is required: received x=None")
    rms: dict[str, float | None] = {}
    outliers: dict[str, dict[str, Any]] = {}
    if kind == "arrays":
        # the data's scale, for the diagnosis, from the same pass that rejects NaN/Inf
        rms = {
            "input_rms": check_finite("x", x, integers=integer_inputs),
            "target_rms": check_finite("y", y, integers=integer_targets),
        }
        for side, obj, integers in (("input", x, integer_inputs), ("target", y, integer_targets)):
            few = few_samples_far(obj, rms[f"{side}_rms"], integers=integers)
            if few is not None:
                outliers[f"{side}_outliers"] = few
        check_finite("sample_weight", fit_kwargs.get("sample_weight"))
        _same_lengths(x, y, fit_kwargs.get("sample_weight"))
        if _n_samples(x) == 0:
            raise StabilityUsageError("x is empty: there is nothing to train on")
        fit_kwargs.setdefault("batch_size", batch_size if batch_size is not None else spec.batch_size)
        fit_kwargs.setdefault("shuffle", spec.shuffle)
    else:
        what = _KIND_NAMES.get(kind, kind)
        if y is not None:
            raise StabilityUsageError(
                f"y must be None when x is {what} (it yields (x, y) itself); received y of type {type(y).__name__}"
            )
        if fit_kwargs.get("batch_size") is not None:
            raise StabilityUsageError(f"batch_size must not be given when x is {what}: it is already batched")
        split = fit_kwargs.get("validation_split")
        if split:  # as Keras' fit refuses it (a ValueError of its array slicing): it splits arrays only
            raise StabilityUsageError(
                f"validation_split={split!r} needs x as arrays, which fit splits; x is {what}: pass "
                "validation_data=(x_val, y_val) (or a validation dataset) instead"
            )
    run_steps = int(stop_after) if stop_after is not None else int(steps)
    bs = int(fit_kwargs.get("batch_size") or spec.batch_size)
    per_epoch = epoch_length(keras, kind, x, fit_kwargs, bs)
    # whether every epoch runs exactly per_epoch steps: arrays (Keras batches them the same way), or the one
    # epoch the plugin sizes itself (a user's steps_per_epoch may outrun the data)
    exact_epoch = per_epoch is not None and kind == "arrays" and fit_kwargs.get("steps_per_epoch") is None
    initial_epoch = int(fit_kwargs.get("initial_epoch") or 0)
    user_epochs = fit_kwargs.get("epochs")
    user_steps_per_epoch = int(fit_kwargs.get("steps_per_epoch") or 0)
    if per_epoch is None:
        fit_kwargs["steps_per_epoch"] = run_steps if user_epochs is None else fit_kwargs.get("steps_per_epoch")
        per_epoch = fit_kwargs["steps_per_epoch"]
        exact_epoch = user_epochs is None
    pass_length = None
    if user_steps_per_epoch:
        without = {k: v for k, v in fit_kwargs.items() if k != "steps_per_epoch"}
        pass_length = epoch_length(keras, kind, x, without, bs)
        if not short_epochs_at_pass_ends(per_epoch, pass_length):
            pass_length = None
    if user_epochs is None:
        fit_kwargs["epochs"] = epochs_for(run_steps, per_epoch, initial_epoch, pass_length)
    fit_kwargs.setdefault("verbose", 0)
    # as Keras' CallbackList takes them: a list, a tuple, or one callback alone
    given = fit_kwargs.pop("callbacks", None)
    callbacks = list(keras.tree.flatten(given)) if given else []
    return FitSetup(
        kind=kind,
        run_steps=run_steps,
        batch_size=bs,
        per_epoch=per_epoch,
        exact_epoch=exact_epoch,
        initial_epoch=initial_epoch,
        user_epochs=user_epochs,
        user_steps_per_epoch=user_steps_per_epoch,
        user_kwargs=user_kwargs,
        fit_kwargs=fit_kwargs,
        callbacks=callbacks,
        data_rms={k: v for k, v in rms.items() if v is not None},
        data_outliers=outliers,
        pass_length=pass_length,
        endless=bool(user_steps_per_epoch) and kind == "dataset" and _endless(x),
        no_targets=kind == "arrays" and y is None,
        string_targets=_first_string(y) if kind == "arrays" else None,
        string_inputs=next((t for leaf in _iter_leaves(x) if (t := _first_string(leaf)) is not None), None)
        if kind == "arrays"
        else None,
    )


def _first_string(y: Data) -> str | None:
    """The first value of a numpy array of strings ``y`` (class names), else None."""
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "USO" or y.size == 0:
        return None
    first = y.reshape(-1)[0]
    return str(first) if isinstance(first, (str, bytes, np.str_, np.bytes_)) else None


def _endless(dataset: Data) -> bool:
    """Whether a ``tf.data.Dataset`` repeats forever (its cardinality is ``tf.data.INFINITE_CARDINALITY``)."""
    return int(dataset.cardinality().numpy()) == -1


def _kept_for(name: str, value: object) -> str:
    """Why the epochs the user's ``fit`` argument ``name`` asked for were kept, in words."""
    if name in ("validation_data", "validation_split"):
        shown = f"={value!r}" if name == "validation_split" else ""
        return f"Keras' validation at each epoch's end ({name}{shown})"
    return f"your {name}={value!r}" if isinstance(value, (int, float)) else f"your {name}"


def _given(value: object) -> bool:
    """Whether a ``fit`` argument is set: not None, and not a zero or an empty container; arrays (validation
    data given as x_val alone) are set whatever their values (their truth value is ambiguous)."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float, str, dict, list, tuple)):
        return bool(value)
    return True


def full_batch_as_one_epoch(
    keras: ModuleType,
    model: Model,
    x: Data,
    y: Data,
    setup: FitSetup,
    speed_notes: list[str],
) -> tuple[Data, Data, FitSetup]:
    """The data ``fit`` trains on, ``(x, y, setup)``: a full-batch run whose epochs nothing of the user's
    observes as one long epoch of the same batch (:func:`one_long_epoch`), else the data as given; either way,
    said in ``speed_notes`` (what made the run faster or slower, not what qualifies its verdict).

    Short epochs: Keras' work at each epoch's end and start can cost far more than the steps (a full-batch run
    is one step an epoch: 20x the same steps as one long epoch).  Other short epochs stay (their batches are
    Keras' own permutations), and the report says they were short.
    """
    per_epoch, run_steps, fit_kwargs = setup.per_epoch, setup.run_steps, setup.fit_kwargs
    if not (setup.kind == "arrays" and per_epoch is not None and per_epoch < SHORT_EPOCH and run_steps > per_epoch):
        return x, y, setup
    callbacks = setup.callbacks
    verbose = fit_kwargs.get("verbose")
    # batch indices count within epochs
    watching = list(dict.fromkeys(epoch_observers(callbacks, verbose) + batch_observers(callbacks, verbose)))
    kept = [
        name
        for name in (
            "epochs",
            "initial_epoch",
            "steps_per_epoch",
            "class_weight",
            "validation_data",
            "validation_split",
        )
        if name in setup.user_kwargs and _given(fit_kwargs.get(name))
    ]
    # the order of the samples within the batch, which Keras shuffles each epoch, changes the sums only by
    # rounding, unless something random (Dropout, noise) hits each sample by its place in the batch
    order_free = fit_kwargs.get("shuffle") is False or not _draws_randomness(model)
    if per_epoch == 1 and order_free and not watching and not kept and not _under_strategy(keras, model):
        x_fit, y_fit, one_epoch = one_long_epoch(keras, x, y, fit_kwargs, steps=run_steps)
        speed_notes.append(
            f"full batch: the same batch was presented as one epoch of {run_steps} steps instead of "
            f"{one_epoch.pop('_epochs_of')} epochs of one step (nothing of yours observes epochs, and "
            "the order of the samples in the batch, which Keras shuffles each epoch, changes the sums "
            "only by rounding here)"
        )
        return (
            x_fit,
            y_fit,
            replace(setup, fit_kwargs=one_epoch, per_epoch=run_steps, exact_epoch=True, full_batch=True),
        )
    why = (
        f"{watching[0]}, which sees them"
        if watching
        else (
            _kept_for(kept[0], fit_kwargs[kept[0]])
            if kept
            else (
                "the distribution strategy"
                if per_epoch == 1 and order_free
                else "their batches (Keras' own permutations, which the model's random layers see)"
            )
        )
    )
    speed_notes.append(
        f"short epochs ({per_epoch} step(s) each) kept for {why}: Keras' work at each epoch's end and start may "
        "cost more than the steps"
    )
    return x, y, setup


__all__ = [
    "FitSetup",
    "batch_observers",
    "progress_observers",
    "check_finite",
    "data_kind",
    "epoch_length",
    "epoch_observers",
    "full_batch_as_one_epoch",
    "one_long_epoch",
    "prepare_fit",
    "short_message",
]
