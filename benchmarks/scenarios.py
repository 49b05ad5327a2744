"""Seeded, CPU-sized training scenarios: each reproduces one pathology, or is a healthy control.

A builder ``(seed) -> Scenario`` makes the data from ``seed`` (numpy) and a
zero-argument model factory, called *after* ``engine.seed_everything(seed)``
so the weights are seeded too.  :func:`run_scenario` trains one scenario with
the real engine and returns its trace, check results and diagnosed findings.

Pathologies (``expected_check`` fails with ``expected_cause``):

* ``adam_collapse``: Adam (Keras defaults, lr 1e-2), full-batch regression
  trained to a ~1e-14 loss; v shrinks with the gradients and the loss shoots
  back up, often to stay there.  Controls: ``epsilon=1e-2``; ``amsgrad=True``
  with lr 1e-3 (amsgrad alone at lr 1e-2 still spiked in 9 of 12 seeds in
  the detection run committed in e8ea4a3).
* ``adam_periodic``: the same with a narrow leaky-ReLU net at lr 3e-2: once the loss has
  flattened, spike after spike at roughly regular intervals.  Named the
  learning rate (too high for the minimum it settled in), not Adam's second
  moment: v does not collapse there (see :func:`adam_periodic`).  Control:
  ``amsgrad=True`` with lr 3e-3 (amsgrad alone at lr 3e-2: 9/12 seeds
  spiked in the same run; ``epsilon=1e-2`` alone spiked too, in an ad-hoc
  run not in the repo).
* ``lr_too_high``: SGD with a learning rate the model cannot take -> NaN.
* ``log_zero``: a hand-written cross-entropy ``log(p)`` hits ``log(0)`` once
  predictions saturate -> NaN from a finite, falling loss.
* ``nan_in_data``: a ``tf.data.Dataset`` with a NaN in one sample.
* ``rnn_explosion``: a SimpleRNN on 50-step sequences whose learning-rate
  warm-up reaches 0.3: backprop through time explodes (then NaN).  Fix: a
  lower peak with ``clipnorm``.
* ``seg_dice_collapse``: SGD + Nesterov momentum 0.99 on a small segmentation
  net with a soft Dice loss, a 300-step warm-up to lr 30, 600 steps: the loss
  falls, then jumps; ReLUs die and the sigmoid saturates, and the gradients
  are exactly zero from then on (the loss still varies from batch to batch,
  so it is the vanished gradients that say training stopped).  ``clipnorm``
  alone does not save it (measured); the control uses a peak of 0.03 with
  clipnorm.
* ``bn_small_batch``: BatchNorm (momentum 0.99) trained with batches of 2 at
  lr 3e-2: the validation curve (inference mode, moving statistics) has pits
  and peaks.  Fix: batches of 64, momentum 0.9, lr 3e-3.

* ``adam_early_blowup``: an MLP classifier with ``Adam(learning_rate=3.0)``:
  the loss jumps ~1000x at step 1 (the learning rate, not Adam's second moment).
* ``unet_jaccard_collapse``: a small U-Net, soft-Jaccard loss, SGD Nesterov at
  lr 2, batch 4: the loss dips, jumps above its start and stays there with zero
  gradients (a collapse after a blow-up; a larger rate is the wrong way).
* ``sgd_huge_lr``: SGD at learning rate 50: NaN by step 2.
* ``float16_adam_epsilon``: float16 variables with Adam's default epsilon:
  the first update blows up (epsilon, not the data).
* ``random_labels``: a convnet on random 10-class labels: the loss sits at ln 10.
* ``adam_fullbatch_late``: the full-batch Adam regression (width 64) without
  slot statistics: a late jump after the loss fell smoothly.
* ``deep_sigmoid_stack``: twelve sigmoid layers under SGD: the gradients vanish
  through the depth, the first layers never change, the loss sits at ln 2
  (healthy twin: ReLU with He initialisation).
* ``pixels_unscaled``: a convnet on pixels of 0-255: the network dies (a
  collapse after the first updates blew the loss up, or a softmax saturated
  from step 0, by the backend's numerics), the loss sits at the class prior
  (or the clipped softmax's level); the cause is the inputs' scale (healthy
  twin: the pixels divided by 255).

Healthy controls: the same models with the fix applied, ordinary noisy
small-batch training, a noisy batch-10 classifier with noisy validation, and a
full-batch BatchNorm U-Net (large train/inference gap, smooth validation).

Every scenario runs on every Keras backend (the full-batch ones feed a
``tf.data`` dataset, which Keras reads under JAX and PyTorch too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEALTHY = "healthy"
SEG_LR = 30.0  # the peak of the learning-rate warm-up


@dataclass
class Scenario:
    """One seeded training run and what the checks should say about it.

    Attributes:
        name: scenario name (unique).
        pathology: the pathology reproduced, or ``"healthy"``.
        build: zero-argument factory returning a compiled ``keras.Model``.
        x, y: training data (``y`` None for a ``tf.data.Dataset``).
        validation_data: passed to the engine, or None.
        steps, batch_size: training length and batch size.
        spec_overrides: ``RunSpec.replace`` keywords (diagnostics, readback_every...).
        expected_check: the check that must fail (None for healthy runs).
        expected_cause: the ``cause_key`` its first finding must carry.
        expected_step: the exact step the finding must name, when known.
    """

    name: str
    pathology: str
    build: Callable[[], Any]
    x: Any
    y: Any
    validation_data: Any = None
    steps: int = 300
    batch_size: int = 32
    spec_overrides: dict[str, Any] = field(default_factory=dict)
    expected_check: str | None = None
    expected_cause: str | None = None
    expected_step: int | None = None


# -- shared pieces ---------------------------------------------------------------


def _scenario(
    name: str, pathology: str, build: Callable[[], Any], x: Any, y: Any, *, check: str, cause: str, **kw: Any
) -> Scenario:
    """A :class:`Scenario` that expects ``check`` to fail with ``cause``, unless it is a healthy control."""
    sick = pathology != HEALTHY
    return Scenario(
        name,
        pathology,
        build,
        x,
        y,
        expected_check=check if sick else None,
        expected_cause=cause if sick else None,
        **kw,
    )


def _keras() -> Any:
    import keras

    return keras


def _regression_data(seed: int, n: int = 64, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (np.sin(1.5 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype("float32")
    return x, y


def _mlp(d_in: int, widths: tuple[int, ...], act: str, out: Any, **dense_kw: Any) -> Any:
    keras = _keras()
    layers = [keras.Input((d_in,))] + [keras.layers.Dense(w, activation=act, **dense_kw) for w in widths]
    return keras.Sequential(layers + [out])


def _classification_data(seed: int, n: int, d: int = 8, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d,))
    y = ((x @ w + noise * rng.normal(size=n)) > 0).astype("float32")[:, None]
    return x, y


# -- Adam second-moment collapse ------------------------------------------------


def _adam_collapse(
    seed: int,
    *,
    width: int = 32,
    lr: float = 1e-2,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
    act: str = "relu",
    name: str,
    pathology: str,
    diagnostics: bool = True,
    cause: str = "adam_second_moment",
) -> Scenario:
    """Full-batch regression with Adam (Keras defaults but the learning rate): the loss falls to ~1e-14,
    the gradients and v with it, and then the loss shoots back up (and often stays up)."""
    keras = _keras()
    x, y = _regression_data(seed)

    def build() -> Any:
        m = _mlp(4, (width, width), act, keras.layers.Dense(1))
        m.compile(optimizer=keras.optimizers.Adam(lr, epsilon=epsilon, amsgrad=amsgrad), loss="mse")
        return m

    # Full batch as one repeated batch: with arrays, Keras' fit would run 3000 one-step epochs (and pay
    # its per-epoch cost 3000 times); this is the same training, one epoch of 3000 steps
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    return _scenario(
        name,
        pathology,
        build,
        ds,
        None,
        check="loss_spike",
        cause=cause,
        steps=3000,
        batch_size=64,
        spec_overrides={"diagnostics": diagnostics, "readback_every": 500},
    )


def adam_collapse(seed: int) -> Scenario:
    return _adam_collapse(seed, name="adam_collapse", pathology="adam_collapse")


def adam_collapse_fixed_eps(seed: int) -> Scenario:
    return _adam_collapse(seed, epsilon=1e-2, name="adam_fixed_epsilon", pathology=HEALTHY)


def adam_collapse_fixed_amsgrad(seed: int) -> Scenario:
    # amsgrad alone at lr 1e-2 still spiked (9/12 seeds, detection run of e8ea4a3): amsgrad at lr 1e-3
    return _adam_collapse(seed, lr=1e-3, amsgrad=True, name="adam_amsgrad_low_lr", pathology=HEALTHY)


def adam_periodic(seed: int) -> Scenario:
    """A narrow net (width 8) at lr 3e-2: once the loss flattens, spike after spike, roughly periodic.

    Expected cause: the learning rate, not Adam's second moment.  Its slot statistics show no collapse of v
    (sqrt(mean v) within 1.4x of its peak before the first spike, g^2/v up 1-32x, against 100x and more in
    adam_collapse), its gradient norm fell only 2-6x before the first spike (10 of 10 TensorFlow seeds, stored
    traces of the ReLU net below), epsilon=1e-2 and amsgrad alone did not stop the spikes (see the module
    docstring), and in the what-if replay a lower learning rate resolved 3 of 3 seeds.

    Leaky ReLUs: with ReLUs (the detection tables up to d402ab3), PyTorch seeds 0 and 3 and TensorFlow seed 4
    settled on a flat plateau and never spiked (their last loss was their lowest): the pathology did not
    happen, and those runs counted as misses. A leaky slope keeps the narrow net's units alive: every seed
    spiked on every backend, named lr_too_high, and a lower rate resolved all 30
    (``benchmarks/results/detection-adam-periodic.md``)."""
    return _adam_collapse(
        seed, width=8, lr=3e-2, act="leaky_relu", name="adam_periodic", pathology="adam_periodic", cause="lr_too_high"
    )


def adam_periodic_fixed(seed: int) -> Scenario:
    # amsgrad alone at lr 3e-2 still spiked (9/12, detection run of e8ea4a3): amsgrad at lr 3e-3
    return _adam_collapse(
        seed, width=8, lr=3e-3, amsgrad=True, act="leaky_relu", name="adam_periodic_amsgrad_low_lr", pathology=HEALTHY
    )


# -- learning rate too high -> NaN ------------------------------------------------


def _lr_scenario(seed: int, lr: float, name: str, pathology: str, momentum: float = 0.9) -> Scenario:
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) * 3.0).astype("float32")

    def build() -> Any:
        m = _mlp(8, (32,), "relu", keras.layers.Dense(1))
        m.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum), loss="mse")
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="nonfinite",
        cause="lr_too_high",
        steps=300,
        batch_size=32,
        spec_overrides={"readback_every": 100},
    )


def lr_too_high(seed: int) -> Scenario:
    return _lr_scenario(seed, 0.2, "lr_too_high", "lr_too_high")


def lr_fixed(seed: int) -> Scenario:
    return _lr_scenario(seed, 0.002, "lr_fixed", HEALTHY)


# -- log(0) in a custom loss -> NaN ------------------------------------------------


def _unsafe_bce(y_true: Any, y_pred: Any) -> Any:
    keras = _keras()
    ops = keras.ops
    return -ops.mean(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))


def _log_scenario(seed: int, safe: bool, name: str, pathology: str) -> Scenario:
    keras = _keras()
    x, y = _classification_data(seed, 256, noise=0.0)
    x = x * 3.0

    def build() -> Any:
        m = _mlp(8, (16,), "relu", keras.layers.Dense(1, activation="sigmoid"))
        m.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy" if safe else _unsafe_bce)
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="nonfinite",
        cause="unsafe_loss_op",
        steps=600,
        batch_size=32,
        spec_overrides={"readback_every": 200},
    )


def log_zero(seed: int) -> Scenario:
    return _log_scenario(seed, False, "log_zero", "log_zero")


def log_zero_fixed(seed: int) -> Scenario:
    return _log_scenario(seed, True, "log_zero_fixed", HEALTHY)


# -- NaN in the input data -------------------------------------------------------


def nan_in_data(seed: int) -> Scenario:
    import tensorflow as tf

    keras = _keras()
    x, y = _classification_data(seed, 512)
    rng = np.random.default_rng(seed + 10_000)
    row = int(rng.integers(64, 512))
    x[row, int(rng.integers(0, x.shape[1]))] = np.nan
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()

    def build() -> Any:
        m = _mlp(8, (16,), "relu", keras.layers.Dense(1, activation="sigmoid"))
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        return m

    return Scenario(
        "nan_in_data",
        "nan_in_data",
        build,
        ds,
        None,
        steps=40,
        batch_size=32,
        spec_overrides={"readback_every": 40},
        expected_check="nonfinite",
        expected_cause="nan_in_data",
        expected_step=row // 32,
    )


# -- exploding gradients in a simple RNN on long sequences -----------------------


def _warmup(peak: float, steps: int = 150) -> Any:
    """Linear learning-rate warm-up from 1e-4 to ``peak`` over ``steps``, then constant."""
    return _keras().optimizers.schedules.CosineDecay(
        1e-4, decay_steps=10_000, alpha=1.0, warmup_target=peak, warmup_steps=steps
    )


def _rnn_scenario(seed: int, peak: float, clipnorm: float | None, name: str, pathology: str) -> Scenario:
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 50, 1)).astype("float32")
    y = x[:, :5, 0].sum(axis=1, keepdims=True).astype("float32")  # recall the start of a 50-step sequence

    def build() -> Any:
        m = keras.Sequential([keras.Input((50, 1)), keras.layers.SimpleRNN(32), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(_warmup(peak), momentum=0.9, clipnorm=clipnorm), loss="mse")
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="grad_norm",
        cause="gradient_explosion",
        steps=300,
        batch_size=32,
        spec_overrides={"readback_every": 100},
    )


def rnn_explosion(seed: int) -> Scenario:
    """The warm-up reaches a learning rate (0.3) at which backprop through 50 steps explodes."""
    return _rnn_scenario(seed, 0.3, None, "rnn_explosion", "rnn_explosion")


def rnn_fixed(seed: int) -> Scenario:
    return _rnn_scenario(seed, 0.01, 1.0, "rnn_fixed", HEALTHY)


# -- SGD + Nesterov on a segmentation net with a soft Dice loss --------------------


def _soft_dice(y_true: Any, y_pred: Any) -> Any:
    ops = _keras().ops
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return 1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0))


def _seg_data(seed: int, n: int = 64, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = np.empty((n, size, size, 1), "float32")
    y = np.empty((n, size, size, 1), "float32")
    for i in range(n):
        cy, cx = rng.uniform(4, size - 4, 2)
        r = rng.uniform(2, 4)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype("float32")
        y[i, ..., 0] = mask
        x[i, ..., 0] = mask + 0.3 * rng.normal(size=(size, size))
    return x, y


def _seg_scenario(
    seed: int, peak: float, clipnorm: float | None, name: str, pathology: str, warmup_steps: int = 150, steps: int = 400
) -> Scenario:
    keras = _keras()
    x, y = _seg_data(seed)

    def build() -> Any:
        m = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(1, 1, activation="sigmoid"),
            ]
        )
        opt = keras.optimizers.SGD(_warmup(peak, warmup_steps), momentum=0.99, nesterov=True, clipnorm=clipnorm)
        m.compile(optimizer=opt, loss=_soft_dice)
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="loss_spike",
        cause="collapse_constant",
        steps=steps,
        batch_size=8,
        spec_overrides={"readback_every": 100},
    )


def seg_dice_collapse(seed: int) -> Scenario:
    return _seg_scenario(seed, SEG_LR, None, "seg_dice_collapse", "seg_dice_collapse", warmup_steps=300, steps=600)


def seg_dice_fixed(seed: int) -> Scenario:
    # clipnorm alone does not save a peak learning rate of 30 (measured): the fix is both.  A peak of 0.1 was
    # not enough: with Nesterov momentum 0.99 the loss of 2 of 15 seeds climbed 3-6x from ~0.03 and stayed up
    # for 20-100 steps (a real, milder instability; detection run before the slow-rise rule), so the peak is 0.03
    return _seg_scenario(seed, 0.03, 1.0, "seg_dice_fixed", HEALTHY)


# -- BatchNorm with small batches -------------------------------------------------


def _bn_scenario(seed: int, batch_size: int, momentum: float, lr: float, name: str, pathology: str) -> Scenario:
    keras = _keras()
    x, y = _classification_data(seed, 8192 + 512, noise=0.5)
    x, y, xv, yv = x[:8192], y[:8192], x[8192:], y[8192:]

    def build() -> Any:
        m = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(32),
                keras.layers.BatchNormalization(momentum=momentum),
                keras.layers.ReLU(),
                keras.layers.Dense(32),
                keras.layers.BatchNormalization(momentum=momentum),
                keras.layers.ReLU(),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        m.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="val_loss",
        cause="batchnorm_mismatch",
        validation_data=(xv, yv),
        steps=300,
        batch_size=batch_size,
        spec_overrides={"readback_every": 10, "validate_every": 10},
    )


def bn_small_batch(seed: int) -> Scenario:
    return _bn_scenario(seed, 2, 0.99, 3e-2, "bn_small_batch", "bn_small_batch")


def bn_fixed(seed: int) -> Scenario:
    return _bn_scenario(seed, 64, 0.9, 3e-3, "bn_fixed", HEALTHY)


# -- ordinary noisy small-batch training ----------------------------------------


def noisy_small_batch(seed: int) -> Scenario:
    keras = _keras()
    x, y = _classification_data(seed, 4096 + 512, noise=0.5)
    x, y, xv, yv = x[:4096], y[:4096], x[4096:], y[4096:]

    def build() -> Any:
        m = _mlp(8, (32, 32), "relu", keras.layers.Dense(1, activation="sigmoid"))
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        return m

    return Scenario(
        "noisy_small_batch",
        HEALTHY,
        build,
        x,
        y,
        validation_data=(xv, yv),
        steps=500,
        batch_size=8,
        spec_overrides={"readback_every": 100, "validate_every": 25},
    )


# -- dead from the start, slingshot, a lone hard batch, more healthy families ----------------------


def dead_start(seed: int) -> Scenario:
    """ReLU units dead from step 0 (hidden biases initialised to -10): no gradient reaches the hidden layers."""
    keras = _keras()
    x, y = _regression_data(seed, n=512)

    def build() -> Any:
        dead = keras.initializers.Constant(-10.0)
        m = _mlp(4, (32, 32), "relu", keras.layers.Dense(1, use_bias=False), bias_initializer=dead)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        return m

    return _scenario(
        "dead_start",
        "dead_start",
        build,
        x,
        y,
        check="stuck",
        cause="vanished_gradients",
        steps=300,
        batch_size=32,
        spec_overrides={"readback_every": 100},
    )


def slingshot(seed: int) -> Scenario:
    """Adam (Keras defaults, lr 1e-2) at minibatch size 16 on 64 noiseless regression samples: the loss falls
    by orders of magnitude, then climbs back over a hundred steps or so (the slingshot), again and again.

    The earlier version (lr 3e-3, epsilon 1e-8, 256 samples) was detected in 0/10 runs of the benchmark
    committed in ef42465: on 256 samples the loss never fell far enough for v to collapse."""
    keras = _keras()
    x, y = _regression_data(seed, n=64)

    def build() -> Any:
        m = _mlp(4, (32, 32), "relu", keras.layers.Dense(1))
        m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return m

    return _scenario(
        "slingshot",
        "slingshot",
        build,
        x,
        y,
        check="loss_spike",
        cause="adam_second_moment",
        steps=3000,
        batch_size=16,
        spec_overrides={"readback_every": 500},
    )


def _healthy(name: str, build: Callable[[], Any], x: Any, y: Any, **kw: Any) -> Scenario:
    return Scenario(name, HEALTHY, build, x, y, **kw)


def hard_batch(seed: int) -> Scenario:
    """HEALTHY: one sample with a 30x target, seen once (one epoch at batch 4): one hard batch, not instability."""
    keras = _keras()
    x, y = _regression_data(seed, n=1200)
    y[int(np.random.default_rng(seed).integers(400, 1100))] *= 30.0

    def build() -> Any:
        m = _mlp(4, (32,), "relu", keras.layers.Dense(1))
        m.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
        return m

    return _healthy("hard_batch", build, x, y, steps=300, batch_size=4, spec_overrides={"shuffle": False})


def _clf(seed: int, n: int, n_val: int, noise: float = 0.5) -> tuple[Any, Any, Any]:
    x, y = _classification_data(seed, n + n_val, noise=noise)
    return x[:n], y[:n], (x[n:], y[n:])


def _clf_mlp(lr: float = 1e-3, dropout: float = 0.0, schedule: Any = None) -> Callable[[], Any]:
    def build() -> Any:
        keras = _keras()
        layers = [keras.Input((8,)), keras.layers.Dense(32, activation="relu")]
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
        layers += [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
        m = keras.Sequential(layers)
        m.compile(optimizer=keras.optimizers.Adam(schedule if schedule is not None else lr), loss="binary_crossentropy")
        return m

    return build


def small_val_set(seed: int) -> Scenario:
    """HEALTHY: a validation set of 32-64 samples (its loss wiggles 13-33 %)."""
    x, y, val = _clf(seed, 2048, 32 + 32 * (seed % 2))
    return _healthy(
        "small_val_set",
        _clf_mlp(),
        x,
        y,
        validation_data=val,
        steps=300,
        batch_size=16,
        spec_overrides={"validate_every": 25},
    )


def tiny_batches(seed: int) -> Scenario:
    """HEALTHY: batch sizes 2, 4 and 8 (by seed)."""
    x, y, val = _clf(seed, 2048, 256)
    return _healthy(
        "tiny_batches",
        _clf_mlp(3e-4),
        x,
        y,
        validation_data=val,
        steps=400,
        batch_size=(2, 4, 8)[seed % 3],
        spec_overrides={"validate_every": 50},
    )


def bn_small_batch_right(seed: int) -> Scenario:
    """HEALTHY: BatchNorm at batch 8 done right (momentum 0.9, lr 1e-3)."""
    sc = _bn_scenario(seed, 8, 0.9, 1e-3, "bn_small_batch_right", HEALTHY)
    return sc


def dropout_half(seed: int) -> Scenario:
    """HEALTHY: Dropout(0.5) (noisier training loss than validation)."""
    x, y, val = _clf(seed, 2048, 256)
    return _healthy(
        "dropout_half",
        _clf_mlp(dropout=0.5),
        x,
        y,
        validation_data=val,
        steps=400,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


def warmup_cosine(seed: int) -> Scenario:
    """HEALTHY: linear warm-up to 3e-3 over 50 steps, then cosine decay to 0 over 400."""
    x, y, val = _clf(seed, 2048, 256)
    sched = _keras().optimizers.schedules.CosineDecay(1e-5, decay_steps=400, warmup_target=3e-3, warmup_steps=50)
    return _healthy(
        "warmup_cosine",
        _clf_mlp(schedule=sched),
        x,
        y,
        validation_data=val,
        steps=450,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


def label_noise(seed: int) -> Scenario:
    """HEALTHY: 20 % of the training labels flipped (the loss falls little)."""
    x, y, val = _clf(seed, 2048, 256)
    flip = np.random.default_rng(seed + 1).random(y.shape[0]) < 0.2
    y = np.where(flip[:, None], 1.0 - y, y).astype("float32")
    return _healthy(
        "label_noise",
        _clf_mlp(),
        x,
        y,
        validation_data=val,
        steps=400,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


def small_cnn(seed: int) -> Scenario:
    """HEALTHY: a small CNN classifying disc vs no disc in 16x16 images."""
    keras = _keras()
    x, m = _seg_data(seed, n=512)
    y = (m.sum(axis=(1, 2, 3)) > 30).astype("float32")[:, None]

    def build() -> Any:
        net = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                keras.layers.Conv2D(8, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        return net

    return _healthy(
        "small_cnn",
        build,
        x[:448],
        y[:448],
        validation_data=(x[448:], y[448:]),
        steps=300,
        batch_size=16,
        spec_overrides={"validate_every": 25},
    )


def small_rnn(seed: int) -> Scenario:
    """HEALTHY: an LSTM summing the first 5 of 20 steps."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 20, 1)).astype("float32")
    y = x[:, :5, 0].sum(axis=1, keepdims=True).astype("float32")

    def build() -> Any:
        m = keras.Sequential([keras.Input((20, 1)), keras.layers.LSTM(16), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0), loss="mse")
        return m

    return _healthy("small_rnn", build, x, y, steps=300, batch_size=32)


