"""Detection benchmark: run every scenario over many seeds, on every Keras backend, and score checks and diagnosis.

Usage::

    python benchmarks/detection.py [--backends tensorflow,jax,torch] [--seeds N] [--healthy-seeds N]
                                   [--only pathology|healthy] [--scenarios a,b] [--quick] [--no-whatif]
                                   [--save-traces FILE] [--from-traces FILE [FILE ...]] [--no-sweep]

Each backend trains in its own subprocess (``KERAS_BACKEND`` set there; the scenarios and seeds are the
same, the numerics are each framework's).  Per backend and pathology: the share of runs where the expected
check failed; the share whose *primary* finding (the run's headline, ``evidence["rank"] == 0``) names the
expected cause (``cause_key``); for NaN scenarios whether the finding named the exact step; and the
share of runs that the *first* suggested fix resolves in the what-if replay (the primary finding's
first ``fix_configs`` entry, replayed from a snapshot before the failure; a later fix that resolves a run
is counted apart).  Per backend, for healthy runs: the false-positive rate of every check, with counts,
and the largest statistic seen per check.  Across backends: the agreement of the verdicts (pass or fail,
and the primary cause) over the (scenario, seed) pairs that every backend ran.  Then a threshold sweep
over the same recorded traces (the checks are pure functions of a trace, so no retraining).

The tables are printed and written to ``benchmarks/results/detection.md``.  ``--save-traces`` pickles
every run (trace, what-if note, backend); ``--from-traces`` judges pickled runs with the current checks
and diagnosis instead of training (several files are merged: one per backend, or pathologies and healthy
runs collected apart).  The what-if outcome of a judged run is the one recorded when it was trained:
when the current diagnosis suggests another first fix, that run's fix success is reported as *stale*,
not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._results import write_results  # noqa: E402
from pytest_stability.checks import CHECKS, Thresholds, run_checks  # noqa: E402
from pytest_stability.diagnosis import fix_setting  # noqa: E402

RESULTS = "detection.md"
BACKENDS = ("tensorflow", "jax", "torch")

#: thresholds swept (one at a time, the others at their defaults) over the recorded traces.
SWEEP = {
    "spike_zscore": (4.0, 6.0, 8.0, 12.0, 16.0),
    "spike_ratio": (2.0, 3.0, 5.0, 10.0),
    "spike_min_rise": (0.0, 0.001, 0.01, 0.1),
    "grad_growth": (10.0, 30.0, 100.0, 300.0, 1000.0),
    "val_tolerance": (0.02, 0.05, 0.1, 0.2),
}
#: the check each swept threshold belongs to.
SWEEP_CHECK = {
    "spike_zscore": "loss_spike",
    "spike_ratio": "loss_spike",
    "spike_min_rise": "loss_spike",
    "grad_growth": "grad_norm",
    "val_tolerance": "val_loss",
}


# -- training ----------------------------------------------------------------------


def _collect(
    n_p: int,
    n_h: int,
    t: Thresholds,
    whatif: bool,
    only: str | None,
    names: set[str] | None,
    backend: str,
    save: str | None,
    first_seed: int = 0,
) -> list[dict]:
    """Train every scenario in this process (one backend); one record per run (the trace, not the verdict:
    that is re-judged).  With ``save``, the records so far are pickled after every scenario family."""
    from benchmarks import scenarios as S

    records: list[dict] = []
    for group, n, table in (("pathology", n_p, S.PATHOLOGIES), ("healthy", n_h, S.HEALTHY_SCENARIOS)):
        if only and only != group:
            continue
        for name, builder in table.items():
            if names and name not in names:
                continue
            for seed in range(first_seed, first_seed + n):
                sc = builder(seed)
                o = S.run_scenario(sc, seed, t, whatif=whatif and group == "pathology")
                records.append(
                    {
                        "group": group,
                        "name": name,
                        "seed": seed,
                        "check": sc.expected_check,
                        "cause": sc.expected_cause,
                        "step": sc.expected_step,
                        "trace": o.trace,
                        "seconds": o.seconds,
                        "whatif": o.whatif,
                        "backend": backend,
                    }
                )
                print(
                    f"  [{backend}] {group} {name} seed {seed}: {[r.name for r in o.results if r.failed]} "
                    f"({o.seconds:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            if save:
                _dump(records, save)
    return records


def _dump(records: list[dict], path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(records, fh)
    os.replace(tmp, path)


def _in_subprocess(backend: str, argv: list[str], out: str) -> list[dict]:
    """Run this script for one backend in a subprocess (its own framework import) and load its records."""
    cmd = [sys.executable, __file__, "--backends", backend, "--collect-only", "--save-traces", out, *argv]
    print(f"[{backend}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env={**os.environ, "KERAS_BACKEND": backend})
    if done.returncode != 0 and not os.path.exists(out):
        raise SystemExit(f"[{backend}] the benchmark failed (exit {done.returncode}) before saving any run")
    with open(out, "rb") as fh:
        return pickle.load(fh)


# -- judging -----------------------------------------------------------------------


def _judged(rec: dict, t: Thresholds) -> dict:
    """The run's verdict under the current checks and diagnosis."""
    from pytest_stability.pipeline import judge

    results = judge(rec["trace"], t)
    findings = [f for r in results for f in r.findings]
    primary = next((f for f in findings if f.evidence.get("rank") == 0), None)
    return {
        "results": results,
        "findings": findings,
        "primary": primary,
        "failed": sorted(r.name for r in results if r.failed),
    }


