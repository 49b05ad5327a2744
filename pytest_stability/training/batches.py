"""Which batch a step trained on: the offending batch of a loss spike or a non-finite loss.

The plugin never touches the user's data: Keras' ``fit`` batches and shuffles array inputs itself.  The
batch of a step is found again after training, from what decided the order, by running Keras' own array
pipeline (``ArrayDataAdapter``) over the sample indices ``0..n-1`` instead of the data:

* TensorFlow: the permutation op inside Keras' ``tf.data`` pipeline takes its seed from the global seed the
  run started with; the same pipeline over the indices, built under that seed, yields the same permutations
  pass after pass;
* JAX: each epoch's permutation is drawn from numpy's global random state when the epoch starts;
* PyTorch: each epoch's ``DataLoader`` draws its sampler's seed from torch's global random state.

For JAX and PyTorch, :class:`EpochStates` keeps that random state at each epoch's start (after every other
callback's ``on_epoch_begin``; a few kilobytes an epoch, nothing on the device); nothing is kept on
TensorFlow.  Pipelines the plugin cannot read again (generators, loaders) are named by their batch number.

The Keras internal this depends on, ``ArrayDataAdapter``, is listed in :mod:`.keras_internals`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import keras
import numpy as np

from ..framework_types import Data


@dataclass
class BatchPlan:
    """How the steps of one ``fit`` map to batches of the data (see :func:`locate`)."""

    backend: str
    kind: str  # fitsetup.data_kind: "arrays", "dataset", "pydataset", "generator", ...
    seed: int
    batch_size: int
    #: array inputs: the training samples (the part before a validation_split), else None
    n: int | None = None
    #: Keras' shuffle argument for array inputs (True, False or "batch")
    shuffle: bool | str = True
    #: steps in each epoch when every epoch is one full pass over the data, else None
    per_epoch: int | None = None
    initial_epoch: int = 0
    #: the plugin presented a full batch as one long epoch: every step trained on all ``n`` samples
    full_batch: bool = False
    #: JAX and PyTorch, shuffled arrays: the global random state at each epoch's start (:class:`EpochStates`)
    epoch_states: list[Any] = field(default_factory=list)

    @property
    def needs_epoch_states(self) -> bool:
        return self.kind == "arrays" and bool(self.shuffle) and not self.full_batch and self.backend != "tensorflow"


class EpochStates(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Last in the callback list: keeps the global random state that the epoch's shuffle draws from."""

    def __init__(self, plan: BatchPlan) -> None:
        super().__init__()
        self.plan = plan

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.plan.backend == "torch":
            import torch

            self.plan.epoch_states.append(torch.get_rng_state())
        else:
            self.plan.epoch_states.append(np.random.get_state())


def locate(plan: BatchPlan, step: int) -> dict[str, Any]:
    """Where step ``step`` (0-based) took its batch from.

    Returns ``{"step", "batch", ...}``: ``epoch`` and ``batches_per_epoch`` when every epoch is a full pass
    (``batch`` then counts within the epoch, from 0, and ``epoch`` as callbacks see it); ``indices`` into the
    arrays for array inputs (``why`` says so when they cannot be found); ``full_batch`` when every step
    trained on all samples.
    """
    step = int(step)
    out: dict[str, Any] = {"step": step, "batch": step}
    if plan.full_batch:
        out.update(full_batch=True, epoch=plan.initial_epoch, batch=step, batches_per_epoch=None)
    elif plan.per_epoch:
        epoch, batch = divmod(step, int(plan.per_epoch))
        out.update(epoch=plan.initial_epoch + epoch, batch=batch, batches_per_epoch=int(plan.per_epoch))
    if plan.kind != "arrays" or not plan.n:
        return out
    try:
        with warnings.catch_warnings():
            # the framework's own warnings while the plugin reads the pipeline again are not the user's: under
            # `-W error` they lost the batch (PyTorch's loader warns of NumPy 2's `__array__` copy keyword)
            warnings.simplefilter("ignore")
            indices = _indices(plan, step)
    except Exception as exc:  # never fail the report on it: say why the samples are not named
        out["why"] = f"the batch's samples could not be found again ({type(exc).__name__}: {exc})"
        return out
    if indices is None:
        out["why"] = "the batch's samples could not be found again (the random state of its epoch was not kept)"
    else:
        out["indices"] = [int(i) for i in indices]
    return out


