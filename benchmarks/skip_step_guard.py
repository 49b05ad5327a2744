"""Would a skip-step guard have saved the run?  For each spike or explosion pathology of the detection benchmark,
the fraction of runs that pass when replayed with :class:`pytest_stability.SkipStepGuard` (an update is skipped
when its gradient norm is above the mean plus ``sigmas`` standard deviations of the last ``window`` applied
updates, or not finite: the rule of OLMo-core, Levanter and MaxText), and how many steps it skipped.

The replay is the one the ``whatif`` option runs (:func:`pytest_stability.training.whatif.guard_verdict`): the
same model, data, seed and batch order from the first step, the optimizer wrapped in the guard; a finding at a
skipped step counts as absorbed.  Also measured: healthy families of the same models, to show what the guard
costs a run that needs none (steps skipped, final loss against the unguarded run).

Usage::

    python benchmarks/skip_step_guard.py                  # 5 seeds, KERAS_BACKEND or tensorflow
    python benchmarks/skip_step_guard.py --seeds 10 --no-write

Writes ``benchmarks/results/skip_step_guard.md`` unless ``--no-write``.
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

#: the pathologies whose finding is a loss spike or a gradient explosion (the guard's target)
SPIKES = ("adam_collapse", "adam_periodic", "rnn_explosion", "seg_dice_collapse", "lr_too_high")
#: healthy twins of some of them: the guard should skip (almost) nothing
HEALTHY = ("adam_fixed_epsilon", "rnn_fixed", "lr_fixed")


def _one(name: str, seed: int) -> dict:
    import numpy as np

    from benchmarks import scenarios as S
    from pytest_stability import pipeline
    from pytest_stability.checks import Thresholds
    from pytest_stability.options import resolve_config_defaults
    from pytest_stability.training import engine
    from pytest_stability.training.whatif import guard_verdict

    factory = S.PATHOLOGIES.get(name) or S.HEALTHY_SCENARIOS[name]
    sc = factory(seed)
    thresholds = Thresholds()
    spec = resolve_config_defaults(lambda n: None, lambda n: None)
    if sc.spec_overrides:
        spec = spec.replace(**sc.spec_overrides)
    engine.seed_everything(seed)
    model = sc.build()
    fit_kwargs = {"validation_data": sc.validation_data} if sc.validation_data is not None else {}
    batch_size = sc.batch_size if sc.y is not None else None
    result = engine.train(
        model,
        sc.x,
        sc.y,
        fit_kwargs=fit_kwargs,
        steps=sc.steps,
        seed=seed,
        spec=spec,
        batch_size=batch_size,
        keep_initial_state=True,
    )
    failed = sorted(r.name for r in pipeline.judge(result.trace, thresholds, spec.checks) if r.failed)
    t0 = time.perf_counter()
    guard = guard_verdict(
        model, result, thresholds, spec, x=sc.x, y=sc.y, fit_kwargs=fit_kwargs, batch_size=batch_size, seed=seed
    )
    loss = result.trace.loss
    return {
        "name": name,
        "seed": seed,
        "failed": failed,
        "resolved": guard["resolved"],
        "skipped": len(guard["skipped"]),
        "text": guard["text"],
        "seconds": time.perf_counter() - t0,
        "final_loss": float(np.nanmedian(loss[-20:])) if loss.size else float("nan"),
    }


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.0f} % ({k}/{n})" if n else "-"


def table(rows: list[dict], args: argparse.Namespace, backend: str) -> str:
    out = [
        f"`python benchmarks/skip_step_guard.py --seeds {args.seeds}` on {backend}, {platform.machine()} "
        f"({os.cpu_count()} cores): each run trained as the detection benchmark trains it, then replayed from its "
        "first step with `SkipStepGuard` (6 standard deviations over the last 128 steps, the settings' "
        "defaults).",
        "",
        "| scenario | runs failing unguarded | guard saves (of the failing runs) | steps skipped (median) | "
        "replay s/run |",
        "|---|---|---|---|---|",
    ]
    for name in (*SPIKES, *HEALTHY):
        mine = [r for r in rows if r["name"] == name]
        if not mine:
            continue
        failing = [r for r in mine if r["failed"]]
        saved = [r for r in failing if r["resolved"]]
        skipped = statistics.median(r["skipped"] for r in mine)
        label = name if name in SPIKES else f"{name} (healthy)"
        saves = _pct(len(saved), len(failing)) if failing else "- (none failed)"
        out.append(
            f"| {label} | {_pct(len(failing), len(mine))} | {saves} | {skipped:g} | "
            f"{statistics.median(r['seconds'] for r in mine):.1f} |"
        )
    out += ["", "Why the guard does not save a run, one line per scenario (the first such run):", ""]
    for name in SPIKES:
        lost = next((r for r in rows if r["name"] == name and r["failed"] and not r["resolved"]), None)
        if lost is not None:
            out.append(f"- {name} seed {lost['seed']}: {lost['text'][:400]}")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, received {args.seeds}")
    import keras

    rows = []
    for name in (*SPIKES, *HEALTHY):
        for seed in range(args.seeds):
            rows.append(_one(name, seed))
            r = rows[-1]
            print(
                f"  {name} seed {seed}: failed {r['failed']}, guard resolved {r['resolved']}, {r['skipped']} skipped",
                file=sys.stderr,
                flush=True,
            )
    text = table(rows, args, keras.backend.backend())
    print(text)
    if not args.no_write:
        from benchmarks._results import write_results

        write_results("skip_step_guard.md", "# Skip-step guard: runs it saves\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
