"""Under JAX: the plugin's validation measurements compiled (one jitted function a run) against op by op.

JAX runs an operation outside ``jit`` by compiling it for its shapes, once a process: measured op by op, the
validation loss costs a run that meets a batch shape for the first time in its process the compilation of every
operation of the forward and the loss (seconds on a small transformer block), and a later run of the same shapes
nothing.  Compiled, every run compiles its measurement once a shape, as Keras compiles its own ``evaluate``.

Each repetition starts a fresh process per model and mode, which trains the same model four times with 512
validation samples as ``validation_data`` (64 steps of batch 32): plain ``fit`` (one epoch, Keras validating at
its end), the stability run, then both again.  *first* is the first of each in the process, *again* the second.
Ratios: stability / fit.  ``mode``: ``compiled`` (as shipped) or ``op_by_op`` (the measurements as before,
``validation.COMPILE_MEASUREMENTS`` off).  JAX only: TensorFlow and PyTorch compile nothing for an operation
run on its own, and measure op by op either way.

Usage::

    python benchmarks/validation_compile.py --reps 3

Writes ``benchmarks/results/validation_compile.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_results  # noqa: E402

MODELS, MODES = ("mlp", "transformer"), ("compiled", "op_by_op")
RUNS = ("fit", "stability", "fit_again", "stability_again")


def one_process(model_kind: str, mode: str) -> dict[str, float]:
    """The four runs in this process (a fresh one)."""
    from benchmarks.overhead import _build, _data
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine, validation

    validation.COMPILE_MEASUREMENTS = mode == "compiled"
    x, y = _data(model_kind)
    xv, yv = x[:512], y[:512]
    spec = resolve_config_defaults(lambda n: None, lambda n: None)
    out = {}
    for run in RUNS:
        engine.seed_everything(0)
        model = _build(model_kind)
        t0 = time.perf_counter()
        if run.startswith("fit"):
            model.fit(x[:2048], y[:2048], batch_size=32, epochs=1, validation_data=(xv, yv), verbose=0)
        else:
            result = engine.train(
                model, x, y, fit_kwargs={"validation_data": (xv, yv)}, steps=64, batch_size=32, seed=0, spec=spec
            )
            assert result.trace.steps == 64 and result.trace.has_validation
        out[run] = time.perf_counter() - t0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per model and mode; medians reported")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be at least 1; received {args.reps}")
    if args.child:
        print("RESULT " + json.dumps(one_process(*args.child)))
        return 0
    times: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for kind in MODELS:
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", kind, mode],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "KERAS_BACKEND": "jax"},
                )
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                times.setdefault((kind, mode), []).append(json.loads(line[len("RESULT ") :]))
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    lines = [
        f"`python benchmarks/validation_compile.py --reps {args.reps}` on {platform.machine()} ({os.cpu_count()} "
        f"cores), Python {platform.python_version()}, JAX; medians of {args.reps} fresh processes per model and "
        "mode; seconds, whole calls.",
        "",
        "| model | mode | fit, first (s) | stability, first (s) | stability / fit, first | fit, again (s) | "
        "stability, again (s) | stability / fit, again |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, mode), runs in times.items():
        m = {r: statistics.median(t[r] for t in runs) for r in RUNS}
        lines.append(
            f"| {kind} | {mode} | {m['fit']:.2f} | {m['stability']:.2f} | {m['stability'] / m['fit']:.2f}x | "
            f"{m['fit_again']:.2f} | {m['stability_again']:.2f} | {m['stability_again'] / m['fit_again']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        path = write_results("validation_compile.md", "# Validation under JAX: compiled or op by op\n\n" + text)
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
