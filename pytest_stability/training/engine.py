"""The instrumented training loop: Keras' own train step, plus recording.

What runs per optimizer step, inside one compiled ``tf.function`` chunk of up
to ``readback_every`` steps (a ``tf.while_loop``, like Keras'
``steps_per_execution``):

* the forward pass and loss exactly as ``keras.Model.train_step`` computes
  them (``model._compute_loss``, regularisation losses, loss scaling), the
  gradients, and ``optimizer.apply`` -- so the compiled optimizer's
  clipnorm / clipvalue / global_clipnorm and a ``LossScaleOptimizer`` act as in
  ``model.fit``; compiled metrics are updated too;
* recorded into ``TensorArray``s on the device, with no host sync: the raw
  minibatch loss (not Keras' running mean), the global and per-variable
  gradient norms *before* clipping and unscaled, the learning rate, and a
  bitmask saying whether loss, gradients, weights, optimizer state and the
  input batch were finite (numpy inputs are checked once on the host
  instead); a mixed-precision loss-scale overflow is flagged OVERFLOW, not
  as a non-finite gradient;
* the loop stops at the first non-finite step.

With ``jit_compile`` XLA compiles the step; the loop around it stays a plain
graph because the dataset iterator has no XLA kernel (as in Keras' own
``jit_compile=True``).

The host reads the arrays back once per chunk (one sync), evaluates the
validation loss at ``validate_every`` boundaries, and assembles a
:class:`~pytest_stability.trace.Trace`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StabilityUsageError
from ..trace import GRADS, INPUT, LOSS, OPTIMIZER, OVERFLOW, WEIGHTS, Trace
from .data import make_train_data, make_validation_data

_DETERMINISM_ENABLED = False


def _import_tf() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StabilityUsageError(
            "pytest-stability needs TensorFlow to train: pip install 'pytest-stability[cpu]' "
            "(tensorflow-cpu) or 'pytest-stability[tensorflow]'. Import failed with: " + str(exc)
        ) from None
    import keras

    if not keras.__version__.startswith("3"):
        raise StabilityUsageError(f"pytest-stability needs Keras 3; found keras {keras.__version__}")
    _quiet_own_retracing()
    if keras.backend.backend() != "tensorflow":
        raise StabilityUsageError(
            "pytest-stability trains with the TensorFlow backend of Keras 3; "
            f"KERAS_BACKEND is {keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
        )
    return tf, keras


class _OwnRetracingFilter:
    """Drops TensorFlow's "N out of the last M calls to ... triggered tf.function retracing" warning
    for this engine's own functions: each trained model gets fresh compiled functions by design
    (one per model), which that heuristic counts as retracing.  Other functions' warnings pass."""

    def filter(self, record: Any) -> bool:
        msg = str(record.getMessage())
        return not ("triggered tf.function retracing" in msg and "InstrumentedTrainer." in msg)


_FILTER = _OwnRetracingFilter()


