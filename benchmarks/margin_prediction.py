"""Does a short run's stability margin predict that training goes unstable later?

For each configuration (pathology scenarios, their fixed twins, and learning-rate sweeps of healthy
models whose warm-up keeps raising the learning rate after the short run ends), and each seed:

* **short**: the test's run, ``steps`` optimizer steps, with the learning-rate margin
  (``margin=True``) and, where the engine has it, the curvature margin (``curvature=True``);
* **long**: the same configuration and seed trained from scratch for 10x the steps, judged by the
  training checks (``loss_spike``, ``nonfinite``, ``grad_norm``, ``stuck``): its verdict is the label
  "goes unstable later".

Then, with ROC AUC (the probability that a run that goes unstable gets a worse score than one that does
not; 0.5 = no better than chance), how well each short-run number separates the two groups:
the learning-rate margin (smaller = worse) and the largest edge-of-stability ratio (larger = worse),
over all runs and over the runs whose short test passed (the case a CI gate is for: the short test is
green, will the long run be?).

Usage::

    python benchmarks/margin_prediction.py [--seeds N] [--quick]

Writes ``benchmarks/results/margin_prediction.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import scenarios as S  # noqa: E402
from benchmarks._results import write_results  # noqa: E402

RESULTS = "margin_prediction.md"
#: the checks that label a long run unstable (no validation data in these runs)
LONG_CHECKS = ("loss_spike", "nonfinite", "grad_norm", "stuck")
LONG_FACTOR = 10


def _mlp_warmup(peak: float) -> Callable[[int], S.Scenario]:
    """Classification MLP, SGD with momentum 0.9, learning rate warmed up over 400 steps to ``peak``."""

    def make(seed: int) -> S.Scenario:
        keras = S._keras()
        x, y = S._classification_data(seed, 2048)

        def build() -> Any:
            m = S._mlp(8, (64, 64), "relu", keras.layers.Dense(1, activation="sigmoid"))
            m.compile(optimizer=keras.optimizers.SGD(S._warmup(peak, 400), momentum=0.9), loss="binary_crossentropy")
            return m

        return S.Scenario(
            f"mlp_sgd_warmup_{peak:g}",
            "sweep",
            build,
            x,
            y,
            steps=50,
            batch_size=32,
            spec_overrides={"readback_every": 25},
        )

    return make


def _rnn_warmup(peak: float) -> Callable[[int], S.Scenario]:
    """The detection benchmark's SimpleRNN (warm-up over 150 steps to ``peak``, no clipping)."""

    def make(seed: int) -> S.Scenario:
        sc = S._rnn_scenario(seed, peak, None, f"rnn_warmup_{peak:g}", "sweep")
        sc.steps = 50
        sc.spec_overrides = {"readback_every": 25}
        return sc

    return make


def _adam(width: int, lr: float, epsilon: float, amsgrad: bool = False) -> Callable[[int], S.Scenario]:
    """The detection benchmark's full-batch Adam family (collapse, periodic spikes, and their fixes)."""

    def make(seed: int) -> S.Scenario:
        sc = S._adam_collapse(
            seed,
            width=width,
            lr=lr,
            epsilon=epsilon,
            amsgrad=amsgrad,
            name=f"adam_w{width}_lr{lr:g}_eps{epsilon:g}{'_ams' if amsgrad else ''}",
            pathology="sweep",
        )
        sc.steps = 300
        sc.spec_overrides = {"readback_every": 100}
        return sc

    return make


CONFIGS: dict[str, Callable[[int], S.Scenario]] = {}
for _p in (0.03, 0.1, 0.3, 1.0, 3.0):
    CONFIGS[f"mlp_sgd_warmup_{_p:g}"] = _mlp_warmup(_p)
for _p in (0.01, 0.03, 0.1, 0.3):
    CONFIGS[f"rnn_warmup_{_p:g}"] = _rnn_warmup(_p)
for _args in (
    (32, 1e-2, 1e-7),
    (32, 1e-2, 1e-2),
    (32, 1e-3, 1e-7, True),
    (8, 3e-2, 1e-7),
    (8, 3e-3, 1e-7, True),
    (32, 3e-3, 1e-7),
):
    _sc = _adam(*_args)
    CONFIGS[_sc(0).name] = _sc


def _spec(**kw: Any) -> Any:
    from pytest_stability.options import resolve_config_defaults

    spec = resolve_config_defaults(lambda n: None, lambda n: None)
    fields = set(getattr(spec, "__dataclass_fields__", {}))
    return spec.replace(**{k: v for k, v in kw.items() if k in fields})