def _two_level_unet(keras: Any) -> Any:
    """A two-level U-Net (one skip connection) for 16x16 one-channel masks, uncompiled."""
    L = keras.layers
    inp = keras.Input((16, 16, 1))
    c1 = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    d = L.MaxPooling2D()(c1)
    c2 = L.Conv2D(16, 3, padding="same", activation="relu")(d)
    u = L.UpSampling2D()(c2)
    out = L.Conv2D(1, 1, activation="sigmoid")(L.Concatenate()([u, c1]))
    return keras.Model(inp, out)


def tiny_unet(seed: int) -> Scenario:
    """HEALTHY: a two-level U-Net (skip connection) on the disc masks, binary cross-entropy."""
    keras = _keras()
    x, y = _seg_data(seed, n=128)

    def build() -> Any:
        m = _two_level_unet(keras)
        m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
        return m

    return _healthy(
        "tiny_unet",
        build,
        x[:112],
        y[:112],
        validation_data=(x[112:], y[112:]),
        steps=300,
        batch_size=8,
        spec_overrides={"validate_every": 25},
    )


def small_transformer(seed: int) -> Scenario:
    """HEALTHY: one pre-norm transformer block (4-head attention + MLP) classifying 16-token sequences.

    On 896 training samples (10 epochs in 300 steps) it overfit in every seed: the validation loss climbed
    from its best around step 75 by 10-30 % to the end while the training loss kept falling (0.13 -> 0.05),
    and 2 of 15 seeds crossed the val_loss limit (detection run of ef42465) -- a true finding, not a false
    alarm.  As a healthy family it trains on 3968 samples (2.4 epochs)."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4096, 16, 8)).astype("float32")
    y = (x[:, :, 0].mean(axis=1) > 0).astype("float32")[:, None]

    def build() -> Any:
        L = keras.layers
        inp = keras.Input((16, 8))
        h = L.Dense(32)(inp)
        a = L.MultiHeadAttention(4, 8)(L.LayerNormalization()(h), L.LayerNormalization()(h))
        h = h + a
        h = h + L.Dense(32)(L.Dense(64, activation="gelu")(L.LayerNormalization()(h)))
        out = L.Dense(1, activation="sigmoid")(L.GlobalAveragePooling1D()(h))
        m = keras.Model(inp, out)
        m.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy")
        return m

    return _healthy(
        "small_transformer",
        build,
        x[:3968],
        y[:3968],
        validation_data=(x[3968:], y[3968:]),
        steps=300,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


#: the second set of scenarios (dead start, slingshot; a lone hard batch and 10 more healthy families).
NEW_PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {"dead_start": dead_start, "slingshot": slingshot}
NEW_HEALTHY: dict[str, Callable[[int], Scenario]] = {
    "hard_batch": hard_batch,
    "small_val_set": small_val_set,
    "tiny_batches": tiny_batches,
    "bn_small_batch_right": bn_small_batch_right,
    "dropout_half": dropout_half,
    "warmup_cosine": warmup_cosine,
    "label_noise": label_noise,
    "small_cnn": small_cnn,
    "small_rnn": small_rnn,
    "tiny_unet": tiny_unet,
    "small_transformer": small_transformer,
}


# -- the cases a new user runs into first: early blow-ups, a collapse after one, float16, random labels ----------


def adam_early_blowup(seed: int) -> Scenario:
    """An MLP classifier with ``Adam(learning_rate=3.0)``: the first update moves the weights ~16x their norm,
    the loss jumps ~1000x at step 1 and the gradient norm with it (a learning rate problem, not Adam's second
    moment: there is no history yet).  Logits and ``from_logits=True``: with a sigmoid output the same blow-up
    recovered under TensorFlow but saturated the sigmoid for good under JAX and PyTorch (a collapse, another
    verdict), in a probe run of seed 0."""
    keras = _keras()
    x, y, val = _clf(seed, 2048, 256)

    def build() -> Any:
        m = _mlp(8, (32, 32), "relu", keras.layers.Dense(1))
        m.compile(optimizer=keras.optimizers.Adam(3.0), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        return m

    return _scenario(
        "adam_early_blowup",
        "adam_early_blowup",
        build,
        x,
        y,
        check="grad_norm",
        cause="lr_too_high",
        validation_data=val,
        steps=300,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


def _soft_jaccard(y_true: Any, y_pred: Any) -> Any:
    ops = _keras().ops
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    union = ops.sum(y_true + y_pred, axis=(1, 2, 3)) - inter
    return 1.0 - ops.mean((inter + 1.0) / (union + 1.0))


def _unet(seed: int, lr: float, name: str, pathology: str) -> Scenario:
    keras = _keras()
    x, y = _seg_data(seed, n=128)

    def build() -> Any:
        m = _two_level_unet(keras)
        m.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.99, nesterov=True), loss=_soft_jaccard)
        return m

    return _scenario(
        name,
        pathology,
        build,
        x,
        y,
        check="stuck",
        cause="collapse_constant",
        steps=300,
        batch_size=4,
        spec_overrides={"readback_every": 100},
    )


def unet_jaccard_collapse(seed: int) -> Scenario:
    """A small U-Net, soft-Jaccard loss, SGD (Nesterov, momentum 0.99) at lr 2, batch 4: the loss dips, jumps
    back above where it started and stays there with the gradients at zero (all-zero predictions): a collapse
    after a blow-up, which a higher learning rate would only make worse.  At lr 0.02 the same net trains
    (3 of 3 seeds in a probe run)."""
    return _unet(seed, 2.0, "unet_jaccard_collapse", "unet_jaccard_collapse")


def sgd_huge_lr(seed: int) -> Scenario:
    """The lr_too_high regression MLP with plain SGD at learning rate 50: the first update is ~200x the weights,
    NaN by step 2 (no healthy stretch to derive a clipnorm from)."""
    sc = _lr_scenario(seed, 50.0, "sgd_huge_lr", "sgd_huge_lr", momentum=0.0)
    return sc


def float16_adam_epsilon(seed: int) -> Scenario:
    """A float16 model (dtype policy ``float16``: variables and Adam's state in float16) with Adam's default
    epsilon 1e-7, below float16's smallest normal number: v underflows for small gradients, the first update is
    ~20x the weights, NaN at step 1.  Adam(epsilon=1e-4) trains it."""
    keras = _keras()
    x, y = _regression_data(seed, n=512)

    def build() -> Any:
        old = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float16")
        try:
            m = _mlp(4, (32, 32), "relu", keras.layers.Dense(1))
            m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        finally:
            keras.config.set_dtype_policy(old)
        return m

    return _scenario(
        "float16_adam_epsilon",
        "float16_adam_epsilon",
        build,
        x,
        y,
        check="nonfinite",
        cause="epsilon_underflow",
        steps=200,
        batch_size=32,
        spec_overrides={"readback_every": 50},
    )


def random_labels(seed: int) -> Scenario:
    """The commonest smoke test: a small convnet on random 10-class labels.  The loss settles at ln 10, the
    cross-entropy of predicting the class prior, and stays flat: the labels carry no signal."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8192, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, size=(8192,)).astype("int32")

    def build() -> Any:
        net = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Conv2D(8, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return net

    return _scenario(
        "random_labels",
        "random_labels",
        build,
        x,
        y,
        check="stuck",
        cause="labels_no_signal",
        steps=600,
        batch_size=32,
        spec_overrides={"readback_every": 100},
    )


def adam_fullbatch_late(seed: int) -> Scenario:
    """The full-batch Adam regression at width 64 with the default recording (no slot statistics): the loss
    falls smoothly for hundreds of steps, then jumps by orders of magnitude; the evidence for Adam's second
    moment is the gradient norm's fall before the burst (epsilon / amsgrad, not clipnorm)."""
    return _adam_collapse(
        seed, width=64, name="adam_fullbatch_late", pathology="adam_fullbatch_late", diagnostics=False
    )


def noisy_val_batch10(seed: int) -> Scenario:
    """HEALTHY: a classifier at batch 10 for 2800 steps (Adam 1e-2 on 20000 samples, 1.4 epochs): the training
    loss wanders with the batch and the validation loss (200 samples, every 100 steps) wobbles with it."""
    x, y, val = _clf(seed, 20000, 200)
    return _healthy(
        "noisy_val_batch10",
        _clf_mlp(1e-2),
        x,
        y,
        validation_data=val,
        steps=2800,
        batch_size=10,
        spec_overrides={"validate_every": 100, "readback_every": 200},
    )


def bn_unet_fullbatch(seed: int) -> Scenario:
    """HEALTHY: a BatchNorm U-Net trained full-batch (32 images): inference-mode BatchNorm lags the batch
    statistics, so the train/inference gap is large (>100 % early) while the validation loss falls smoothly."""
    keras = _keras()
    x, y = _seg_data(seed, n=48)

    def build() -> Any:
        L = keras.layers
        inp = keras.Input((16, 16, 1))
        c1 = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
        d = L.MaxPooling2D()(c1)
        c2 = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(d)))
        u = L.UpSampling2D()(c2)
        out = L.Conv2D(1, 1, activation="sigmoid")(L.Concatenate()([u, c1]))
        m = keras.Model(inp, out)
        m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
        return m

    return _healthy(
        "bn_unet_fullbatch",
        build,
        x[:32],
        y[:32],
        validation_data=(x[32:], y[32:]),
        steps=200,
        batch_size=32,
        spec_overrides={"validate_every": 25},
    )


