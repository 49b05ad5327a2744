"""Overhead of stability.fit against plain ``model.fit`` of the same model, data, seed and steps, per backend.

Variants, interleaved in a rotating order over ``--reps`` repetitions (medians reported):

* ``fit``: plain ``model.fit`` as compiled (``steps_per_execution=1``);
* ``fit_spe``: plain ``model.fit`` with ``steps_per_execution=readback_every`` (what the recording
  chunks by; on PyTorch, whose fit refuses ``steps_per_execution > 1``, the same as ``fit``);
* ``stability``: the engine behind ``stability.fit`` (default recording);
* ``stability_diag``: the same with ``diagnostics=True`` (Adam slot statistics);
* ``fit_cb`` / ``stability_cb``: plain ``model.fit`` as compiled and the engine, each with a user callback
  that overrides ``on_train_batch_end`` (it sees single batches, so the stability run keeps the model's
  ``steps_per_execution=1`` and reads its recording back once per chunk).

Two timings per run, both on a fresh model (what one stability test pays):

* *cold*: the whole call, tracing and compilation included, and for ``stability`` the building of
  its report after ``fit`` returns;
* *steady*: the epochs after the first, up to the end of training (a timing callback, passed to every
  variant alike: from the end of the first epoch to ``on_train_end``), i.e. the per-step cost once
  compiled, read-backs included.

Ratios are stability / fit_spe (the cost of the recording), stability / fit (against default fit) and
stability_cb / fit_cb (the cost of the recording for a run with a batch-level callback).

Usage::

    python benchmarks/overhead.py                      # every installed backend, one subprocess each
    python benchmarks/overhead.py --backend jax        # one backend, in this process
    python benchmarks/overhead.py --steps 512 --reps 5 --models mlp,conv,transformer

Writes ``benchmarks/results/overhead.md`` (all backends; ``overhead-MODELS.md`` for other ``--models``) unless
``--no-write``.
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

from benchmarks._results import check_fit_timing, fit_timing_parser, main_per_backend  # noqa: E402

BATCH = 32
N_SAMPLES = 2048  # 64 batches of 32: an epoch is 64 steps
VARIANTS = ("fit", "fit_spe", "stability", "stability_diag", "fit_cb", "stability_cb")


def _data(kind: str):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "mlp":
        x = rng.normal(size=(N_SAMPLES, 32)).astype("float32")
        y = (x[:, :4].sum(axis=1) > 0).astype("float32")
    elif kind == "transformer":
        x = rng.normal(size=(N_SAMPLES, 16, 32)).astype("float32")
        y = rng.integers(0, 10, size=N_SAMPLES).astype("int32")
    else:
        x = rng.normal(size=(N_SAMPLES, 16, 16, 3)).astype("float32")
        y = rng.integers(0, 10, size=N_SAMPLES).astype("int32")
    return x, y


def _build(kind: str, steps_per_execution: int = 1):
    import keras
    from keras import layers

    if kind == "mlp":
        model = keras.Sequential(
            [
                keras.Input((32,)),
                layers.Dense(64, activation="relu"),
                layers.Dense(64, activation="relu"),
                layers.Dense(1, activation="sigmoid"),
            ]
        )
        loss = "binary_crossentropy"
    elif kind == "transformer":
        # one pre-norm transformer block over 16 tokens of width 32 (4 heads), mean-pooled, 10 classes
        inp = keras.Input((16, 32))
        h = layers.LayerNormalization()(inp)
        h = inp + layers.MultiHeadAttention(num_heads=4, key_dim=8)(h, h)
        f = layers.LayerNormalization()(h)
        f = layers.Dense(32)(layers.Dense(128, activation="gelu")(f))
        out = layers.Dense(10)(layers.GlobalAveragePooling1D()(h + f))
        model = keras.Model(inp, out)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
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
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution
    )
    return model


def _timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks = []

        def on_epoch_end(self, epoch, logs=None):
            self.marks.append(time.perf_counter())

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return EpochTimer()


def _batch_callback():
    import keras

    class EveryBatch(keras.callbacks.Callback):
        """A user callback that sees single batches (it counts them)."""

        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    return EveryBatch()


def _run(variant: str, kind: str, steps: int, readback: int, seed: int) -> tuple[float, float, str]:
    import keras

    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    x, y = _data(kind)
    backend = keras.backend.backend()
    spec = resolve_config_defaults(lambda n: None, lambda n: None).replace(
        readback_every=readback, diagnostics=variant == "stability_diag"
    )
    engine.seed_everything(seed)
    spe = readback if variant == "fit_spe" and backend != "torch" else 1
    model = _build(kind, spe)
    timer = _timer()
    device = "?"
    callbacks = [timer, _batch_callback()] if variant.endswith("_cb") else [timer]
    t0 = time.perf_counter()
    if variant.startswith("fit"):
        model.fit(
            x, y, batch_size=BATCH, epochs=steps // (N_SAMPLES // BATCH), shuffle=True, verbose=0, callbacks=callbacks
        )
    else:
        result = engine.train(
            model,
            x,
            y,
            fit_kwargs={"callbacks": callbacks, "shuffle": True},
            steps=steps,
            batch_size=BATCH,
            seed=seed,
            spec=spec,
        )
        assert result.trace.steps == steps, (result.trace.steps, steps)
        device = result.device
    end = time.perf_counter()
    return end - t0, timer.end - timer.marks[0], device


def one_backend(args) -> dict:
    import keras

    backend = keras.backend.backend()
    models = args.models.split(",")
    times = {(m, v, phase): [] for m in models for v in VARIANTS for phase in ("cold", "steady")}
    device = "?"
    for rep in range(args.reps):
        for m in models:
            order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
            for v in order:
                cold, steady, dev = _run(v, m, args.steps, args.readback, seed=rep)
                device = dev if dev != "?" else device
                times[(m, v, "cold")].append(cold)
                times[(m, v, "steady")].append(steady)
        print(f"[{backend}] repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    rows = []
    for m in models:
        for phase in ("steady", "cold"):
            med = {v: statistics.median(times[(m, v, phase)]) for v in VARIANTS}
            rows.append(
                {
                    "backend": backend,
                    "device": device,
                    "model": m,
                    "phase": phase,
                    **med,
                    "ratio_spe": med["stability"] / med["fit_spe"],
                    "ratio_fit": med["stability"] / med["fit"],
                    "ratio_diag_spe": med["stability_diag"] / med["fit_spe"],
                    "ratio_cb": med["stability_cb"] / med["fit_cb"],
                }
            )
    return {"backend": backend, "keras": keras.__version__, "rows": rows}


def table(results: list[dict], args) -> str:
    cpus = "" if args.cpus is None else f" --cpus {args.cpus}"
    lines = [
        f"`python benchmarks/overhead.py --steps {args.steps} --reps {args.reps} "
        f"--readback {args.readback}{cpus}` "
        f"on {platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}; medians of "
        f"{args.reps} interleaved repetitions; fresh model per run; *steady* = epochs 2.. "
        f"(64 steps each) to the end of training, *cold* = the whole call incl. compilation (and the "
        f"report's building).",
        "",
        "| backend | device | model | phase | fit (s) | fit spe (s) | stability (s) | stability / fit spe | "
        "stability / fit | diagnostics / fit spe | with a batch callback: stability / fit |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            lines.append(
                f"| {r['backend']} | {r['device']} | {r['model']} | {r['phase']} | {r['fit']:.3f} | "
                f"{r['fit_spe']:.3f} | {r['stability']:.3f} | {r['ratio_spe']:.2f}x | "
                f"{r['ratio_fit']:.2f}x | {r['ratio_diag_spe']:.2f}x | {r['ratio_cb']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = fit_timing_parser(__doc__, reps=5, models="mlp,conv")
    parser.add_argument(
        "--cpus",
        default=None,
        help="comma-separated CPU ids to pin each run to (os.sched_setaffinity): on a shared "
        "machine a pinned run is steadier; written to overhead-cpus-<ids>.md",
    )

    def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        check_fit_timing(parser, args)
        if args.steps % (N_SAMPLES // BATCH):
            parser.error(f"--steps must be a multiple of {N_SAMPLES // BATCH} (one epoch)")
        if args.cpus is not None:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    def written(args: argparse.Namespace) -> tuple[str, str]:
        # the default models' table is overhead.md; other models' tables sit beside it
        models = "" if args.models == "mlp,conv" else "-" + args.models.replace(",", "-")
        if args.cpus is None:
            return f"overhead{models}.md", "# Overhead: stability.fit vs plain model.fit\n\n"
        return (
            f"overhead{models}-cpus-{args.cpus.replace(',', '-')}.md",
            f"# Overhead: stability.fit vs plain model.fit\n\nEvery run pinned to CPU(s) {args.cpus}.\n\n",
        )

    return main_per_backend(
        parser, script=__file__, one_backend=one_backend, table=table, written=written, validate=validate
    )


if __name__ == "__main__":
    raise SystemExit(main())
