"""Detection benchmark: run every scenario over many seeds and score checks and diagnosis.

Usage::

    python benchmarks/detection.py [--seeds N] [--healthy-seeds N (>= 15 for 300 healthy runs)] [--quick] [--no-whatif]

For each pathology: the share of runs where the expected check failed, the
share where its first finding named the expected cause (``cause_key``), for
NaN scenarios whether the finding named the exact step, and how often the
what-if replay of the suggested fix made the run pass.  For healthy runs: the
false-positive rate of every check, with counts, and the largest statistic
seen per check.  Then a threshold sweep over the same recorded traces (the
checks are pure functions of a trace, so no retraining): for each threshold
moved away from its default, the detection rate of the pathologies its check
must catch and the number of healthy runs that fail -- the evidence the
defaults were chosen from.  The tables are printed and written to
``benchmarks/results/detection.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import scenarios as S  # noqa: E402
from benchmarks._results import write_results  # noqa: E402
from pytest_stability.checks import CHECKS, Thresholds, run_checks  # noqa: E402

RESULTS = "detection.md"

#: thresholds swept (one at a time, the others at their defaults) over the recorded traces.
SWEEP = {
    "spike_zscore": (4.0, 6.0, 8.0, 12.0, 16.0),
    "spike_ratio": (2.0, 3.0, 5.0, 10.0),
    "spike_min_rise": (0.0, 0.001, 0.01, 0.1),
    "grad_growth": (10.0, 30.0, 100.0, 300.0, 1000.0),
    "val_tolerance": (0.02, 0.05, 0.1, 0.2),
}
#: the check each swept threshold belongs to.
SWEEP_CHECK = {"spike_zscore": "loss_spike", "spike_ratio": "loss_spike", "spike_min_rise": "loss_spike",
               "grad_growth": "grad_norm", "val_tolerance": "val_loss"}


def _score_pathology(o: S.Outcome) -> tuple[bool, bool, bool | None]:
    sc = o.scenario
    mine = [f for f in o.findings if f.check == sc.expected_check]
    detected = bool(mine)
    cause_ok = detected and mine[0].evidence.get("cause_key") == sc.expected_cause
    step_ok = None
    if sc.expected_check == "nonfinite" and detected:
        bad = np.flatnonzero(o.trace.nonfinite != 0)
        want = sc.expected_step if sc.expected_step is not None else (int(bad[0]) if bad.size else -1)
        step_ok = mine[0].step == want
    return detected, cause_ok, step_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per pathology (default 20)")
    ap.add_argument("--healthy-seeds", type=int, default=16,
                    help="seeds per healthy scenario (default 16: 20 healthy families x 16 = 320 runs)")
    ap.add_argument("--quick", action="store_true", help="3 seeds per pathology, 2 per healthy scenario")
    ap.add_argument("--no-whatif", action="store_true", help="skip the what-if replay of the suggested fixes")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.healthy_seeds < 1:
        ap.error(f"--seeds and --healthy-seeds must be >= 1, received {args.seeds} and {args.healthy_seeds}")
    n_p, n_h = (3, 2) if args.quick else (args.seeds, args.healthy_seeds)
    t = Thresholds()
    started = time.perf_counter()
    rows = []
    recorded: list[tuple[str | None, object]] = []  # (expected check or None for healthy, trace)
    for name, builder in S.PATHOLOGIES.items():
        det = cause = 0
        steps_ok, steps_n, secs, causes = 0, 0, [], {}
        fixed = [0, 0]  # replays that resolved the run, replays done
        for seed in range(n_p):
            o = S.run_scenario(builder(seed), seed, t, whatif=not args.no_whatif)
            recorded.append((o.scenario.expected_check, o.trace))
            d, c, s = _score_pathology(o)
            det += d
            cause += c
            secs.append(o.seconds)
            if o.whatif is not None and o.whatif.get("resolved") is not None:
                fixed[0] += bool(o.whatif["resolved"])
                fixed[1] += 1
            if s is not None:
                steps_n += 1
                steps_ok += s
            mine = [f for f in o.findings if f.check == o.scenario.expected_check]
            key = mine[0].evidence["cause_key"] if mine else "-"
            causes[key] = causes.get(key, 0) + 1
            print(f"  {name} seed {seed}: detected={d} cause={key} ({o.seconds:.1f}s)", file=sys.stderr)
        sc = builder(0)
        rows.append((name, sc.expected_check, sc.expected_cause, det, cause, n_p,
                     f"{steps_ok}/{steps_n}" if steps_n else "", float(np.mean(secs)), causes,
                     _pct(*fixed) if fixed[1] else "-"))
    fp = {name: 0 for name in CHECKS}
    worst = {"max_zscore": 0.0, "max_ratio": 0.0, "grad_growth": 0.0, "val_rise": 0.0}
    worst_at = dict.fromkeys(worst, "")
    n_healthy, healthy_secs = 0, []
    fp_runs = []
    for name, builder in S.HEALTHY_SCENARIOS.items():
        for seed in range(n_h):
            o = S.run_scenario(builder(seed), seed, t)
            recorded.append((None, o.trace))
            n_healthy += 1
            healthy_secs.append(o.seconds)
            for r in o.results:
                if r.failed:
                    fp[r.name] += 1
                    fp_runs.append(f"{name}/seed {seed}: {r.name}: {r.findings[0].message}")
            st = {r.name: r.stats for r in o.results}
            vals = {
                "max_zscore": st["loss_spike"].get("max_zscore"),
                "max_ratio": st["loss_spike"].get("max_ratio"),
                "grad_growth": (st["grad_norm"]["max_judged"] / st["grad_norm"]["reference"])
                if st["grad_norm"].get("reference") else None,
                "val_rise": st["val_loss"].get("max_rise"),
            }
            for k, v in vals.items():
                if v is not None and np.isfinite(v) and v > worst[k]:
                    worst[k], worst_at[k] = float(v), f"{name}/{seed}"
            print(f"  healthy {name} seed {seed}: {[r.name for r in o.results if r.failed]} ({o.seconds:.1f}s)",
                  file=sys.stderr)
    wall = time.perf_counter() - started
    md = _table(rows, fp, n_healthy, worst, worst_at, t, wall, fp_runs, float(np.mean(healthy_secs)))
    md += "\n" + _sweep(recorded)
    print(md)
    write_results(RESULTS, md)
    return 0


def _pct(a: int, n: int) -> str:
    return f"{100.0 * a / n:.0f} % ({a}/{n})" if n else "n/a"


def _table(rows, fp, n_healthy, worst, worst_at, t, wall, fp_runs, healthy_mean) -> str:  # noqa: ANN001
    out = ["## Detection benchmark", "",
           "| pathology | check | detected | cause named | expected cause | exact NaN step | fix passes in replay "
           "| s/run |",
           "|---|---|---|---|---|---|---|---|"]
    for name, check, cause, det, ok, n, steps, secs, causes, fixed in rows:
        got = ", ".join(f"{k}: {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1]))
        out.append(f"| {name} | {check} | {_pct(det, n)} | {_pct(ok, n)} | {cause} (got {got}) | {steps} | {fixed} "
                   f"| {secs:.1f} |")
    out += ["", f"Healthy runs: {n_healthy} ({len(S.HEALTHY_SCENARIOS)} scenarios, {healthy_mean:.1f} s/run).", "",
            "| check | false positives | largest healthy statistic |", "|---|---|---|"]
    stat = {"loss_spike": f"z {worst['max_zscore']:.2f} ({worst_at['max_zscore']}), ratio {worst['max_ratio']:.2f} "
                          f"({worst_at['max_ratio']})",
            "nonfinite": "-",
            "grad_norm": f"growth {worst['grad_growth']:.1f}x ({worst_at['grad_growth']})",
            "val_loss": f"rise {worst['val_rise']:.3f} ({worst_at['val_rise']})"}
    for name, k in fp.items():
        out.append(f"| {name} | {_pct(k, n_healthy)} | {stat.get(name, '-')} |")
    out += ["", "Thresholds: " + ", ".join(f"{k}={v}" for k, v in t.to_dict().items()) + ".",
            f"Total wall time {wall:.0f} s (2 CPU cores)."]
    if fp_runs:
        out += ["", "False positives:"] + [f"- {r}" for r in fp_runs]
    return "\n".join(out) + "\n"


def _sweep(recorded: list[tuple[str | None, object]]) -> str:
    """Detection and healthy failures for each swept threshold value (see :data:`SWEEP`)."""
    out = ["## Threshold sweep (same traces, no retraining)", "",
           "One threshold moved at a time, the others at their defaults. *detected*: runs of the pathologies "
           "that this check must catch in which it fails; *healthy failing*: healthy runs in which any check "
           "fails.", "",
           "| threshold | value | detected | healthy failing |", "|---|---|---|---|"]
    default = Thresholds()
    for name, values in SWEEP.items():
        check = SWEEP_CHECK[name]
        mine = [tr for c, tr in recorded if c == check]
        healthy = [tr for c, tr in recorded if c is None]
        for value in values:
            t = Thresholds(**{**default.to_dict(), name: value})
            det = sum(any(r.failed for r in run_checks(tr, t, (check,))) for tr in mine)
            bad = sum(any(r.failed for r in run_checks(tr, t)) for tr in healthy)
            mark = " (default)" if value == getattr(default, name) else ""
            out.append(f"| {name} | {value:g}{mark} | {_pct(det, len(mine))} | {_pct(bad, len(healthy))} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
