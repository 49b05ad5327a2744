"""Where a stability run's extra time goes, against plain ``fit(steps_per_execution=readback_every)``.

Three variants of the same fresh model, data, seed and steps (``overhead.py``'s MLP or convnet), interleaved
in a rotating order over ``--reps`` repetitions, medians reported:

* ``fit_spe``: plain ``model.fit`` with ``steps_per_execution=readback`` (``overhead.py``'s "fit spe");
* ``stability``: the engine behind ``stability.fit``, as shipped;
* ``structure``: the same engine with each step's statistics (gradient, update and weight norms, the
  non-finite flags: ``CompiledRecorder._row``) replaced by a constant row: what the recording's structure
  costs without them (its buffers, the loss ring, the step counter and halt flag, the read-backs, the
  report).

*cold* is the whole call, tracing and compilation included; *steady* the epochs after the first, as in
``overhead.py``.  So ``stability - structure`` is what the statistics cost, and ``structure - fit_spe``
what the rest of the recording costs.  TensorFlow and JAX (PyTorch runs its steps eagerly: nothing to
trace or compile).

Usage::

    python benchmarks/cold_parts.py                         # TensorFlow and JAX, one subprocess each
    python benchmarks/cold_parts.py --backend tensorflow --models mlp --reps 7

Writes ``benchmarks/results/cold_parts.md`` unless ``--no-write``.
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

VARIANTS = ("fit_spe", "stability", "structure")


def one_backend(args: argparse.Namespace) -> dict:
    import keras

    from benchmarks import overhead
    from pytest_stability.training.recorders import compiled

    shipped = compiled.CompiledRecorder._row

    def constant_row(self, *args, **kwargs):  # the same row width, no statistics
        return self.ops.zeros((self.width,), "float32"), self.ops.convert_to_tensor(False)

    times = {(m, v): [] for m in args.models.split(",") for v in VARIANTS}
    try:
        for rep in range(args.reps):
            for m in args.models.split(","):
                for v in VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]:
                    compiled.CompiledRecorder._row = constant_row if v == "structure" else shipped
                    cold, steady, _ = overhead._run(
                        "fit_spe" if v == "fit_spe" else "stability", m, args.steps, args.readback, seed=rep
                    )
                    times[(m, v)].append((cold, steady))
            print(f"[{keras.backend.backend()}] repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    finally:
        compiled.CompiledRecorder._row = shipped
    rows = []
    for m in args.models.split(","):
        med = {
            v: {phase: statistics.median(t[i] for t in times[(m, v)]) for i, phase in enumerate(("cold", "steady"))}
            for v in VARIANTS
        }
        rows.append({"model": m, **med})
    return {"backend": keras.backend.backend(), "rows": rows}


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/cold_parts.py --steps {args.steps} --reps {args.reps} --readback {args.readback}` "
        f"on {platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}; medians of {args.reps} "
        "interleaved repetitions; fresh model per run; seconds, and ratios to `fit_spe`.",
        "",
        "| backend | model | phase | fit spe (s) | stability (s) | structure alone (s) | stability / fit spe | "
        "structure / fit spe | the statistics' share of the extra time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            for phase in ("cold", "steady"):
                f, s, b = (r[v][phase] for v in VARIANTS)
                share = (s - b) / (s - f) if s > f else float("nan")
                lines.append(
                    f"| {res['backend']} | {r['model']} | {phase} | {f:.3f} | {s:.3f} | {b:.3f} | {s / f:.2f}x | "
                    f"{b / f:.2f}x | {share:.0%} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    return main_per_backend(
        fit_timing_parser(__doc__, reps=7, models="mlp,conv"),
        script=__file__,
        one_backend=one_backend,
        table=table,
        written=lambda args: ("cold_parts.md", "# Where a stability run's extra time goes\n\n"),
        backends=("tensorflow", "jax"),
        validate=check_fit_timing,
    )


if __name__ == "__main__":
    raise SystemExit(main())
