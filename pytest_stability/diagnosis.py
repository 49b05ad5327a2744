"""Name the likely cause of each finding, the evidence for it, and the fix to try.

Pure: reads findings and a :class:`~pytest_stability.trace.Trace` (including
``trace.info``, the optimizer and model facts the engine records, and
``trace.opt_stats``, Adam's slot statistics when ``diagnostics=True``); knows
nothing of pytest or TensorFlow.

Every diagnosed finding gets

* ``cause``: one sentence naming the cause, with the numbers that point to it;
* ``fix``: the fixes to try, the one this run's evidence supports most first;
* ``confidence``: ``"likely"`` when the evidence is specific to the cause,
  ``"uncertain"`` when it is only consistent with it;
* ``evidence["cause_key"]``: a machine-readable key from :data:`CAUSES`;
* ``evidence["fixes"]``: the fixes in that order, each ``{"text", "config"}``: ``config`` is the
  change as optimizer settings (``{"clipnorm": 0.49}``, ``{"learning_rate_factor": 0.001}``,
  ``{"learning_rate_cap": 0.01}``, ``{"epsilon": 1e-3}``) or None for a change to the data, loss or
  model; ``evidence["fix_configs"]``: the configs alone, in the same order (the what-if replay,
  :mod:`pytest_stability.training.whatif`, applies them);
* ``evidence["fix_from"]``, when the root event came before the finding's step (a run found stuck long
  after the blow-up that killed it): the step the fix must be in place before (the what-if replay applies it
  there);
* ``evidence["quotes"]``, ``evidence["templates"]`` and ``evidence["diagnosis"]``: below.

Every number is the trace's
---------------------------
A rule never formats a number into its text: it *quotes* it.  A quote is a
value with the recipe that computed it from the trace: a series (``loss``,
``grad_norm``, ``update_ratio``, ``lr``, an ``opt.*`` slot statistic, the
validation loss) at one step or reduced over a range of steps (median, lowest,
highest, 90th percentile); a ratio or product of two quotes; a factor derived
from quotes (``pow10``: ten to the rounded log of a ratio; ``round2``: two
significant digits); a setting or fact from ``trace.info``; a rule's constant.
The cause and the fixes are rendered from templates whose ``{placeholders}`` are
quotes, and a quote of a series always names its steps in the text
(``0.493 (median of steps 0-9)``, ``599 (step 1)``).  ``evidence["quotes"]``
holds every quote (name -> recipe and value), ``evidence["templates"]`` the
templates, ``evidence["diagnosis"]`` the numeric quotes by name: anyone can
recompute each number from the trace and re-render the text
(``tests/unit/test_diagnosis_quotes.py`` does, on generated traces).

Fixes: direction and magnitude
------------------------------
* No fix raises the learning rate of a run whose loss rose above its early
  minimum or jumped, or whose gradient norm burst (:func:`blew_up`): such a run
  that then stopped moving is a collapse, named so.
* A lower learning rate comes with a magnitude from the run: the factor that
  brings its update size ``|dw|/|w|`` (the largest update of the healthy
  stretch before an early blow-up, a collapse or an explosion of the gradient
  norm, whose own updates are its consequence; the steps around another later
  event) below
  :data:`TARGET_UPDATE` per step, as a power of ten, when that update was too
  large (at least :data:`UPDATE_TOO_FAST`);
  under a schedule that rose into the failure, the factor that brings the
  highest rate the run reached to :data:`SCHEDULE_MARGIN` x the rate it blew up at;
  otherwise the rule's default (10x, or 3x for a spike without an explosion).
  A rate that *jumped* (:func:`lr_jump`: :data:`LR_JUMP` x above every earlier
  rate in one step, after a healthy stretch) is capped instead
  (``{"learning_rate_cap": c}``): at :data:`JUMP_CAP` x the highest rate the
  run trained at before the jump, and at most :data:`SCHEDULE_MARGIN` x the
  rate it blew up at; the steps before the jump keep their rates.
* A clipnorm is the 90th percentile of the gradient norms of the run's healthy
  stretch before the event (steps whose norm and loss stayed within
  :data:`HEALTHY_GROWTH` x their first steps'), and is not offered when that
  stretch is shorter than :data:`HEALTHY_MIN_STEPS` steps: the text says so and
  offers the learning rate.
* Ranked by evidence: a lower learning rate first for an early blow-up, for
  updates that were too large (before an explosion of the gradient norm: on
  the healthy stretch before it, the same updates the rate is measured on), or
  under a schedule that rose into the failure;
  clipnorm first for a lone burst of the gradient norm after a healthy stretch;
  for Adam's second-moment collapse a larger epsilon (the fix that replays
  most reliably), then amsgrad, beta_2 and the learning rate.

The rules
---------
``nonfinite``
    input batch non-finite -> ``nan_in_data``; NaN/Inf at step 0 in the weights
    or optimizer state only, from finite loss and gradients -> the update made
    it: ``epsilon_underflow`` for an Adam-family optimizer on float16 variables
    with an epsilon below float16's smallest normal number, else
    ``update_nonfinite``; NaN/Inf in the loss or gradients at step 0 ->
    ``nonfinite_at_start`` (op, data or initialisation; never the learning
    rate); an early NaN of float16 Adam with such an epsilon ->
    ``epsilon_underflow``; loss or gradient norms grew at least
    :data:`GROWTH_BEFORE_NAN` x in the steps before the NaN, or a NaN within a
    few steps of a first update that was too large -> ``lr_too_high``; a finite,
    steady loss that turns NaN/Inf in one step -> ``unsafe_loss_op``.
``loss_spike`` and ``grad_norm``
    float16 Adam with an underflowing epsilon, early -> ``epsilon_underflow``;
    an Adam-family optimizer with the *history* a second-moment collapse needs
    (at least :data:`HISTORY_MIN_STEPS` steps before the burst, over which the
    gradient norm fell at least :data:`TINY_GRADIENTS` x, or
    :data:`SMALL_GRADIENTS` x with the loss down :data:`SMALL_GRADIENTS_FELL` x
    (:data:`SLOW_CLIMB_GRADIENTS` x and :data:`SLOW_CLIMB_FELL` x for a slow climb back)
    and ``g^2/v`` up :data:`G2V_SUPPORT` x where measured, or :data:`PLATEAU_GRADIENTS` x
    with the loss down :data:`SMALL_GRADIENTS_FELL` x and a burst that left it up, or the
    slot statistics show ``g^2/v`` jump :data:`G2V_JUMP` x, or, without
    gradient norms, the loss fell :data:`NEAR_ZERO` x) ->
    ``adam_second_moment``; otherwise an event in the first
    :data:`EARLY_FRACTION` of the steps (at least :data:`EARLY_MIN_STEPS`):
    stuck afterwards -> ``collapse_constant``, else ``lr_too_high`` (or the
    initialisation / input scale), whatever the optimizer; stuck after the
    event -> ``collapse_constant``; a learning rate that jumped before the event
    (:func:`lr_jump`) -> ``lr_too_high`` (likely), its explosion included; a
    gradient norm :data:`EXPLOSION_FACTOR` x the 90th percentile before it ->
    ``gradient_explosion``; else ``lr_too_high`` (uncertain).
``stuck``
    ``no_gradient`` / ``no_update`` variables (``no_gradient`` for certain when
    the model's graph shows they feed only outputs without a loss: the cause
    names them); a run that blew up
    (:func:`blew_up`) and then stopped, or whose gradients became exactly zero
    right after one of the first updates moved the weights their own norm or
    more (whatever the loss did) -> ``collapse_constant``; under Ftrl, one
    of the first updates changed the weights by :data:`WEIGHTS_REPLACED` of
    their norm or more -> ``weights_replaced``; a loss flat at
    ``ln K`` (the cross-entropy of predicting the class prior of K balanced
    classes) that never fell below it -> ``labels_no_signal``; updates <= 1e-6
    of the weights -> ``updates_too_small``; a flat loss ->
    ``collapsed_output``; vanished or zero gradients -> ``vanished_gradients``.
``val_loss``
    a training finding at or before the rise -> ``training_loss_rise`` (its
    consequence, not overfitting); BatchNorm layers with a measured
    train/inference gap ``trace.info["bn_train_infer_gap"]`` of at least
    :data:`BN_GAP` -> ``batchnorm_mismatch`` (a training-mode loss that rose
    without a training finding follows the same noisy batch statistics); the
    training loss rose :data:`TRAIN_RISE` x between the validation best and
    the rise -> ``training_loss_rise``; BatchNorm layers and an erratic
    validation curve -> ``batchnorm_mismatch``; otherwise ``overfitting``.

:func:`rank_findings` (and :func:`primary_finding`) choose one primary cause
per run across all checks: the earliest root event.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from .checks.base import CheckResult, Finding
from .checks.spikes import stuck_after  # "stuck" means the same in the check and here

# a flat loss within this fraction of ln K (K = 2..MAX_CLASSES) is the loss of predicting the class prior: the same
# numbers as the check's rule for a network that died at the prior
from .checks.stuck import PRIOR_MAX_CLASSES as MAX_CLASSES
from .checks.stuck import PRIOR_RTOL as PRIOR_LOSS_RTOL
from .checks.stuck import UPDATE_TOO_SLOW  # weights that hardly move: the same limit as the check's
from .checks.validation import (  # one threshold: the check waives the noise allowance, the diagnosis names it
    BN_GAP,
    smooth,
)
from .trace import Trace, describe_samples

#: cause key -> short title (used by reports and the detection benchmark).
CAUSES = {
    "adam_second_moment": "Adam second-moment collapse",
    "gradient_explosion": "gradient explosion",
    "collapse_constant": "collapse to a constant loss after an explosion",
    "loss_scale_overflow": "mixed-precision updates skipped on overflow",
    "lr_too_high": "learning rate too high",
    "unsafe_loss_op": "numerically unsafe op in the loss or model",
    "nan_in_data": "NaN/Inf in the input data",
    "batchnorm_mismatch": "BatchNorm train/inference mismatch",
    "overfitting": "overfitting or late-training drift",
    "nonfinite_at_start": "NaN/Inf from the first step: an op, the data or the initialisation",
    "update_nonfinite": "the optimizer's update made the weights NaN/Inf",
    "epsilon_underflow": "Adam's epsilon underflows in float16: the update divides by ~0",
    "training_loss_rise": "validation rise that follows a rising training loss (not overfitting)",
    "collapsed_output": "collapsed to a constant output",
    "labels_no_signal": "the labels carry no signal the model can learn (the loss of predicting the class prior)",
    "weights_replaced": "an early update replaced the weights (Ftrl on a deep network), the output is constant since",
    "vanished_gradients": "gradients vanished (dead units, saturated outputs)",
    "updates_too_small": "updates too small to learn (learning rate too low)",
    "no_gradient": "a variable never receives a gradient",
    "no_update": "a variable never changes",
    "replica_disagree": "the replicas of a distributed run do not train alike",
    "replica_drift": "the replicas' copies of the weights drifted apart",
    "probabilities_from_unbounded": "the loss takes probabilities, but the output layer has no sigmoid or softmax",
    "softmax_one_unit": "the output is a softmax over a single unit, always 1",
    "logits_from_probabilities": "the loss takes logits (from_logits=True), but the output layer makes probabilities",
    "gradients_out_of_scale": "gradients out of scale from the first step (weights initialised too large)",
    "inputs_out_of_scale": "inputs far from unit scale saturated or killed the units: the training stopped",
    "zero_loss": "the loss is exactly 0 at every step: it does not depend on the model's outputs",
    "targets_out_of_range": "a regression's targets lie outside the range of its bounded output (a sigmoid, a tanh)",
    "batchnorm_one_sample": "BatchNorm over batches of one sample: every feature becomes its beta",
    "weight_decay_too_strong": "weight decay shrinks the weights to zero faster than the gradients move them",
    "clip_too_small": "a gradient clip far below the gradients holds every update back",
    "schedule_decayed": "the learning rate fell too far (a schedule, a callback that lowers it): the updates stopped",
    "unknown": "unknown",
}

LIKELY = "likely"
UNCERTAIN = "uncertain"

ADAM_FAMILY = ("Adam", "AdamW", "Nadam", "Adamax", "Lamb", "Lion")
#: the loss fell this many times below its initial level: "near zero" (evidence for Adam without gradient norms).
NEAR_ZERO = 100.0
#: g^2/v just before a spike vs its run median that signals a collapsed v.
G2V_JUMP = 100.0
#: the gradient norm over the stretch before a burst fell this many times below its early level: "tiny" for Adam's v.
TINY_GRADIENTS = 10.0
#: ...or this many times with the loss fallen SMALL_GRADIENTS_FELL x and, where the slot statistics are recorded,
#: g^2/v just before the burst at least G2V_SUPPORT x its median: a 5-10x smaller gradient shrinks v only 25-100x, so
#: the collapse needs a loss near its floor and a v that lagged the incoming gradients (g^2/v near 1 says v kept up:
#: the step size bounced out of a sharp minimum, a learning rate too high for it)
SMALL_GRADIENTS = 5.0
SMALL_GRADIENTS_FELL = 1000.0
G2V_SUPPORT = 5.0
#: ...or, for a loss that climbed back slowly (the slingshot: Adam's normalised step, about the learning rate per
#: weight however small the gradient, overshoots the sharp minimum the run reached), this many times with the
#: loss fallen SLOW_CLIMB_FELL x (and g^2/v up G2V_SUPPORT x where measured): a slow climb is no spike of the
#: rate (those burst in a step), and it comes only after the loss fell that far.
SLOW_CLIMB_GRADIENTS = 4.0
SLOW_CLIMB_FELL = 100.0
#: ...or, for a burst that left the loss up (the first loss event after the history, or the one right after it,
#: did not recover: Adam's collapse throws the loss onto a plateau, "shoots up and plateaus", where a rate too high
#: for the minimum bounces out and back, spike after spike), this many times with the loss fallen
#: SMALL_GRADIENTS_FELL x.  On the stored traces of the detection benchmark (3 seeds of every family, 10 of
#: PyTorch's adam_collapse), one of the first two events of every Adam collapse stayed up, and none of
#: adam_periodic's did (its first that stayed up was its 6th to 14th); the collapses' gradients had fallen 4.1x
#: and more, adam_periodic's 1.2x to 4.2x.
PLATEAU_GRADIENTS = 3.0
#: steps of history before a burst that Adam's second moment needs to collapse (v averages ~1/(1-beta_2) steps).
HISTORY_MIN_STEPS = 100
#: spike events (with the loss fallen at least PERIODIC_FELL x) that make Adam's repeated spikes.
PERIODIC_EVENTS = 3
PERIODIC_FELL = 10.0
#: growth of loss or gradient norm in the steps before a NaN that means divergence.
GROWTH_BEFORE_NAN = 10.0
#: gradient norm at a spike / 90th percentile before it that means explosion.
EXPLOSION_FACTOR = 10.0
#: an event in the first EARLY_FRACTION of the planned steps (and at least EARLY_MIN_STEPS) is an early blow-up.
EARLY_FRACTION = 0.05
EARLY_MIN_STEPS = 10
#: gradient norms and losses within this factor of the run's first steps are "healthy" (the clipnorm suggested).
HEALTHY_GROWTH = 10.0
#: a clipnorm is derived only from a healthy stretch of at least this many steps.
HEALTHY_MIN_STEPS = 10
#: median global |dw|/|w| per step around a spike above which the updates are too large for the weights.
UPDATE_TOO_FAST = 1e-1
#: an update of at least this fraction of the weights' norm (|dw|/|w|) replaced them rather than moved them
WEIGHTS_REPLACED = 0.5
#: a schedule that rose into a blow-up is scaled so its highest rate is at most this share of the rate it blew up at.
SCHEDULE_MARGIN = 0.1
#: a learning rate that rose at least this much in one step, after at least HEALTHY_MIN_STEPS healthy steps,
#: jumped (a step schedule's mis-typed peak): the run showed the rates before the jump train.
LR_JUMP = 10.0
#: after such a jump, the rate is capped at this many times the highest rate the run trained at before it.
JUMP_CAP = 10.0
#: a loss at step 0 at least this large is far above where a loss on unit-scale targets starts (cross-entropy
#: ~log(classes), a mean squared error ~var(y)): targets or inputs far from unit scale, or a loss summed over
#: very many values (a VAE's reconstruction of a large image).
LARGE_INITIAL_LOSS = 1e4
#: array inputs or targets whose root mean square is at least this are far from unit scale (pixel values in
#: 0-255 are ~100; standardised data ~1).
FAR_FROM_UNIT = 100.0
#: the update size per step a lowered learning rate aims at (|dw|/|w|).
TARGET_UPDATE = 1e-2
#: variables that never changed, with gradients at most this share of the largest variable's (medians over the
#: run): their gradients vanished through the layers (float32 rounds such updates away), not a rate of zero
VANISHING_SHARE = 1e-4
#: a lowered learning rate below this trains nothing in a test's few hundred steps: where the first update asks for
#: one (an SGD rate of 0.01 cut 1e7x), the gradients themselves are out of scale from the first step
LR_IMPLAUSIBLE = 1e-6


def _implausible(rate: float) -> bool:
    """A suggested learning rate below :data:`LR_IMPLAUSIBLE`, not by float rounding alone: a float32 rate of
    0.01 cut 1e4x is 9.9999998e-07, which reads 1e-06 and is that rate (it had read "a learning rate low enough for
    these gradients (1e-06) is below any that trains (1e-06)")."""
    return _ok(rate, 0.0) and rate < LR_IMPLAUSIBLE * (1 - 1e-6)


#: the training loss grew at least this much between the validation best and the rise: not overfitting.
TRAIN_RISE = 1.5
#: a stuck loss at least this much above its early minimum (rolling median) went up: the run blew up.
JUMP_ABOVE_MIN = 1.1
#: a gradient norm this many times its early median before a stuck stretch is a burst.
BURST = 10.0
#: the smallest normal float16 number: an epsilon below it underflows with v.
FLOAT16_TINY = 6.1e-5
#: cause key -> (runs whose first suggested fix resolved them, runs replayed) in the what-if replays of the
#: detection benchmark, every backend pooled, over the families of the README's detection table whose expected
#: cause it is (``python benchmarks/summary.py`` prints it from the committed result files; a unit test keeps the
#: two equal): what the report quotes as the measured success of a first fix.  Causes whose first fix is not an
#: optimizer setting are not here.
FIX_SUCCESS: dict[str, tuple[int, int]] = {
    "adam_second_moment": (89, 90),
    "clip_too_small": (30, 30),
    "collapse_constant": (57, 60),
    "epsilon_underflow": (30, 30),
    "gradient_explosion": (30, 30),
    "lr_too_high": (148, 148),
    "weight_decay_too_strong": (30, 30),
}
#: the same by the first fix's setting, for first fixes those runs never got: a cap of a rate that jumped
#: (benchmarks/results/detection-schedule-jump.md, every backend pooled, "By the first fix's setting").
FIX_SUCCESS_BY_SETTING: dict[str, tuple[int, int]] = {"learning_rate_cap": (28, 28)}


def fix_setting(config: Mapping[str, Any]) -> str:
    """The setting(s) a fix config changes, as :data:`FIX_SUCCESS_BY_SETTING` (and the detection benchmark)
    key them: ``learning_rate_cap``, ``clipnorm``..."""
    return "+".join(sorted(config))


def measured_first_fix(cause_key: str, config: Mapping[str, Any] | None) -> tuple[int, int, str] | None:
    """How often the detection benchmark's what-if replay found a first fix like this one resolve its run:
    ``(resolved, runs, of_what)``, ``of_what`` naming the runs counted; None where not measured."""
    if config:
        setting = fix_setting(config)
        if setting in FIX_SUCCESS_BY_SETTING:
            return (*FIX_SUCCESS_BY_SETTING[setting], f"runs whose first fix was {setting}")
    if cause_key in FIX_SUCCESS:
        return (*FIX_SUCCESS[cause_key], "runs with this cause")
    return None


#: findings this many steps apart or closer are one event when ranking (the earliest root event leads).
EVENT_GAP = 10
#: steps after an event over which "stuck" is judged: the run's spike_window (diagnose(..., thresholds=...)),
#: else the default one
#: the settings a diagnosis reads when it is given no thresholds: the defaults of spike_window (the steps over
#: which "stuck" is judged) and val_smoothing (the smoothing of the validation losses quoted)
DEFAULT_SETTINGS: dict[str, Any] = {"spike_window": 50, "val_smoothing": 0.6}


# -- quoted numbers ---------------------------------------------------------------

#: how a reduction over steps reads in the text
STAT_WORDS = {
    "median": "median of",
    "min": "lowest in",
    "max": "highest in",
    "p90": "90th percentile of",
    "min_median5": "lowest 5-step median in",
    "max_median5": "highest 5-step median in",
}


def series(trace: Trace, of: str) -> np.ndarray | None:
    """The per-step array a quote reads: ``loss``, ``grad_norm``, ``update_ratio``, ``lr``, ``opt.<key>`` or
    ``var_grad.<variable>`` (one variable's gradient norm)."""
    if of.startswith("opt."):
        return trace.opt_stats.get(of[4:])
    if of.startswith("var_grad."):
        name = of[len("var_grad.") :]
        if trace.var_grad_norms is None or name not in trace.var_names:
            return None
        return trace.var_grad_norms[:, list(trace.var_names).index(name)]
    if of in ("loss", "grad_norm", "update_ratio", "lr"):
        arr: np.ndarray | None = getattr(trace, of)
        return arr
    raise ValueError(f"unknown series {of!r}")


def reduce(values: np.ndarray, stat: str) -> float:
    """``stat`` of the finite ``values`` (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan
    if stat == "median":
        return float(np.median(v))
    if stat == "min":
        return float(np.min(v))
    if stat == "max":
        return float(np.max(v))
    if stat == "p90":
        return float(np.percentile(v, 90))
    if stat in ("min_median5", "max_median5"):
        if v.size < 5:
            return math.nan
        from numpy.lib.stride_tricks import sliding_window_view

        med = np.median(sliding_window_view(v, 5), axis=1)
        return float(np.min(med) if stat == "min_median5" else np.max(med))
    raise ValueError(f"unknown statistic {stat!r}")


def pow10(x: float) -> float:
    """Ten to the rounded log10 of ``x`` (a factor people can apply: 0.001, 0.01, 0.1)."""
    return float(10.0 ** round(math.log10(x))) if x > 0 and math.isfinite(x) else math.nan


def pow10_floor(x: float) -> float:
    """Ten to the floor of log10 of ``x`` (a factor that is never larger than ``x``)."""
    return float(10.0 ** math.floor(math.log10(x) + 1e-9)) if x > 0 and math.isfinite(x) else math.nan


def round2(x: float) -> float:
    """``x`` to two significant digits (a clipnorm people can paste)."""
    return float(f"{x:.2g}") if math.isfinite(x) else math.nan


def _g(x: float | bool | None) -> str:
    if isinstance(x, bool):
        return str(x)
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.3g}"


_FIELD = re.compile(r"\{(\w+)\}")

_V = TypeVar("_V")


class Quotes:
    """The numbers one diagnosis quotes, each with the recipe that computed it from ``trace``.

    Every method computes a value, records it under ``name`` (see :meth:`to_dict`) and returns it;
    :meth:`render` fills a template's ``{name}`` placeholders.
    """

    def __init__(self, trace: Trace, settings: Mapping[str, Any] | None = None) -> None:
        self.trace = trace
        #: the run's spike_window and val_smoothing (see DEFAULT_SETTINGS)
        self.settings: dict[str, Any] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.q: dict[str, dict[str, Any]] = {}

    def _put(self, name: str, value: _V, **recipe: Any) -> _V:
        self.q[name] = {"value": value, **recipe}
        return value

    def __getitem__(self, name: str) -> Any:
        return self.q[name]["value"]

    def __contains__(self, name: str) -> bool:
        return name in self.q

    # series
    def at(self, name: str, of: str, step: int) -> float:
        arr = series(self.trace, of)
        step = int(step)
        v = float(arr[step]) if arr is not None and 0 <= step < arr.shape[0] else math.nan
        return self._put(name, v, kind="series", of=of, stat="at", steps=[step, step])

    def over(self, name: str, of: str, stat: str, a: int, b: int) -> float:
        """``stat`` of series ``of`` over steps ``a..b`` (inclusive, clipped to the trace)."""
        arr = series(self.trace, of)
        a, b = max(int(a), 0), int(b)
        if arr is not None:
            b = min(b, arr.shape[0] - 1)
        v = reduce(arr[a : b + 1], stat) if arr is not None and b >= a else math.nan
        return self._put(name, v, kind="series", of=of, stat=stat, steps=[a, b])

    def val_at(self, name: str, step: int, smoothed: bool) -> float:
        """The validation loss measured after ``step`` steps (smoothed as the val_loss check does, or raw)."""
        t = self.trace
        v = math.nan
        if t.val_loss is not None and t.val_steps is not None:
            ok = np.isfinite(t.val_loss)
            vals, steps = t.val_loss[ok], t.val_steps[ok]
            if smoothed and vals.size:
                vals = smooth(vals, float(self.settings["val_smoothing"]))
            hit = np.flatnonzero(steps == int(step))
            if hit.size:
                v = float(vals[hit[0]])
        recipe: dict[str, Any] = {
            "kind": "val",
            "smoothing": float(self.settings["val_smoothing"]) if smoothed else 0.0,
            "steps": [int(step), int(step)],
        }
        return self._put(name, v, **recipe)

    # arithmetic on quotes
    def ratio(self, name: str, num: str, den: str) -> float:
        a, b = self[num], self[den]
        v = a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan
        return self._put(name, v, kind="ratio", parts=[num, den])

    def product(self, name: str, a: str, b: str) -> float:
        x, y = self[a], self[b]
        return self._put(
            name, x * y if math.isfinite(x) and math.isfinite(y) else math.nan, kind="product", parts=[a, b]
        )

    def derived(self, name: str, fn: str, part: str) -> float:
        """``fn`` (``pow10``, ``pow10_floor``, ``round2``, ``exp``, ``nearest_int``, ``log``) of one quote."""
        x = self[part]
        fns: dict[str, Callable[[float], float]] = {
            "pow10": pow10,
            "pow10_floor": pow10_floor,
            "round2": round2,
            "exp": lambda v: math.exp(v) if v < 700 else math.inf,
            "nearest_int": lambda v: float(round(v)),
            "log": lambda v: math.log(v) if v > 0 else math.nan,
        }
        v = fns[fn](x) if math.isfinite(x) else math.nan
        return self._put(name, v, kind="derived", fn=fn, parts=[part])

    def smaller(self, name: str, a: str, b: str) -> float:
        """The smaller of two quotes (a factor capped at a rule's default)."""
        x, y = self[a], self[b]
        v: float = min(x, y) if math.isfinite(x) and math.isfinite(y) else (y if math.isfinite(y) else x)
        return self._put(name, v, kind="min", parts=[a, b])

    # facts
    def setting(self, name: str, key: str, value: _V) -> _V:
        """An optimizer setting as ``trace.info["optimizer_config"]`` records it."""
        return self._put(name, value, kind="setting", key=key)

    def fact(self, name: str, key: str, value: _V, percent: bool = False) -> _V:
        """A fact from ``trace.info`` (``dtype_policy``, ``batchnorm_layers``...; ``output_wiring.outside``: a key of
        a dict in it); ``percent``: shown as one."""
        return self._put(name, value, kind="fact", key=key, **({"format": "percent"} if percent else {}))

    def const(self, name: str, value: _V) -> _V:
        """A constant of the rule (a threshold, a suggested setting): not a measurement."""
        return self._put(name, value, kind="const")

    def step(self, name: str, k: int) -> int:
        return self._put(name, int(k), kind="step")

    def count(self, name: str, value: int) -> int:
        return self._put(name, int(value), kind="count")

    def text(self, name: str, value: str) -> str:
        """Verbatim text (a variable's name, a code snippet): not a number."""
        return self._put(name, str(value), kind="text")

    # output
    def show(self, name: str) -> str:
        q = self.q[name]
        kind, v = q["kind"], q["value"]
        if kind == "text":
            return str(v)
        if kind in ("step", "count"):
            return str(int(v))
        if kind == "series":
            a, b = q["steps"]
            where = f"step {a}" if q["stat"] == "at" or a == b else f"{STAT_WORDS[q['stat']]} steps {a}-{b}"
            return f"{_g(v)} ({where})"
        if kind == "val":
            what = "smoothed validation loss" if q["smoothing"] else "validation loss"
            return f"{_g(v)} ({what} after {q['steps'][0]} steps)"
        if isinstance(v, str):
            return v
        if v is None:
            return "None"
        if q.get("format") == "percent" and math.isfinite(float(v)):
            return f"{float(v):.0%}"
        return _g(v)

    def render(self, template: str) -> str:
        return _FIELD.sub(lambda m: self.show(m.group(1)), template)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in self.q.items()}

    def numbers(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.q.items() if v["kind"] != "text"}


@dataclass
class Fix:
    """One fix: its text template and, when it is an optimizer setting, the change the replay applies."""

    template: str
    config: dict[str, Any] | None = None
    #: a remark on the fixes (why one is not offered), not a fix itself
    note: bool = False


@dataclass
class Dx:
    """What a rule concludes: the cause key and confidence, the cause template, the fixes in rank order."""

    key: str
    confidence: str
    cause: str
    fixes: list[Fix]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class DiagnosisSettings(Protocol):
    """What the diagnosis reads of a run's settings: a :class:`~pytest_stability.thresholds.Thresholds`, or the
    settings a finding was diagnosed with before (``None``: the default)."""

    @property
    def spike_window(self) -> int | None: ...

    @property
    def val_smoothing(self) -> float | None: ...


# -- entry points ---------------------------------------------------------------------


def diagnose(
    findings: Sequence[Finding],
    trace: Trace,
    thresholds: DiagnosisSettings | None = None,
    *,
    context: Sequence[Finding] | None = None,
) -> list[Finding]:
    """Return ``findings`` with ``cause``, ``fix``, ``confidence`` and a cause key filled in.

    Args:
        findings: findings from :func:`~pytest_stability.checks.run_checks`.
        trace: the trace they were found in.
        thresholds: the run's :class:`~pytest_stability.checks.Thresholds`; its ``spike_window`` is the
            window over which "stuck" is judged, its ``val_smoothing`` the smoothing of the validation
            losses quoted (default: the defaults).  Recorded in ``evidence["settings"]``.
        context: every finding of the run (default: ``findings``): a validation rise after a training event
            is named its consequence, and no fix raises the learning rate of a run that blew up.
            :func:`rank_findings` passes the run's findings of every check.

    Returns:
        New findings (the inputs are frozen), in the same order.

    Raises:
        TypeError: when an element of ``findings`` is not a :class:`Finding`.

    Example:
        >>> fs = [f for r in run_checks(trace) for f in r.findings]
        >>> [f.evidence["cause_key"] for f in diagnose(fs, trace)]
        ['adam_second_moment']
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"diagnose() expects a Trace, received {type(trace).__name__}")
    for f in list(findings) + list(context or ()):
        if not isinstance(f, Finding):
            raise TypeError(f"diagnose() expects Finding objects, received {type(f).__name__}")
    window = getattr(thresholds, "spike_window", None)
    smoothing = getattr(thresholds, "val_smoothing", None)
    settings: dict[str, Any] = {
        "spike_window": int(window) if window else DEFAULT_SETTINGS["spike_window"],
        "val_smoothing": float(smoothing) if smoothing is not None else DEFAULT_SETTINGS["val_smoothing"],
    }
    return _diagnose(findings, trace, list(context) if context is not None else list(findings), settings)


def _diagnose(
    findings: Sequence[Finding], trace: Trace, context: list[Finding], settings: dict[str, Any]
) -> list[Finding]:
    out = []
    for f in findings:
        if f.evidence.get("check_cause") and f.cause and f.fix:
            # a check that knows its finding's cause says it (nonfinite's skipped_steps): kept as it is
            out.append(
                dataclasses.replace(
                    f, evidence={**dict(f.evidence), "cause_key": f.evidence["check_cause"], "settings": dict(settings)}
                )
            )
            continue
        q = Quotes(trace, settings)
        rule = _RULES.get(f.check, _unknown)
        event = rule(f, trace, q, context)
        dx = _output_wiring_first(event, trace, q)
        fixes = _direction_safe(dx.fixes, trace, context)
        texts = [q.render(fx.template) for fx in fixes]
        fix_text = ", or ".join(t for t, fx in zip(texts, fixes, strict=True) if not fx.note)
        fix_text = "; ".join([fix_text] * bool(fix_text) + [t for t, fx in zip(texts, fixes, strict=True) if fx.note])
        evidence = {
            **dict(f.evidence),
            "cause_key": dx.key,
            "diagnosis": _clean({**q.numbers(), **dx.extra}),
            "quotes": q.to_dict(),
            "templates": {"cause": dx.cause, "fixes": [fx.template for fx in fixes]},
            "fixes": [
                {"text": t, "config": dict(fx.config) if fx.config else None, "note": fx.note}
                for t, fx in zip(texts, fixes, strict=True)
            ],
            "fix_configs": [dict(fx.config) for fx in fixes if fx.config],
            "settings": dict(settings),
        }
        if "fix_from" in dx.extra:
            evidence["fix_from"] = int(dx.extra["fix_from"])
        if dx is not event:  # the event's own cause, which the output layer's comes before
            evidence["event_cause_key"] = event.key
        out.append(
            dataclasses.replace(f, cause=q.render(dx.cause), fix=fix_text, confidence=dx.confidence, evidence=evidence)
        )
    return out


#: the causes of a training event that a wiring bug the model's facts show explains first (not the data's NaN, a
#: float16 epsilon, a variable that never changes, the replicas of a distributed run); variables that never
#: receive a gradient are what a softmax over one unit, or a BatchNorm over one sample, makes of the layers
#: before it
_FROM_THE_OUTPUT = frozenset(
    {
        "no_gradient",
        "gradients_out_of_scale",
        "adam_second_moment",
        "gradient_explosion",
        "collapse_constant",
        "lr_too_high",
        "overfitting",
        "training_loss_rise",
        "collapsed_output",
        "labels_no_signal",
        "vanished_gradients",
        "updates_too_small",
        "weight_decay_too_strong",
        "clip_too_small",
        "schedule_decayed",
        "unknown",
    }
)
#: Keras' clip of the probabilities a cross-entropy takes (``backend.epsilon()``)
CLIP_EPSILON = 1e-7
#: the batch size offered to a BatchNorm trained on batches of one sample (statistics of a few samples are noisy)
BN_MIN_BATCH = 16
#: decoupled weight decay that shrinks every weight by this much of itself a step (a weight halves in 70 steps
#: without a gradient) sets the weights by itself; the fix brings it to WD_TARGET a step
WD_SHRINK, WD_TARGET = 1e-2, 1e-4
#: a stuck run's gradient norm this x the most its clipped gradient can be: the clip, not the rate, holds it back
CLIP_BINDS = 10.0
#: a stuck run's learning rate this x below its schedule's peak: the schedule decayed too fast
LR_DECAYED = 100.0
#: the floor offered to a ReduceLROnPlateau that lowered the rate LR_DECAYED x or more: this share of the highest
#: rate (LR_DECAYED x its peak is where the rule says the rate fell too far)
MIN_LR_SHARE = 0.1


def _output_wiring_first(dx: Dx, trace: Trace, q: Quotes) -> Dx:
    """A wiring bug the model's facts show comes first (:mod:`pytest_stability.training.model_facts`): a
    BatchNorm over features trained on batches of one sample (``trace.info["batchnorm_one_sample"]``); a loss
    that takes probabilities on an output layer that makes none, or a softmax over one unit
    (``trace.info["output_wiring"]``).  The event's own cause and fixes follow, as what the checks saw."""
    info = trace.info or {}
    if dx.key not in _FROM_THE_OUTPUT:
        return dx
    one = info.get("batchnorm_one_sample")
    if isinstance(one, Mapping):
        q.text("bn_layer", str(one.get("layer", "")))
        q.const("bn_batch_size", BN_MIN_BATCH)
        return dataclasses.replace(
            dx,
            key="batchnorm_one_sample",
            confidence=LIKELY,
            cause="the model trains on batches of one sample through {bn_layer}, which normalises each feature over "
            "the batch: one sample has no spread, so every feature becomes the layer's beta and no gradient reaches "
            "the layers before it; what the checks saw: " + dx.cause,
            fixes=[
                Fix(
                    "train with a batch_size of {bn_batch_size} or more (BatchNormalization needs a batch to "
                    "normalise over), or replace {bn_layer} with keras.layers.LayerNormalization()"
                ),
                *dx.fixes,
            ],
        )
    fact = info.get("output_wiring")
    if not isinstance(fact, Mapping):
        return dx
    key = fact.get("key")
    for name in ("loss", "loss_class", "layer", "activation", "expects"):
        if name in fact:
            q.text(f"output_{name}", str(fact[name]))
    if key == "probabilities_from_unbounded":
        q.const("clip_epsilon", CLIP_EPSILON)
        q.const("clip_gradient", 1 / CLIP_EPSILON)
        cause = (
            "the loss {output_loss} takes probabilities (from_logits=False), but the model's output comes from "
            "{output_layer} with activation {output_activation}: Keras clips the outputs inside the loss, "
            "{clip_epsilon} away from zero and one, so an output beyond gets no gradient, and near the edges the "
            "loss's gradient reaches {clip_gradient}"
        )
        fix = Fix(
            "give {output_layer} activation='{output_expects}', or compile with "
            "keras.losses.{output_loss_class}(from_logits=True): the loss then sees what it expects"
        )
    elif key == "logits_from_probabilities" and info.get("backend") != "tensorflow":
        # TensorFlow's Keras takes the logits under the sigmoid or softmax: the loss is what was meant there
        q.fact("logit_floor", "output_wiring.floor", float(fact.get("floor", math.nan)))
        cause = (
            "the loss {output_loss_class}(from_logits=True) takes logits, but the model's output comes from "
            "{output_layer} with activation {output_activation}: the loss reads its probabilities, between zero and "
            "one, as logits, so it cannot fall below {logit_floor} however well the model predicts, and its "
            "gradients shrink"
        )
        fix = Fix(
            "give {output_layer} no activation (a linear output), or compile with "
            "keras.losses.{output_loss_class}(from_logits=False): the loss then sees what it expects"
        )
    elif key == "softmax_one_unit":
        cause = (
            "the model's output comes from {output_layer}, a softmax over a single unit: it is one whatever its "
            "input, so no gradient reaches the model"
        )
        fix = Fix("give {output_layer} activation='sigmoid' (one unit), or one unit per class under its softmax")
    else:
        return dx
    return dataclasses.replace(
        dx, key=key, confidence=LIKELY, cause=cause + "; what the checks saw: " + dx.cause, fixes=[fix, *dx.fixes]
    )


# -- helpers -------------------------------------------------------------------


def _clean(numbers: dict[str, Any]) -> dict[str, Any]:
    """Builtins only: numpy scalars become floats, non-finite floats None."""
    out: dict[str, Any] = {}
    for k, v in numbers.items():
        if isinstance(v, (bool, str)) or v is None:
            out[k] = v
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            v = float(v)
            out[k] = v if math.isfinite(v) else None
    return out


def _finite(a: np.ndarray | None) -> np.ndarray:
    if a is None:
        return np.zeros(0)
    a = np.asarray(a, dtype=np.float64)
    finite: np.ndarray = a[np.isfinite(a)]
    return finite


def _median(a: np.ndarray | None) -> float:
    a = _finite(a)
    return float(np.median(a)) if a.size else math.nan


def _ok(x: object, limit: float) -> bool:
    return isinstance(x, (float, int)) and not isinstance(x, bool) and math.isfinite(x) and x >= limit


def _optimizer(trace: Trace) -> tuple[str, dict[str, Any]]:
    info = trace.info or {}
    return str(info.get("optimizer") or ""), dict(info.get("optimizer_config") or {})


def _number(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _window(trace: Trace) -> int:
    return max(10, min(50, trace.steps // 10))


def early_end(trace: Trace) -> int:
    """Events that start before this step are early blow-ups (see :data:`EARLY_FRACTION`)."""
    planned = int(trace.steps_planned or trace.steps)
    return max(EARLY_MIN_STEPS, math.ceil(EARLY_FRACTION * planned))


def _lr_now(q: Quotes, trace: Trace, step: int, cfg: dict[str, Any], name: str = "learning_rate") -> float:
    """The learning rate in effect at ``step`` (the recorded one, else the configured one)."""
    if trace.lr is not None and 0 <= step < trace.lr.size and math.isfinite(trace.lr[step]):
        return q.at(name, "lr", step)
    if trace.lr is not None and step >= trace.lr.size > 0 and math.isfinite(trace.lr[-1]):
        return q.at(name, "lr", trace.lr.size - 1)
    return q.setting(name, "learning_rate", _number(cfg.get("learning_rate")))


def _references(x: np.ndarray, end: int, ref_end: int) -> np.ndarray:
    """Per step in ``[0, end)``: the median of ``x`` over the reference steps ``[0, ref_end)`` that came before it
    (step 0's is its own value), so that a blow-up among the first steps is judged against the steps before it,
    not against a median it has already raised (with two steps, their mean: an explosion at step 1 was its own
    reference, and healthy by it)."""
    refs = np.full(end, _median(x[:ref_end]))
    for i in range(min(ref_end, end)):
        refs[i] = _median(x[: max(i, 1)])
    return refs


def _unhealthy(trace: Trace, end: int, ref_end: int) -> np.ndarray:
    """Per step in ``[0, end)``: whether its loss or gradient norm is non-finite, or above :data:`HEALTHY_GROWTH`
    x its reference (see :func:`_references`; a zero or non-finite reference judges nothing)."""
    bad: np.ndarray = ~np.isfinite(trace.loss[:end])
    loss_ref = np.abs(_references(trace.loss, end, ref_end))
    with np.errstate(invalid="ignore"):
        bad |= np.isfinite(loss_ref) & (np.abs(trace.loss[:end]) > HEALTHY_GROWTH * np.maximum(loss_ref, 1e-12))
    if trace.grad_norm is not None:
        g = trace.grad_norm[:end]
        g_ref = _references(trace.grad_norm, end, ref_end)
        bad |= ~np.isfinite(g)
        with np.errstate(invalid="ignore"):
            bad |= np.isfinite(g_ref) & (g_ref > 0) & (g > HEALTHY_GROWTH * g_ref)
    return bad


def healthy_end(trace: Trace, step: int) -> int:
    """The end (exclusive) of the healthy stretch ``[0, end)`` before ``step``.

    A step is healthy while its loss and gradient norm are finite and within :data:`HEALTHY_GROWTH` x the
    median of the run's first steps (up to 5, before ``step``; among those, of the ones before it)."""
    step = max(0, min(int(step), trace.steps))
    if step == 0:
        return 0
    hit = np.flatnonzero(_unhealthy(trace, step, min(5, step)))
    return int(hit[0]) if hit.size else step


def _rolling_min(loss: np.ndarray, end: int, k: int = 3) -> tuple[float, int]:
    """The lowest rolling median (over ``k`` steps) of the loss before ``end``, and the step it ends at."""
    x = np.asarray(loss[: max(0, end)], dtype=np.float64)
    if x.size < k:
        f = _finite(x)
        return (float(np.min(f)), int(np.nanargmin(np.where(np.isfinite(x), x, np.inf)))) if f.size else (math.nan, 0)
    from numpy.lib.stride_tricks import sliding_window_view

    with np.errstate(all="ignore"):
        w = sliding_window_view(x, k)
        med = np.median(w, axis=1)
    med = np.where(np.isfinite(med), med, np.inf)
    i = int(np.argmin(med))
    return (float(med[i]) if math.isfinite(med[i]) else math.nan), i + k - 1


def blew_up(trace: Trace, start: int, level: float | None = None) -> dict[str, Any]:
    """Whether the run went *up* before ``start`` or at it: its evidence.

    ``jump``: the loss level after ``start`` (``level``; else the median of the steps from ``start``) is at
    least :data:`JUMP_ABOVE_MIN` x the lowest 3-step median of the loss before it; ``burst``: the gradient
    norm in the 10 steps up to ``start`` reached :data:`BURST` x its median over the run's first steps.
    """
    n = trace.steps
    start = max(0, min(int(start), n))
    out: dict[str, Any] = {"jump": False, "burst": False}
    if level is None:
        level = _median(trace.loss[start : start + 20])
    low, low_end = _rolling_min(trace.loss, start)
    if math.isfinite(low) and low > 0 and math.isfinite(level) and level >= JUMP_ABOVE_MIN * low:
        out.update(jump=True, low=low, low_end=low_end, level=level)
    if trace.grad_norm is not None and start > 0:
        k = min(_window(trace), max(1, start // 2))
        early = _median(trace.grad_norm[:k])
        peak_seg = _finite(trace.grad_norm[max(0, start - 10) : start + 1])
        if peak_seg.size and math.isfinite(early) and early > 0 and float(np.max(peak_seg)) >= BURST * early:
            out.update(burst=True, g_early=early, g_peak=float(np.max(peak_seg)), g_k=k)
    out["any"] = bool(out["jump"] or out["burst"])
    return out


def _direction_safe(fixes: list[Fix], trace: Trace, findings: Sequence[Finding]) -> list[Fix]:
    """Drop any fix that raises the learning rate of a run that blew up (a spike, an explosion, a NaN, or a
    stuck loss above its early minimum): the run's own evidence says a larger step made things worse."""
    raising = [fx for fx in fixes if fx.config and _number(fx.config.get("learning_rate_factor")) > 1]
    if not raising:
        return fixes
    event = any(f.check in ("loss_spike", "grad_norm", "nonfinite") for f in findings)
    stuck = [f for f in findings if f.check == "stuck" and f.kind in ("collapsed", "stuck")]
    went_up = any(blew_up(trace, int(f.step), _number(f.value))["any"] for f in stuck)
    if event or went_up:
        return [fx for fx in fixes if fx not in raising]
    return fixes


# -- fixes shared by the rules ----------------------------------------------------------


def _clip_fix(q: Quotes, trace: Trace, start: int, what: str) -> Fix | None:
    """``clipnorm`` at the 90th percentile of the healthy stretch's gradient norms, or None without one.

    Without a healthy stretch of :data:`HEALTHY_MIN_STEPS` steps, records why (``no_clip``) so the caller
    can say so."""
    if trace.grad_norm is None:
        return None
    h = healthy_end(trace, start)
    q.step("healthy_before", start)
    q.count("healthy_steps", h)
    if h < HEALTHY_MIN_STEPS:
        q.const("healthy_min_steps", HEALTHY_MIN_STEPS)
        return None
    q.over("grad_norm_p90_healthy", "grad_norm", "p90", 0, h - 1)
    clip = q.derived("clipnorm_suggested", "round2", "grad_norm_p90_healthy")
    if not (math.isfinite(clip) and clip > 0):
        return None
    return Fix(
        f"clipnorm={{clipnorm_suggested}} on the optimizer, from this run's healthy gradient norms {what}: "
        "{grad_norm_p90_healthy}",
        {"clipnorm": clip},
    )


def _clip_or_note(q: Quotes, trace: Trace, start: int, what: str) -> list[Fix]:
    """The clipnorm fix, or the note saying why there is none (nothing without gradient norms)."""
    clip = _clip_fix(q, trace, start, what)
    if clip is not None:
        return [clip]
    return [_why_no_clip(q)] if "healthy_steps" in q else []


def _why_no_clip(q: Quotes) -> Fix:
    """The note on why :func:`_clip_fix` gave no clipnorm: no healthy stretch, one too short, or one whose
    gradient norms give no clip value (all 0)."""
    if "healthy_min_steps" not in q:
        return Fix(
            "no clipnorm: the gradient norms of the healthy steps before it, {grad_norm_p90_healthy}, give no "
            "clip value: lower the learning rate",
            note=True,
        )
    return _no_clip_note_short() if q["healthy_steps"] == 0 else _no_clip_note(q["healthy_steps"] == 1)


def _no_clip_note_short() -> Fix:
    return Fix("no clipnorm: there is no healthy stretch before it to derive a clip value from", note=True)


def _no_clip_note(one: bool = False) -> Fix:
    return Fix(
        f"no clipnorm: only {{healthy_steps}} healthy {'step' if one else 'steps'} before it (fewer than "
        "{healthy_min_steps}), "
        "too few to derive a clip value from: lower the learning rate",
        note=True,
    )


def _lr_factor(q: Quotes, trace: Trace, start: int, end: int, default: float, largest_before: bool = False) -> str:
    """Quote the factor to lower the learning rate by (see the module docstring) and return its basis:
    ``schedule``, ``update`` or ``default``; the factor is the quote ``lr_factor``."""
    q.const("lr_default_factor", default)
    # a schedule that rose into the failure: its highest rate so far brought to a tenth of the rate it blew up at
    # (under momentum a collapse can come at a lower rate than the one it first came at: measured on seg_dice)
    if trace.lr is not None and start > 0:
        lr = trace.lr
        first = _number(lr[0])
        at = _number(lr[min(start, lr.size - 1)])
        if math.isfinite(first) and first > 0 and math.isfinite(at) and at >= 2 * first:
            q.at("lr_at_event", "lr", min(start, lr.size - 1))
            q.over("lr_peak", "lr", "max", 0, lr.size - 1)
            q.const("schedule_margin", SCHEDULE_MARGIN)
            q.ratio("lr_event_share", "lr_at_event", "lr_peak")
            q.product("lr_factor_raw", "lr_event_share", "schedule_margin")
            q.derived("lr_factor_pow10", "pow10_floor", "lr_factor_raw")
            q.smaller("lr_factor", "lr_factor_pow10", "lr_default_factor")
            return "schedule"
    # updates too large: bring |dw|/|w| below TARGET_UPDATE per step.  Early, or before a collapse, the
    # largest update of the healthy stretch before the blow-up (the first update of Adam, momentum building up
    # under SGD); later, the updates around the event (but before an explosion: ``largest_before``)
    if trace.update_ratio is not None:
        if start < early_end(trace) or largest_before:
            # over the healthy stretch (and its first step): the updates of an explosion under way are its
            # consequence, not the rate's measure
            u = q.over("update_ratio", "update_ratio", "max", 0, max(min(healthy_end(trace, start), start) - 1, 0))
        else:
            u = q.over("update_ratio", "update_ratio", "median", max(0, start - 2), end + 2)
        if _ok(u, UPDATE_TOO_FAST):
            q.const("target_update", TARGET_UPDATE)
            q.ratio("update_excess", "target_update", "update_ratio")
            q.derived("lr_factor_pow10", "pow10_floor", "update_excess")
            q.smaller("lr_factor", "lr_factor_pow10", "lr_default_factor")
            return "update"
    q.const("lr_factor", default)
    return "default"


def lr_jump(trace: Trace, start: int) -> int | None:
    """The step at which the recorded learning rate jumped :data:`LR_JUMP` x or more above every earlier
    rate (the largest such jump), with the run healthy up to it for at least :data:`HEALTHY_MIN_STEPS` steps
    and the event at ``start`` at or after it; None without one.  A warm-up that rises over many steps
    jumps nowhere (its largest one-step rise comes in its first steps, before the run showed anything)."""
    lr = trace.lr
    if lr is None or start <= HEALTHY_MIN_STEPS:
        return None
    seg = np.asarray(lr[: min(int(start), lr.size - 1) + 1], dtype=np.float64)
    if seg.size <= HEALTHY_MIN_STEPS or not np.all(np.isfinite(seg)) or np.any(seg < 0):
        return None
    before = np.maximum.accumulate(seg)[:-1]
    # rise[k - 1]: lr[k] over the highest rate before k (none over a rate of 0: a warm-up from 0 jumps nowhere)
    rise = np.divide(seg[1:], before, out=np.zeros_like(before), where=before > 0)
    rise[: HEALTHY_MIN_STEPS - 1] = 0.0  # at least HEALTHY_MIN_STEPS steps ran before the jump
    k = int(np.argmax(rise)) + 1
    if rise[k - 1] < LR_JUMP or healthy_end(trace, start) < k:
        return None
    return k


def _lr_cap_fix(q: Quotes, trace: Trace, until: int, k: int) -> Fix:
    """After a jump of the rate at step ``k`` (before the event at ``until``): a cap at :data:`JUMP_CAP` x the
    highest rate the run trained at before it, and at most :data:`SCHEDULE_MARGIN` x the highest rate from the
    jump to the event.  Scaling the whole schedule would also slow the steps before the jump, which trained
    well."""
    q.step("lr_jump_step", k)
    q.over("lr_before_jump", "lr", "max", 0, k - 1)
    q.at("lr_after_jump", "lr", k)
    q.ratio("lr_jump", "lr_after_jump", "lr_before_jump")
    q.over("lr_blew_up_at", "lr", "max", k, until)
    q.const("jump_cap", JUMP_CAP)
    q.const("schedule_margin", SCHEDULE_MARGIN)
    q.product("lr_cap_trained", "lr_before_jump", "jump_cap")
    q.product("lr_cap_event", "lr_blew_up_at", "schedule_margin")
    q.smaller("lr_cap_raw", "lr_cap_trained", "lr_cap_event")
    q.derived("lr_cap", "round2", "lr_cap_raw")
    return Fix(
        "a learning rate capped at {lr_cap} (lower the schedule's peak): the rate jumped {lr_jump}x at step "
        "{lr_jump_step}, from {lr_before_jump} to {lr_after_jump}; the cap is {jump_cap}x the highest rate the "
        "run trained at before the jump, and at most {schedule_margin}x the rate it blew up at, {lr_blew_up_at}",
        {"learning_rate_cap": q["lr_cap"]},
    )


def _lr_fix(
    q: Quotes,
    trace: Trace,
    start: int,
    end: int,
    cfg: dict[str, Any],
    default: float = 0.1,
    largest_before: bool = False,
    jump_until: int | None = None,
) -> tuple[Fix, str]:
    """The lower learning rate to try, with its magnitude from the run, and the basis of the magnitude
    (``jump``: a cap after the rate jumped before ``start``, or before ``jump_until`` when given: see
    :func:`lr_jump`)."""
    until = start if jump_until is None else max(start, int(jump_until))
    k = lr_jump(trace, until)
    if k is not None:
        return _lr_cap_fix(q, trace, until, k), "jump"
    basis = _lr_factor(q, trace, start, end, default, largest_before)
    lr = _lr_now(q, trace, start, cfg, "learning_rate")
    q.product("learning_rate_suggested", "learning_rate", "lr_factor")
    why = {
        "schedule": " (scales the schedule so that the highest rate this run reached, {lr_peak}, becomes at "
        "most {schedule_margin}x the rate it blew up at, {lr_at_event})",
        "update": " (brings the update size |dw|/|w|, {update_ratio}, below {target_update} per step)",
        "default": "",
    }[basis]
    if trace.lr is not None and basis == "schedule":
        text = "the learning-rate schedule x {lr_factor}" + why
    elif not math.isfinite(lr):
        text = "a learning rate {lr_factor}x the current one" + why
    else:
        text = "learning_rate={learning_rate_suggested} (now {learning_rate}; x {lr_factor})" + why
    return Fix(text, {"learning_rate_factor": q["lr_factor"]}), basis


# -- rules ---------------------------------------------------------------------

Rule = Callable[[Finding, Trace, Quotes, list[Finding]], Dx]


def _epsilon_underflow(f: Finding, trace: Trace, q: Quotes, start: int) -> Dx | None:
    """Float16 variables under an Adam-family optimizer whose epsilon is below float16's smallest normal number:
    v underflows to 0 for small gradients and m/(sqrt(v)+epsilon) divides by ~epsilon."""
    opt, cfg = _optimizer(trace)
    info = trace.info or {}
    eps = _number(cfg.get("epsilon"))
    policy = str(info.get("dtype_policy") or "")
    if opt not in ADAM_FAMILY or policy != "float16" or not (math.isfinite(eps) and eps < FLOAT16_TINY):
        return None
    if start >= early_end(trace):
        return None
    q.text("optimizer", opt)
    q.fact("dtype_policy", "dtype_policy", policy)
    q.setting("epsilon", "epsilon", eps)
    q.const("float16_tiny", FLOAT16_TINY)
    q.const("epsilon_suggested", 1e-4)
    _lr_now(q, trace, 0, cfg)
    u0 = q.at("update_ratio", "update_ratio", 0) if trace.update_ratio is not None else math.nan
    big = _ok(u0, UPDATE_TOO_FAST)
    cause = (
        "{optimizer} on {dtype_policy} variables with epsilon={epsilon}, below float16's smallest normal "
        "number {float16_tiny}: for small gradients v underflows to zero and m/(sqrt(v)+epsilon) divides by "
        "(almost) nothing, so the update, not the data, blew up"
    )
    if big:
        cause += (
            " (the first update moved the weights {update_ratio} times their norm, at learning rate {learning_rate})"
        )
    fixes = [
        Fix("{optimizer}(epsilon={epsilon_suggested}) (now {epsilon}): an epsilon float16 can hold", {"epsilon": 1e-4}),
        Fix("keep the variables and optimizer state in float32: the 'mixed_float16' dtype policy instead of 'float16'"),
    ]
    return Dx("epsilon_underflow", LIKELY if big or f.check == "nonfinite" else UNCERTAIN, cause, fixes)


#: the cause of an early blow-up, unless the data is measured far from unit scale
HIGH_FROM_THE_START = (
    "a learning rate too high for this model from the start (or weights initialised too large, or inputs far "
    "from unit scale)"
)
#: the same, for inputs that are ids (see _inputs_are_ids): they have no scale to be far from
HIGH_FROM_THE_START_IDS = "a learning rate too high for this model from the start (or weights initialised too large)"
#: layers that take integer ids (a token, a category) and look them up: their inputs have no scale that trains
ID_LAYERS = frozenset(
    {"Embedding", "IntegerLookup", "StringLookup", "Hashing", "CategoryEncoding", "TextVectorization"}
)
#: the fixes for targets, and for inputs, far from unit scale
STANDARDISE_TARGETS = Fix(
    "standardise the targets, (y - mean) / std over the training set (undone on the predictions): the learning "
    "rate that suits unit-scale data then applies"
)
STANDARDISE_INPUTS = Fix(
    "standardise the inputs, (x - mean) / std per feature over the training set (pixel values: divide by 255), "
    "or put a keras.layers.Normalization() adapted to them first: the learning rate that suits unit-scale data "
    "then applies"
)


def _inputs_are_ids(trace: Trace) -> bool:
    """Whether the inputs are ids the model looks up (it has an Embedding or a lookup layer, ``ID_LAYERS``) and
    no floating-point input array was measured beside them (``input_rms``): a token's id has no scale to
    standardise, and advice to scale the inputs would point the wrong way."""
    info = trace.info or {}
    return "input_rms" not in info and not ID_LAYERS.isdisjoint(info.get("layers") or ())


def _high_from_the_start(trace: Trace) -> str:
    """:data:`HIGH_FROM_THE_START`, without the inputs' scale where the inputs are ids."""
    return HIGH_FROM_THE_START_IDS if _inputs_are_ids(trace) else HIGH_FROM_THE_START


def _input_rms(trace: Trace) -> float | None:
    """The array inputs' root mean square, unless the model rescales them before its first layer with weights
    (``inputs_rescaled_by``: a ``Rescaling(1/255)``, a ``Normalization``): then their raw scale does not train."""
    info = trace.info or {}
    return None if info.get("inputs_rescaled_by") else info.get("input_rms")


def _target_rms(trace: Trace) -> float | None:
    """The array targets' root mean square, unless the model brings its outputs to their scale after its last
    layer with weights (``targets_rescaled_by``: a ``Normalization(invert=True)``, a ``Rescaling``)."""
    info = trace.info or {}
    return None if info.get("targets_rescaled_by") else info.get("target_rms")


def _far_from_unit_scale(q: Quotes, trace: Trace, loss_first: float) -> tuple[str, list[Fix]]:
    """The evidence that the data is far from unit scale, and the gradients with it: the root mean square of
    the array inputs (``input_rms``) or targets (``target_rms``) at least :data:`FAR_FROM_UNIT`; where the data
    was not measured (a dataset, a generator), a loss at step 0 of at least :data:`LARGE_INITIAL_LOSS`.
    ``(clause, fixes)`` for the cause, quoting each number; else ``("", [])``."""
    info = trace.info or {}
    parts: list[str] = []
    fixes: list[Fix] = []
    target_rms, input_rms = _target_rms(trace), _input_rms(trace)
    few_sides: list[str] = []
    for side, rms, standardise in (
        ("target", target_rms, STANDARDISE_TARGETS),
        ("input", input_rms, STANDARDISE_INPUTS),
    ):
        if not _ok(rms, FAR_FROM_UNIT):
            continue
        q.fact(f"{side}_rms", f"{side}_rms", rms)
        parts.append(f"the {side}s' root mean square is {{{side}_rms}}")
        few = _few_samples(q, info, side)
        if few is None:
            fixes.append(standardise)
        else:  # a few samples far out: standardising would keep them so (and squeeze every other sample)
            parts[-1] += few[0]
            fixes.append(few[1])
            few_sides.append(side)
    measured = "target_rms" in info or "input_rms" in info
    large_loss = _ok(loss_first, LARGE_INITIAL_LOSS)
    if not fixes and (measured or not large_loss):
        # measured near unit scale (a huge first loss then has another cause: the initialisation, a loss
        # summed over very many values), or no evidence at all
        return "", []
    if large_loss:
        q.const("large_initial_loss", LARGE_INITIAL_LOSS)
        parts.append("the loss started at {loss_first}, at least {large_initial_loss}")
    if fixes:
        targets = STANDARDISE_TARGETS in fixes or "target" in few_sides
        inputs = STANDARDISE_INPUTS in fixes or "input" in few_sides
        what = "the data is" if targets and inputs else ("the targets are" if targets else "the inputs are")
    else:  # not measured: a loss that large comes from the targets most often
        what = "the targets (or the inputs) are"
        fixes.append(STANDARDISE_TARGETS)
    if few_sides and len(few_sides) == len(fixes):  # only a few samples are far out
        return (
            f"{what} far from unit scale ({'; '.join(parts)}): a batch that holds one of those samples gets "
            "gradients far larger than the others, so a learning rate that suits the rest is too high for it",
            fixes,
        )
    return (
        f"{what} far from unit scale ({'; '.join(parts)}), and the gradients with them, so a learning rate that "
        "suits unit-scale data is too high",
        fixes,
    )


def _few_samples(q: Quotes, info: Mapping[str, Any], side: str) -> tuple[str, Fix] | None:
    """When a few samples make the ``side``'s ("target" or "input") root mean square far from unit scale
    (``trace.info["target_outliers"]``, from :func:`~pytest_stability.training.fitsetup.few_samples_far`): the
    clause that names them, and the fix to check them; None otherwise."""
    few = info.get(f"{side}_outliers")
    if not isinstance(few, Mapping) or not few.get("samples"):
        return None
    q.text(f"{side}_outliers", describe_samples(few))
    q.count(f"{side}_outlier_count", int(few.get("count") or len(few["samples"])))
    q.fact(f"{side}_rms_rest", f"{side}_outliers.rms_rest", float(few["rms_rest"]))
    one = int(few.get("count") or 0) <= 1
    q.count(f"{side}_samples", int(few.get("n") or 0))
    made_by = "one sample" if one else f"{{{side}_outlier_count}} of the {{{side}_samples}} samples"
    clause = f", made by {made_by}: {{{side}_outliers}}; the others' is {{{side}_rms_rest}}"
    fix = Fix(
        f"check the {side}s of {{{side}_outliers}}: far outside the others' range, a wrong value, a unit mix-up or a "
        "sentinel for a missing value; correct or drop them (standardising would leave them as far out)"
    )
    return clause, fix


def _inputs_far(q: Quotes, trace: Trace) -> str:
    """The cause's clause when the array inputs were measured at least :data:`FAR_FROM_UNIT` from unit scale
    (units they feed saturate or die), quoting ``input_rms``; else ``""``."""
    input_rms = _input_rms(trace)
    if not _ok(input_rms, FAR_FROM_UNIT):
        return ""
    q.fact("input_rms", "input_rms", input_rms)
    few = _few_samples(q, trace.info or {}, "input")
    if few is not None:  # a few samples far out: they, not the inputs at large
        return "; the inputs' root mean square is {input_rms}" + few[0] + ": those samples drive units into saturation"
    return "; the inputs' root mean square is {input_rms}, far from unit scale: they drive units into saturation"


def _inputs_fix(q: Quotes, trace: Trace) -> Fix:
    """The fix for inputs far from unit scale: check the few samples that make them so, where a few do (see
    :func:`_few_samples`), else standardise them."""
    few = _few_samples(q, trace.info or {}, "input")
    return few[1] if few is not None else STANDARDISE_INPUTS


def _scale_before_rate(q: Quotes, scale: str, fixes: list[Fix], scale_fixes: list[Fix]) -> tuple[str, list[Fix]]:
    """With the data far from unit scale (``scale``, from :func:`_far_from_unit_scale`) and a learning rate that
    would have to fall below :data:`LR_IMPLAUSIBLE` (``learning_rate_suggested``) to tame its updates: the scale
    fixes lead, as such a rate stops the blow-up and the training with it (SGD at 1e-7 moves a bias towards a
    target of 2e4 by a few thousandths a step), and the cause says why.  ``(clause, fixes)``: else ``("",
    fixes + scale_fixes)``, the measured fixes first."""
    suggested = q["learning_rate_suggested"] if "learning_rate_suggested" in q else math.nan  # noqa: SIM401
    if not (scale and scale_fixes and _implausible(suggested)):
        return "", fixes + scale_fixes
    q.const("lr_implausible", LR_IMPLAUSIBLE)
    clause = (
        "; a learning rate low enough for these gradients ({learning_rate_suggested}) is below any that trains "
        "({lr_implausible}): put the data on unit scale first"
    )
    return clause, scale_fixes + fixes


def _out_of_scale(q: Quotes, trace: Trace, what: str, clips: list[Fix]) -> Dx | None:
    """The first update moved the weights so far that the learning rate it asks for (``learning_rate_suggested``,
    from :func:`_lr_fix`'s update basis) is below :data:`LR_IMPLAUSIBLE`, with the data not measured far from
    unit scale: no learning rate that trains is low enough, so the gradients are out of scale from the first
    step (weights initialised too large for the network's depth, activations that grow layer by layer).  The
    cause names the rate it would take and the first gradient norm; the fix is the initialisation, not a rate
    that means nothing.  None otherwise."""
    suggested = q["learning_rate_suggested"] if "learning_rate_suggested" in q else math.nan  # noqa: SIM401
    if "target_update" not in q or not _implausible(suggested):
        return None
    q.const("lr_implausible", LR_IMPLAUSIBLE)
    if trace.grad_norm is not None:
        q.at("grad_norm_at_start", "grad_norm", 0)
    rms = _input_rms(trace)
    if _ok(rms, 0.0):
        q.fact("input_rms", "input_rms", rms)
        data = " with the inputs not far from unit scale (root mean square {input_rms})"
    elif (trace.info or {}).get("inputs_rescaled_by"):
        data = " with the inputs rescaled by the model"
    elif _inputs_are_ids(trace):
        data = " with the inputs being ids the model looks up (they have no scale to blame)"
    else:
        data = (
            " (the inputs' scale was not measured: a dataset, a generator, or integers the model may take as ids; "
            "standardise them if they are values far from unit scale)"
        )
    return Dx(
        "gradients_out_of_scale",
        LIKELY,
        what + ": the first update moved the weights {update_ratio} times their norm at learning rate "
        "{learning_rate}, which would have to fall to {learning_rate_suggested} to keep the updates below "
        "{target_update} of the weights: no learning rate that trains is that low (below {lr_implausible}), so "
        "the gradients are out of scale from the first step"
        + (" (gradient norm {grad_norm_at_start})" if "grad_norm_at_start" in q else "")
        + data
        + ": weights initialised too large for this network's depth (its activations grow layer by layer), or a "
        "loss summed over very many values",
        [
            Fix(
                "initialise the layers so their outputs keep the scale of their inputs: kernel_initializer="
                "'he_normal' for ReLU layers, 'glorot_uniform' (Keras' default) otherwise, no custom initializer "
                "with a large stddev; or put BatchNormalization / LayerNormalization between the layers"
            ),
            *[c for c in clips if c.note],
        ],
    )


def _early_blowup(f: Finding, trace: Trace, q: Quotes, start: int, end: int, what: str) -> Dx:
    """An explosion in the first few percent of the steps: the learning rate (or the initialisation or input
    scale), with any optimizer; never Adam's second moment (it has no history yet)."""
    _, cfg = _optimizer(trace)
    q.step("start", start)
    q.count("early_end", early_end(trace))
    loss_first = q.at("loss_first", "loss", 0)
    lr_fix, basis = _lr_fix(q, trace, start, end, cfg)
    clips = _clip_or_note(q, trace, start, "before the blow-up")
    scale, scale_fixes = _far_from_unit_scale(q, trace, loss_first)
    out = (
        None
        if scale or basis != "update"
        else _out_of_scale(q, trace, what + ", within the first {early_end} steps", clips)
    )
    if out is not None:
        return out
    cause = what + ", within the first {early_end} steps: " + (scale or _high_from_the_start(trace))
    if basis == "update":
        cause += ": the first update already moved the weights {update_ratio} times their norm"
    clause, fixes = _scale_before_rate(q, scale, [lr_fix] + clips, scale_fixes)
    cause += clause
    if not scale_fixes:
        fixes.append(
            Fix(
                "if a lower learning rate does not help: "
                + ("" if _inputs_are_ids(trace) else "scale the inputs to about unit range and ")
                + "check the initialisation (he_normal / glorot_uniform)"
            )
        )
    return Dx("lr_too_high", LIKELY, cause, fixes)


def _stayed_up(findings: Sequence[Finding], start: int) -> int | None:
    """The step of the first loss event from ``start`` on, or of the one right after it, that left the loss up
    for good (``spike_no_recovery``: it did not come back down within the check's window); None when neither."""
    events = sorted(
        (g for g in findings if g.check == "loss_spike" and int(g.evidence.get("start", g.step)) >= start),
        key=lambda g: int(g.evidence.get("start", g.step)),
    )
    return next((int(g.step) for g in events[:2] if g.kind == "spike_no_recovery"), None)


def _adam_history(
    q: Quotes, trace: Trace, start: int, f: Finding, findings: Sequence[Finding] = ()
) -> tuple[bool, bool, list[str]]:
    """The evidence of a collapsed Adam second moment before ``start``: (named, confident, cause parts).

    Needs a history: at least :data:`HISTORY_MIN_STEPS` steps before the burst.  Then any of: the gradient
    norm over the stretch before the burst :data:`TINY_GRADIENTS` x below its early median (or
    :data:`SMALL_GRADIENTS` x with the loss fallen :data:`SMALL_GRADIENTS_FELL` x, or for a slow climb back
    :data:`SLOW_CLIMB_GRADIENTS` x with the loss fallen :data:`SLOW_CLIMB_FELL` x, each with ``g^2/v`` up
    :data:`G2V_SUPPORT` x where the slot statistics measure it; or :data:`PLATEAU_GRADIENTS` x with the loss
    fallen :data:`SMALL_GRADIENTS_FELL` x and the burst leaving it up, :func:`_stayed_up`); ``g^2/v`` just
    before it :data:`G2V_JUMP` x its median (slot statistics); without gradient norms, the loss fallen
    :data:`NEAR_ZERO` x (or :data:`PERIODIC_FELL` x with :data:`PERIODIC_EVENTS` spikes)."""
    if start < HISTORY_MIN_STEPS:
        return False, False, []
    q.const("history_min_steps", HISTORY_MIN_STEPS)
    w = min(_window(trace), start // 4)
    h0 = max(w, start - HISTORY_MIN_STEPS)
    parts: list[str] = []
    tiny = g2v = fell = False
    l0 = q.over("loss_early", "loss", "median", 0, w - 1)
    lmin = q.over("min_loss_before", "loss", "min", 0, start - 1)
    q.ratio("loss_fell", "loss_early", "min_loss_before")
    parts.append("the loss had fallen {loss_fell}x, from {loss_early} to {min_loss_before}")
    if trace.grad_norm is not None:
        q.over("grad_norm_early", "grad_norm", "median", 0, w - 1)
        q.over("grad_norm_before", "grad_norm", "median", h0, start - 1)
    g2 = trace.opt_stats.get("g2_over_v_max")
    jump = math.nan  # not measured: no slot statistics, or a median of 0
    if g2 is not None:
        q.over("g2_over_v_median", "opt.g2_over_v_max", "median", w, start - 1)
        q.over("g2_over_v_before", "opt.g2_over_v_max", "max", max(0, start - 5), start)
        jump = q.ratio("g2_over_v_jump", "g2_over_v_before", "g2_over_v_median")
        g2v = _ok(jump, G2V_JUMP)
    if trace.grad_norm is not None:
        q.over("grad_norm_early", "grad_norm", "median", 0, w - 1)
        q.over("grad_norm_before", "grad_norm", "median", h0, start - 1)
        collapse = q.ratio("grad_collapse", "grad_norm_early", "grad_norm_before")
        supported = not math.isfinite(jump) or _ok(jump, G2V_SUPPORT)
        small = _ok(collapse, SMALL_GRADIENTS) and _ok(q["loss_fell"], SMALL_GRADIENTS_FELL) and supported
        slow_climb = (
            bool(f.evidence.get("slow_rise"))
            and _ok(collapse, SLOW_CLIMB_GRADIENTS)
            and _ok(q["loss_fell"], SLOW_CLIMB_FELL)
            and supported
        )
        up = _stayed_up(findings, start)
        plateau = (
            not (_ok(collapse, TINY_GRADIENTS) or small or slow_climb)
            and _ok(collapse, PLATEAU_GRADIENTS)
            and _ok(q["loss_fell"], SMALL_GRADIENTS_FELL)
            and up is not None
        )
        tiny = _ok(collapse, TINY_GRADIENTS) or small or slow_climb or plateau
        parts.append(
            "over the {history_steps} steps before the burst the gradient norm was {grad_collapse}x "
            "below its early level ({grad_norm_early} -> {grad_norm_before})"
            + (", so Adam's v shrank with it" if tiny else "")
        )
        if plateau and up is not None:
            q.step("plateau_step", up)
            parts.append(
                "the loss did not come back down after its jump at step {plateau_step}: a collapse throws it onto "
                "a plateau, where a learning rate too high for the minimum bounces it out and back, spike after spike"
            )
        q.count("history_steps", start - h0)
    if g2v:
        parts.append(
            "max g^2/v just before the burst was {g2_over_v_before}, {g2_over_v_jump}x its median {g2_over_v_median}"
        )
    if trace.grad_norm is None:
        n_events = int(f.evidence.get("n_events") or 0)
        fell = _ok(q["loss_fell"], NEAR_ZERO) or (n_events >= PERIODIC_EVENTS and _ok(q["loss_fell"], PERIODIC_FELL))
    named = tiny or g2v or fell
    confident = (tiny and g2v) or (tiny and _ok(q["loss_fell"], NEAR_ZERO))
    del l0, lmin
    return named, confident, parts


def _adam_dx(f: Finding, trace: Trace, q: Quotes, start: int, what: str, findings: Sequence[Finding] = ()) -> Dx | None:
    opt, cfg = _optimizer(trace)
    if opt not in ADAM_FAMILY:
        return None
    named, confident, parts = _adam_history(q, trace, start, f, findings)
    if not named:
        return None
    q.text("optimizer", opt)
    eps = q.setting("epsilon", "epsilon", _number(cfg.get("epsilon")))
    beta_2 = q.setting("beta_2", "beta_2", _number(cfg.get("beta_2")))
    amsgrad = bool(cfg.get("amsgrad"))
    if f.evidence.get("n_events"):
        q.count("n_events", int(f.evidence["n_events"]))
        parts.append("{n_events} separate spikes")
    slow = bool(f.evidence.get("slow_rise"))
    cause = (
        "Adam second-moment collapse: "
        + what
        + " after a long stretch of small gradients; "
        + "; ".join(parts)
        + (
            "; the loss climbed back over many steps rather than bursting in one: with v this small, Adam's "
            "normalised step stays about the learning rate per weight however small the gradient, and overshoots "
            "the sharp minimum it reached; a lower learning rate prevents that, a larger epsilon (now {epsilon}) "
            "bounds only one-step bursts"
            if slow
            else "; a tiny v makes m/(sqrt(v)+epsilon) explode (epsilon={epsilon})"
        )
    )
    fixes: list[Fix] = []
    if not (math.isfinite(eps) and eps >= 1e-3):
        q.const("epsilon_suggested", 1e-3)
        fixes.append(
            Fix(
                "{optimizer}(epsilon={epsilon_suggested}) (now {epsilon}): bounds the step when v collapses",
                {"epsilon": 1e-3},
            )
        )
    if not amsgrad and opt in ("Adam", "AdamW"):
        fixes.append(Fix("{optimizer}(amsgrad=True): v never decreases", {"amsgrad": True}))
    if math.isfinite(beta_2) and beta_2 > 0.99:
        q.const("beta_2_suggested", 0.99)
        fixes.append(Fix("beta_2={beta_2_suggested} (now {beta_2})", {"beta_2": 0.99}))
    lr_fix, _ = _lr_fix(q, trace, start, start, cfg)
    if slow:
        # a climb over tens of steps, not a one-step burst (the slingshot): a larger epsilon bounds a burst, not
        # this.  On the slingshot family (benchmarks/fix_from_start.py), epsilon 1e-3 or 1e-2 from the first step
        # left the climbs in 19 of 20 runs; a tenth of the learning rate, in none
        fixes.insert(0, lr_fix)
    else:
        fixes.append(lr_fix)
    return Dx("adam_second_moment", LIKELY if confident else UNCERTAIN, cause, fixes)


def _stuck_state(trace: Trace, step: int, window: int, f: Finding | None = None) -> dict[str, Any]:
    st = stuck_after(trace.loss, trace.grad_norm, step, window)
    if f is not None and isinstance(f.evidence.get("stuck"), bool):
        st = {**st, "stuck": f.evidence["stuck"]}
    return st


def _collapse_dx(
    q: Quotes, trace: Trace, start: int, end: int, head: str, until: int | None = None, by: str = "the blow-up"
) -> Dx:
    """A run that blew up (``by`` it) and then stopped: name the collapse, lower the learning rate (capped when
    the rate jumped between ``start`` and ``until``, where the run was found stuck), clip when possible."""
    _, cfg = _optimizer(trace)
    lr_fix, basis = _lr_fix(q, trace, start, end, cfg, largest_before=True, jump_until=until)
    clips = _clip_or_note(q, trace, start, "before the blow-up")
    cause = head + ": " + by + " pushed units dead or outputs into saturation, and training stopped there"
    said = (  # the head quotes the same update
        "{update_moved}" in head
        and "update_ratio" in q
        and q.q.get("update_moved", {}).get("value") == q["update_ratio"]
    )
    if basis == "update" and not said:
        cause += "; the largest update before it moved the weights {update_ratio} times their norm"
    return Dx("collapse_constant", LIKELY, cause, [lr_fix] + clips)


def _tail_quotes(q: Quotes, trace: Trace, step: int) -> float:
    """The level of the loss over the steps judged stuck after ``step``."""
    n = trace.steps
    a = max(step + 5, n - max(int(q.settings["spike_window"]), 10))
    return q.over("stuck_level", "loss", "median", a, n - 1)


def _event(f: Finding, trace: Trace, q: Quotes, findings: list[Finding], what: str, *, explosion: bool) -> Dx:
    """The shared decision list of ``loss_spike`` and ``grad_norm`` (see the module docstring)."""
    opt, cfg = _optimizer(trace)
    start = int(f.evidence.get("start", f.step))
    end = int(f.evidence.get("end", f.step))
    step = int(f.step)
    dx = _epsilon_underflow(f, trace, q, start)
    if dx is not None:
        return dx
    st = _stuck_state(trace, step, int(q.settings["spike_window"]), f if f.check == "loss_spike" else None)
    if st["stuck"]:
        _tail_quotes(q, trace, step)
        stuck_text = (
            what
            + ", then the loss stayed at {stuck_level}"
            + (" with the gradients vanished" if st.get("vanished") and not st.get("flat") else "")
        )
    # Adam's second moment first, but only with its evidence: a history of at least HISTORY_MIN_STEPS steps
    # of shrinking gradients (a long run's "first few percent" can hold such a history)
    dx = _adam_dx(f, trace, q, start, what, findings)
    if dx is not None:
        if st["stuck"]:
            dx.cause += "; afterwards the loss stays at {stuck_level} (dead units)"
        return dx
    if start < early_end(trace):
        if st["stuck"]:
            q.step("start", start)
            q.count("early_end", early_end(trace))
            return _collapse_dx(q, trace, start, end, stuck_text + ", within the first {early_end} steps")
        return _early_blowup(f, trace, q, start, end, what)
    if st["stuck"]:
        return _collapse_dx(q, trace, start, end, stuck_text)
    # an explosion of the gradient norm, or a jump of the loss without one
    has_g = trace.grad_norm is not None
    if has_g:
        q.over("grad_norm_p90_before", "grad_norm", "p90", max(0, min(_window(trace) // 5, start - 5)), start - 1)
        q.over("grad_norm_at_spike", "grad_norm", "max", max(0, start - 3), step)
        ratio = q.ratio("explosion", "grad_norm_at_spike", "grad_norm_p90_before")
    else:
        ratio = math.nan
    exploded = explosion or _ok(ratio, EXPLOSION_FACTOR)
    upd = math.nan
    if trace.update_ratio is not None and exploded:
        # an explosion's own updates are its consequence: the updates of the healthy stretch before it (the
        # basis of the rate's fix, see _lr_factor) say whether the rate was too high
        upd = q.over("update_ratio", "update_ratio", "max", 0, max(min(healthy_end(trace, start), start) - 1, 0))
    elif trace.update_ratio is not None:
        upd = q.over("update_ratio_event", "update_ratio", "median", max(0, start - 2), end + 2)
    too_fast = _ok(upd, UPDATE_TOO_FAST)
    rose = (
        trace.lr is not None
        and start > 0
        and _number(trace.lr[min(start, trace.lr.size - 1)]) >= 2 * _number(trace.lr[0])
    )
    repeated = int(f.evidence.get("n_events") or 0) >= PERIODIC_EVENTS
    # a lone jump: a third of the rate; an explosion, or spike after spike: a tenth.  An explosion's own updates
    # are its consequence, not the rate's measure: the rate is measured on the updates before it (SGD at 0.05 with
    # momentum on a regression moved the weights 46x their norm a step as its gradients exploded, which asked for
    # a rate 10,000x lower)
    lr_fix, basis = _lr_fix(
        q, trace, start, end, cfg, default=0.1 if exploded or repeated else 1 / 3, largest_before=exploded
    )
    # a rate that jumped before the event (a step schedule's peak): the rate, even when the gradients exploded
    jumped = basis == "jump"
    clip = _clip_fix(q, trace, start, "before the event")
    note = ""
    if too_fast and not jumped:  # after a jump of the rate, the jump says it
        q.const("update_too_fast", UPDATE_TOO_FAST)
        if exploded:
            note = "; before it, the updates were already up to {update_ratio} of the weights per step (|dw|/|w|"
        else:
            note = "; the updates were {update_ratio_event} of the weights per step (median |dw|/|w|"
        note += ", above {update_too_fast}): the learning rate is too high for these weights"
    if rose and trace.lr is not None:
        q.at("lr_first", "lr", 0)
        q.at("lr_at_event", "lr", min(start, trace.lr.size - 1))
        note += "; the learning-rate schedule had risen from {lr_first} to {lr_at_event} by then"
    if repeated:
        q.count("n_events", int(f.evidence["n_events"]))
        note += "; {n_events} separate spikes: the rate is too high for the minimum training settled in"
    if opt in ADAM_FAMILY and "grad_collapse" in q:
        q.text("optimizer", opt)
        note += "; with {optimizer}, but not a second-moment collapse: over the {history_steps} steps before it " + (
            "the gradient norm had risen from its early level ({grad_norm_early} -> {grad_norm_before}), not fallen"
            if q["grad_collapse"] < 1
            else "the gradient norm was only {grad_collapse}x below its early level"
        )
    scale, scale_fixes = "", list[Fix]()
    if exploded and has_g:
        # gradients that grow with outputs climbing towards targets (or inputs) far from unit scale: the data's
        # scale is the cause to fix; the clip and the rate stay first, as their success is measured (unless the
        # rate would have to fall below any that trains: _scale_before_rate)
        scale, scale_fixes = _far_from_unit_scale(q, trace, q.at("loss_first", "loss", 0))
        if scale:
            note += "; " + scale
    # the learning rate first when the run's evidence points at it (updates too large, a schedule that rose
    # into the failure, no healthy stretch to clip at); clipnorm first for a lone burst after a healthy stretch
    lr_first = too_fast or rose or clip is None or not exploded
    fixes: list[Fix] = [fx for fx in ([lr_fix, clip] if lr_first else [clip, lr_fix]) if fx is not None]
    if clip is None and has_g:
        fixes.append(_why_no_clip(q))
    clause, fixes = _scale_before_rate(q, scale, fixes, scale_fixes)
    note += clause
    # a rate that jumped before it is the likelier culprit than the batch
    culprit = (
        "a learning rate too high, which jumped before it"
        if jumped
        else "a learning rate too high for this point of training, or an unusual batch"
    )
    if exploded:
        cause = what
        if f.check != "grad_norm" and has_g:
            cause += (
                ", with the gradient norm at {grad_norm_at_spike}, {explosion}x the {grad_norm_p90_before} before it"
            )
        if jumped:  # the explosion followed the rate's jump
            return Dx("lr_too_high", LIKELY, cause + ": " + culprit + note, fixes)
        return Dx("gradient_explosion", LIKELY, cause + note, fixes)
    if has_g:
        cause = (
            what + " without a matching gradient explosion (gradient norm {grad_norm_at_spike}; "
            "{grad_norm_p90_before} before): " + culprit + note
        )
    else:
        cause = what + " (no gradient norms recorded): " + culprit + note
    return Dx("lr_too_high", LIKELY if too_fast or jumped else UNCERTAIN, cause, fixes)


def _loss_spike(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    dx = _event(f, trace, q, findings, _loss_event(f, trace, q), explosion=False)
    note = _one_batch_note(trace, q, int(f.evidence.get("start", f.step)), named=int(f.step))
    if note is not None:
        dx.fixes.append(note)
    return dx


def _loss_event(f: Finding, trace: Trace, q: Quotes) -> str:
    """What the loss did at a ``loss_spike`` finding, in numbers that say it: a climb is quoted as the medians
    its rule compared (one noisy step of a climb can sit below the level it climbed from), an end above the start
    as the two levels, a collapse by the best level it rose from, a jump as its step against the median before it,
    or its peak when that step is not above it."""
    ev = f.evidence
    start = int(ev.get("start", f.step))
    q.step("step", f.step)
    loss_at = q.at("loss_at_spike", "loss", f.step)
    if ev.get("slow_rise") and ev.get("low_steps") and ev.get("level_steps"):
        q.count("rise_window", int(ev["level_steps"][1]) - int(ev["level_steps"][0]) + 1)
        q.over("rise_low", "loss", "median", *ev["low_steps"])
        q.over("rise_level", "loss", "median", *ev["level_steps"])
        q.ratio("rise_ratio", "rise_level", "rise_low")
        return (
            "the loss climbed back slowly: its median over {rise_window} steps rose {rise_ratio}x, from {rise_low} "
            "to {rise_level}"
        )
    if ev.get("ended_above_start") and ev.get("start_steps") and ev.get("end_steps"):
        q.over("level_start", "loss", "median", *ev["start_steps"])
        q.over("level_end", "loss", "median", *ev["end_steps"])
        q.ratio("ended_ratio", "level_end", "level_start")
        q.step("above_since", int(ev.get("above_since", f.step)))
        return (
            "the loss ended {ended_ratio}x above where it started, {level_end} against {level_start}, above its "
            "limit for good since step {above_since}"
        )
    if ev.get("collapse") and ev.get("best_steps"):
        # the level it rose from; the level it stayed at follows in the collapse's own words
        q.over("collapse_best", "loss", "median", *ev["best_steps"])
        return "the loss rose from its best {collapse_best} by step {step}"
    if start == 0:
        return "the loss was at {loss_at_spike}"
    before = q.over("loss_before", "loss", "median", max(0, start - _window(trace)), start - 1)
    if loss_at > before:
        return "the loss jumped to {loss_at_spike} from {loss_before}"
    end = max(int(ev.get("end", f.step)), int(f.step))
    peak = q.over("loss_peak", "loss", "max", start, end)
    if peak > before:
        return "the loss rose to {loss_peak} from {loss_before}"
    return "the loss was at {loss_at_spike} ({loss_before} before it)"


#: a spike at least this many times the loss before it...
ONE_BATCH_JUMP = 10.0
#: ...after an update at most this many times the run's median update may be its batch's doing
ONE_BATCH_UPDATE = 3.0


def _one_batch_note(trace: Trace, q: Quotes, start: int, named: int | None = None) -> Fix | None:
    """A note when a spike followed an ordinary update: the weights hardly changed into the step, so the
    step's batch may have caused the jump (a bad sample); the batch replay tells.  A note, not a cause: a full
    batch (every step the same samples) or a subtle weight change can look the same in the trace.  ``start``:
    where the event began; ``named``: the step whose batch the failure names (an event that merged spikes names
    a later one: a bad sample at step 34, then the blow-up it led to, named at step 104)."""
    if trace.update_ratio is None or start < 3:
        return None
    u = trace.update_ratio
    before = _finite(u[max(0, start - _window(trace)) : start - 1])
    prev = float(u[start - 1])
    if before.size < 2 or not math.isfinite(prev) or float(np.median(before)) <= 0:
        return None
    jump = float(trace.loss[start]) / float(np.median(_finite(trace.loss[max(0, start - _window(trace)) : start])))
    if not (math.isfinite(jump) and jump >= ONE_BATCH_JUMP and prev <= ONE_BATCH_UPDATE * float(np.median(before))):
        return None
    q.step("spike_start", start)
    q.at("update_before", "update_ratio", start - 1)
    q.over("update_median", "update_ratio", "median", max(0, start - _window(trace)), start - 2)
    names = "the failure names its samples, and " if named is None or named == start else ""
    return Fix(
        "the update into step {spike_start} was ordinary ({update_before} of the weights; {update_median} "
        "before it), so the batch of step {spike_start} itself may have caused the jump: "
        + names
        + "--stability-replay-batch={spike_start} tells a bad sample from a bad update",
        note=True,
    )


def _grad_norm(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    q.step("step", f.step)
    if trace.grad_norm is None:
        return Dx("gradient_explosion", UNCERTAIN, "the gradient norm crossed its limit", [])
    q.at("grad_norm_at", "grad_norm", f.step)
    k = min(5, max(int(f.step), 1))
    q.over("grad_norm_first", "grad_norm", "median", 0, k - 1)
    q.ratio("growth", "grad_norm_at", "grad_norm_first")
    what = "the gradient norm grew to {grad_norm_at}, {growth}x its first steps' {grad_norm_first}"
    var = f.evidence.get("variable")
    if var:
        q.text("variable", var)
        what += " (largest in {variable})"
    return _event(f, trace, q, findings, what, explosion=True)


def _nonfinite(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    opt, cfg = _optimizer(trace)
    step = q.step("step", f.step)
    if f.kind == "input" or f.evidence.get("input_nonfinite"):
        q.text("code", "np.isfinite(x).all(axis=1)")
        q.text("code_tf", "ds.filter(lambda x, y: tf.reduce_all(tf.math.is_finite(x)))")
        return Dx(
            "nan_in_data",
            LIKELY,
            "the input batch of step {step} already held NaN/Inf before the model saw it: the data, not "
            "training, produced it",
            [
                Fix(
                    "clean the data pipeline: drop or impute non-finite rows ({code}), or add {code_tf} / "
                    "tf.debugging.check_numerics to the tf.data pipeline"
                )
            ],
        )
    if f.kind == "validation":
        return Dx(
            "nan_in_data",
            UNCERTAIN,
            "the validation loss became non-finite after {step} steps while every training quantity stayed "
            "finite: most likely NaN/Inf in the validation data (or an op that only the inference path runs)",
            [Fix("check the validation data for NaN/Inf (np.isfinite(x_val).all())")],
        )
    quantities = list((f.evidence or {}).get("quantities") or [])
    q.text("quantities", ", ".join(quantities) or "a training quantity")
    dx = _epsilon_underflow(f, trace, q, step)
    if dx is not None:
        return dx
    if step == 0:
        if quantities and not ({"loss", "gradients"} & set(quantities)):
            q.at("loss_at", "loss", 0)
            q.text("optimizer", opt or "the optimizer")
            cause = (
                "the loss {loss_at} and the gradients of step {step} were finite, its update made the "
                "{quantities} NaN/Inf: the optimizer's arithmetic did it (an epsilon too small for the "
                "variables' dtype, a NaN/Inf learning rate or schedule, a custom optimizer or constraint), not "
                "the data"
            )
            return Dx(
                "update_nonfinite",
                LIKELY,
                cause,
                [
                    Fix(
                        "check {optimizer}'s settings: a learning rate or schedule that is finite from the "
                        "first step, an epsilon the variables' dtype can hold; keep variables in float32 "
                        "('mixed_float16' rather than 'float16')"
                    )
                ],
            )
        return Dx(
            "nonfinite_at_start",
            LIKELY if f.evidence.get("source") in (None, "loss", "gradients") else UNCERTAIN,
            "{quantities} was NaN/Inf at step {step}, before any update: the learning rate cannot have "
            "caused it; the forward pass or the loss produced it from the initial weights and the first batch",
            [
                Fix(
                    "check the initialisation (a custom initializer, weights loaded from a file), the data "
                    "(np.isfinite on inputs and targets; the input check only sees the inputs) and unsafe ops "
                    "(log(0), 0/0, sqrt of a negative) in the model or the loss"
                )
            ],
        )
    finite_loss = _finite(trace.loss[:step])
    q.count("early_end", early_end(trace))
    u0 = q.at("update_ratio_first", "update_ratio", 0) if trace.update_ratio is not None else math.nan
    first_too_big = _ok(u0, UPDATE_TOO_FAST) and step < early_end(trace)
    if finite_loss.size < 3:
        # a NaN within a few steps of the start: a first update too large, or an unsafe op from the start
        lr_fix, basis = _lr_fix(q, trace, step, step, cfg)
        if first_too_big:
            scale, scale_fixes = _far_from_unit_scale(q, trace, q.at("loss_first", "loss", 0))
            if not scale and basis == "update":
                out = _out_of_scale(q, trace, "the {quantities} became NaN/Inf at step {step}", [_no_clip_note_short()])
                if out is not None:
                    return out
            clause, fixes = _scale_before_rate(q, scale, [lr_fix, _no_clip_note_short()], scale_fixes)
            return Dx(
                "lr_too_high",
                LIKELY,
                "the {quantities} became NaN/Inf at step {step}: the first update moved the weights "
                "{update_ratio_first} times their norm; " + (scale or _high_from_the_start(trace)) + clause,
                fixes,
            )
        inspected = bool((trace.info or {}).get("inputs_checked", False))
        cause = (
            "the loss became NaN/Inf at step {step}, only a few finite steps after the start"
            + (
                " with a finite input batch: "
                if inspected
                else " (the input batches were not inspected): NaN/Inf in the data, "
            )
            + "a learning rate far too high, a bad initialisation, or an unsafe op (log(0), 0/0) in the loss"
        )
        return Dx("lr_too_high", UNCERTAIN, cause, [lr_fix, Fix("guard log/division in custom losses with an epsilon")])
    diverged, src = _diverged(q, trace, step)
    if diverged:
        # the rate measured on the updates before the divergence: those of the divergence are its consequence
        # (SGD at a rate of 50 moved the weights 6x their norm at its first update, 8,650x in its last steps)
        lr_fix, _ = _lr_fix(q, trace, step, step, cfg, largest_before=True)
        clip = _clip_fix(q, trace, max(step - 5, 1), "before the divergence")
        _lr_now(q, trace, step, cfg, "learning_rate")
        cause = (
            "training diverged before the NaN at step {step}: the loss reached {loss_growth}x its lowest earlier value"
        )
        if "grad_growth" in q:
            cause += " and the gradient norm {grad_growth}x its early median"
        cause += ", at learning rate {learning_rate}"
        if first_too_big:
            cause += "; the first update already moved the weights {update_ratio_first} times their norm"
        fixes = [lr_fix] + ([clip] if clip is not None else [_why_no_clip(q)] if "healthy_steps" in q else [])
        return Dx("lr_too_high", LIKELY, cause, fixes)
    q.text("source", src or "loss")
    q.text("guard_code", "keras.ops.log(keras.ops.clip(p, 1e-7, 1.0))")
    return Dx(
        "unsafe_loss_op",
        LIKELY if src in (None, "loss", "gradients") else UNCERTAIN,
        "the loss was finite and steady ({last_loss}, at most {loss_growth}x its lowest earlier value) "
        "and turned NaN/Inf in one step ({source} first): a numerically unsafe op such as log(0), 0/0 or "
        "sqrt(0) in the loss or model, hit once predictions saturate",
        [
            Fix(
                "guard the op: {guard_code} instead of log(p), add an epsilon to "
                "denominators, or use the built-in loss with from_logits=True"
            )
        ],
    )


def _diverged(q: Quotes, trace: Trace, step: int) -> tuple[bool, str | None]:
    """Quote the growth of the loss (and gradient norm) in the last 5 finite steps before the NaN at ``step``."""
    w = _window(trace)
    q.over("last_loss", "loss", "max", max(0, step - 5), step - 1)
    q.over("lowest_loss", "loss", "min", 0, max(2, step - 6))
    lg = q.ratio("loss_growth", "last_loss", "lowest_loss")
    gg = math.nan
    if trace.grad_norm is not None:
        q.over("grad_norm_last", "grad_norm", "max", max(0, step - 5), step - 1)
        q.over("grad_norm_ref", "grad_norm", "median", 0, max(2, min(w, step - 5)) - 1)
        gg = q.ratio("grad_growth", "grad_norm_last", "grad_norm_ref")
    src = (trace.first_nonfinite or {}).get("source")
    return _ok(lg, GROWTH_BEFORE_NAN) or _ok(gg, GROWTH_BEFORE_NAN), src


#: an early update blew the loss up when the loss rose above this x its level at that step within a window
EARLY_RISE = 3.0


def _collapse_from(q: Quotes, trace: Trace, root: int, head: str, step: int, by: str = "the blow-up") -> Dx:
    """A run found stuck at ``step`` after a blow-up at ``root``: the collapse's diagnosis, its fix in place
    from ``root`` (before the blow-up, not where the run was found stuck), inputs far from unit scale named."""
    dx = _collapse_dx(q, trace, root, root, head, until=step, by=by)
    dx.extra["fix_from"] = root
    far = _inputs_far(q, trace)
    if far:
        dx.cause += far
        dx.fixes.append(_inputs_fix(q, trace))
    return dx


def _early_burst(trace: Trace, step: int, window: int) -> int | None:
    """The step of a burst of the gradient norm among the first ``window`` steps before ``step``: the largest norm
    there, at least :data:`BURST` x the median of the (at least 3) steps before it; None without one."""
    if trace.grad_norm is None:
        return None
    g = np.asarray(trace.grad_norm[: max(0, min(int(step), int(window)))], dtype=np.float64)
    if g.size < 4 or not np.isfinite(g).any():
        return None
    peak = int(np.argmax(np.where(np.isfinite(g), g, -np.inf)))
    base = _median(g[:peak])
    if peak < 3 or not (math.isfinite(base) and base > 0) or g[peak] < BURST * base:
        return None
    return peak


def _went_up_after(trace: Trace, u: int, q: Quotes) -> bool:
    """Whether the loss rose above :data:`EARLY_RISE` x its level at step ``u`` within a window after it: the
    update made there blew it up."""
    before = _number(trace.loss[u]) if u < trace.steps else math.nan
    after = _finite(trace.loss[u + 1 : u + 1 + int(q.settings["spike_window"])])
    return bool(math.isfinite(before) and before > 0 and after.size and float(np.max(after)) > EARLY_RISE * before)


def _vanishing_with_depth(q: Quotes, trace: Trace, frozen: list[str], lr: float) -> Dx | None:
    """Variables that never changed although they received gradients, at a learning rate above 0: when their
    gradients are at most :data:`VANISHING_SHARE` of the largest variable's (medians over the run), the
    gradients vanished on their way back through the layers (a deep stack of sigmoids: 1e-13 at the first
    layer, 0.15 at the last), and an update that small rounds away on a float32 weight.  Not a learning rate of
    zero, nor an optimizer that skips them.  None otherwise (or without per-variable gradient norms)."""
    g = trace.var_grad_norms
    names = list(trace.var_names)
    if g is None or not frozen or not _ok(lr, 1e-30) or any(v not in names for v in frozen):
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(np.where(np.isfinite(g), g, np.nan), axis=0)
    if not np.isfinite(medians).any():
        return None
    top = names[int(np.nanargmax(medians))]
    worst = max(frozen, key=lambda v: medians[names.index(v)])  # the frozen variable nearest to learning
    low = q.over("frozen_grad", f"var_grad.{worst}", "median", 0, trace.steps - 1)
    high = q.over("largest_grad", f"var_grad.{top}", "median", 0, trace.steps - 1)
    if not (_ok(low, 1e-45) and _ok(high, 1e-45)) or low > VANISHING_SHARE * high:
        return None
    q.text("frozen_variable", worst)
    q.text("largest_variable", top)
    q.ratio("vanishing", "largest_grad", "frozen_grad")
    return Dx(
        "vanished_gradients",
        LIKELY,
        "{variables} received gradients but never changed: their gradients vanished on the way back through the "
        "layers ({frozen_variable}'s gradient norm is {frozen_grad}, {vanishing}x below {largest_variable}'s "
        "{largest_grad}), so at learning rate {learning_rate} their updates are too small to change a float32 "
        "weight and round away: the layers nearest the input do not learn (saturating activations such as "
        "sigmoid or tanh, or a deep stack without normalisation, shrink the gradients layer by layer)",
        [
            Fix(
                "ReLU-family activations (relu, gelu) with kernel_initializer='he_normal', BatchNormalization "
                "between the layers, or residual connections: the gradients then reach the first layers; a larger "
                "learning rate would not reach them evenly"
            )
        ],
    )


def _whole_model_slow(q: Quotes, trace: Trace, lr: float) -> Dx | None:
    """Variables that never changed in a run whose whole model hardly moves (median ``|dw|/|w|`` at most the
    check's ``UPDATE_TOO_SLOW`` a step, at a learning rate above 0): they are the slowest part of updates too small
    everywhere (SGD at 1e-7), not a rate of zero or an optimizer that skips them.  None otherwise."""
    if trace.update_ratio is None or not _ok(lr, 1e-30):
        return None
    median = q.over("update_ratio_run", "update_ratio", "median", 0, trace.steps - 1)
    if not (math.isfinite(median) and median <= UPDATE_TOO_SLOW):
        return None
    q.const("lr_raise", 10.0)
    q.product("learning_rate_suggested", "learning_rate", "lr_raise")
    return Dx(
        "updates_too_small",
        LIKELY,
        "{variables} received gradients but never changed, and the whole model hardly moves (median |dw|/|w| "
        "{update_ratio_run} per step): the learning rate {learning_rate} is too low for this model",
        [
            Fix(
                "a larger learning rate: learning_rate={learning_rate_suggested} (now {learning_rate})",
                {"learning_rate_factor": 10.0},
            )
        ],
    )


def _stuck_behind_vanishing(
    q: Quotes, trace: Trace, findings: list[Finding], f: Finding, cfg: dict[str, Any]
) -> Dx | None:
    """A stuck or collapsed loss in a run whose ``no_update`` finding is the gradients' vanishing through the
    layers (:func:`_vanishing_with_depth`): that is why it learns nothing, the cause of both findings (a 12-layer
    sigmoid stack sits at ln 2 on labels it could learn, which read as labels with no signal).  None otherwise."""
    frozen = next(
        (list(g.evidence.get("variables") or []) for g in findings if g.check == f.check and g.kind == "no_update"),
        [],
    )
    if not frozen:
        return None
    q.text("variables", ", ".join(frozen[:5]))
    lr = _lr_now(q, trace, max(int(f.step), 1), cfg)
    dx = _vanishing_with_depth(q, trace, frozen, lr)
    if dx is None:
        return None
    dx.cause = "the loss sits at {level} from step {step} (initially {initial_loss}) because " + dx.cause
    return dx


def _outputs_without_loss(q: Quotes, trace: Trace, variables: list[str]) -> Dx | None:
    """Variables without a gradient that all feed only outputs ``compile`` gave no loss, or a loss weight of 0
    (``trace.info["outputs_without_loss"]``, read from the model's graph): that is why, for certain; None when
    any of them is not such a variable (or the model was not read)."""
    fact = (trace.info or {}).get("outputs_without_loss")
    if not isinstance(fact, Mapping) or not variables or not set(variables) <= set(fact.get("variables") or ()):
        return None
    outputs = [str(o) for o in fact.get("outputs") or []]
    zero = set(fact.get("zero_weight") or ())
    q.text("outputs", ", ".join(repr(o) for o in outputs))
    why = (
        "a loss weight of 0"
        if zero and zero >= set(outputs)
        else "no loss or a loss weight of 0"
        if zero
        else "no loss"
    )
    plural = len(outputs) > 1
    return Dx(
        "no_gradient",
        LIKELY,
        "{variables} feed only the output"
        + ("s" if plural else "")
        + " {outputs}, which "
        + ("have " if plural else "has ")
        + why
        + " in compile(): nothing trains them"
        + ("" if zero else " (Keras itself warns on TensorFlow that their gradients do not exist)"),
        [
            Fix(
                "give {outputs} "
                + ("a loss with a weight above 0" if zero else "a loss")
                + " in compile() if "
                + ("they are" if plural else "it is")
                + " meant to train; if not, set trainable=False on the layers that feed only "
                + ("them" if plural else "it")
                + " (fit trains nothing there either way)"
            )
        ],
    )


def _stuck(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    _, cfg = _optimizer(trace)
    ev = f.evidence
    step = q.step("step", f.step)
    if f.kind == "no_gradient":
        q.text("variables", ", ".join(ev.get("variables", [])[:5]))
        headless = _outputs_without_loss(q, trace, list(ev.get("variables", [])))
        if headless is not None:
            return headless
        return Dx(
            "no_gradient",
            LIKELY,
            "{variables} never received a gradient: not connected to the loss (a layer built but not used in "
            "call(), an output without a loss), or fed only by dead units (all-zero activations)",
            [
                Fix(
                    "check that the layer is used on the path to the loss (model.summary(), "
                    "keras.utils.plot_model); if its inputs are dead ReLUs, use LeakyReLU/GELU or he_normal "
                    "initialisation; if it is meant to be fixed, set layer.trainable = False"
                )
            ],
        )
    if f.kind == "no_update":
        q.text("variables", ", ".join(ev.get("variables", [])[:5]))
        lr = _lr_now(q, trace, max(int(f.step), 1), cfg)
        vanishing = _vanishing_with_depth(q, trace, list(ev.get("variables", [])), lr)
        if vanishing is not None:
            return vanishing
        everywhere = _whole_model_slow(q, trace, lr)
        if everywhere is not None:
            return everywhere
        return Dx(
            "no_update",
            LIKELY,
            "{variables} received gradients but never changed: a learning rate of zero (now {learning_rate}), a "
            "schedule at zero, or an optimizer/train_step that skips these variables",
            [Fix("check the learning rate and schedule, and that the optimizer is given all trainable variables")],
        )
    if ev.get("zero_loss"):
        q.count("steps_run", trace.steps)
        return Dx(
            "zero_loss",
            LIKELY,
            "the loss is exactly 0 at each of the {steps_run} steps, so no gradient reaches the weights: the loss "
            "does not depend on the model's outputs (every sample weight or class weight 0, targets all masked out, "
            "or a custom loss or train_step that returns a constant)",
            [
                Fix(
                    "check sample_weight / class_weight (not all 0), the targets and any mask applied to them, and "
                    "that a custom loss is computed from y_pred"
                )
            ],
        )
    n = trace.steps
    tail = int(ev.get("tail_steps") or max(10, min(int(q.settings["spike_window"]), n // 2)))
    level = q.over("level", "loss", "median", n - tail, n - 1)
    k0 = int(ev.get("initial_steps") or max(5, min(10, n)))  # the check's L0: up to an early blow-up's update
    q.over("initial_loss", "loss", "median", 0, k0 - 1)
    dead = bool(ev.get("dead_network"))  # dead but for its biases: exactly zero gradients but theirs
    if dead:
        q.text("live_variables", ", ".join(ev.get("live_variables") or []) or "none")
    # parts of the network died and the loss sits at the class prior (the check's rule for a start a blow-up inflated)
    prior_dead = bool(ev.get("died_at_prior"))
    if prior_dead:
        q.text("dead_variables", ", ".join(list(ev.get("dead_variables") or [])[:4]))
    zero = bool(ev.get("zero_grad")) or dead or prior_dead
    vanished = bool(ev.get("vanished"))
    flat = f.kind == "collapsed"
    if trace.grad_norm is not None:
        q.over("grad_norm_tail", "grad_norm", "median", n - tail, n - 1)
    reach = (trace.info or {}).get("output_wiring")
    if ev.get("targets_out_of_range") and isinstance(reach, Mapping):
        # the output cannot reach the targets: no learning rate, clip or initialisation fixes that
        q.text("output_layer", str(reach.get("layer", "")))
        q.text("output_activation", str(reach.get("activation", "")))
        for name, key in (
            ("targets_outside", "outside"),
            ("target_min", "target_min"),
            ("target_max", "target_max"),
            ("output_low", "low"),
            ("output_high", "high"),
        ):
            q.fact(name, f"output_wiring.{key}", float(reach.get(key, math.nan)), percent=key == "outside")
        return Dx(
            "targets_out_of_range",
            LIKELY,
            "the model's output comes from {output_layer} with activation {output_activation}, whose values stay "
            "within ({output_low}, {output_high}), but {targets_outside} of the targets (from {target_min} to "
            "{target_max}) lie outside it: the model cannot reach them, the activation saturates chasing them, "
            "and the loss stays at {level} (initially {initial_loss})",
            [
                Fix(
                    "give {output_layer} no activation (a linear output) for a regression, or scale the targets "
                    "into ({output_low}, {output_high}) (and back for predictions)"
                )
            ],
        )
    decay = _weight_decay_shrinks(q, trace, cfg, level)
    if decay is not None and (flat or zero or vanished):
        # before the blow-up's rule: a decay that takes 1 % of every weight a step ends any run at a constant,
        # and the rise of the loss as the weights shrink reads as a jump
        return decay
    slow = bool(ev.get("slow_updates")) and not (zero or vanished)
    if slow:
        # a clip or the schedule that holds the updates back is in the run's settings: before the blow-up's rule
        # (once the weights stop moving, a loss that sits 10 % above its early low is the batches' noise) and
        # before the labels' (which would raise the rate)
        q.over("update_ratio_tail", "update_ratio", "median", n - tail, n - 1)
        lr = _lr_now(q, trace, max(int(f.step), 1), cfg)
        held_back = _clip_binds(q, trace, cfg, n) or _schedule_decayed(q, trace, cfg, tail, n)
        if held_back is not None:  # the rate is not what is too low: a clip or the schedule holds it back
            return held_back
    stop = (
        "every weight but {live_variables} has had a zero gradient since"
        if dead
        else "{dead_variables} have had a zero gradient since"
        if prior_dead
        else "the gradients are exactly zero since"
        if zero
        else "the gradients vanished since"
        if vanished
        else "the loss has been flat since"
    )
    early = ev.get("early_update_step")
    if early is not None and (flat or zero or vanished) and _went_up_after(trace, int(early), q):
        # an update among the first steps moved the weights their own norm or more: the blow-up that killed the
        # network is there, however noisy the loss was between it and the stuck stretch
        u = q.step("update_step", int(early))
        q.at("loss_before_update", "loss", u)
        q.over("loss_peak_after", "loss", "max", u + 1, min(n - 1, u + int(q.settings["spike_window"])))
        head = (
            "after the update at step {update_step} the loss went from {loss_before_update} up to "
            "{loss_peak_after}, and " + stop + " step {step}: a collapse after a blow-up"
        )
        return _collapse_from(q, trace, u, head, step)
    up = blew_up(trace, step, level)
    if up["any"]:
        # the run went up, then stopped: a collapse after a blow-up, never "raise the learning rate"
        parts = []
        if up["jump"]:
            q.over("low_before", "loss", "median", up["low_end"] - 2, up["low_end"])
            q.ratio("above_low", "level", "low_before")
            parts.append("the loss had come down to {low_before} and then jumped to {level}, {above_low}x above it")
        if up["burst"]:
            q.over("grad_norm_early", "grad_norm", "median", 0, up["g_k"] - 1)
            q.over("grad_norm_burst", "grad_norm", "max", max(0, step - 10), step)
            q.ratio("burst", "grad_norm_burst", "grad_norm_early")
            parts.append("the gradient norm burst to {grad_norm_burst}, {burst}x its early {grad_norm_early}")
        head = "; ".join(parts) + f", and {stop} step {{step}}: a collapse after a blow-up"
        return _collapse_from(q, trace, int(up["low_end"]) if up["jump"] else max(step - 1, 0), head, step)
    if early is not None and zero and int(early) < int(f.step) <= int(early) + 2:
        # the gradients died at that update, whatever the loss did next (Adam at 50 on inputs of scale 100: the
        # loss, already saturated, fell 8 % and never moved again): the update killed the network, not the
        # activations or the initialisation alone
        u = q.step("update_step", int(early))
        q.at("update_moved", "update_ratio", u)
        head = "the update at step {update_step} moved the weights {update_moved} times their norm, and " + stop
        return _collapse_from(q, trace, u, head + " step {step}: a collapse at that update", step, by="it")
    replaced = _weights_replaced(q, trace)
    if replaced is not None and (flat or zero or vanished):
        return replaced
    if (flat or zero or vanished) and not dead:
        # the first layers never changed, their gradients vanished through the layers: the labels are not to blame
        depth = _stuck_behind_vanishing(q, trace, findings, f, cfg)
        if depth is not None:
            return depth
    burst = _early_burst(trace, step, int(q.settings["spike_window"])) if zero or vanished else None
    if burst is not None:
        # the gradients burst among the first steps and died after (the rules above found no jump of the loss, no
        # update that killed them, no replaced weights, no vanishing through the depth): the blow-up killed the
        # units, however the loss moved after it (momentum carries the weights, and the loss with them, long after
        # the gradients died); before the labels' rule, which a network thrown to the class prior would meet
        q.over("grad_norm_first", "grad_norm", "median", 0, burst - 1)
        q.at("grad_norm_burst", "grad_norm", burst)
        q.ratio("burst", "grad_norm_burst", "grad_norm_first")
        head = (
            "the gradient norm burst to {grad_norm_burst}, {burst}x its first steps' {grad_norm_first}, and "
            + stop
            + " step {step}: a collapse after a blow-up"
        )
        return _collapse_from(q, trace, burst, head, step)
    prior = _prior_loss(q, trace, level, cfg)
    # a network that died had learned something (or was thrown there by a blow-up): not the labels
    if prior is not None and (flat or zero or vanished) and not dead and not prior_dead:
        return prior
    if slow:
        q.const("lr_raise", 10.0)
        q.product("learning_rate_suggested", "learning_rate", "lr_raise")
        fixes = (
            [
                Fix(
                    "a larger learning rate: learning_rate={learning_rate_suggested} (now {learning_rate})",
                    {"learning_rate_factor": 10.0},
                )
            ]
            if _ok(lr, 1e-30)
            else [Fix("a larger learning rate")]
        )
        far = _inputs_far(q, trace)
        # the loss went up, if a little, beyond what the batches' noise moves a median: no larger rate (the
        # direction rule); within that noise, weights that hardly moved did not take it up
        above = _rose_beyond_noise(trace, level, q["initial_loss"], k0, tail)
        if far:
            # inputs far from unit scale saturate the units: almost no gradient passes, whatever the rate
            return Dx(
                "updates_too_small",
                LIKELY,
                "the weights hardly move: median |dw|/|w| {update_ratio_tail} per step while the loss stays at "
                "{level} (initially {initial_loss})" + far + ", where almost no gradient passes, whatever the "
                "learning rate",
                [_inputs_fix(q, trace)] + ([] if above else fixes),
            )
        if not above:
            return Dx(
                "updates_too_small",
                LIKELY,
                "the weights hardly move: median |dw|/|w| {update_ratio_tail} per step while the loss stays at "
                "{level} (initially {initial_loss}, "
                + ("never above it" if level <= q["initial_loss"] else "no higher beyond the batches' noise")
                + "): the learning rate {learning_rate} is too low for this model",
                fixes,
            )
    far = _inputs_far(q, trace)  # inputs far from unit scale saturate the units first: standardising them leads
    if flat:
        return Dx(
            "collapsed_output",
            LIKELY if zero or vanished else UNCERTAIN,
            "the loss sits at {level} from step {step} without ever having fallen much below its initial "
            "{initial_loss}: the model outputs a constant (a saturated sigmoid/softmax, dead units, or a loss "
            "that rewards a constant such as an empty segmentation mask)" + far,
            ([_inputs_fix(q, trace)] if far else [])
            + [
                Fix(
                    "pair the output and the loss (from_logits=True with a linear last layer), initialise the "
                    "last layer's bias near the label prior"
                    + ("" if far or _inputs_are_ids(trace) else ", and scale the inputs to about unit range")
                )
            ],
        )
    what = (
        "every weight but {live_variables} has a zero gradient"
        if dead
        else "{dead_variables} have a zero gradient"
        if prior_dead
        else "the gradients are exactly zero"
        if zero
        else "the gradients vanished"
        if vanished or not slow
        else "the weights hardly move (median |dw|/|w| {update_ratio_tail} per step)"
    )
    return Dx(
        "vanished_gradients",
        LIKELY,
        what + " from step {step} while the loss stays at {level} (initially {initial_loss}): dead ReLUs or "
        "saturated outputs, nothing learns" + (": the output no longer depends on the input" if dead else "") + far,
        ([_inputs_fix(q, trace)] if far else [])
        + [
            Fix(
                "LeakyReLU/GELU or kernel_initializer='he_normal' for ReLU layers"
                + ("" if far else ", normalised inputs")
                + ", from_logits=True instead of a saturated sigmoid/softmax"
            )
        ],
    )


#: a stuck run's loss is "above" its start when the medians differ by more than this many standard errors of their
#: difference (the batches' noise, from the spread of the per-step losses)
ROSE_SIGMAS = 3.0


def _rose_beyond_noise(trace: Trace, level: float, initial: float, k0: int, tail: int) -> bool:
    """Whether a stuck run's loss ``level`` (the median of its last ``tail`` steps) lies above its ``initial``
    level (the median of its first ``k0``) by more than the batches' noise: :data:`ROSE_SIGMAS` standard errors of
    the difference of the two medians (1.25 sigma / sqrt(n) each, sigma the per-step losses' spread, 1.4826 x
    their median absolute deviation from their medians).  A run at a learning rate too low, its loss still at
    its start, sits within that noise of it, above or below (batches of 16: 0.737 at the start, 0.742 at the
    end): no rise that a larger rate would make worse."""
    if not (math.isfinite(level) and math.isfinite(initial)) or level <= initial:
        return False
    n = trace.steps
    head = _finite(trace.loss[: max(k0, 1)])
    end = _finite(trace.loss[max(n - tail, 0) :])
    if head.size < 2 or end.size < 2:
        return True
    deviations = np.concatenate([np.abs(head - np.median(head)), np.abs(end - np.median(end))])
    sigma = 1.4826 * float(np.median(deviations))
    error = 1.25 * sigma * math.sqrt(1.0 / head.size + 1.0 / end.size)
    return level - initial > ROSE_SIGMAS * error


#: the mechanisms of a stuck or dead network whose root, with the inputs measured far from unit scale, is that scale
SCALE_ROOTED = ("collapse_constant", "vanished_gradients", "collapsed_output", "updates_too_small")


def _stuck_or_input_scale(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    """:func:`_stuck`; and where its mechanism is one of :data:`SCALE_ROOTED` with the array inputs measured at
    least :data:`FAR_FROM_UNIT` from unit scale (and the model not rescaling them), the inputs' scale is the
    cause: ``inputs_out_of_scale``, standardising them the first fix, the mechanism kept in the cause.

    Which mechanism a run shows depends on the backend's numerics, not on the run: on pixels of 0-255,
    TensorFlow's cross-entropy behind a softmax takes its logits, so the first updates blow the loss up and the
    ReLUs die after (a collapse); JAX's and PyTorch's clip the probabilities, and a softmax saturated by the
    first forward pass passes no gradient from step 0 (dead from the start).  A lower learning rate fixes
    neither: the second kind never took an update."""
    dx = _stuck(f, trace, q, findings)
    if dx.key not in SCALE_ROOTED or not _ok(_input_rms(trace), FAR_FROM_UNIT):
        return dx
    far = _inputs_far(q, trace)
    mechanism = dx.cause.replace(far, "")
    few = _few_samples(q, trace.info or {}, "input")
    if few is not None:  # a few samples far out: checking them comes first, standardising would keep them so
        return Dx(
            "inputs_out_of_scale",
            LIKELY,
            "the inputs' root mean square is {input_rms}" + few[0] + ", and the training stopped on them: " + mechanism,
            [few[1]] + [x for x in dx.fixes if x.template not in (STANDARDISE_INPUTS.template, few[1].template)],
            dx.extra,
        )
    return Dx(
        "inputs_out_of_scale",
        LIKELY,
        "the inputs' root mean square is {input_rms}, far from unit scale, and the training stopped on them: "
        + mechanism,
        [STANDARDISE_INPUTS] + [x for x in dx.fixes if x is not STANDARDISE_INPUTS],
        dx.extra,
    )


def _clip_binds(q: Quotes, trace: Trace, cfg: dict[str, Any], n: int) -> Dx | None:
    """Updates too small because the optimizer's gradient clip is far below the gradients: the run's gradient
    norm (recorded before the clip) is at least :data:`CLIP_BINDS` x the most the clipped gradient can be:
    ``global_clipnorm``, or ``clipnorm`` (per variable) x the number of variables.  The learning rate is not
    what is too low; a clip of the order of the run's own gradient norms is the fix (replayable)."""
    if trace.grad_norm is None or "grad_norm_tail" not in q:
        return None
    global_clip, clip = _number(cfg.get("global_clipnorm")), _number(cfg.get("clipnorm"))
    if math.isfinite(global_clip) and global_clip > 0:
        q.setting("clip_setting", "global_clipnorm", global_clip)
        q.text("clip_name", "global_clipnorm")
        bound = q.const("clip_bound_factor", 1)
        what = "the whole gradient's norm to {clip_setting}"
    elif math.isfinite(clip) and clip > 0 and trace.var_names:
        q.setting("clip_setting", "clipnorm", clip)
        q.text("clip_name", "clipnorm")
        bound = q.count("clip_bound_factor", len(trace.var_names))
        what = "each of the {clip_bound_factor} variables' gradients to a norm of {clip_setting}"
    else:
        return None
    limit = q.product("clip_bound", "clip_setting", "clip_bound_factor")
    if not (math.isfinite(limit) and bound > 0 and q["grad_norm_tail"] >= CLIP_BINDS * limit):
        return None
    q.ratio("clip_shrink", "grad_norm_tail", "clip_bound")
    fixes = _clip_or_note(q, trace, n, "over the whole run")
    return Dx(
        "clip_too_small",
        LIKELY,
        "{clip_name}={clip_setting} clips " + what + ", while the gradient norm is {grad_norm_tail}, at least "
        "{clip_shrink}x the clipped gradient's (at most {clip_bound}): every update is that much smaller than the "
        "learning rate {learning_rate} makes it, so the weights hardly move (median |dw|/|w| {update_ratio_tail} "
        "per step) and the loss stays at {level}",
        [fx for fx in fixes if not fx.note] or [Fix("a clip of the order of the run's gradient norms, or none")],
    )


def _schedule_decayed(q: Quotes, trace: Trace, cfg: dict[str, Any], tail: int, n: int) -> Dx | None:
    """Updates too small because the learning rate fell at least :data:`LR_DECAYED` x from its peak before the
    run's last stretch: what lowered it, not the rate the run began with, is too low.  That is the optimizer's
    schedule, or, where its rate is a constant (``get_config`` gives a number, a schedule a dict), whatever
    assigned the rate during the run: Keras' ``ReduceLROnPlateau`` or ``LearningRateScheduler`` among the user's
    callbacks (``trace.info["lr_callbacks"]``), else a callback of another class or the ``train_step``; each has
    its own fix (a ``decay_steps`` is no fix for a plateau callback)."""
    if trace.lr is None:
        return None
    peak = q.over("lr_peak", "lr", "max", 0, n - 1)
    now = q.over("lr_tail", "lr", "median", n - tail, n - 1)
    if not (math.isfinite(peak) and math.isfinite(now) and peak > 0 and now * LR_DECAYED <= peak):
        return None
    q.count("steps_run", n)
    fell = "to zero"
    if now > 0:
        q.ratio("lr_fell", "lr_peak", "lr_tail")
        fell = "to {lr_tail}, {lr_fell}x lower"
    held = (
        "the weights hardly move (median |dw|/|w| {update_ratio_tail} per step) and the loss stays at {level} "
        "(initially {initial_loss})"
    )
    compare = "the constant learning rate {lr_peak} to compare"
    rate = cfg.get("learning_rate")
    setters = [c for c in (trace.info or {}).get("lr_callbacks") or [] if isinstance(c, dict)]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):  # a schedule (or a rate not known)
        return Dx(
            "schedule_decayed",
            LIKELY,
            "the learning-rate schedule fell from {lr_peak} " + fell + ": " + held + ": the schedule decays too "
            "fast for a run of {steps_run} steps",
            [Fix("a schedule that decays over the run's {steps_run} steps (decay_steps of that order), or " + compare)],
        )
    if len(setters) == 1 and setters[0].get("kind") == "ReduceLROnPlateau":
        q.text("rate_callback", str(setters[0].get("callback")))
        said = []
        for key in ("factor", "patience", "min_lr"):
            quote = f"plateau_{key}"
            if isinstance(setters[0].get(key), (int, float)):
                q.fact(quote, f"lr_callbacks.0.{key}", setters[0][key])
                said.append(f"{key}={{{quote}}}")
        q.const("min_lr_share", MIN_LR_SHARE)
        q.product("min_lr_suggested", "lr_peak", "min_lr_share")
        patience = " a patience larger than {plateau_patience}," if "plateau_patience" in q else ""
        return Dx(
            "schedule_decayed",
            LIKELY,
            "{rate_callback} lowered the learning rate from {lr_peak} "
            + fell
            + (" (" + ", ".join(said) + ")" if said else "")
            + ": "
            + held
            + ": it lowers the rate too far for a run of {steps_run} steps",
            [
                Fix(
                    "a floor under {rate_callback}'s reductions, min_lr={min_lr_suggested} ({min_lr_share}x the "
                    "highest rate)," + patience + " or no reduction: " + compare
                )
            ],
        )
    if len(setters) == 1 and setters[0].get("kind") == "LearningRateScheduler":
        q.text("rate_callback", str(setters[0].get("callback")))
        return Dx(
            "schedule_decayed",
            LIKELY,
            "the {rate_callback} callback lowered the learning rate from {lr_peak} " + fell + ": " + held + ": its "
            "schedule decays too fast for a run of {steps_run} steps",
            [
                Fix(
                    "a schedule function for {rate_callback} that decays over the run's {steps_run} steps (it is "
                    "called once an epoch, with the epoch's number), or " + compare
                )
            ],
        )
    if setters:
        q.text("rate_callbacks", " and ".join(sorted({str(c.get("callback")) for c in setters})))
        by = "the callbacks {rate_callbacks} lowered the learning rate"
    else:
        by = (
            "the learning rate was lowered during the run, by a callback or the train_step (the optimizer's own "
            "rate is a constant, not a schedule),"
        )
    return Dx(
        "schedule_decayed",
        LIKELY,
        by + " from {lr_peak} " + fell + ": " + held + ": it was lowered too far for a run of {steps_run} steps",
        [Fix("lower the rate less, or over more steps than the run's {steps_run}, or " + compare)],
    )


def _weight_decay_shrinks(q: Quotes, trace: Trace, cfg: dict[str, Any], level: float) -> Dx | None:
    """A stuck run whose optimizer's weight decay shrinks every weight by at least :data:`WD_SHRINK` of itself a
    step (Keras decouples it: ``w -= learning_rate * weight_decay * w`` each step, whatever the gradients): the
    weights decay towards zero and the model outputs a constant, the loss at the class prior's or a constant's.
    Neither the labels nor too low a learning rate (which would shrink them faster still)."""
    wd = _number(cfg.get("weight_decay"))
    if not (math.isfinite(wd) and wd > 0):
        return None
    lr = _lr_now(q, trace, max(trace.steps - 1, 0), cfg)
    if not (math.isfinite(lr) and lr > 0 and lr * wd >= WD_SHRINK):
        return None
    q.setting("weight_decay", "weight_decay", wd)
    q.product("decay_per_step", "learning_rate", "weight_decay")
    q.const("decay_target", WD_TARGET)
    q.ratio("weight_decay_exact", "decay_target", "learning_rate")
    q.derived("weight_decay_suggested", "round2", "weight_decay_exact")
    q.text("optimizer_name", _optimizer(trace)[0] or "the optimizer")
    return Dx(
        "weight_decay_too_strong",
        LIKELY,
        "{optimizer_name}'s weight_decay={weight_decay} at learning rate {learning_rate} shrinks every weight by "
        "{decay_per_step} of itself each step (learning_rate x weight_decay, whatever the gradients), faster than "
        "the gradients move them: the weights decay towards zero and the model outputs a constant, the loss at "
        "{level}",
        [
            Fix(
                "weight_decay={weight_decay_suggested} (now {weight_decay}): it shrinks each weight by "
                "{decay_target} of itself a step at this learning rate",
                {"weight_decay": q["weight_decay_suggested"]},
            )
        ],
    )


def _weights_replaced(q: Quotes, trace: Trace) -> Dx | None:
    """A stuck Ftrl run one of whose first updates changed the weights by about their own norm: that update
    replaced them.  Ftrl does so by design (it solves for the weights from zero at each step, as suits a wide linear
    model), and a deep network's units then start alike and stay so; the flat loss (at the class prior's, say)
    is not the labels' doing.  Random labels move the weights a little each step, never by their norm."""
    if trace.update_ratio is None or trace.steps < 2 or (trace.info or {}).get("optimizer") != "Ftrl":
        return None  # (a larger first update under another optimizer is a blow-up: the rules after this one)
    u = trace.update_ratio[: min(early_end(trace), trace.steps)]
    finite = np.where(np.isfinite(u), u, -np.inf)
    k = int(np.argmax(finite))
    if not finite[k] >= WEIGHTS_REPLACED:
        return None
    q.step("replaced_step", k)
    q.at("update_replaced", "update_ratio", k)
    return Dx(
        "weights_replaced",
        LIKELY,
        "the update at step {replaced_step} changed the weights {update_replaced} times their norm, so it replaced "
        "them rather than moved them, and the loss has sat at {level} since: the model outputs a constant; Ftrl "
        "solves for the weights from zero at every step (it suits wide linear models), so the units of a deep "
        "network start alike and stay alike",
        [Fix("an optimizer that starts from the initialised weights, such as Adam or SGD")],
    )


def _prior_loss(q: Quotes, trace: Trace, level: float, cfg: dict[str, Any]) -> Dx | None:
    """A stuck loss at ``ln K``: the cross-entropy of predicting the prior of K balanced classes (random labels,
    labels unrelated to the inputs) -- and it never fell below that level.  The trace cannot tell those labels
    from a model that learns too slowly to leave the prior in this many steps (an embedding averaged over many
    tokens at Adam's default rate: the weights move about as much a step as on random labels), so that is said
    too, with a larger learning rate as the second fix: the run never went up (the collapse after a blow-up is
    told apart before this rule), so a larger rate is not against its evidence."""
    if not (math.isfinite(level) and math.log(2) * (1 - PRIOR_LOSS_RTOL) <= level <= math.log(MAX_CLASSES) * 1.01):
        return None
    q.derived("prior_exp", "exp", "level")
    k = q.derived("classes", "nearest_int", "prior_exp")
    if not 2 <= k <= MAX_CLASSES:
        return None
    q.derived("ln_classes", "log", "classes")
    q.ratio("level_over_prior", "level", "ln_classes")
    if abs(q["level_over_prior"] - 1) > PRIOR_LOSS_RTOL:
        return None
    # it never learned: its lowest 5-step median stayed within a few % of the prior's loss
    low = q.over("lowest_median", "loss", "min_median5", 0, trace.steps - 1)
    q.ratio("lowest_over_level", "lowest_median", "level")
    if not (math.isfinite(low) and low >= 0.97 * level):
        return None
    q.text("smoke_code", "y = (x.reshape(len(x), -1).mean(axis=1) > 0).astype('int32')")
    q.count("steps_run", trace.steps)
    lr = _lr_now(q, trace, trace.steps - 1, cfg)
    slower = Fix("if the labels do carry signal: more steps, or a larger learning rate")
    if _ok(lr, 1e-30):
        q.const("lr_raise", 10.0)
        q.product("learning_rate_suggested", "learning_rate", "lr_raise")
        slower = Fix(
            "if the labels do carry signal: more steps, or a larger learning rate, learning_rate="
            "{learning_rate_suggested} (now {learning_rate})"
        )
    return Dx(
        "labels_no_signal",
        LIKELY,
        "the loss sits at {level}, the cross-entropy of predicting the class prior of {classes} balanced "
        "classes (ln {classes} = {ln_classes}), and never fell clearly below it ({lowest_median}): the model "
        "learned nothing from the inputs; the labels carry no signal it can learn (random labels, labels "
        "shuffled apart from their inputs), the inputs never reach the output, or it learns too slowly to leave "
        "the prior in {steps_run} steps",
        [
            Fix(
                "train the smoke test on labels that are a function of the inputs, e.g. {smoke_code}, or on one "
                "small batch the model must fit (its loss should fall far below the prior's); check that x and "
                "y are shuffled together"
            ),
            slower,
        ],
    )


#: the BatchNorm momentum suggested for moving statistics that lag behind (PyTorch's default; Keras' is 0.99), and
#: the batch size below which batch statistics are called noisy
BN_MOMENTUM_SUGGESTED, BN_BATCH_SUGGESTED = 0.9, 32


def _batchnorm_fixes(q: Quotes, trace: Trace, step: int) -> list[Fix]:
    """The fixes for moving statistics that do not match the batch statistics, each only where it changes the run:
    a lower BatchNorm momentum where it is above :data:`BN_MOMENTUM_SUGGESTED`, a larger batch where the run's is
    known to be below :data:`BN_BATCH_SUGGESTED`, and a lower learning rate, last, or first where neither applies
    (a ResNet at batch 32 with momentum 0.9 whose gap came from SGD at 0.05 moving the weights 0.7 % a step: its
    validation pits went at a tenth of the rate, and stayed at momentum 0.5).  The suggestion was once
    "momentum=0.9 (now 0.9) ... a larger batch size (>= 32)" for a run at 32."""
    info = trace.info or {}
    fixes: list[Fix] = []
    moms = [float(m) for m in info.get("batchnorm_momentum") or [] if isinstance(m, (int, float))]
    q.const("momentum_suggested", BN_MOMENTUM_SUGGESTED)
    if not moms or max(moms) > BN_MOMENTUM_SUGGESTED:
        now = ""
        if moms:
            k = int(np.argmax(moms))
            q.fact("batchnorm_momentum", f"batchnorm_momentum.{k}", moms[k])
            now = " (now {batchnorm_momentum})"
        keep_up = " so the moving statistics keep up"
        fixes.append(Fix("BatchNormalization(momentum={momentum_suggested})" + now + keep_up))
    batch = info.get("batch_size")
    q.const("batch_suggested", BN_BATCH_SUGGESTED)
    if not isinstance(batch, int) or batch < BN_BATCH_SUGGESTED:
        now = ""
        if isinstance(batch, int):
            q.fact("batch_size", "batch_size", batch)
            now = ", now {batch_size}"
        fixes.append(Fix("a larger batch size (>= {batch_suggested}" + now + ") so batch statistics are less noisy"))
    moving = ""
    if trace.update_ratio is not None and np.isfinite(trace.update_ratio[: max(step, 1)]).any():
        q.over("bn_update_ratio", "update_ratio", "median", 0, max(step - 1, 0))
        moving = " (they move {bn_update_ratio} of themselves a step)"
    fixes.append(
        Fix(
            "a lower learning rate, a tenth of this one: the faster the weights change" + moving + ", the further "
            "the moving statistics lag behind the batch statistics"
        )
    )
    return fixes


def _val_loss(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    info = trace.info or {}
    n_bn = int(info.get("batchnorm_layers") or 0)
    step = q.step("step", f.step)
    best_step = q.step("best_step", int(f.evidence.get("best_step", 0) or 0))
    q.val_at("val_at", step, True)
    q.val_at("val_best", best_step, True)
    rise = "the smoothed validation loss rose to {val_at} from its best {val_best}"
    training = [
        g
        for g in findings
        if g.check in ("loss_spike", "grad_norm", "nonfinite")
        or (g.check == "stuck" and g.kind in ("collapsed", "stuck"))
    ]
    # a collapse found stuck after the blow-up that caused it counts from the blow-up (fix_from)
    before = [g for g in training if min(int(g.step), int(g.evidence.get("fix_from", g.step))) <= int(f.step)]
    if before:
        first = min(before, key=lambda g: min(int(g.step), int(g.evidence.get("fix_from", g.step))))
        q.step("training_step", min(int(first.step), int(first.evidence.get("fix_from", first.step))))
        q.text("training_check", first.check)
        return Dx(
            "training_loss_rise",
            LIKELY,
            rise + ", after the training itself went wrong at step {training_step} (see [{training_check}]): "
            "a consequence of that instability, not overfitting",
            [Fix("fix the training instability first (see the other findings); then re-check validation")],
        )
    w = max(5, _window(trace) // 2)
    at_best = q.over("train_at_best", "loss", "median", best_step - w, best_step)
    at_rise = q.over("train_at_rise", "loss", "median", step - w, step)
    train_rise = q.ratio("train_loss_rise", "train_at_rise", "train_at_best")
    gap = info.get("bn_train_infer_gap")
    # A measured BatchNorm train/inference gap outranks a training-loss rise that no training check flagged:
    # the training-mode loss of a model with that gap follows noisy batch statistics, so its rise is a symptom
    # of the same mismatch (a training instability large enough to matter is a finding, handled above).
    measured_bn = bool(n_bn) and isinstance(gap, (int, float)) and math.isfinite(gap) and gap >= BN_GAP
    if _ok(train_rise, TRAIN_RISE) and not measured_bn:
        return Dx(
            "training_loss_rise",
            LIKELY,
            rise + ", but the training loss rose too, {train_loss_rise}x ({train_at_best} -> {train_at_rise}): "
            "training itself went wrong; this is not overfitting",
            [
                Fix(
                    "fix the training instability first (a lower learning rate or a decaying schedule); then "
                    "re-check validation"
                )
            ],
        )
    del at_best, at_rise
    v = trace.val_loss if trace.val_loss is not None else np.zeros(0)
    v = v[np.isfinite(v)]
    reversals = 0
    if v.size >= 3:
        with np.errstate(all="ignore"):
            rel = np.diff(v) / np.maximum(np.abs(v[:-1]), 1e-12)
        big = np.sign(rel[np.abs(rel) >= 0.2])
        reversals = int(np.count_nonzero(np.diff(big) != 0)) if big.size > 1 else 0
    if n_bn:
        q.fact("batchnorm_layers", "batchnorm_layers", n_bn)
        fix = _batchnorm_fixes(q, trace, step)
        if isinstance(gap, (int, float)) and math.isfinite(gap):
            q.fact("bn_train_infer_gap", "bn_train_infer_gap", float(gap), percent=True)
            q.const("bn_gap_limit", BN_GAP)
            also = (
                " (the training-mode loss rose {train_loss_rise}x meanwhile, {train_at_best} -> {train_at_rise}: "
                "it follows the same noisy batch statistics)"
                if _ok(train_rise, TRAIN_RISE)
                else ""
            )
            return Dx(
                "batchnorm_mismatch",
                LIKELY if gap >= BN_GAP else UNCERTAIN,
                rise + "; the same batch's loss differs by {bn_train_infer_gap} between training "
                "and inference mode across {batchnorm_layers} BatchNorm layer(s): the moving statistics do not "
                "match the batch statistics" + also,
                fix,
            )
        q.count("val_reversals", reversals)
        return Dx(
            "batchnorm_mismatch",
            LIKELY if reversals >= 2 else UNCERTAIN,
            rise + ", with {val_reversals} up/down swings of at least a fifth in the raw validation curve, in "
            "a model with {batchnorm_layers} BatchNorm layer(s): pits and peaks like these come from moving "
            "statistics that do not match the batch statistics (not measured: no train/inference gap in the "
            "trace)",
            fix,
        )
    n = trace.steps
    qn = max(n // 4, 1)
    q.over("train_first_quarter", "loss", "median", 0, qn - 1)
    q.over("train_last_quarter", "loss", "median", n - qn, n - 1)
    trend = q.ratio("train_loss_trend", "train_last_quarter", "train_first_quarter")
    return Dx(
        "overfitting",
        LIKELY if _ok(1 - trend, 0.5) else UNCERTAIN,
        rise + " while the training loss went from {train_first_quarter} to {train_last_quarter} "
        "({train_loss_trend}x): overfitting, or a learning rate too high for late training",
        [Fix("regularisation (dropout, weight decay), more data, a decaying learning rate, or early stopping")],
    )


def _unknown(f: Finding, trace: Trace, q: Quotes, findings: list[Finding]) -> Dx:
    del trace, findings
    q.text("check", f.check)
    return Dx("unknown", UNCERTAIN, "no diagnosis rule for check {check}", [])


_RULES: dict[str, Rule] = {
    "nonfinite": _nonfinite,
    "loss_spike": _loss_spike,
    "grad_norm": _grad_norm,
    "val_loss": _val_loss,
    "stuck": _stuck_or_input_scale,
}


# -- one primary cause per run -------------------------------------------------

#: within one event, which check's finding leads (lower first): the data, then divergence to NaN, then the
#: loss, the gradient, a stuck run, variables that never learn, and validation last.
_CHECK_ORDER = {"nonfinite": 0, "loss_spike": 1, "grad_norm": 2, "stuck": 3, "val_loss": 5}
#: findings about the model's structure, not an event of training: they lead only when nothing else happened.
_STRUCTURAL = ("no_gradient", "no_update")


def rank_findings(
    findings: Sequence[Finding | CheckResult], trace: Trace, thresholds: DiagnosisSettings | None = None
) -> list[Finding]:
    """Order a run's findings so the first one is its primary cause: the earliest root event.

    Args:
        findings: :class:`Finding` objects, or :class:`~pytest_stability.checks.CheckResult` objects
            (their findings are used); diagnosed or not (undiagnosed ones are diagnosed here).
        trace: the trace they were found in.

    Returns:
        The diagnosed findings, primary first, each with ``evidence["rank"]`` (0 = primary),
        ``evidence["primary"]``, and, on findings that are consequences of an earlier root event,
        ``evidence["consequence_of"]`` (``"loss_spike@148"``).  The primary also carries
        ``evidence["alternative_causes"]``: the other cause keys named for the same event (empty when the
        findings agree); its ``confidence`` says whether the cause is certain.

    The rules:

    * training events (``nonfinite``, ``loss_spike``, ``grad_norm``, a ``stuck`` run) are roots, ordered
      by step; findings within :data:`EVENT_GAP` steps of the earliest are the same event, and the one
      whose cause is ``likely`` leads it (then the earliest, then the check earlier in ``nonfinite,
      loss_spike, grad_norm, stuck``);
    * a ``val_loss`` finding measured at or after a training event is its consequence (a blow-up
      outranks the validation rise it causes), and so is one before it whose training loss rose with it (a
      divergence over many steps, which the training checks find late); any other is a root;
    * variables that never learn (``no_gradient``, ``no_update``) lead only when nothing else was found.

    Example:
        >>> primary = rank_findings(run_checks(trace), trace)[0]
        >>> primary.check, primary.evidence["cause_key"], primary.confidence
        ('loss_spike', 'adam_second_moment', 'likely')
    """
    flat: list[Finding] = []
    for item in findings:
        if isinstance(item, Finding):
            flat.append(item)
        elif hasattr(item, "findings"):
            flat.extend(item.findings)
        else:
            raise TypeError(f"rank_findings() expects Finding or CheckResult objects, received {type(item).__name__}")
    if not flat:
        return []
    # every finding diagnosed with the whole run as its context (a validation rise after a blow-up is its
    # consequence; no fix raises the learning rate of a run that blew up), under the settings it was
    # diagnosed with
    flat = [_with_context(f, trace, flat, thresholds) for f in flat]

    def order(f: Finding) -> tuple[int, int]:
        return (0 if f.confidence == LIKELY else 1, _CHECK_ORDER.get(f.check, 4))

    events = any(f.check in ("nonfinite", "loss_spike", "grad_norm") for f in flat)

    def only_dead(f: Finding) -> bool:
        """A run found stuck only as a network dead but for its biases, where another check found a spike, an
        explosion or a NaN: that event's consequence, which the event, naming its cause, leads."""
        ev = f.evidence
        others = ("flat", "vanished", "slow_updates", "died")
        return bool(f.check == "stuck" and ev.get("dead_network") and events and not any(ev.get(k) for k in others))

    def when(f: Finding) -> int:
        # a collapse found stuck long after the blow-up that caused it happened at the blow-up (fix_from)
        if only_dead(f):
            return int(f.step)
        return min(int(f.step), int(f.evidence.get("fix_from", f.step)))

    training = sorted(
        (f for f in flat if f.check != "val_loss" and f.kind not in _STRUCTURAL), key=lambda f: (when(f), order(f))
    )
    first = when(training[0]) if training else math.inf
    val = [f for f in flat if f.check == "val_loss"]

    def follows_training(f: Finding) -> bool:
        """A validation rise after a training event, or one whose own diagnosis found the training loss rising
        with it, where a training check found the event (after it: a divergence over many steps is found late)."""
        return bool(training) and (f.step >= first or f.evidence.get("cause_key") == "training_loss_rise")

    roots = sorted(training + [f for f in val if not follows_training(f)], key=lambda f: (when(f), order(f)))
    structural = [f for f in flat if f.kind in _STRUCTURAL]
    if not roots:
        roots, structural = structural, []
    event = [f for f in roots if when(f) <= when(roots[0]) + EVENT_GAP or _ends_the_blow_up(f, trace, when(roots[0]))]
    primary = min(event, key=lambda f: (only_dead(f), order(f)[0], when(f), order(f)[1]))
    rest = [f for f in roots if f is not primary] + structural + [f for f in val if f not in roots]
    alternatives = sorted(
        {f.evidence["cause_key"] for f in event if f is not primary} - {primary.evidence["cause_key"]}
    )
    out = []
    for rank, f in enumerate([primary] + rest):
        ev = {**dict(f.evidence), "rank": rank, "primary": rank == 0}
        if rank == 0:
            ev["alternative_causes"] = alternatives
        elif f.check == "val_loss" and follows_training(f):
            root = training[0] if training[0] in event else min(training, key=lambda x: x.step)
            ev["consequence_of"] = (
                f"{primary.check}@{primary.step}" if primary in training else f"{root.check}@{root.step}"
            )
        elif f in event:
            ev["consequence_of"] = f"{primary.check}@{primary.step}"
        out.append(dataclasses.replace(f, evidence=ev))
    return out


def _ends_the_blow_up(f: Finding, trace: Trace, start: int) -> bool:
    """Whether ``f`` is a NaN/Inf produced by training that ends the blow-up which began at ``start``: the run was
    never healthy again between them (no :data:`HEALTHY_MIN_STEPS` steps in a row with the loss and gradient
    norm finite and within :data:`HEALTHY_GROWTH` x their medians before ``start``).  Such a NaN is that event's
    consequence, however many steps later it came (SGD at a rate of 50: an explosion at step 1, NaN weights at
    step 18, the gradient norm back to its initial level on a few steps between)."""
    if f.check != "nonfinite" or f.kind in ("input", "validation") or f.evidence.get("input_nonfinite"):
        return False
    view, _ = finding_view(f, trace)
    end = min(int(f.step), view.steps)
    if end <= start:
        return False
    healthy = ~_unhealthy(view, end, max(int(start), 1))[start:]
    run = longest = 0
    for h in healthy:
        run = run + 1 if h else 0
        longest = max(longest, run)
    return longest < HEALTHY_MIN_STEPS


def _with_context(
    f: Finding, trace: Trace, context: list[Finding], thresholds: DiagnosisSettings | None = None
) -> Finding:
    """``f`` diagnosed on its view of the trace, with the run's findings as context, under ``thresholds`` (else
    the settings it was diagnosed with before, else the defaults)."""
    if thresholds is None:
        settings = dict(f.evidence.get("settings") or {})
        thresholds = _Settings(settings.get("spike_window"), settings.get("val_smoothing"))
    view, named = finding_view(f, trace)
    return with_optimizer_named(diagnose([f], view, thresholds, context=context)[0], named)


def finding_view(f: Finding, trace: Trace) -> tuple[Trace, str | None]:
    """The trace a finding was found in, and the optimizer it is about: one loss curve's (a GAN's ``d_loss``)
    or one optimizer's (``evidence["curve"]`` / ``evidence["optimizer"]``, see
    :func:`~pytest_stability.checks.curve_view`), else the run's (and no name)."""
    from .checks import curve_view, optimizer_view

    view = trace
    if "curve" in f.evidence and f.evidence["curve"] in trace.loss_curves:
        view = curve_view(trace, f.evidence["curve"])
    elif "optimizer" in f.evidence and f.evidence["optimizer"] in trace.optimizers:
        view = optimizer_view(trace, f.evidence["optimizer"])
    named = view.info.get("optimizer_name") if view is not trace else None
    return view, named


def with_optimizer_named(f: Finding, named: str | None) -> Finding:
    """``f`` with its fix saying which optimizer it is for (``on d_optimizer: ...``), when the run has several."""
    if not named or not f.fix or f.fix.startswith(f"on {named}: "):
        return f
    fixes = [
        dict(x, text=f"on {named}: {x['text']}") if x.get("text") and not x.get("note") else x
        for x in f.evidence.get("fixes") or ()
    ]
    evidence = {**dict(f.evidence), "fixes": fixes} if "fixes" in f.evidence else f.evidence
    return dataclasses.replace(f, fix=f"on {named}: {f.fix}", evidence=evidence)


@dataclass(frozen=True)
class _Settings:
    spike_window: int | None
    val_smoothing: float | None


def primary_finding(findings: Sequence[Finding | CheckResult], trace: Trace) -> Finding | None:
    """The run's primary finding (the headline), or None when there is none; see :func:`rank_findings`."""
    ranked = rank_findings(findings, trace)
    return ranked[0] if ranked else None