def _train(sc: S.Scenario, seed: int, steps: int, **spec_kw: Any) -> tuple[Any, float]:
    from pytest_stability import pipeline
    from pytest_stability.checks import Thresholds
    from pytest_stability.training import engine

    spec = _spec(**{**sc.spec_overrides, **spec_kw})
    engine.seed_everything(seed)
    model = sc.build()
    started = time.perf_counter()
    out = pipeline.run(
        model,
        sc.x,
        sc.y,
        fit_kwargs={},
        steps=steps,
        seed=seed,
        spec=spec,
        thresholds=Thresholds(),
        batch_size=sc.batch_size if sc.y is not None else None,
    )
    return out, time.perf_counter() - started


def _eos(trace: Any) -> float | None:
    """The largest edge-of-stability ratio measured in the short run (None without the curvature margin)."""
    ratio = ((trace.info or {}).get("curvature") or {}).get("max_ratio")
    return float(ratio) if ratio is not None and np.isfinite(ratio) else None


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC of ``scores`` (higher = predicted unstable) for ``labels``; ties count half (Mann-Whitney)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (len(pos) * len(neg)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds per configuration (default 2)")
    ap.add_argument("--quick", action="store_true", help="one seed, every other configuration")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, received {args.seeds}")
    configs = list(CONFIGS.items())[::2] if args.quick else list(CONFIGS.items())
    seeds = 1 if args.quick else args.seeds
    started = time.perf_counter()
    rows = []
    for name, make in configs:
        for seed in range(seeds):
            sc = make(seed)
            short, t_short = _train(sc, seed, sc.steps, margin=True, curvature=True, whatif=False)
            failed_short = [r.name for r in short.results if r.failed and r.name in LONG_CHECKS]
            margin = (short.result.trace.info or {}).get("margin") or {}
            long_, t_long = _train(sc, seed, LONG_FACTOR * sc.steps, whatif=False)
            bad = [f for r in long_.results if r.failed and r.name in LONG_CHECKS for f in r.findings]
            first = min(bad, key=lambda f: f.step) if bad else None
            rows.append(
                {
                    "config": name,
                    "seed": seed,
                    "short_steps": sc.steps,
                    "short_failed": failed_short,
                    "lr_margin": float(margin.get("value", float("nan"))),
                    "eos": _eos(short.result.trace),
                    "long_unstable": bool(bad),
                    "long_first": f"{first.check} at step {first.step}" if first else "",
                    "seconds": t_short + t_long,
                }
            )
            r = rows[-1]
            print(
                f"  {name} seed {seed}: short {r['short_failed'] or 'passed'}, lr margin {r['lr_margin']:.3g}, "
                f"eos {r['eos']}, long {'UNSTABLE ' + r['long_first'] if bad else 'stable'} "
                f"({r['seconds']:.0f}s)",
                file=sys.stderr,
            )
    md = _table(rows, time.perf_counter() - started)
    print(md)
    write_results(RESULTS, md)
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _table(rows: list[dict], wall: float) -> str:
    out = [
        "## Does the short run's margin predict a later instability?",
        "",
        f"Short run = the test's steps; long run = {LONG_FACTOR}x the steps from scratch, same seed, judged by "
        f"{', '.join(LONG_CHECKS)}. lr margin: the largest learning-rate factor that stayed stable (0 = the short "
        "run already failed); eos ratio: the largest edge-of-stability ratio measured in the short run.",
        "",
        "| configuration | seed | short steps | short run | lr margin | eos ratio | long run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['config']} | {r['seed']} | {r['short_steps']} | "
            f"{', '.join(r['short_failed']) or 'passed'} | {_fmt(r['lr_margin'])} | {_fmt(r['eos'])} | "
            f"{'unstable: ' + r['long_first'] if r['long_unstable'] else 'stable'} |"
        )
    out += ["", "| runs | n (unstable later) | AUC lr margin | AUC eos ratio |", "|---|---|---|---|"]
    for label, sel in (("all", rows), ("short run passed", [r for r in rows if not r["short_failed"]])):
        ys = [r["long_unstable"] for r in sel]
        a_m = auc([-r["lr_margin"] for r in sel], ys)
        with_eos = [r for r in sel if r["eos"] is not None]
        a_e = auc([r["eos"] for r in with_eos], [r["long_unstable"] for r in with_eos])
        out.append(f"| {label} | {len(sel)} ({sum(ys)}) | {_fmt(a_m)} | {_fmt(a_e)} |")
    out += ["", f"Total wall time {wall:.0f} s (2 CPU cores, shared)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
