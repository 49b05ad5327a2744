"""Where the benchmarks write their measured tables, and the driver the per-backend benchmarks share."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, text: str) -> Path:
    """Write ``text`` to ``results/NAME`` atomically: a half-written table never replaces a whole one."""
    path = RESULTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def run_per_backend(
    script: str, args: list[str], backends: tuple[str, ...] = ("tensorflow", "jax", "torch")
) -> list[dict]:
    """Run ``script --backend B --json ARGS`` in a subprocess for each installed Keras backend of ``backends``
    (each process imports one framework) and collect the ``RESULT {json}`` line each prints; a backend that
    is not installed, or whose run fails, is said on stderr and left out."""
    results = []
    for backend in backends:
        if importlib.util.find_spec(backend) is None:  # the module is named as the backend
            print(f"[{backend}] not installed: skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, script, "--backend", backend, "--json", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": backend})
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"[{backend}] failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[len("RESULT ") :]))
    return results


def fit_timing_parser(doc: str, *, reps: int, models: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that time whole ``fit`` runs (overhead, cold_parts, jax_layout); check
    them with :func:`check_fit_timing`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--steps", type=int, default=512, help="optimizer steps a run")
    parser.add_argument("--reps", type=int, default=reps, help="interleaved repetitions; medians are reported")
    parser.add_argument("--readback", type=int, default=64, help="readback_every (steps per compiled chunk)")
    parser.add_argument("--models", default=models, help="comma-separated model names")
    return parser


def check_fit_timing(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--steps``, ``--reps`` and ``--readback`` of :func:`fit_timing_parser` are positive."""
    for name in ("steps", "reps", "readback"):
        value = getattr(args, name)
        if value < 1:
            parser.error(f"--{name} must be >= 1, received {value}")


def main_per_backend(
    parser: argparse.ArgumentParser,
    *,
    script: str,
    one_backend: Callable[[argparse.Namespace], dict],
    table: Callable[[list[dict], argparse.Namespace], str],
    written: Callable[[argparse.Namespace], tuple[str, str]],
    backends: tuple[str, ...] = ("tensorflow", "jax", "torch"),
    validate: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
) -> int:
    """The ``main`` of a benchmark measured once per Keras backend, each in a process of its own.

    ``parser`` holds the benchmark's own options; this adds ``--backend`` (measure that backend here),
    ``--json`` (print the result as one ``RESULT {json}`` line, for the driver) and ``--no-write``.  Without
    ``--backend``, the script runs itself once per installed backend of ``backends`` with the same arguments,
    prints ``table`` of the results and writes it to ``results/NAME`` under its heading, ``written(args)``
    giving ``(NAME, heading)``.  ``validate(parser, args)`` checks the options (``parser.error``) and applies
    those that act in every process (CPU pinning)."""
    parser.add_argument("--backend", choices=backends, default=None, help="measure this backend, in this process")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (used by the driver)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if validate is not None:
        validate(parser, args)
    if args.backend is not None:
        os.environ["KERAS_BACKEND"] = args.backend
        result = one_backend(args)
        print("RESULT " + json.dumps(result) if args.json else table([result], args))
        return 0
    results = run_per_backend(script, sys.argv[1:], backends=backends)
    text = table(results, args)
    print(text)
    if not args.no_write and results:
        name, heading = written(args)
        print(f"written to {write_results(name, heading + text)}")
    return 0