def _quiet_own_retracing() -> None:
    import logging

    logger = logging.getLogger("tensorflow")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy, TensorFlow and Keras; optionally enable op determinism.

    Op determinism is process-wide in TensorFlow and cannot be switched off
    again, so it is enabled once, by the first stability test that asks for it.
    """
    global _DETERMINISM_ENABLED
    tf, keras = _import_tf()
    keras.utils.set_random_seed(int(seed))
    if deterministic and not _DETERMINISM_ENABLED:
        tf.config.experimental.enable_op_determinism()
        _DETERMINISM_ENABLED = True


def resolve_device(requested: str) -> tuple[str | None, str]:
    """Map ``auto`` / ``cpu`` / ``gpu`` to a TF device string and a label.

    Returns (tf_device, label); tf_device None means "no GPU for device='gpu'".
    """
    tf, _ = _import_tf()
    gpus = tf.config.list_physical_devices("GPU")
    if requested == "cpu":
        return "/CPU:0", "CPU"
    if requested == "gpu" and not gpus:
        return None, "no GPU"
    if gpus:
        return "/GPU:0", "GPU"
    return "/CPU:0", "CPU"


def _placed_on(tensor: Any) -> str:
    dev = getattr(tensor, "device", "") or ""
    if "GPU" in dev.upper():
        return "GPU:" + dev.rsplit(":", 1)[-1]
    return "CPU"


def _verified_placement(recorded: Any, variable: Any) -> str:
    """Where training actually ran: the device of the recorded loss and of the weights.

    Read from the tensors, not from what was asked for: a model built before
    ``train()`` keeps its weights where they were created.  Untested on a GPU
    here (no GPU in the development environment).
    """
    ran = _placed_on(recorded)
    stored = _placed_on(getattr(variable, "value", variable))
    return ran if ran == stored else f"{ran} (weights on {stored})"


def _is_float(t: Any) -> bool:
    """True for float tensors and variables (Keras variables give dtype as a string)."""
    dtype = getattr(t, "dtype", None)
    name = getattr(dtype, "name", dtype)
    return isinstance(name, str) and ("float" in name or name == "bfloat16")


def _var_name(v: Any) -> str:
    return str(getattr(v, "path", None) or getattr(v, "name", "variable"))


def validate_model(model: Any) -> None:
    """Reject what the engine cannot train faithfully, naming what was received."""
    tf, keras = _import_tf()
    if not isinstance(model, keras.Model):
        raise StabilityUsageError(
            f"stability.train() expects a compiled keras.Model (or a zero-argument callable returning one); "
            f"received {type(model).__name__}"
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise StabilityUsageError(
            f"the model {model.name!r} is not compiled: call model.compile(optimizer=..., loss=...) "
            "before stability.train(); the optimizer and loss it is compiled with are the ones trained"
        )
    if getattr(model, "_compile_loss", None) is None and type(model).compute_loss is keras.Model.compute_loss:
        raise StabilityUsageError(
            f"the model {model.name!r} was compiled without a loss (and does not override compute_loss); "
            "pass loss=... to model.compile()"
        )
    if type(model).train_step is not keras.Model.train_step:
        raise StabilityUsageError(
            f"{type(model).__name__} overrides train_step; pytest-stability trains with its own instrumented "
            "copy of Keras' default train_step and would silently ignore yours. Move custom logic into "
            "compute_loss(), or record your own trace and use pytest_stability.run_checks()."
        )


@dataclass
class Snapshot:
    """The training state after ``step`` optimizer steps, copied to the host.

    ``model`` holds every model variable (weights, BatchNorm statistics,
    dropout seed state) in ``model.variables`` order; ``optimizer`` maps each
    optimizer variable's name (``iteration``, ``dense_kernel_momentum``...) to
    its value.
    """

    step: int
    model: list[np.ndarray]
    optimizer: dict[str, np.ndarray]


#: snapshots kept per run for the what-if replay; beyond this, every other one is dropped.
MAX_SNAPSHOTS = 16


def take_snapshot(model: Any, optimizer: Any, step: int) -> Snapshot:
    return Snapshot(step, [np.array(v.numpy()) for v in model.variables],
                    {v.name: np.array(v.numpy()) for v in optimizer.variables})


def restore_model(model: Any, snapshot: Snapshot) -> None:
    for v, value in zip(model.variables, snapshot.model):
        v.assign(value)


class _Snapshots:
    """Snapshots at read-back boundaries, thinned to at most :data:`MAX_SNAPSHOTS` evenly spaced ones."""

    def __init__(self, model: Any, optimizer: Any) -> None:
        self.model, self.optimizer = model, optimizer
        self.kept: list[Snapshot] = []
        self._stride = 1
        self._boundaries = 0

    def boundary(self, step: int) -> None:
        if self._boundaries % self._stride == 0:
            self.kept.append(take_snapshot(self.model, self.optimizer, step))
            if len(self.kept) > MAX_SNAPSHOTS:
                self.kept = self.kept[::2]
                self._stride *= 2
        self._boundaries += 1


@dataclass
class RunResult:
    trace: Trace
    device: str
    wall_time: float
    data_kind: str
    exhausted_at: int | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    #: training states before the first step and at read-back boundaries (``snapshots=True``)
    snapshots: list[Snapshot] = field(default_factory=list)


class InstrumentedTrainer:
    """Compiles the instrumented chunk and validation functions for one model.

    Reused across seeds of the same model so tracing is paid once.
    """

    def __init__(self, model: Any, *, diagnostics: bool, jit_compile: bool, optimizer: Any = None) -> None:
        tf, keras = _import_tf()
        self.tf, self.keras = tf, keras
        self.model = model
        self.diagnostics = diagnostics
        self.jit_compile = jit_compile
        # ``optimizer`` trains with another optimizer than the compiled one (the what-if replay).
        self.optimizer = model.optimizer if optimizer is None else optimizer
        self.is_loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.inner = self.optimizer.inner_optimizer if self.is_loss_scaled else self.optimizer
        self._chunk_fns: dict[bool, Any] = {}
        self._val_fn = None
        self._bn_gap_fn = None

    # -- building ------------------------------------------------------------

    def build(self, first_batch: Any) -> None:
        """Build model, compiled loss/metrics and optimizer from one batch."""
        model = self.model
        x, y, w = first_batch
        try:
            if hasattr(model, "_symbolic_build"):
                model._symbolic_build(data_batch=first_batch)
            else:  # pragma: no cover - older Keras 3
                model(x)
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
        except Exception as exc:
            raise StabilityUsageError(
                f"the model {model.name!r} could not be built on the first training batch "
                f"(x: {_describe(x)}, y: {_describe(y)}): {type(exc).__name__}: {exc}"
            ) from exc
        if not model.trainable_variables:
            raise StabilityUsageError(f"the model {model.name!r} has no trainable weights: nothing to train")
        self.tvars = list(model.trainable_variables)
        self.var_names = tuple(_var_name(v) for v in self.tvars)
        self.opt_vars = [v for v in self.optimizer.variables if _is_float(v)]
        self.velocities = None
        if self.diagnostics and hasattr(self.inner, "_velocities"):
            self.velocities = [self.inner._velocities[self.inner._get_variable_index(v)] for v in self.tvars]

    def _compute_loss(self, x: Any, y: Any, y_pred: Any, w: Any, training: bool) -> Any:
        model = self.model
        if hasattr(model, "_compute_loss"):
            return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w, training=training)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w)  # pragma: no cover

    def _nonfinite_any(self, tensors: list[Any]) -> Any:
        """True when any element of any float tensor is NaN/Inf.

        Uses one sum per tensor (cheaper than is_finite + reduce_all): a sum is
        non-finite iff an element is, or the sum overflows float32 (|values|
        around 1e38/size), itself a sign of divergence.
        """
        tf = self.tf
        sums = [tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors
                if t is not None and _is_float(t)]
        if not sums:
            return tf.constant(False)
        return tf.logical_not(tf.math.is_finite(tf.add_n(sums)))

    def _step(self, batch: Any, check_inputs: bool = True) -> tuple[Any, ...]:
        tf = self.tf
        model, opt = self.model, self.optimizer
        x, y, w = batch
        input_bad = self._nonfinite_any(tf.nest.flatten(x) + tf.nest.flatten(y)) if check_inputs else None
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
            loss = self._compute_loss(x, y, y_pred, w, True)
            scaled = opt.scale_loss(loss)
        tracker = getattr(model, "_loss_tracker", None)
        if tracker is not None:  # keep model.metrics' "loss" as model.fit would
            tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        grads = tape.gradient(scaled, self.tvars)
        unscale = 1.0 / tf.cast(opt.dynamic_scale, tf.float32) if self.is_loss_scaled else 1.0
        sq = [tf.constant(0.0) if g is None else tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads]
        var_norms = tf.sqrt(tf.stack(sq)) * unscale
        grad_norm = tf.sqrt(tf.add_n(sq)) * unscale
        lr = tf.cast(opt.learning_rate, tf.float32)
        diag = []
        if self.velocities is not None:
            eps = float(getattr(self.inner, "epsilon", 1e-7) or 1e-7)
            # Before the update: how far today's g^2 stands above Adam's running v.
            ratios = [tf.reduce_max(tf.square(tf.cast(g, tf.float32) * unscale) / (v + eps * eps))
                      for g, v in zip(grads, self.velocities) if g is not None]
            diag.append(tf.reduce_max(tf.stack(ratios)))
        opt.apply(grads, self.tvars)
        if self.velocities is not None:
            total = sum(int(np.prod(v.shape)) for v in self.velocities)
            diag.append(tf.sqrt(tf.add_n([tf.reduce_sum(v) for v in self.velocities]) / total))
        loss_bad = tf.logical_not(tf.math.is_finite(tf.cast(loss, tf.float32)))
        grads_bad = tf.logical_not(tf.math.is_finite(grad_norm))
        flags = tf.where(loss_bad, LOSS, 0)
        if self.is_loss_scaled:
            # Non-finite *scaled* gradients with a finite loss: the loss scale
            # overflowed; the optimizer skipped the update and lowered the scale.
            overflow = tf.logical_and(grads_bad, tf.logical_not(loss_bad))
            flags += tf.where(overflow, OVERFLOW, 0) + tf.where(tf.logical_and(grads_bad, loss_bad), GRADS, 0)
        else:
            flags += tf.where(grads_bad, GRADS, 0)
        # Weights and optimizer state are checked every step, so a NaN weight is
        # reported at the step it first appears (an update can go non-finite
        # with finite gradients: a NaN learning rate, an overflowing moment).
        # One combined test; which of the two went bad is worked out only then.
        state_bad = self._nonfinite_any(self.tvars + self.opt_vars)
        flags += tf.cond(
            state_bad,
            lambda: (tf.where(self._nonfinite_any(self.tvars), WEIGHTS, 0)
                     + tf.where(self._nonfinite_any(self.opt_vars), OPTIMIZER, 0)),
            lambda: tf.constant(0))
        if input_bad is not None:
            flags += tf.where(input_bad, INPUT, 0)
        if getattr(model, "_compile_metrics", None) is not None:
            model.compute_metrics(x, y, y_pred, sample_weight=w)
        return tf.cast(loss, tf.float32), grad_norm, var_norms, lr, flags, diag

    def chunk_fn(self, check_inputs: bool = True) -> Any:
        """The compiled chunk: up to ``n`` steps in one ``tf.while_loop``.

        Args:
            check_inputs: test each batch for NaN/Inf on the device.  False for
                numpy arrays, which :func:`make_train_data` checked on the host
                before training (batching and shuffling cannot create a NaN).
        """
        if check_inputs in self._chunk_fns:
            return self._chunk_fns[check_inputs]
        tf = self.tf
        if self.jit_compile:
            # XLA compiles the step, not the loop around it: the dataset
            # iterator ops have no XLA kernel.  Keras' own jit_compile=True
            # does the same (a jit-compiled one_step_on_data in a plain loop).
            step = tf.function(lambda batch: self._step(batch, check_inputs), jit_compile=True,
                               reduce_retracing=True)
        else:
            step = lambda batch: self._step(batch, check_inputs)  # noqa: E731
        n_vars = len(self.tvars)
        n_diag = 2 if self.velocities is not None else 0
        stop_mask = LOSS | GRADS | WEIGHTS | OPTIMIZER | INPUT

        def chunk(iterator: Any, n: Any) -> Any:
            tas = [tf.TensorArray(tf.float32, size=n, element_shape=[]),       # loss
                   tf.TensorArray(tf.float32, size=n, element_shape=[]),       # grad norm
                   tf.TensorArray(tf.float32, size=n, element_shape=[n_vars]),  # per-variable norms
                   tf.TensorArray(tf.float32, size=n, element_shape=[]),       # lr
                   tf.TensorArray(tf.int32, size=n, element_shape=[])]         # flags
            tas += [tf.TensorArray(tf.float32, size=n, element_shape=[]) for _ in range(n_diag)]

            def cond(i: Any, stop: Any, exhausted: Any, *_: Any) -> Any:
                return tf.logical_and(i < n, tf.logical_not(tf.logical_or(stop, exhausted)))

            def body(i: Any, stop: Any, exhausted: Any, *arrays: Any) -> Any:
                optional = iterator.get_next_as_optional()

                def run() -> Any:
                    loss, gn, vn, lr, flags, diag = step(optional.get_value())
                    return (loss, gn, vn, lr, flags, *diag, tf.constant(False))

                def empty() -> Any:
                    return (tf.constant(np.nan, tf.float32), tf.constant(np.nan, tf.float32),
                            tf.fill([n_vars], np.nan), tf.constant(np.nan, tf.float32), tf.constant(0),
                            *[tf.constant(np.nan, tf.float32)] * n_diag, tf.constant(True))

                values = tf.cond(optional.has_value(), run, empty)
                *row, ran_out = values
                arrays = tuple(ta.write(i, v) for ta, v in zip(arrays, row))
                now_stop = tf.not_equal(tf.bitwise.bitwise_and(row[4], stop_mask), 0)
                return (i + tf.where(ran_out, 0, 1), now_stop, ran_out, *arrays)

            out = tf.while_loop(cond, body, (tf.constant(0), tf.constant(False), tf.constant(False), *tas),
                                maximum_iterations=n)
            count, stop, exhausted = out[:3]
            stacked = [ta.stack() for ta in out[3:]]
            return count, stop, exhausted, stacked

        fn = tf.function(chunk, reduce_retracing=True)
        self._chunk_fns[check_inputs] = fn
        return fn

    def bn_gap_fn(self) -> Any:
        """Loss of one batch in training mode (batch statistics) and in inference
        mode (moving statistics), through ``stateless_call`` so that neither
        call updates the BatchNorm statistics or anything else."""
        if self._bn_gap_fn is not None:
            return self._bn_gap_fn
        tf, model = self.tf, self.model

        def gap(x: Any, y: Any, w: Any) -> Any:
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            y_train, _ = model.stateless_call(trainable, frozen, x, training=True)
            y_infer, _ = model.stateless_call(trainable, frozen, x, training=False)
            return (tf.cast(self._compute_loss(x, y, y_train, w, False), tf.float32),
                    tf.cast(self._compute_loss(x, y, y_infer, w, False), tf.float32))

        self._bn_gap_fn = tf.function(gap)
        return self._bn_gap_fn

    def val_fn(self) -> Any:
        if self._val_fn is not None:
            return self._val_fn
        tf, model = self.tf, self.model

        def evaluate(ds: Any) -> Any:
            def add(state: Any, batch: Any) -> Any:
                x, y, w = batch
                # Inference mode: BatchNorm uses (and does not update) its moving statistics.
                y_pred = model(x, training=False) if model._call_has_training_arg else model(x)
                loss = tf.cast(self._compute_loss(x, y, y_pred, w, False), tf.float32)
                size = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)
                return state[0] + loss * size, state[1] + size

            total, count = ds.reduce((tf.constant(0.0), tf.constant(0.0)), add)
            return total / count

        self._val_fn = tf.function(evaluate)
        return self._val_fn


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    try:
        import tensorflow as tf

        return ", ".join(f"{tuple(t.shape)} {t.dtype.name}" for t in tf.nest.flatten(obj))
    except Exception:  # pragma: no cover - description only
        return type(obj).__name__


def train(model: Any, x: Any, y: Any, *, sample_weight: Any = None, validation_data: Any,
          steps: int, batch_size: int, batch_size_explicit: bool, seed: int, spec: Any,
          trainer: InstrumentedTrainer | None = None, snapshots: bool = False) -> tuple[RunResult, InstrumentedTrainer]:
    """Train ``model`` for exactly ``steps`` optimizer steps and record a Trace.

    With ``snapshots``, the training state is copied to the host before the
    first step and at read-back boundaries (see :class:`Snapshot`), for the
    what-if replay.

    Returns:
        (result, trainer): the trainer can be passed back for another seed of
        the same model so the compiled functions are reused.
    """
    tf, keras = _import_tf()
    validate_model(model)
    device, label = resolve_device(spec.device)
    seed_everything(seed, spec.deterministic)
    data = make_train_data(x, y, sample_weight, batch_size=batch_size,
                           batch_size_explicit=batch_size_explicit, seed=seed, shuffle=spec.shuffle)
    val_ds = make_validation_data(validation_data, batch_size=batch_size) if validation_data is not None else None
    ds = data.dataset if data.one_shot else data.dataset.repeat()
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if trainer is None:
        trainer = InstrumentedTrainer(model, diagnostics=spec.diagnostics, jit_compile=spec.jit_compile)
        with tf.device(device):
            trainer.build(data.first_batch)
    chunk = trainer.chunk_fn(check_inputs=data.kind != "arrays")
    evaluate = trainer.val_fn() if val_ds is not None else None
    n_diag = 2 if trainer.velocities is not None else 0

    rec = ChunkRecorder(n_diag)
    val_steps: list[int] = []
    val_losses: list[float] = []
    placed = label
    done = 0
    exhausted_at = None
    started = time.perf_counter()
    with tf.device(device):
        iterator = iter(ds)
        gap_batch = _first_batch(val_ds) if val_ds is not None else data.first_batch
        measure_gap = trainer.bn_gap_fn() if _batchnorm_layers(model) else None
        gaps: list[float] = []

        def validate() -> None:
            val_steps.append(done)
            val_losses.append(float(evaluate(val_ds).numpy()))
            if measure_gap is not None:
                gaps.append(_relative_gap(*measure_gap(*gap_batch)))

        if evaluate is not None:
            validate()
        kept = _Snapshots(model, trainer.optimizer) if snapshots else None
        first_call = True
        while done < steps:
            boundary = min(steps, (done // spec.readback_every + 1) * spec.readback_every)
            if evaluate is not None:
                boundary = min(boundary, (done // spec.validate_every + 1) * spec.validate_every)
            n = boundary - done
            if kept is not None and done % spec.readback_every == 0:
                kept.boundary(done)
            try:
                count, stop, ran_out, stacked = chunk(iterator, tf.constant(n, tf.int32))
                count = int(count.numpy())  # the one host sync per chunk
            except Exception as exc:
                if not first_call:
                    raise
                raise StabilityUsageError(
                    f"the training step failed on the first batch (x: {_describe(data.first_batch[0])}, "
                    f"y: {_describe(data.first_batch[1])}): {type(exc).__name__}: {_short(exc)}"
                ) from exc
            if first_call:
                placed = _verified_placement(stacked[0], trainer.tvars[0])
                first_call = False
            rec.add(stacked, count)
            done += count
            if bool(ran_out.numpy()):
                exhausted_at = done
                break
            if bool(stop.numpy()):
                break
            if evaluate is not None and (done % spec.validate_every == 0 or done == steps):
                validate()
        if measure_gap is not None and evaluate is None and done:
            gaps.append(_relative_gap(*measure_gap(*gap_batch)))
    wall = time.perf_counter() - started

    if exhausted_at is not None:
        raise StabilityUsageError(
            f"the training data ran out after {exhausted_at} batches, but steps={steps} needs {steps}: "
            f"a {data.kind} can be read only once. Pass arrays, a tf.data.Dataset, a keras.utils.PyDataset "
            f"or a zero-argument function returning a fresh generator, or lower steps to <= {exhausted_at}."
        )

    trace = Trace(
        loss=rec.column(0),
        grad_norm=rec.column(1),
        var_grad_norms=rec.column(2) if rec.parts[2] else np.zeros((0, len(trainer.tvars))),
        var_names=trainer.var_names,
        nonfinite=rec.column(4, np.int32),
        lr=rec.column(3),
        val_steps=np.asarray(val_steps, dtype=np.int64) if evaluate is not None else None,
        val_loss=np.asarray(val_losses, dtype=np.float64) if evaluate is not None else None,
        opt_stats={name: rec.column(5 + k) for k, name in enumerate(("g2_over_v_max", "v_rms")[:n_diag])},
        steps_planned=steps,
        info=model_info(model, trainer),
    )
    if gaps:
        finite_gaps = [g for g in gaps if np.isfinite(g)]
        trace.info["bn_train_infer_gap"] = max(finite_gaps) if finite_gaps else None
        trace.info["bn_train_infer_gap_last"] = gaps[-1] if np.isfinite(gaps[-1]) else None
        trace.info["bn_gap_batch"] = "validation" if val_ds is not None else "training"
    stop_bits = LOSS | GRADS | WEIGHTS | OPTIMIZER | INPUT
    bad = np.flatnonzero(trace.nonfinite & stop_bits)
    if bad.size:
        trace.first_nonfinite = _locate_nonfinite(trainer, trace, int(bad[0]))
    metrics = {}
    for m in model.metrics:
        try:
            result = m.result()
            if isinstance(result, dict):
                metrics.update({k: float(v) for k, v in result.items()})
            else:
                metrics[m.name] = float(result)
        except Exception:  # metrics are informational only
            pass
    return RunResult(trace, placed, wall, data.kind, exhausted_at, metrics,
                     kept.kept if kept is not None else []), trainer


class ChunkRecorder:
    """Collects the per-step arrays a chunk returns (read back once per chunk) and joins them.

    Columns, in the chunk's output order: 0 loss, 1 global gradient norm,
    2 per-variable norms, 3 learning rate, 4 flags, then the diagnostics.
    """

    def __init__(self, n_diag: int = 0) -> None:
        self.parts: list[list[np.ndarray]] = [[] for _ in range(5 + n_diag)]

    def add(self, stacked: Any, count: int) -> np.ndarray:
        """Append the first ``count`` steps of a chunk's outputs; returns their flags."""
        for column, tensor in zip(self.parts, stacked):
            column.append(tensor.numpy()[:count])
        return self.parts[4][-1]

    def column(self, k: int, dtype: Any = np.float64) -> np.ndarray:
        parts = self.parts[k]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _first_batch(ds: Any) -> Any:
    for batch in ds.take(1):
        return batch
    return None  # pragma: no cover - make_validation_data rejects empty data