def _fix_outcome(rec: dict, primary: Any) -> str:
    """``first`` (the first suggested fix resolved the run), ``later`` (another fix did), ``no`` (no replayed fix
    did), ``none`` (nothing replayable), ``stale`` (replayed with another first fix than the current one)."""
    note = rec.get("whatif")
    if not note or not note.get("attempts"):
        return "none"
    first = note["attempts"][0]
    configs = list(primary.evidence.get("fix_configs") or []) if primary is not None else []
    if not configs or first.get("fix") != configs[0]:
        return "stale"
    if first.get("resolved"):
        return "first"
    if first.get("resolved") is None and len(note["attempts"]) == 1:
        return "none"
    return "later" if note.get("resolved") else "no"


def _score_pathology(rec: dict, j: dict) -> tuple[bool, bool, bool | None]:
    mine = [f for f in j["findings"] if f.check == rec["check"]]
    detected = bool(mine)
    primary = j["primary"]
    cause_ok = detected and primary is not None and primary.evidence.get("cause_key") == rec["cause"]
    step_ok = None
    if rec["check"] == "nonfinite" and detected:
        bad = np.flatnonzero(rec["trace"].nonfinite != 0)
        want = rec["step"] if rec["step"] is not None else (int(bad[0]) if bad.size else -1)
        step_ok = mine[0].step == want
    return detected, cause_ok, step_ok


def _pct(a: int, n: int) -> str:
    """``"97 % (29/30)"``; one decimal where a whole percent would read as none or all (``"0.3 % (1/312)"``)."""
    if not n:
        return "n/a"
    pct = 100.0 * a / n
    digits = 1 if (a > 0 and round(pct) == 0) or (a < n and round(pct) == 100) else 0
    return f"{pct:.{digits}f} % ({a}/{n})"


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson upper bound on a rate seen ``k`` times in ``n`` runs: the largest rate p at
    which seeing at most ``k`` still has probability ``1 - confidence`` (k = 0: ``1 - (1 - confidence) ** (1/n)``,
    about 3/n)."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(100):  # cdf falls as p rises: bisect for cdf(p) = 1 - confidence
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1.0 - confidence else (lo, mid)
    return hi


def _fp(k: int, n: int) -> str:
    """A false-positive rate with its 95 % upper bound."""
    return f"{_pct(k, n)}, at most {100.0 * upper_bound(k, n):.1f} % (95 % bound)" if n else "n/a"


