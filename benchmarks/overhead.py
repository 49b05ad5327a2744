"""Overhead of the stability instrumentation against plain ``model.fit``.

For each model (an MLP, a small convnet, a BatchNorm convnet) this trains the
same number of steps, on the same data with the same seed, batch size and
per-pass shuffling, once with plain ``model.fit`` (numpy arrays, no callbacks,
``verbose=0``) and once through the engine behind the ``stability`` fixture,
with the default checks and with ``diagnostics=True``.  The three variants
are interleaved, in a rotating order, over several repetitions; the table
reports medians.

Two timings per variant and repetition:

* *incl. compile*: a fresh model, the first call (tracing and graph
  optimisation included) -- what one stability test pays;
* *steady*: a second call of the same length on the same, already traced
  model (``model.fit`` reuses ``model.train_function``; the engine reuses its
  ``InstrumentedTrainer``) -- the per-step cost.

Both sides are timed around the whole call (pipeline creation, trace
assembly), both compile with ``jit_compile=False`` unless ``--jit``, and
neither evaluates validation data.  ``steps`` is rounded to a whole number
of passes over the data so ``model.fit`` does exactly that many steps.

Usage::

    python benchmarks/overhead.py [--steps 512] [--reps 5] [--models mlp,conv,bnconv] [--jit]

Writes the table to ``benchmarks/results/overhead.md`` as well.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._results import write_results  # noqa: E402

RESULTS = "overhead.md"
BATCH = 32
N_SAMPLES = 2048  # 64 batches of 32: a pass is a whole number of steps


def _data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "mlp":
        x = rng.normal(size=(N_SAMPLES, 32)).astype("float32")
        y = (x[:, :4].sum(axis=1) > 0).astype("float32")
    else:
        x = rng.normal(size=(N_SAMPLES, 16, 16, 3)).astype("float32")
        y = rng.integers(0, 10, size=N_SAMPLES).astype("int32")
    return x, y


def _build(kind: str, jit: bool, steps_per_execution: int = 1):
    import keras
    from keras import layers

    if kind == "mlp":
        model = keras.Sequential([keras.Input((32,)), layers.Dense(64, activation="relu"),
                                  layers.Dense(64, activation="relu"), layers.Dense(1, activation="sigmoid")])
        loss = "binary_crossentropy"
    else:
        bn = kind == "bnconv"
        stack = [keras.Input((16, 16, 3))]
        for filters in (16, 32):
            stack.append(layers.Conv2D(filters, 3, padding="same", use_bias=not bn))
            if bn:
                stack.append(layers.BatchNormalization())
            stack += [layers.Activation("relu"), layers.MaxPooling2D()]
        stack += [layers.GlobalAveragePooling2D(), layers.Dense(10)]
        model = keras.Sequential(stack)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    return model


def _time_plain(kind, x, y, steps, seed, spec, steps_per_execution=1):
    from pytest_stability.training import engine

    engine.seed_everything(seed, spec.deterministic)
    model = _build(kind, spec.jit_compile, steps_per_execution)
    per_pass = len(x) // BATCH
    kwargs = dict(batch_size=BATCH, epochs=steps // per_pass, steps_per_epoch=per_pass,
                  shuffle=True, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y, **kwargs)
    first = time.perf_counter() - t0
    engine.seed_everything(seed, spec.deterministic)
    t0 = time.perf_counter()
    model.fit(x, y, **kwargs)
    return first, time.perf_counter() - t0


def _time_stability(kind, x, y, steps, seed, spec):
    from pytest_stability.training import engine

    engine.seed_everything(seed, spec.deterministic)
    model = _build(kind, spec.jit_compile)
    kwargs = dict(validation_data=None, steps=steps, batch_size=BATCH, batch_size_explicit=True,
                  seed=seed, spec=spec)
    t0 = time.perf_counter()
    result, trainer = engine.train(model, x, y, **kwargs)
    first = time.perf_counter() - t0
    assert result.trace.steps == steps, (result.trace.steps, steps)
    t0 = time.perf_counter()
    result, _ = engine.train(model, x, y, trainer=trainer, **kwargs)
    second = time.perf_counter() - t0
    assert result.trace.steps == steps, (result.trace.steps, steps)
    return first, second


def measure(models: list[str], steps: int, reps: int, jit: bool) -> list[dict]:
    from pytest_stability.options import resolve_config_defaults

    base = resolve_config_defaults(lambda n: None, lambda n: None).replace(jit_compile=jit)
    variants = {
        "plain": lambda k, x, y: _time_plain(k, x, y, steps, 0, base),
        "fit_spe": lambda k, x, y: _time_plain(k, x, y, steps, 0, base, base.readback_every),
        "default": lambda k, x, y: _time_stability(k, x, y, steps, 0, base),
        "diagnostics": lambda k, x, y: _time_stability(k, x, y, steps, 0, base.replace(diagnostics=True)),
    }
    names = list(variants)
    rows = []
    for kind in models:
        x, y = _data(kind)
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for rep in range(reps):
            order = names[rep % len(names):] + names[:rep % len(names)]  # rotate so drift hits every variant
            for name in order:
                times[name].append(variants[name](kind, x, y))
            print(f"  {kind} rep {rep + 1}/{reps}: " + ", ".join(
                f"{n} {times[n][-1][0]:.2f}/{times[n][-1][1]:.2f}s" for n in names), file=sys.stderr)
        row = {"model": kind}
        for n in names:
            row[n + "_compile"] = statistics.median(t[0] for t in times[n])
            row[n + "_steady"] = statistics.median(t[1] for t in times[n])
        for n in ("default", "diagnostics"):
            # Median of per-repetition ratios: each ratio pairs runs taken close in time.
            for base_name in ("plain", "fit_spe"):
                for i, phase in enumerate(("compile", "steady")):
                    row[f"ratio_{n}_{base_name}_{phase}"] = statistics.median(
                        a[i] / b[i] for a, b in zip(times[n], times[base_name]))
        rows.append(row)
    return rows


def render(rows: list[dict], steps: int, reps: int, jit: bool) -> str:
    import keras
    import tensorflow as tf

    lines = [
        f"Steps per run: {steps}, batch {BATCH}, repetitions: {reps} (interleaved), medians; "
        f"jit_compile={jit}. TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{platform.machine()} CPU x{os.cpu_count()}, {'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}.",
        "",
        "Ratios are stability time / plain time, the median of per-repetition ratios; "
        "the bracketed ratio is against `model.fit` with `steps_per_execution` equal to the engine's "
        "chunk (`readback_every`), which isolates the cost of the recording itself.",
        "",
        "| model | phase | plain fit (s) | fit spe=chunk (s) | stability (s) | ratio default | "
        "diagnostics (s) | ratio diagnostics |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for phase, label in (("steady", "steady-state"), ("compile", "incl. compile")):
            lines.append(
                f"| {r['model']} | {label} | {r['plain_' + phase]:.3f} | {r['fit_spe_' + phase]:.3f} | "
                f"{r['default_' + phase]:.3f} | {r['ratio_default_plain_' + phase]:.3f}x "
                f"({r['ratio_default_fit_spe_' + phase]:.3f}x) | {r['diagnostics_' + phase]:.3f} | "
                f"{r['ratio_diagnostics_plain_' + phase]:.3f}x ({r['ratio_diagnostics_fit_spe_' + phase]:.3f}x) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=512, help="steps per run (rounded to whole passes of 64)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--models", default="mlp,conv,bnconv", help="comma-separated: mlp, conv, bnconv")
    parser.add_argument("--jit", action="store_true", help="compile both sides with XLA (jit_compile=True)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write results/{RESULTS}")
    args = parser.parse_args(argv)
    per_pass = N_SAMPLES // BATCH
    steps = max(per_pass, args.steps // per_pass * per_pass)
    models = [m for m in args.models.split(",") if m]
    rows = measure(models, steps, args.reps, args.jit)
    table = render(rows, steps, args.reps, args.jit)
    print(table)
    if not args.no_write:
        write_results(RESULTS, "# Instrumentation overhead\n\nGenerated by `python benchmarks/overhead.py`.\n\n"
                      + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
