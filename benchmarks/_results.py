"""Where the benchmarks write their measured tables."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