#: scenario families of the cases above.
FIRST_RUN_PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {
    "adam_early_blowup": adam_early_blowup,
    "unet_jaccard_collapse": unet_jaccard_collapse,
    "sgd_huge_lr": sgd_huge_lr,
    "float16_adam_epsilon": float16_adam_epsilon,
    "random_labels": random_labels,
    "adam_fullbatch_late": adam_fullbatch_late,
}
FIRST_RUN_HEALTHY: dict[str, Callable[[int], Scenario]] = {
    "noisy_val_batch10": noisy_val_batch10,
    "bn_unet_fullbatch": bn_unet_fullbatch,
}


# -- setup bugs that the run's settings show ------------------------------------------------------------------
#
# Each is a classifier that training survives, stuck, for a reason in its settings that a learning-rate fix
# would only treat the symptoms of (the diagnosis had named the labels or too low a rate); each healthy twin is
# the same run with the setting a practitioner would use.


def _setup_classifier(
    seed: int,
    name: str,
    pathology: str,
    optimizer: Callable[[], Any],
    *,
    cause: str,
    steps: int,
    batch_size: int = 32,
    batchnorm: bool = False,
) -> Scenario:
    keras = _keras()
    x, y = _classification_data(seed, 512)

    def build() -> Any:
        hidden = [keras.layers.Dense(32)] + ([keras.layers.BatchNormalization()] if batchnorm else [])
        layers = [keras.Input((8,)), *hidden, keras.layers.Activation("relu")]
        m = keras.Sequential(layers + [keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=optimizer(), loss="binary_crossentropy")
        return m

    return _scenario(name, pathology, build, x, y, check="stuck", cause=cause, steps=steps, batch_size=batch_size)


def weight_decay_huge(seed: int) -> Scenario:
    """AdamW's weight_decay=50 at lr 1e-2: every weight loses half of itself a step, the output is constant."""
    return _setup_classifier(
        seed,
        "weight_decay_huge",
        "weight_decay_huge",
        lambda: _keras().optimizers.AdamW(1e-2, weight_decay=50.0),
        cause="weight_decay_too_strong",
        steps=600,
    )


def weight_decay_default(seed: int) -> Scenario:
    """HEALTHY twin: AdamW's default weight_decay (0.004)."""
    return _setup_classifier(
        seed, "weight_decay_default", HEALTHY, lambda: _keras().optimizers.AdamW(1e-2), cause="", steps=600
    )


def tiny_clipnorm(seed: int) -> Scenario:
    """SGD with clipnorm=1e-6: every update is a millionth of what the rate makes it."""
    return _setup_classifier(
        seed,
        "tiny_clipnorm",
        "tiny_clipnorm",
        lambda: _keras().optimizers.SGD(0.05, clipnorm=1e-6),
        cause="clip_too_small",
        steps=300,
    )


def clipnorm_one(seed: int) -> Scenario:
    """HEALTHY twin: clipnorm=1."""
    return _setup_classifier(
        seed, "clipnorm_one", HEALTHY, lambda: _keras().optimizers.SGD(0.05, clipnorm=1.0), cause="", steps=300
    )


def gradient_accumulation(seed: int) -> Scenario:
    """HEALTHY: Adam at 1e-3 with Keras' gradient_accumulation_steps=4 at batch 16, 200 steps: 50 updates, the loss
    falls less than half; the weights change at every 4th step only (the update ratios between are NaN, not zeros
    that read as stuck)."""
    return _setup_classifier(
        seed,
        "gradient_accumulation",
        HEALTHY,
        lambda: _keras().optimizers.Adam(1e-3, gradient_accumulation_steps=4),
        cause="",
        steps=200,
        batch_size=16,
    )


def schedule_to_zero(seed: int) -> Scenario:
    """Adam under an exponential decay that takes its rate 100x down every 5 steps: after 20 steps it is ~0."""

    def opt() -> Any:
        keras = _keras()
        return keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 5, 0.01))

    return _setup_classifier(seed, "schedule_to_zero", "schedule_to_zero", opt, cause="schedule_decayed", steps=300)