def _pathology_table(backend: str, recs: list[dict], judged: dict[int, dict]) -> tuple[list[str], dict]:
    out = [
        f"### {backend}: pathologies",
        "",
        "| pathology | check | detected | right cause (primary finding) | expected cause (got) | exact NaN step "
        "| first fix resolves | a later fix resolves | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"rows": {}}
    names = list(dict.fromkeys(r["name"] for r in recs if r["group"] == "pathology"))
    for name in names:
        mine = [r for r in recs if r["name"] == name and r["group"] == "pathology"]
        det = cause = steps_ok = steps_n = 0
        causes: dict[str, int] = {}
        fixes = {"first": 0, "later": 0, "no": 0, "none": 0, "stale": 0}
        for rec in mine:
            j = judged[id(rec)]
            d, c, s = _score_pathology(rec, j)
            det += d
            cause += c
            if s is not None:
                steps_n += 1
                steps_ok += s
            key = j["primary"].evidence["cause_key"] if j["primary"] is not None else "-"
            causes[key] = causes.get(key, 0) + 1
            if j["primary"] is not None:
                fixes[_fix_outcome(rec, j["primary"])] += 1
        replayed = fixes["first"] + fixes["later"] + fixes["no"]
        got = ", ".join(f"{k}: {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1]))
        first = _pct(fixes["first"], replayed) if replayed else "-"
        if fixes["stale"]:
            first += f" ({fixes['stale']} stale)"
        later = _pct(fixes["later"], replayed) if replayed else "-"
        out.append(
            f"| {name} | {mine[0]['check']} | {_pct(det, len(mine))} | {_pct(cause, len(mine))} | "
            f"{mine[0]['cause']} ({got}) | {f'{steps_ok}/{steps_n}' if steps_n else ''} | {first} | {later} | "
            f"{float(np.mean([r['seconds'] for r in mine])):.1f} |"
        )
        summary["rows"][name] = {
            "n": len(mine),
            "detected": det,
            "cause": cause,
            "first_fix": fixes["first"],
            "replayed": replayed,
        }
    return out, summary


def _healthy_table(backend: str, recs: list[dict], judged: dict[int, dict], t: Thresholds) -> tuple[list[str], dict]:
    healthy = [r for r in recs if r["group"] == "healthy"]
    fp = {name: 0 for name in CHECKS}
    worst = {"max_zscore": 0.0, "max_ratio": 0.0, "slow_rise": 0.0, "grad_growth": 0.0, "val_rise": 0.0}
    worst_at = dict.fromkeys(worst, "")
    # stuck's no_update margin: the least that any variable of a healthy run moved over the run (its |dw|/|w|
    # summed), against the rule's NO_UPDATE_TOTAL
    least_moved, least_at = math.inf, ""
    fp_runs = []
    any_fp = 0
    for rec in healthy:
        results = judged[id(rec)]["results"]
        failed = [r for r in results if r.failed]
        any_fp += bool(failed)
        for r in failed:
            fp[r.name] += 1
            fp_runs.append(f"{rec['name']}/seed {rec['seed']}: {r.name}: {r.findings[0].message}")
        st = {r.name: r.stats for r in results}
        vals = {
            "max_zscore": st["loss_spike"].get("max_zscore"),
            "max_ratio": st["loss_spike"].get("max_ratio"),
            "slow_rise": st["loss_spike"].get("max_slow_rise"),
            "grad_growth": (st["grad_norm"]["max_judged"] / st["grad_norm"]["reference"])
            if st["grad_norm"].get("reference")
            else None,
            "val_rise": st["val_loss"].get("max_rise"),
        }
        for k, v in vals.items():
            if v is not None and np.isfinite(v) and v > worst[k]:
                worst[k], worst_at[k] = float(v), f"{rec['name']}/{rec['seed']}"
        moved = rec["trace"].var_update_ratio
        if moved is not None and moved.size:
            total = float(np.min(np.nansum(np.where(np.isfinite(moved), np.abs(moved), 0.0), axis=0)))
            if total < least_moved:
                least_moved, least_at = total, f"{rec['name']}/{rec['seed']}"
    n = len(healthy)
    mean = float(np.mean([r["seconds"] for r in healthy])) if healthy else 0.0
    out = [
        f"### {backend}: healthy runs",
        "",
        f"{n} runs ({len({r['name'] for r in healthy})} scenarios, {mean:.1f} s/run); runs failing any check: "
        f"{_fp(any_fp, n)}.",
        "",
        "| check | false positives | largest healthy statistic |",
        "|---|---|---|",
    ]
    stat = {
        "loss_spike": f"z {worst['max_zscore']:.2f} ({worst_at['max_zscore']}), ratio {worst['max_ratio']:.2f} "
        f"({worst_at['max_ratio']}), slow rise {worst['slow_rise']:.1f}x ({worst_at['slow_rise']})",
        "grad_norm": f"growth {worst['grad_growth']:.1f}x ({worst_at['grad_growth']})",
        "val_loss": f"rise {worst['val_rise']:.3f} ({worst_at['val_rise']})",
    }
    if least_at:
        stat["stuck"] = f"least total relative update of a variable {least_moved:.3g} ({least_at})"
    for name, k in fp.items():
        out.append(f"| {name} | {_pct(k, n)} | {stat.get(name, '-')} |")
    if fp_runs:
        out += ["", "False positives:"] + [f"- {r}" for r in fp_runs]
    return out, {"n": n, "fp": any_fp}


def _verdict(j: dict) -> tuple[bool, str]:
    primary = j["primary"]
    return bool(j["failed"]), primary.evidence["cause_key"] if primary is not None else "-"


def _agreement(records: list[dict], judged: dict[int, dict], backends: list[str]) -> tuple[list[str], dict]:
    """Agreement of the verdicts between backends over the (scenario, seed) pairs every backend ran."""
    by: dict[tuple[str, str, int], dict[str, dict]] = {}
    for rec in records:
        by.setdefault((rec["group"], rec["name"], rec["seed"]), {})[rec["backend"]] = judged[id(rec)]
    pairs = {k: v for k, v in by.items() if all(b in v for b in backends)}
    out = [
        "### Agreement between backends",
        "",
        f"Over the {len(pairs)} (scenario, seed) pairs run on every backend ({', '.join(backends)}): a pair agrees "
        "when every backend gives the same verdict.",
        "",
        "| group | pairs | same pass/fail | same pass/fail and primary cause | disagreeing pairs |",
        "|---|---|---|---|---|",
    ]
    stats = {}
    for group in ("pathology", "healthy", None):
        mine = {k: v for k, v in pairs.items() if group is None or k[0] == group}
        same_fail = same_all = 0
        odd = []
        for (_group, name, seed), per in sorted(mine.items()):
            verdicts = [_verdict(per[b]) for b in backends]
            a = len({v[0] for v in verdicts}) == 1
            b = len(set(verdicts)) == 1
            same_fail += a
            same_all += b
            if not b:
                odd.append(
                    f"{name}/{seed} ("
                    + ", ".join(
                        f"{bk}: {'fail ' + v[1] if v[0] else 'pass'}" for bk, v in zip(backends, verdicts, strict=True)
                    )
                    + ")"
                )
        label = group or "all"
        shown = "; ".join(odd[:12]) + (f"; and {len(odd) - 12} more" if len(odd) > 12 else "")
        out.append(
            f"| {label} | {len(mine)} | {_pct(same_fail, len(mine))} | {_pct(same_all, len(mine))} | {shown or '-'} |"
        )
        stats[label] = (same_fail, same_all, len(mine))
    return out, stats


def _headline(backends: list[str], p_sum: dict, h_sum: dict, agree: dict | None) -> list[str]:
    """The summary table (benchmarks/results/detection.md, shown on the docs' detection page): one row per backend."""
    out = [
        "## Summary (per backend)",
        "",
        "| backend | healthy runs failing (any check; one-sided 95 % Clopper-Pearson bound) | pathologies "
        "| lowest detection with the right cause "
        "| first suggested fix resolves (all pathologies with a replayable fix) |",
        "|---|---|---|---|---|",
    ]
    for b in backends:
        rows = p_sum.get(b, {}).get("rows", {})
        worst = min(rows.items(), key=lambda kv: kv[1]["cause"] / kv[1]["n"]) if rows else None
        first = sum(r["first_fix"] for r in rows.values())
        replayed = sum(r["replayed"] for r in rows.values())
        h = h_sum.get(b, {"n": 0, "fp": 0})
        out.append(
            f"| {b} | {_fp(h['fp'], h['n'])} | {len(rows)} | "
            + (f"{_pct(worst[1]['cause'], worst[1]['n'])} ({worst[0]})" if worst else "-")
            + f" | {_pct(first, replayed)} |"
        )
    if agree:
        a = agree.get("all")
        if a:
            out += [
                "",
                f"Verdicts agree between backends on {_pct(a[1], a[2])} of the (scenario, seed) pairs "
                f"(pass/fail and primary cause; pass/fail alone: {_pct(a[0], a[2])}).",
            ]
    return out


def _by_cause(records: list[dict], judged: dict[int, dict]) -> list[str]:
    """First-fix success per primary cause, every backend pooled (what ``diagnosis.FIX_SUCCESS`` quotes)."""
    per: dict[str, list[int]] = {}
    kinds: dict[str, list[int]] = {}  # by the first fix's setting(s): learning_rate_factor, learning_rate_cap...
    for rec in records:
        primary = judged[id(rec)]["primary"]
        if rec["group"] != "pathology" or primary is None:
            continue
        outcome = _fix_outcome(rec, primary)
        if outcome in ("first", "later", "no"):
            for table, key in (
                (per, primary.evidence["cause_key"]),
                (kinds, fix_setting(primary.evidence["fix_configs"][0])),
            ):
                n = table.setdefault(key, [0, 0])
                n[0] += outcome == "first"
                n[1] += 1
    if not per:
        return []
    out = [
        "### First suggested fix, by primary cause (every backend pooled)",
        "",
        "| primary cause | first fix resolves |",
        "|---|---|",
    ]
    out += [f"| {k} | {_pct(a, n)} |" for k, (a, n) in sorted(per.items())]
    out += ["", "As `diagnosis.FIX_SUCCESS`: `" + repr({k: tuple(v) for k, v in sorted(per.items())}) + "`"]
    out += ["", "By the first fix's setting: `" + repr({k: tuple(v) for k, v in sorted(kinds.items())}) + "`"]
    return out


def _report(records: list[dict], t: Thresholds, wall: float, trained: bool, sweep: bool) -> str:
    for rec in records:
        rec.setdefault("backend", "tensorflow")
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in records)]
    backends += sorted({r["backend"] for r in records} - set(backends))
    judged = {id(rec): _judged(rec, t) for rec in records}
    body: list[str] = []
    p_sum: dict[str, dict] = {}
    h_sum: dict[str, dict] = {}
    for b in backends:
        recs = [r for r in records if r["backend"] == b]
        if any(r["group"] == "pathology" for r in recs):
            lines, p_sum[b] = _pathology_table(b, recs, judged)
            body += lines + [""]
        if any(r["group"] == "healthy" for r in recs):
            lines, h_sum[b] = _healthy_table(b, recs, judged, t)
            body += lines + [""]
    agree = None
    if len(backends) > 1:
        lines, agree = _agreement(records, judged, backends)
        body += lines + [""]
    md = ["## Detection benchmark", ""] + _headline(backends, p_sum, h_sum, agree) + [""] + _by_cause(records, judged)
    md += [""] + body
    md += [
        "Thresholds: " + ", ".join(f"{k}={v}" for k, v in t.to_dict().items()) + ".",
        (
            f"Total wall time {wall:.0f} s (2 CPU cores)."
            if trained
            else f"Judged from stored traces in {wall:.0f} s (--from-traces): no training in this run."
        ),
        "",
    ]
    text = "\n".join(md)
    if sweep:
        text += "\n" + _sweep(records)
    return text


