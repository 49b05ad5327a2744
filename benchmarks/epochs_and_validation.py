"""Where Keras' own per-epoch and validation work dominates: a full-batch run, and a batch-1 epoch with validation.

Two measurements per backend, each a ratio of medians over ``--reps`` interleaved repetitions (fresh model each):

* **full batch**: an MLP trained full-batch (every step the whole data set, one step an epoch) for ``--steps``
  steps: plain ``model.fit`` with one epoch per step (what a user writes), plain ``fit`` of the same steps as one
  long epoch (a ``tf.data`` pipeline / generator repeating the batch: the floor), and the stability run
  (``engine.train``, default settings).  Ratio: stability / one long epoch.
* **batch 1 with validation**: one epoch at batch size 1 over ``--b1-samples`` samples (1024) with 512 validation
  samples passed as
  ``validation_data``: plain ``fit`` against the stability run (which measures the validation loss itself every
  ``validate_every`` steps, in inference mode).  Ratio: stability / fit.
* **batch 1 with validation, a ``test_step`` of the model's own** (``--own-samples`` training samples, 256 by
  default, 512 validation samples): the same, for a model whose ``test_step`` is its own (it may compute any
  loss, so the plugin runs it itself, in the batches ``fit`` validates in, or joined where a probe finds that this
  changes nothing), and the stability run again with the measurements run op by op
  (``validation.COMPILE_MEASUREMENTS`` off).  Ratios: stability / fit, both ways.

Usage::

    python benchmarks/epochs_and_validation.py                 # every installed backend, one subprocess each
    python benchmarks/epochs_and_validation.py --backend tensorflow --reps 3

Writes ``benchmarks/results/epochs_and_validation.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import main_per_backend  # noqa: E402


def _mlp(n_in: int):
    import keras

    model = keras.Sequential(
        [
            keras.Input((n_in,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _data(n: int, n_in: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    return x, np.sin(x[:, :1] * 2).astype("float32")


def _repeat(keras, x, y, steps):
    """The same full batch, ``steps`` times, as one epoch."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors((x, y)).repeat(steps)

    def gen():
        for _ in range(steps):
            yield x, y

    return gen()


def full_batch(variant: str, steps: int, seed: int) -> float:
    import keras

    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    x, y = _data(256, 8, 0)
    engine.seed_everything(seed)
    model = _mlp(8)
    t0 = time.perf_counter()
    if variant == "fit_epochs":
        model.fit(x, y, batch_size=256, epochs=steps, verbose=0)
    elif variant == "fit_one_epoch":
        model.fit(_repeat(keras, x, y, steps), epochs=1, steps_per_epoch=steps, verbose=0)
    else:
        spec = resolve_config_defaults(lambda n: None, lambda n: None)
        result = engine.train(model, x, y, steps=steps, seed=seed, spec=spec, batch_size=256)
        assert result.trace.steps == steps
    return time.perf_counter() - t0


def batch_one(variant: str, seed: int, samples: int) -> float:
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    x, y = _data(samples, 8, 0)
    xv, yv = _data(512, 8, 1)
    engine.seed_everything(seed)
    model = _mlp(8)
    t0 = time.perf_counter()
    if variant == "fit":
        model.fit(x, y, batch_size=1, epochs=1, validation_data=(xv, yv), verbose=0)
    else:
        spec = resolve_config_defaults(lambda n: None, lambda n: None)
        result = engine.train(
            model, x, y, steps=samples, seed=seed, spec=spec, batch_size=1, fit_kwargs={"validation_data": (xv, yv)}
        )
        assert result.trace.steps == samples and result.trace.has_validation
    return time.perf_counter() - t0