def schedule_over_the_run(seed: int) -> Scenario:
    """HEALTHY twin: the same schedule halving the rate over the run's 300 steps."""

    def opt() -> Any:
        keras = _keras()
        return keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 300, 0.5))

    return _setup_classifier(seed, "schedule_over_the_run", HEALTHY, opt, cause="", steps=300)


def bn_batch_one(seed: int) -> Scenario:
    """BatchNorm after a Dense, trained in batches of one sample: every feature becomes beta, nothing before it
    learns."""
    return _setup_classifier(
        seed,
        "bn_batch_one",
        "bn_batch_one",
        lambda: _keras().optimizers.Adam(1e-3),
        cause="batchnorm_one_sample",
        steps=200,
        batch_size=1,
        batchnorm=True,
    )


def bn_batch_sixteen(seed: int) -> Scenario:
    """HEALTHY twin: the same in batches of 16."""
    return _setup_classifier(
        seed,
        "bn_batch_sixteen",
        HEALTHY,
        lambda: _keras().optimizers.Adam(1e-3),
        cause="",
        steps=200,
        batch_size=16,
        batchnorm=True,
    )


SETUP_PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {
    "weight_decay_huge": weight_decay_huge,
    "tiny_clipnorm": tiny_clipnorm,
    "schedule_to_zero": schedule_to_zero,
    "bn_batch_one": bn_batch_one,
}
SETUP_HEALTHY: dict[str, Callable[[int], Scenario]] = {
    "weight_decay_default": weight_decay_default,
    "clipnorm_one": clipnorm_one,
    "schedule_over_the_run": schedule_over_the_run,
    "bn_batch_sixteen": bn_batch_sixteen,
    "gradient_accumulation": gradient_accumulation,
}