def _batchnorm_layers(model: Any) -> list[Any]:
    layers = model._flatten_layers(include_self=False)
    return [layer for layer in layers if type(layer).__name__ == "BatchNormalization"]


def _relative_gap(train_loss: Any, infer_loss: Any) -> float:
    """|inference - training| / training loss of the same batch (NaN when undefined)."""
    a, b = float(train_loss.numpy()), float(infer_loss.numpy())
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        return float("nan")
    return abs(b - a) / a


def _short(exc: BaseException, limit: int = 600) -> str:
    text = str(exc).strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _locate_nonfinite(trainer: InstrumentedTrainer, trace: Trace, step: int) -> dict[str, Any]:
    """Name the first quantity / variable that went non-finite at ``step``."""
    flags = int(trace.nonfinite[step])
    out: dict[str, Any] = {"step": step}
    if flags & LOSS and not flags & GRADS:
        out.update(source="loss", variable=None)
        return out
    if flags & GRADS and trace.var_grad_norms is not None:
        row = trace.var_grad_norms[step]
        k = int(np.argmax(~np.isfinite(row))) if (~np.isfinite(row)).any() else None
        out.update(source="gradients" if not flags & LOSS else "loss", variable=None if k is None else trace.var_names[k])
        return out
    for source, variables in (("weights", trainer.tvars), ("optimizer state", trainer.optimizer.variables)):
        for v in variables:
            if _is_float(v) and not np.all(np.isfinite(np.asarray(v.numpy(), dtype=np.float64))):
                out.update(source=source, variable=_var_name(v))
                return out
    out.update(source="input batch" if flags & INPUT else "loss", variable=None)
    return out


