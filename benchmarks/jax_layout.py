"""How the JAX recording lays out its per-variable sums, and what each layout costs XLA to compile and to run.

The JAX recorder sums four rows per variable in the step (the squares of the weights, of the update and of the
gradient, and the optimizer slots' plain sum: ``JaxRecorder._squared_sums``).  Four variants of the same fresh
model, data, seed and steps (``overhead.py``'s models), interleaved in a rotating order, medians reported:

* ``fit_spe``: plain ``model.fit`` with ``steps_per_execution=readback``;
* ``shipped``: the recording as shipped: one blocked reduction of the four rows of every variable, the
  per-variable sums kept as whole rows of that ``(4, variables)`` array;
* ``scalars``: the same reduction, each variable's sum then taken out as a scalar and the scalars stacked again
  (the recording before ``8933fd8``): XLA compiles each scalar slice into a kernel of its own;
* ``grad_apart``: two blocked reductions, the weights' and the gradient's squares in one, the update's squares
  and the slots in the other, so that no fused computation reads both the gradient and the optimizer's output.

*compile* is XLA's compilation of the train step (JAX's ``/jax/core/compile/backend_compile_duration`` event,
the largest in the run); *cold* the whole call; *steady* the epochs after the first, as in ``overhead.py``.

Usage::

    python benchmarks/jax_layout.py                      # mlp, conv and transformer, 3 repetitions
    python benchmarks/jax_layout.py --models conv --reps 5

Writes ``benchmarks/results/jax_layout.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import check_fit_timing, fit_timing_parser, main_per_backend  # noqa: E402

VARIANTS = ("fit_spe", "shipped", "scalars", "grad_apart")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _variant_sums(name: str, shipped):
    """The ``_squared_sums`` of a variant (``shipped`` itself for the shipped one)."""
    import jax.numpy as jnp

    from pytest_stability.training.recorders import jax as recorder

    if name == "scalars":

        def scalars(self, *args):
            row_sums = recorder._jax_row_sums

            def each_a_scalar(mats):  # every sums[row, variable] on its own, stacked again (as before 8933fd8)
                sums = row_sums(mats)
                return jnp.stack([jnp.stack([sums[r, j] for j in range(len(mats))]) for r in range(4)])

            recorder._jax_row_sums = each_a_scalar
            try:
                return shipped(self, *args)
            finally:
                recorder._jax_row_sums = row_sums

        return scalars
    if name != "grad_apart":
        return shipped

    def grad_apart(self, grads, index, before, after, state_after, zero):
        checked: set[int] = set()
        first, second = [], []
        for g, k, b, a in zip(grads, index, before, after, strict=True):
            w = jnp.reshape(b, (-1,)).astype(jnp.float32)
            slots = [state_after[j] for j in self.slots[k]] if len(state_after) == len(self.state_vars) else []
            checked.update(self.slots[k] if slots else ())
            gf = jnp.reshape(g, (-1,)).astype(jnp.float32) if g is not None else jnp.zeros_like(w)
            s = sum(jnp.reshape(t, (-1,)).astype(jnp.float32) for t in slots) if slots else jnp.zeros_like(w)
            first.append(jnp.stack([w * w, gf * gf]))
            second.append(jnp.stack([jnp.square(jnp.reshape(a, (-1,)).astype(jnp.float32) - w), s]))
        wg, ds = recorder._jax_row_sums(first), recorder._jax_row_sums(second)
        return wg[1], ds[0], wg[0], ds[1], checked

    return grad_apart


def one_backend(args: argparse.Namespace) -> dict:
    import jax
    import keras

    from benchmarks import overhead
    from pytest_stability.training.recorders import jax as recorder

    compiles: list[float] = []

    def listen(event: str, seconds: float, **kwargs: object) -> None:
        if event == COMPILE_EVENT:
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    shipped = recorder.JaxRecorder._squared_sums
    models = args.models.split(",")
    times = {(m, v): [] for m in models for v in VARIANTS}
    try:
        for rep in range(args.reps + 1):  # the first repetition warms up the process: not counted
            for m in models:
                for v in VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]:
                    recorder.JaxRecorder._squared_sums = _variant_sums(v, shipped)
                    compiles.clear()
                    cold, steady, _ = overhead._run(
                        "fit_spe" if v == "fit_spe" else "stability", m, args.steps, args.readback, seed=rep
                    )
                    if rep:
                        times[(m, v)].append((max(compiles, default=float("nan")), cold, steady))
            print(f"[jax] repetition {rep + 1}/{args.reps + 1} done", file=sys.stderr, flush=True)
    finally:
        recorder.JaxRecorder._squared_sums = shipped
    rows = []
    for m in models:
        med = {v: [statistics.median(t[i] for t in times[(m, v)]) for i in range(3)] for v in VARIANTS}
        rows.append({"model": m, **med})
    return {"backend": keras.backend.backend(), "rows": rows}


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/jax_layout.py --models {args.models} --steps {args.steps} --reps {args.reps} "
        f"--readback {args.readback}` on {platform.machine()} ({os.cpu_count()} cores), "
        f"{platform.python_version()}; medians of {args.reps} interleaved repetitions (after one to warm up); "
        "fresh model per run; seconds, and in brackets the ratio to `fit_spe`.",
        "",
        "| model | variant | XLA compile of the step (s) | cold (s) | steady (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            base = r["fit_spe"]
            for v in VARIANTS:
                cells = " | ".join(f"{x:.3f} ({x / b:.2f}x)" for x, b in zip(r[v], base, strict=True))
                lines.append(f"| {r['model']} | {v} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    return main_per_backend(
        fit_timing_parser(__doc__, reps=3, models="mlp,conv,transformer"),
        script=__file__,
        one_backend=one_backend,
        table=table,
        written=lambda args: ("jax_layout.md", "# The JAX recording's layout: compilation and steady cost\n\n"),
        backends=("jax",),
        validate=check_fit_timing,
    )


if __name__ == "__main__":
    raise SystemExit(main())