def schedule_jump(seed: int) -> Scenario:
    """A small convnet classifier under SGD (momentum 0.9) whose step schedule jumps from 1e-3 to 7 after 150
    steps (``PiecewiseConstantDecay([150], [1e-3, 7.0])``, a mis-typed peak: the example project's known-unstable
    test): the loss spikes soon after the jump.  The learning rate, capped near the rates the run trained at (a
    tenth of the schedule, a peak of 0.7, still spiked in the example project's what-if replay on TensorFlow)."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    n = 512
    y = rng.integers(0, 2, size=n).astype("int32")
    x = rng.normal(scale=0.3, size=(n, 16, 16, 1))
    for i in np.flatnonzero(y == 1):  # class 1: a bright 6x6 square somewhere in the image
        r, c = rng.integers(0, 11, size=2)
        x[i, r : r + 6, c : c + 6, 0] += 1.0

    def build() -> Any:
        L = keras.layers
        m = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                L.Conv2D(8, 3, activation="relu", padding="same"),
                L.MaxPooling2D(),
                L.Conv2D(16, 3, activation="relu", padding="same"),
                L.GlobalAveragePooling2D(),
                L.Dense(2),
            ]
        )
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([150], [1e-3, 7.0])
        m.compile(
            optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return m

    return _scenario(
        "schedule_jump",
        "schedule_jump",
        build,
        x.astype("float32"),
        y,
        check="loss_spike",
        cause="lr_too_high",
        steps=300,
        batch_size=32,
    )


#: a step schedule whose rate jumps (its first fix is a cap, not a scaled schedule).
SCHEDULE_PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {"schedule_jump": schedule_jump}


def _deep_stack(seed: int, name: str, pathology: str, activation: str, initializer: str) -> Scenario:
    keras = _keras()
    x, y = _classification_data(seed, 512)

    def build() -> Any:
        hidden = [keras.layers.Dense(32, activation=activation, kernel_initializer=initializer) for _ in range(12)]
        m = keras.Sequential([keras.Input((8,)), *hidden, keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer=keras.optimizers.SGD(1e-2), loss="binary_crossentropy")
        return m

    return _scenario(name, pathology, build, x, y, check="stuck", cause="vanished_gradients", steps=300, batch_size=32)


def deep_sigmoid_stack(seed: int) -> Scenario:
    """Twelve sigmoid layers under SGD at 1e-2, on labels a linear model learns: the gradients shrink about 4x a
    layer (1e-8 at the first kernel, 0.2 at the last), the first layers never change and the loss sits at ln 2.
    The diagnosis had named labels with no signal on JAX, and PyTorch had passed it."""
    return _deep_stack(seed, "deep_sigmoid_stack", "deep_sigmoid_stack", "sigmoid", "glorot_uniform")


def deep_relu_stack(seed: int) -> Scenario:
    """HEALTHY twin: the same stack with ReLU and He initialisation, the fix the diagnosis offers."""
    return _deep_stack(seed, "deep_relu_stack", HEALTHY, "relu", "he_normal")


def _pixels(seed: int, name: str, pathology: str, scale: float) -> Scenario:
    keras = _keras()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(1024, 16, 16, 1)).astype("float32")
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype("int32")

    def build() -> Any:
        L = keras.layers
        m = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                L.Conv2D(16, 3, activation="relu"),
                L.MaxPooling2D(),
                L.Conv2D(32, 3, activation="relu"),
                # Flatten keeps where a feature is: the label compares the image's halves, which a global average
                # pool would discard (with it, the twin sat at ln 2 on 7 of 12 TensorFlow seeds: nothing to learn)
                L.Flatten(),
                L.Dense(2, activation="softmax"),
            ]
        )
        m.compile(optimizer=keras.optimizers.SGD(1e-2, momentum=0.9), loss="sparse_categorical_crossentropy")
        return m

    return _scenario(
        name, pathology, build, x * scale, y, check="stuck", cause="inputs_out_of_scale", steps=300, batch_size=32
    )


def pixels_unscaled(seed: int) -> Scenario:
    """A small convnet on pixels of 0-255 (not divided by 255), SGD with momentum: the loss sits at ln 2
    (TensorFlow) or at the clipped softmax's 7 to 9 (JAX, PyTorch), the network dead.  How it died depends on the
    backend's numerics: TensorFlow's cross-entropy behind the softmax takes its logits, so the first updates blow
    the loss up and the ReLUs die after (a collapse); JAX and PyTorch clip the probabilities, so a softmax the
    first forward pass saturates passes no gradient from step 0 (most of their seeds never take an update).  The
    expected cause is the inputs' scale, with standardising them first; the twin below is that fix."""
    return _pixels(seed, "pixels_unscaled", "pixels_unscaled", 1.0)