def model_info(model: Any, trainer: InstrumentedTrainer) -> dict[str, Any]:
    """Builtins-only facts about the model and optimizer, for diagnosis and reports."""
    inner = trainer.inner
    try:
        config = inner.get_config()
    except Exception:  # pragma: no cover - exotic optimizers
        config = {}
    keep = ("learning_rate", "epsilon", "amsgrad", "beta_1", "beta_2", "momentum", "nesterov",
            "clipnorm", "clipvalue", "global_clipnorm", "weight_decay", "rho")
    opt_cfg = {}
    for k in keep:
        if k in config:
            v = config[k]
            opt_cfg[k] = v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)[:80]
    layers = [type(layer).__name__ for layer in model._flatten_layers(include_self=False)]
    bn = _batchnorm_layers(model)
    return {
        "model": model.name,
        "model_class": type(model).__name__,
        "parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
        "optimizer": type(inner).__name__,
        "optimizer_config": opt_cfg,
        "loss_scale": trainer.is_loss_scaled,
        "dtype_policy": str(getattr(getattr(model, "dtype_policy", None), "name", "")),
        "layers": sorted(set(layers)),
        "batchnorm_layers": len(bn),
        "batchnorm_momentum": [float(layer.momentum) for layer in bn][:5],
        "jit_compile": trainer.jit_compile,
        "diagnostics": trainer.velocities is not None,
    }
