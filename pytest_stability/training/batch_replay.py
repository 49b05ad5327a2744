"""A bad sample or a bad update? One batch's loss and gradient norm before and after its step.

``--stability-replay=SEED --stability-replay-batch=STEP`` trains the run again (same seed, same data order)
up to the weights step ``STEP`` started from, then :func:`probe` takes the batch that step trained on
(:func:`.batches.locate`) and the batch of the step before, and measures, for each, the training loss and
the gradient norm at those weights; then it takes step ``STEP`` itself (``model.train_on_batch`` on that
batch: the model's own ``train_step`` and optimizer, its state as it was) and measures both again.

* The step's batch far above the previous batch at the same weights (``BAD_SAMPLE_RATIO`` x): the batch is
  the cause (a mislabeled or extreme sample), not the weights.
* Both high at those weights (both NaN/Inf included): the weights are; the updates before the step did it.
* The previous batch's loss far higher after the step than before it: the step's update damaged the model.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..framework_types import Data, Model
from .curvature import _Products
from .fitsetup import _leaves

if TYPE_CHECKING:  # .batches imports Keras; conclude() is a pure function, tested without it
    from .batches import BatchPlan

#: the step's batch counts as the cause when its loss is this many times the previous batch's at the same weights
BAD_SAMPLE_RATIO = 3.0
#: the step's update counts as damaging when the previous batch's loss grew this many times across it
DAMAGE_RATIO = 3.0


def loss_and_grad_norm(
    keras: ModuleType, model: Model, batch: tuple[Data, Data, Data], products: _Products | None = None
) -> tuple[float, float]:
    """The model's training loss on ``batch`` at its current weights and the global norm of its gradient
    (no variable changes): the curvature meter's loss and gradient (:class:`.curvature._Products`; pass one
    to evaluate several batches, or the same one at other weights, with one compiled function)."""
    session = (products or _Products(keras, model)).at(batch)
    if session.grad is None:  # TensorFlow and JAX compute them with the first product
        session.hvp(np.zeros(session.n))
    assert session.loss is not None and session.grad is not None
    return float(session.loss), float(np.linalg.norm(session.grad))


def probe(
    keras: ModuleType, model: Model, plan: BatchPlan, x: Data, y: Data, fit_kwargs: dict[str, Any], step: int
) -> dict[str, Any]:
    """Measure the batch of ``step`` (and of the step before) around the update of ``step``; the model must
    hold the weights ``step`` started from.  Returns builtins: ``batch`` (:func:`.batches.locate`),
    ``before``/``after`` (``loss``, ``grad_norm`` of the step's batch), ``previous_before``/``previous_after``
    (of the previous step's batch), ``verdict`` (``bad_sample``, ``bad_weights`` or ``unclear``), ``damaged``
    and ``text`` (lines)."""
    from .batches import batch_arrays, locate

    where = locate(plan, step)
    if "indices" not in where:
        why = where.get("why") or "its samples are known for array inputs only"
        return {"batch": where, "verdict": "unknown", "text": [f"the batch of step {step} cannot be replayed: {why}"]}
    sample_weight = fit_kwargs.get("sample_weight")

    def batch_of(indices: list[int]) -> tuple[Data, Data, Data]:
        arrays = batch_arrays(keras, x, y, sample_weight, indices)
        return _restructure(x, arrays, "x"), _restructure(y, arrays, "y"), arrays.get("sample_weight")

    this = batch_of(where["indices"])
    previous = batch_of(locate(plan, step - 1)["indices"]) if step > 0 else None
    products = _Products(keras, model)  # its compiled functions serve every evaluation below

    def measure(batch: tuple[Data, Data, Data]) -> tuple[float, float]:
        return loss_and_grad_norm(keras, model, batch, products)

    before = measure(this)
    prev_before = measure(previous) if previous is not None else None
    # before the update: which of the batch's samples makes its loss (asked for below, of a bad sample only)
    shares = (
        _sample_shares(keras, model, this, products)
        if prev_before is not None and _ratio(before[0], prev_before[0]) >= BAD_SAMPLE_RATIO
        else None
    )
    model.train_on_batch(this[0], this[1], sample_weight=this[2], class_weight=fit_kwargs.get("class_weight"))
    after = measure(this)
    prev_after = measure(previous) if previous is not None else None
    out: dict[str, Any] = {
        "batch": where,
        "before": {"loss": before[0], "grad_norm": before[1]},
        "after": {"loss": after[0], "grad_norm": after[1]},
    }
    lines = [
        f"the batch of step {step} (samples {_short(where['indices'])}): loss {before[0]:.4g}, gradient norm "
        f"{before[1]:.4g} at the weights step {step} started from; after its update loss {after[0]:.4g}, gradient "
        f"norm {after[1]:.4g}"
    ]
    verdict, damaged = "unclear", False
    if prev_before is not None and prev_after is not None:
        out["previous_before"] = {"loss": prev_before[0], "grad_norm": prev_before[1]}
        out["previous_after"] = {"loss": prev_after[0], "grad_norm": prev_after[1]}
        lines.append(
            f"the batch of step {step - 1}, at the same weights: loss {prev_before[0]:.4g}; after the update of step "
            f"{step}: {prev_after[0]:.4g}"
        )
        verdict, damaged, said = conclude(step, before[0], prev_before[0], prev_after[0])
        lines += said
        if verdict == "bad_sample" and shares is not None:
            top = int(np.argmax(shares))
            if shares[top] >= TOP_SHARE:
                sample = int(where["indices"][top])
                out["worst_sample"] = {"index": sample, "share": float(shares[top])}
                lines.append(
                    f"-> sample {sample} makes {shares[top]:.1%} of this batch's loss at these weights: look at it "
                    "first (its target, its inputs)"
                )
    out.update(verdict=verdict, damaged=damaged, text=lines)
    return out


#: a sample is named as the bad one when it makes at least this share of its batch's loss
TOP_SHARE = 0.5
#: the shares are measured for batches of at most this many samples (one loss evaluation each)
SHARES_MAX_BATCH = 256


def _sample_shares(
    keras: ModuleType, model: Model, batch: tuple[Data, Data, Data], products: _Products | None = None
) -> np.ndarray | None:
    """Each sample's share of the batch's loss at the model's weights: the loss of the whole batch (the same
    forward pass, BatchNormalization's statistics included) weighted to one sample at a time, as a fraction of
    their sum; None where it cannot be told (a loss that ignores sample weights, a non-finite one) or the batch
    is larger than :data:`SHARES_MAX_BATCH`."""
    x, y, weights = batch
    n = int(np.asarray(next(iter(_leaves(x)))).shape[0])
    if n > SHARES_MAX_BATCH:
        return None
    base = np.ones(n, "float32") if weights is None else np.asarray(weights, "float32").reshape(n)
    products = products or _Products(keras, model)  # one compiled loss for the n evaluations, no gradient
    losses = []
    for i in range(n):
        one = np.zeros(n, "float32")
        one[i] = base[i]
        losses.append(products.loss_at((x, y, one)))
    arr = np.asarray(losses, dtype=np.float64)
    total = float(arr.sum())
    if not np.all(np.isfinite(arr)) or not total > 0 or np.any(arr < 0):
        return None
    return arr / total


def conclude(step: int, loss: float, previous: float, previous_after: float) -> tuple[str, bool, list[str]]:
    """What the losses say: ``loss`` of the step's batch and ``previous`` of the step before's, both at the
    weights step ``step`` started from, and ``previous_after`` after the step's update.  ``(verdict, damaged,
    lines)``: ``bad_sample`` when this batch's loss is ``BAD_SAMPLE_RATIO`` x the previous batch's (or NaN/Inf
    where that one is finite), ``bad_weights`` when it is not (both NaN/Inf included: the weights are already
    broken); ``damaged`` when the previous batch's loss, finite before, grew ``DAMAGE_RATIO`` x across the
    update or became NaN/Inf."""
    lines = []
    if not np.isfinite(previous):
        verdict = "bad_weights"
        lines.append(
            f"-> not this batch: the batch of step {step - 1} is {previous:.4g} at these weights too, so the weights "
            f"step {step} started from are already broken (the updates before step {step}, or an op unsafe on what "
            "they predict: log(0) of a saturated output, 0/0)"
        )
    elif _ratio(loss, previous) >= BAD_SAMPLE_RATIO:
        verdict = "bad_sample"
        how = (
            f"{_ratio(loss, previous):.3g}x the previous batch's"
            if np.isfinite(loss)
            else f"{loss:.4g} where the previous batch's is {previous:.4g}"
        )
        lines.append(
            f"-> a bad sample: at the same weights this batch's loss is {how}, so the batch itself (a mislabeled or "
            "extreme sample) caused the jump, not the weights; look at its samples"
        )
    else:
        verdict = "bad_weights"
        lines.append(
            "-> not this batch: the previous batch's loss is as high at these weights, so the updates before "
            f"step {step} did it"
        )
    damaged = bool(np.isfinite(previous)) and _ratio(previous_after, previous) >= DAMAGE_RATIO
    if damaged:
        grew = (
            f"grew {_ratio(previous_after, previous):.3g}x"
            if np.isfinite(previous_after)
            else f"went from {previous:.4g} to {previous_after:.4g}"
        )
        lines.append(
            f"-> its update damaged the model: the previous batch's loss {grew} across step {step} (clipnorm or a "
            "robust loss limits what one batch can do)"
        )
    return verdict, damaged, lines


def _ratio(a: float, b: float) -> float:
    if not np.isfinite(a):
        return float("inf")
    return a / b if b > 0 and np.isfinite(b) else (float("inf") if a > 0 else 1.0)


def _short(indices: list[int], n: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:n])
    return f"[{shown}{', ...' if len(indices) > n else ''}]"


def _restructure(template: Data, arrays: dict[str, np.ndarray], prefix: str) -> Data:
    """The entries :func:`.batches.batch_arrays` wrote for ``template`` (an array, dict or list of them), put
    back in its structure."""
    if template is None:
        return None
    if isinstance(template, dict):
        return {k: _restructure(v, arrays, f"{prefix}_{k}") for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_restructure(v, arrays, f"{prefix}_{i}") for i, v in enumerate(template))
    return arrays[prefix]


__all__ = ["BAD_SAMPLE_RATIO", "DAMAGE_RATIO", "TOP_SHARE", "loss_and_grad_norm", "probe"]