def pixels_scaled(seed: int) -> Scenario:
    """HEALTHY twin: the same net and data, the pixels divided by 255 (the first fix the diagnosis offers)."""
    return _pixels(seed, "pixels_scaled", HEALTHY, 1.0 / 255.0)


DEPTH_PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {
    "deep_sigmoid_stack": deep_sigmoid_stack,
    "pixels_unscaled": pixels_unscaled,
}
DEPTH_HEALTHY: dict[str, Callable[[int], Scenario]] = {
    "deep_relu_stack": deep_relu_stack,
    "pixels_scaled": pixels_scaled,
}


PATHOLOGIES: dict[str, Callable[[int], Scenario]] = {
    "adam_collapse": adam_collapse,
    "lr_too_high": lr_too_high,
    "log_zero": log_zero,
    "nan_in_data": nan_in_data,
    "adam_periodic": adam_periodic,
    "rnn_explosion": rnn_explosion,
    "seg_dice_collapse": seg_dice_collapse,
    "bn_small_batch": bn_small_batch,
    **NEW_PATHOLOGIES,
    **FIRST_RUN_PATHOLOGIES,
    **SCHEDULE_PATHOLOGIES,
    **SETUP_PATHOLOGIES,
    **DEPTH_PATHOLOGIES,
}

