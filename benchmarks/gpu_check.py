"""Run the example project's stability tests and the overhead benchmark on a GPU, under JAX and PyTorch.

Works where JAX and/or PyTorch are installed but TensorFlow is not (Keras from
its wheel).  For each backend that sees a GPU it:

1. runs ``example_project/tests`` with ``KERAS_BACKEND=<backend>`` and a JSON
   report (the committed baseline is CPU/TensorFlow's, so it is not compared),
   and prints each test's verdict and the device read from the tensors;
2. runs ``benchmarks/overhead.py --backend <backend>`` (the MLP, the convnet and the small
   transformer block) and prints its table;
3. runs ``benchmarks/epochs_and_validation.py --backend <backend>`` (a full-batch run and a
   batch-1 epoch with validation) and prints its table.

Usage::

    python benchmarks/gpu_check.py [--out DIR] [--reps 3] [--backends jax,torch]

Prints everything; with ``--out``, also writes the JSON reports and a
``gpu_check.md`` summary there.  The output of a run on an H100 is committed as
``benchmarks/results/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str, float]:
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout + out.stderr, time.perf_counter() - started
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, text + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - started


def benchmark(title: str, script: str, argv: list[str], keep: int, env: dict[str, str], args: Any) -> list[str]:
    """Run ``benchmarks/<script>`` (its result file left as it is) and return its table's lines."""
    code, text, secs = sh(
        [sys.executable, str(ROOT / "benchmarks" / script), *argv, "--no-write"], env, ROOT, args.timeout
    )
    table = [ln for ln in text.splitlines() if ln.startswith(("|", "`")) or "Error" in ln][-keep:]
    return [f"{title}: exit {code} in {secs:.1f} s", "", *table, ""]


def plugin_args() -> list[str]:
    """``-p pytest_stability.plugin`` where the package is only on PYTHONPATH (not installed)."""
    from importlib.metadata import entry_points

    installed = any(ep.name == "stability" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "pytest_stability.plugin"]


def gpu_seen(backend: str) -> str | None:
    code = {
        "jax": "import jax; d=[x for x in jax.devices() if x.platform=='gpu']; print(d[0].device_kind if d else '')",
        "torch": "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')",
    }[backend]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    name = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return name or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=512, help="overhead benchmark steps (a multiple of 64)")
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--models", default="mlp,conv,transformer", help="overhead benchmark models")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per step")
    args = parser.parse_args()
    lines = [f"# GPU check ({time.strftime('%Y-%m-%d')}, {platform.node()})", ""]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        smi = "(no nvidia-smi)"
    # Keras defaults to the TensorFlow backend, whose import needs TensorFlow: pick one that is installed
    os.environ.setdefault(
        "KERAS_BACKEND",
        next((b for b in args.backends.split(",") if importlib.util.find_spec(b) is not None), "tensorflow"),
    )
    import keras  # noqa: F401  (the wheel must import without TensorFlow)

    has_tf = importlib.util.find_spec("tensorflow") is not None
    lines += [f"- nvidia-smi: {smi}", f"- keras {keras.__version__}; TensorFlow installed: {has_tf}", ""]
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            lines.append(f"## {backend}: not installed")
            continue
        gpu = gpu_seen(backend)
        lines += [f"## {backend} (GPU seen by the backend: {gpu or 'none'})", ""]
        benv = {**env, "KERAS_BACKEND": backend}
        with tempfile.TemporaryDirectory() as tmp:
            ini = Path(tmp) / "pytest.ini"
            ini.write_text("[pytest]\nstability_seed = 0\n")  # the committed baseline is the CPU's
            report = (args.out or Path(tmp)) / f"example-report-{backend}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-c",
                str(ini),
                "--rootdir",
                str(ROOT / "example_project"),
                *plugin_args(),
                "-p",
                "no:cacheprovider",
                "-q",
                f"--stability-report={report}",
                str(ROOT / "example_project" / "tests"),
            ]
            code, text, secs = sh(cmd, benv, ROOT / "example_project", args.timeout)
        lines.append(f"example project stability tests: exit {code} in {secs:.1f} s")
        tail = [
            ln
            for ln in text.splitlines()
            if ln.startswith(("PASS", "FAIL", "ERROR", "SKIP")) or " passed" in ln or " failed" in ln or "Error" in ln
        ]
        lines += ["```", *tail[-20:], "```"]
        if report.exists():
            doc = json.loads(report.read_text())
            for t in doc.get("tests", []):
                lines.append(
                    f"- {t['nodeid'].split('::')[-1]}: {t.get('verdict')}, device {t.get('device')}, "
                    f"{float(t.get('wall_time') or 0):.1f} s training"
                )
        lines.append("")
        for title, script, extra, keep in (
            ("overhead benchmark", "overhead.py", ["--steps", str(args.steps), "--models", args.models], 16),
            ("short epochs and batch-1 validation benchmark", "epochs_and_validation.py", [], 8),
        ):
            argv = [*extra, "--backend", backend, "--reps", str(args.reps)]
            lines += benchmark(title, script, argv, keep, benv, args)
        print("\n".join(lines), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        (args.out / "gpu_check.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
