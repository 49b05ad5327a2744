"""What ``curvature=True`` costs: a whole stability run with and without the measurement, per backend.

The same model, data, seed and steps (the default 200 steps, read-backs every 50, so 4 measurements at
the default ``curvature_points=4``), on the models of ``overhead.py`` (an MLP and a small conv net,
Adam), fresh per run, interleaved over ``--reps`` repetitions after one discarded warm-up run of each
(the first run in a process pays one-time costs: PyTorch's first double backward took ~5 s); medians of
the *cold* time (the whole ``engine.train`` call, compilation included: what one test pays).  Also the
seconds the measurements themselves took (``trace.info["curvature"]["seconds_total"]``) and the Lanczos
products per measurement.

Usage::

    python benchmarks/curvature_cost.py                    # every installed backend, one subprocess each
    python benchmarks/curvature_cost.py --backend jax --reps 3

Writes ``benchmarks/results/curvature_cost.md`` unless ``--no-write``.
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
from benchmarks.overhead import BATCH, _build, _data  # noqa: E402

VARIANTS = ("plain", "curvature")


def _run(variant: str, kind: str, steps: int, seed: int) -> tuple[float, float, list[int], str]:
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine

    x, y = _data(kind)
    spec = resolve_config_defaults(lambda n: None, lambda n: None).replace(curvature=variant == "curvature")
    engine.seed_everything(seed)
    model = _build(kind)
    t0 = time.perf_counter()
    result = engine.train(
        model, x, y, fit_kwargs={"shuffle": True}, steps=steps, batch_size=BATCH, seed=seed, spec=spec
    )
    wall = time.perf_counter() - t0
    info = result.trace.info.get("curvature") or {}
    return wall, float(info.get("seconds_total", 0.0)), list(info.get("iterations", [])), result.device


def one_backend(args) -> dict:
    import keras

    backend = keras.backend.backend()
    rows = []
    device = "?"
    for kind in args.models.split(","):
        walls = {v: [] for v in VARIANTS}
        spent, products = [], []
        for v in VARIANTS:  # warm-up, discarded: the process's first run pays one-time costs (PyTorch: ~5 s)
            _run(v, kind, args.steps, seed=0)
        for rep in range(args.reps):
            for v in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                wall, seconds, iters, device = _run(v, kind, args.steps, seed=rep)
                walls[v].append(wall)
                if v == "curvature":
                    spent.append(seconds)
                    products.extend(iters)
            print(f"[{backend}] {kind}: repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
        med = {v: statistics.median(walls[v]) for v in VARIANTS}
        rows.append(
            {
                "backend": backend,
                "device": device,
                "model": kind,
                **med,
                "ratio": med["curvature"] / med["plain"],
                "measuring": statistics.median(spent),
                "products": f"{min(products)}-{max(products)}",
            }
        )
    return {"backend": backend, "keras": keras.__version__, "rows": rows}


def table(results: list[dict], args) -> str:
    lines = [
        f"`python benchmarks/curvature_cost.py --steps {args.steps} --reps {args.reps}` on "
        f"{platform.machine()} ({os.cpu_count()} cores), {platform.python_version()}; medians of {args.reps} "
        "interleaved repetitions after a discarded warm-up; fresh model per run; whole call incl. compilation "
        "(the measurement's own compile too); default curvature settings "
        "(4 measurements, at most 20 products each, fixed batch = one training batch of 32).",
        "",
        "| backend | device | model | plain (s) | curvature=True (s) | ratio | measuring (s) | "
        "products per measurement |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for r in res["rows"]:
            lines.append(
                f"| {r['backend']} | {r['device']} | {r['model']} | {r['plain']:.2f} | {r['curvature']:.2f} | "
                f"{r['ratio']:.2f}x | {r['measuring']:.2f} | {r['products']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default="mlp,conv")
    return main_per_backend(
        parser,
        script=__file__,
        one_backend=one_backend,
        table=table,
        written=lambda args: ("curvature_cost.md", "# Cost of curvature=True\n\n"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