HEALTHY_SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "adam_fixed_epsilon": adam_collapse_fixed_eps,
    "adam_amsgrad_low_lr": adam_collapse_fixed_amsgrad,
    "lr_fixed": lr_fixed,
    "log_zero_fixed": log_zero_fixed,
    "adam_periodic_amsgrad_low_lr": adam_periodic_fixed,
    "rnn_fixed": rnn_fixed,
    "seg_dice_fixed": seg_dice_fixed,
    "bn_fixed": bn_fixed,
    "noisy_small_batch": noisy_small_batch,
    **NEW_HEALTHY,
    **FIRST_RUN_HEALTHY,
    **SETUP_HEALTHY,
    **DEPTH_HEALTHY,
}


@dataclass
class Outcome:
    scenario: Scenario
    seed: int
    trace: Any
    results: list[Any]
    findings: list[Any]
    seconds: float
    #: the what-if note on the first finding (``run_scenario(whatif=True)``), else None
    whatif: dict[str, Any] | None = None


def run_scenario(sc: Scenario, seed: int, thresholds: Any = None, whatif: bool = False) -> Outcome:
    """Train ``sc`` under ``seed`` with the real engine, run every check and diagnose.

    With ``whatif``, a failing run's suggested optimizer fixes are replayed as
    the ``whatif`` option does (:func:`pytest_stability.training.whatif.attach_whatif`);
    ``seconds`` does not include the replay.
    """
    import time

    from pytest_stability import pipeline
    from pytest_stability.checks import Thresholds
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    thresholds = thresholds or Thresholds()
    spec = resolve_config_defaults(lambda n: None, lambda n: None).replace(whatif=whatif)
    if sc.spec_overrides:
        spec = spec.replace(**sc.spec_overrides)
    engine.seed_everything(seed)
    model = sc.build()
    fit_kwargs = {"validation_data": sc.validation_data} if sc.validation_data is not None else {}
    started = time.perf_counter()
    out = pipeline.run(
        model,
        sc.x,
        sc.y,
        fit_kwargs=fit_kwargs,
        steps=sc.steps,
        seed=seed,
        spec=spec,
        thresholds=thresholds,
        batch_size=sc.batch_size if sc.y is not None else None,
    )
    seconds = time.perf_counter() - started  # includes a what-if replay when one ran
    res, results = out.result, out.results
    note = None
    if whatif and any(r.findings for r in results):
        note = next((f.evidence["whatif"] for r in results for f in r.findings if "whatif" in f.evidence), None)
    findings = [f for r in results for f in r.findings]
    return Outcome(sc, seed, res.trace, results, findings, seconds, note)
