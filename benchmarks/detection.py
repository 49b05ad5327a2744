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
import pickle
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


def _score_pathology(rec: dict, findings: list) -> tuple[bool, bool, bool | None]:
    mine = [f for f in findings if f.check == rec["check"]]
    detected = bool(mine)
    cause_ok = detected and mine[0].evidence.get("cause_key") == rec["cause"]
    step_ok = None
    if rec["check"] == "nonfinite" and detected:
        bad = np.flatnonzero(rec["trace"].nonfinite != 0)
        want = rec["step"] if rec["step"] is not None else (int(bad[0]) if bad.size else -1)
        step_ok = mine[0].step == want
    return detected, cause_ok, step_ok


def _collect(n_p: int, n_h: int, t: Thresholds, whatif: bool) -> list[dict]:
    """Train every scenario; one record per run (the trace, not the verdict: that is re-judged)."""
    records = []
    for group, n, table in (("pathology", n_p, S.PATHOLOGIES), ("healthy", n_h, S.HEALTHY_SCENARIOS)):
        for name, builder in table.items():
            for seed in range(n):
                sc = builder(seed)
                o = S.run_scenario(sc, seed, t, whatif=whatif and group == "pathology")
                records.append({"group": group, "name": name, "seed": seed, "check": sc.expected_check,
                                "cause": sc.expected_cause, "step": sc.expected_step, "trace": o.trace,
                                "seconds": o.seconds, "whatif": o.whatif})
                print(f"  {group} {name} seed {seed}: {[r.name for r in o.results if r.failed]} "
                      f"({o.seconds:.1f}s)", file=sys.stderr)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per pathology (default 20)")
    ap.add_argument("--healthy-seeds", type=int, default=16,
                    help="seeds per healthy scenario (default 16: 20 healthy families x 16 = 320 runs)")
    ap.add_argument("--quick", action="store_true", help="3 seeds per pathology, 2 per healthy scenario")
    ap.add_argument("--no-whatif", action="store_true", help="skip the what-if replay of the suggested fixes")
    ap.add_argument("--save-traces", metavar="FILE", help="also pickle every run's trace to FILE")
    ap.add_argument("--from-traces", metavar="FILE",
                    help="judge the traces pickled by --save-traces instead of training (calibration)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.healthy_seeds < 1:
        ap.error(f"--seeds and --healthy-seeds must be >= 1, received {args.seeds} and {args.healthy_seeds}")
    n_p, n_h = (3, 2) if args.quick else (args.seeds, args.healthy_seeds)
    t = Thresholds()
    started = time.perf_counter()
    if args.from_traces:
        with open(args.from_traces, "rb") as fh:
            records = pickle.load(fh)
    else:
        records = _collect(n_p, n_h, t, not args.no_whatif)
        if args.save_traces:
            with open(args.save_traces, "wb") as fh:
                pickle.dump(records, fh)
    md = _report(records, t, time.perf_counter() - started, trained=not args.from_traces)
    print(md)
    write_results(RESULTS, md)
    return 0


def _report(records: list[dict], t: Thresholds, wall: float, trained: bool) -> str:
    from pytest_stability.pipeline import judge

    rows = []
    recorded: list[tuple[str | None, object]] = []  # (expected check or None for healthy, trace)
    names = list(dict.fromkeys(r["name"] for r in records if r["group"] == "pathology"))
    for name in names:
        mine = [r for r in records if r["name"] == name]
        det = cause = steps_ok = steps_n = 0
        causes: dict[str, int] = {}
        fixed = [0, 0]  # replays that resolved the run, replays done
        for rec in mine:
            recorded.append((rec["check"], rec["trace"]))
            findings = [f for r in judge(rec["trace"], t) for f in r.findings]
            d, c, s = _score_pathology(rec, findings)
            det += d
            cause += c
            w = rec.get("whatif")
            if w is not None and w.get("resolved") is not None:
                fixed[0] += bool(w["resolved"])
                fixed[1] += 1
            if s is not None:
                steps_n += 1
                steps_ok += s
            hit = [f for f in findings if f.check == rec["check"]]
            key = hit[0].evidence["cause_key"] if hit else "-"
            causes[key] = causes.get(key, 0) + 1
        rows.append((name, mine[0]["check"], mine[0]["cause"], det, cause, len(mine),
                     f"{steps_ok}/{steps_n}" if steps_n else "", float(np.mean([r["seconds"] for r in mine])),
                     causes, _pct(*fixed) if fixed[1] else "-"))
    fp = {name: 0 for name in CHECKS}
    worst = {"max_zscore": 0.0, "max_ratio": 0.0, "slow_rise": 0.0, "grad_growth": 0.0, "val_rise": 0.0}
    worst_at = dict.fromkeys(worst, "")
    healthy = [r for r in records if r["group"] == "healthy"]
    fp_runs = []
    for rec in healthy:
        recorded.append((None, rec["trace"]))
        results = judge(rec["trace"], t)
        name, seed = rec["name"], rec["seed"]
        for r in results:
            if r.failed:
                fp[r.name] += 1
                fp_runs.append(f"{name}/seed {seed}: {r.name}: {r.findings[0].message}")
        st = {r.name: r.stats for r in results}
        vals = {
            "max_zscore": st["loss_spike"].get("max_zscore"),
            "max_ratio": st["loss_spike"].get("max_ratio"),
            "slow_rise": st["loss_spike"].get("max_slow_rise"),
            "grad_growth": (st["grad_norm"]["max_judged"] / st["grad_norm"]["reference"])
            if st["grad_norm"].get("reference") else None,
            "val_rise": st["val_loss"].get("max_rise"),
        }
        for k, v in vals.items():
            if v is not None and np.isfinite(v) and v > worst[k]:
                worst[k], worst_at[k] = float(v), f"{name}/{seed}"
    n_families = len({r["name"] for r in healthy})
    md = _table(rows, fp, len(healthy), worst, worst_at, t, wall, fp_runs,
                float(np.mean([r["seconds"] for r in healthy])) if healthy else 0.0, n_families, trained)
    return md + "\n" + _sweep(recorded)


def _pct(a: int, n: int) -> str:
    return f"{100.0 * a / n:.0f} % ({a}/{n})" if n else "n/a"


def _table(rows, fp, n_healthy, worst, worst_at, t, wall, fp_runs, healthy_mean, n_families, trained) -> str:  # noqa: ANN001
    out = ["## Detection benchmark", "",
           "| pathology | check | detected | cause named | expected cause | exact NaN step | fix passes in replay "
           "| s/run |",
           "|---|---|---|---|---|---|---|---|"]
    for name, check, cause, det, ok, n, steps, secs, causes, fixed in rows:
        got = ", ".join(f"{k}: {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1]))
        out.append(f"| {name} | {check} | {_pct(det, n)} | {_pct(ok, n)} | {cause} (got {got}) | {steps} | {fixed} "
                   f"| {secs:.1f} |")
    out += ["", f"Healthy runs: {n_healthy} ({n_families} scenarios, {healthy_mean:.1f} s/run).", "",
            "| check | false positives | largest healthy statistic |", "|---|---|---|"]
    stat = {"loss_spike": f"z {worst['max_zscore']:.2f} ({worst_at['max_zscore']}), ratio {worst['max_ratio']:.2f} "
                          f"({worst_at['max_ratio']}), slow rise {worst['slow_rise']:.1f}x ({worst_at['slow_rise']})",
            "nonfinite": "-",
            "grad_norm": f"growth {worst['grad_growth']:.1f}x ({worst_at['grad_growth']})",
            "val_loss": f"rise {worst['val_rise']:.3f} ({worst_at['val_rise']})"}
    for name, k in fp.items():
        out.append(f"| {name} | {_pct(k, n_healthy)} | {stat.get(name, '-')} |")
    out += ["", "Thresholds: " + ", ".join(f"{k}={v}" for k, v in t.to_dict().items()) + ".",
            (f"Total wall time {wall:.0f} s (2 CPU cores)." if trained else
             f"Judged from stored traces in {wall:.0f} s (--from-traces): no training in this run.")]
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