def _indices(plan: BatchPlan, step: int) -> np.ndarray | None:
    n, bs = int(plan.n or 0), int(plan.batch_size)
    if plan.full_batch:
        return np.arange(n)
    per_epoch = int(plan.per_epoch or 0)
    if not per_epoch:
        return None
    epoch, batch = divmod(step, per_epoch)
    if not plan.shuffle:
        return np.arange(batch * bs, min(n, (batch + 1) * bs))
    if plan.backend == "tensorflow":
        return _tf_indices(plan, epoch, batch)
    if epoch >= len(plan.epoch_states):
        return None
    from . import isolation
    from .recorders import host_numpy

    kept = isolation.random_state()
    try:
        if plan.backend == "torch":
            import torch

            torch.set_rng_state(plan.epoch_states[epoch])
            batches = iter(_adapter(n, bs, plan.shuffle).get_torch_dataloader())
        else:
            np.random.set_state(plan.epoch_states[epoch])
            batches = _adapter(n, bs, plan.shuffle).get_jax_iterator()
        for _ in range(batch):
            next(batches)
        return host_numpy(next(batches)).reshape(-1)  # (numpy 2 warns in convert_to_numpy on torch's tensors)
    finally:
        isolation.set_random_state(kept)


def _tf_indices(plan: BatchPlan, epoch: int, batch: int) -> np.ndarray:
    """TensorFlow: Keras' pipeline over the indices, under the run's global seed, read ``epoch + 1`` times
    (each read of the data set draws the next permutation, as ``fit``'s epochs do).  The stability test puts
    TensorFlow's global seed back when it ends (:class:`~.isolation.ProcessState`)."""
    import tensorflow as tf

    tf.random.set_seed(int(plan.seed))
    dataset = _adapter(int(plan.n or 0), int(plan.batch_size), plan.shuffle).get_tf_dataset()
    for _ in range(epoch):
        for _ in dataset:
            pass
    for i, element in enumerate(dataset):
        if i == batch:
            return np.asarray(element).reshape(-1)
    raise IndexError(f"batch {batch} is past the end of epoch {epoch}")


def _adapter(n: int, batch_size: int, shuffle: bool | str) -> Any:
    """Keras' own array pipeline over the sample indices (an internal class: there since Keras 3.0)."""
    from .keras_internals import load

    return load("ArrayDataAdapter")(np.arange(n, dtype=np.int64), batch_size=batch_size, shuffle=shuffle)


def batch_arrays(
    keras_mod: ModuleType, x: Data, y: Data, sample_weight: Data, indices: list[int]
) -> dict[str, np.ndarray]:
    """The samples at ``indices`` of the arrays, as ``.npz`` entries: ``x`` (or ``x_<key>`` / ``x_<i>`` for a
    dict or list of inputs), ``y`` likewise, ``sample_weight``."""
    take = np.asarray(indices, dtype=np.int64)
    out: dict[str, np.ndarray] = {}

    def put(prefix: str, obj: Data) -> None:
        if obj is None:
            return
        if isinstance(obj, dict):
            for key, value in obj.items():
                put(f"{prefix}_{key}", value)
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                put(f"{prefix}_{i}", value)
        else:
            out[prefix] = np.asarray(keras_mod.ops.convert_to_numpy(obj) if not isinstance(obj, np.ndarray) else obj)[
                take
            ]

    put("x", x)
    put("y", y)
    put("sample_weight", sample_weight)
    return out


__all__ = ["BatchPlan", "EpochStates", "batch_arrays", "locate"]