def _sweep(records: list[dict]) -> str:
    """Detection and healthy failures for each swept threshold value (see :data:`SWEEP`), all backends pooled."""
    out = [
        "## Threshold sweep (same traces, no retraining)",
        "",
        "One threshold moved at a time, the others at their defaults, every backend's runs pooled. *detected*: "
        "runs of the pathologies that this check must catch in which it fails; *healthy failing*: healthy runs "
        "in which any check fails.",
        "",
        "| threshold | value | detected | healthy failing |",
        "|---|---|---|---|",
    ]
    default = Thresholds()
    healthy = [r["trace"] for r in records if r["group"] == "healthy"]
    for name, values in SWEEP.items():
        check = SWEEP_CHECK[name]
        mine = [r["trace"] for r in records if r["group"] == "pathology" and r["check"] == check]
        for value in values:
            t = Thresholds(**{**default.to_dict(), name: value})
            det = sum(any(r.failed for r in run_checks(tr, t, (check,))) for tr in mine)
            bad = sum(any(r.failed for r in run_checks(tr, t)) for tr in healthy)
            mark = " (default)" if value == getattr(default, name) else ""
            out.append(f"| {name} | {value:g}{mark} | {_pct(det, len(mine))} | {_pct(bad, len(healthy))} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backends",
        default=None,
        help="comma-separated Keras backends, each trained in its own subprocess (default: "
        "KERAS_BACKEND, else tensorflow)",
    )
    ap.add_argument("--seeds", type=int, default=10, help="seeds per pathology (default 10)")
    ap.add_argument(
        "--healthy-seeds",
        type=int,
        default=16,
        help="seeds per healthy scenario (default 16: 29 healthy families x 16 = 464 runs)",
    )
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="train seeds FIRST.. (default 0): more seeds of a set already saved, merged with --from-traces",
    )
    ap.add_argument("--only", choices=("pathology", "healthy"), help="train only this group")
    ap.add_argument("--scenarios", help="comma-separated scenario names to train (default: all)")
    ap.add_argument("--quick", action="store_true", help="3 seeds per pathology, 2 per healthy scenario")
    ap.add_argument("--no-whatif", action="store_true", help="skip the what-if replay of the suggested fixes")
    ap.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep")
    ap.add_argument(
        "--save-traces", metavar="FILE", help="also pickle every run to FILE (with several backends: FILE.<backend>)"
    )
    ap.add_argument(
        "--from-traces",
        metavar="FILE",
        nargs="+",
        help="judge the runs pickled by --save-traces instead of training (several files are merged)",
    )
    ap.add_argument(
        "--out",
        default=RESULTS,
        help=f"the results file in benchmarks/results (default {RESULTS}; another name for a run of a few "
        "scenarios, which would not replace the full tables)",
    )
    ap.add_argument("--collect-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.healthy_seeds < 1:
        ap.error(f"--seeds and --healthy-seeds must be >= 1, received {args.seeds} and {args.healthy_seeds}")
    if args.first_seed < 0:
        ap.error(f"--first-seed must be >= 0, received {args.first_seed}")
    backends = args.backends.split(",") if args.backends else [os.environ.get("KERAS_BACKEND", "tensorflow")]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        ap.error(f"--backends: unknown backend(s) {unknown}; expected names from {list(BACKENDS)}")
    n_p, n_h = (3, 2) if args.quick else (args.seeds, args.healthy_seeds)
    names = set(args.scenarios.split(",")) if args.scenarios else None
    t = Thresholds()
    started = time.perf_counter()
    if args.from_traces:
        records = []
        for path in args.from_traces:
            with open(path, "rb") as fh:
                records += pickle.load(fh)
    elif len(backends) == 1 and os.environ.get("KERAS_BACKEND", "tensorflow") == backends[0]:
        records = _collect(
            n_p, n_h, t, not args.no_whatif, args.only, names, backends[0], args.save_traces, args.first_seed
        )
        if args.save_traces:
            _dump(records, args.save_traces)
    else:
        # one subprocess per backend: each imports its own framework, with KERAS_BACKEND set before Keras loads
        child = _strip_option([a for a in argv if a != "--collect-only"], "--backends")
        child = _strip_option(child, "--save-traces")
        records = []
        with tempfile.TemporaryDirectory() as tmp:
            for b in backends:
                out = f"{args.save_traces}.{b}" if args.save_traces else os.path.join(tmp, f"{b}.pkl")
                records += _in_subprocess(b, child, out)
    if args.collect_only:
        return 0
    md = _report(records, t, time.perf_counter() - started, trained=not args.from_traces, sweep=not args.no_sweep)
    print(md)
    write_results(args.out, md)
    return 0


def _strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