def _own_test_step_model():
    import keras

    backend = keras.backend.backend()

    class OwnTestStep(keras.Model):
        """A ``test_step`` of the model's own, as the Keras guide writes one: the loss and the metrics updated."""

        def test_step(self, *args):
            if backend == "jax":  # (JAX's test_step is stateless: Keras' own, called as a user's would)
                return super().test_step(*args)
            x, y = args[0]
            y_pred = self(x, training=False)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
            for metric in self.metrics:
                metric.update_state(loss) if metric.name == "loss" else metric.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

    inputs = keras.Input((8,))
    model = OwnTestStep(inputs, keras.layers.Dense(1)(keras.layers.Dense(64, activation="tanh")(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def own_test_step(variant: str, seed: int, samples: int) -> float:
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine, validation

    x, y = _data(samples, 8, 0)
    xv, yv = _data(512, 8, 1)
    engine.seed_everything(seed)
    model = _own_test_step_model()
    t0 = time.perf_counter()
    if variant == "fit":
        model.fit(x, y, batch_size=1, epochs=1, validation_data=(xv, yv), verbose=0)
    else:
        spec = resolve_config_defaults(lambda n: None, lambda n: None)
        validation.COMPILE_MEASUREMENTS = variant == "stability"
        try:
            result = engine.train(
                model, x, y, steps=samples, seed=seed, spec=spec, batch_size=1, fit_kwargs={"validation_data": (xv, yv)}
            )
        finally:
            validation.COMPILE_MEASUREMENTS = True
        assert result.trace.steps == samples and result.trace.has_validation, result.trace.info.get("notes")
    return time.perf_counter() - t0


def one_backend(args) -> dict:
    import keras

    times: dict[str, list[float]] = {
        k: []
        for k in (
            "fit_epochs",
            "fit_one_epoch",
            "stability",
            "b1_fit",
            "b1_stability",
            "own_fit",
            "own_stability",
            "own_stability_op_by_op",
        )
    }
    for rep in range(args.reps):
        for v in ("fit_epochs", "fit_one_epoch", "stability")[rep % 3 :] + ("fit_epochs", "fit_one_epoch", "stability")[
            : rep % 3
        ]:
            times[v].append(full_batch(v, args.steps, rep))
        for v in ("fit", "stability") if rep % 2 == 0 else ("stability", "fit"):
            times["b1_" + v].append(batch_one(v, rep, args.b1_samples))
        own = ("fit", "stability", "stability_op_by_op")
        for v in own[rep % 3 :] + own[: rep % 3]:
            times["own_" + v].append(own_test_step(v, rep, args.own_samples))
        print(f"[{keras.backend.backend()}] repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"backend": keras.backend.backend(), "keras": keras.__version__, **med}


def table(results: list[dict], args) -> str:
    command = (
        f"python benchmarks/epochs_and_validation.py --steps {args.steps} --reps {args.reps} "
        f"--b1-samples {args.b1_samples} --own-samples {args.own_samples}"
    )
    lines = [
        f"`{command}` on "
        f"{platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}; medians of "
        f"{args.reps} interleaved repetitions, fresh model each; whole calls, compilation included.",
        "",
        "| backend | full batch: fit, 1 step an epoch (s) | fit, one long epoch (s) | stability (s) | "
        "stability / one long epoch | batch 1 + validation: fit (s) | stability (s) | stability / fit | "
        "own test_step, batch 1 + validation: fit (s) | stability (s) | stability / fit | op by op (s) | "
        "op by op / fit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['fit_epochs']:.2f} | {r['fit_one_epoch']:.2f} | {r['stability']:.2f} | "
            f"{r['stability'] / r['fit_one_epoch']:.2f}x | {r['b1_fit']:.2f} | {r['b1_stability']:.2f} | "
            f"{r['b1_stability'] / r['b1_fit']:.2f}x | {r['own_fit']:.2f} | {r['own_stability']:.2f} | "
            f"{r['own_stability'] / r['own_fit']:.2f}x | {r['own_stability_op_by_op']:.2f} | "
            f"{r['own_stability_op_by_op'] / r['own_fit']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--b1-samples", type=int, default=1024, help="training samples of the batch-1 epoch")
    parser.add_argument(
        "--own-samples", type=int, default=256, help="training samples of the own-test_step model's batch-1 epoch"
    )
    return main_per_backend(
        parser,
        script=__file__,
        one_backend=one_backend,
        table=table,
        written=lambda args: ("epochs_and_validation.md", "# Short epochs and small-batch validation\n\n"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
