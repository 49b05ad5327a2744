"""Which verdicts a rule moves: stored runs judged with the current checks and diagnosis, and again with the
rule switched off, without retraining.

Usage::

    python benchmarks/rule_change.py --set pytest_stability.checks.spikes.EARLY_UPDATE=inf \\
        [--warmup-updates] [--out NAME.md] TRACES.pkl [TRACES.pkl ...]

``TRACES`` are files written by ``detection.py --save-traces``.  ``--set MODULE.NAME=VALUE`` sets a module
constant for the second judgement (``inf`` for a limit that can never be reached, i.e. the rule off; any
Python literal otherwise); the first judgement is the code as it is.  Every run whose verdict moved (pass or
fail, the primary finding's cause, the set of failing checks) is listed.  ``--warmup-updates`` also prints,
per scenario, the largest global ``|dw|/|w|`` over the ``warmup_steps`` (the early blow-up rule's evidence).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._results import write_results  # noqa: E402

Verdict = tuple[str, str, tuple[str, ...]]


def verdicts(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], Verdict]:
    """Per (backend, scenario, seed): pass/fail, the primary finding's cause key, the failing checks."""
    from pytest_stability import diagnosis
    from pytest_stability.checks import Thresholds
    from pytest_stability.pipeline import judge

    out = {}
    for r in records:
        findings = [f for result in judge(r["trace"], Thresholds()) for f in result.findings]
        primary = diagnosis.primary_finding(findings, r["trace"]) if findings else None
        out[(r.get("backend", "?"), r["name"], int(r["seed"]))] = (
            "fail" if findings else "pass",
            str(primary.evidence.get("cause_key")) if primary is not None else "-",
            tuple(sorted({f.check for f in findings})),
        )
    return out


def parse_set(text: str) -> tuple[Any, str, Any]:
    """``"pkg.module.NAME=VALUE"`` -> (module, NAME, value); ``inf`` is ``math.inf``."""
    target, _, raw = text.partition("=")
    module_name, _, attr = target.rpartition(".")
    if not (module_name and attr and raw):
        raise SystemExit(f"--set expects MODULE.NAME=VALUE, received {text!r}")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise SystemExit(f"--set: {module_name} has no {attr!r}")
    value = math.inf if raw.strip() in ("inf", "math.inf") else ast.literal_eval(raw)
    return module, attr, value


def warmup_updates(records: list[dict[str, Any]], warmup: int) -> dict[tuple[str, str], float]:
    """Per (group, scenario): the largest finite global ``|dw|/|w|`` over the first ``warmup`` steps."""
    out: dict[tuple[str, str], float] = {}
    for r in records:
        u = r["trace"].update_ratio
        if u is None:
            continue
        head = np.asarray(u[:warmup], dtype=np.float64)
        head = head[np.isfinite(head)]
        if head.size:
            key = (str(r.get("group", "?")), str(r["name"]))
            out[key] = max(out.get(key, 0.0), float(head.max()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+", help="files written by detection.py --save-traces")
    ap.add_argument("--set", dest="sets", action="append", required=True, help="MODULE.NAME=VALUE (repeatable)")
    ap.add_argument("--warmup-updates", action="store_true", help="print each scenario's largest warm-up update")
    ap.add_argument("--out", help="also write the table to benchmarks/results/OUT")
    args = ap.parse_args(argv)
    records: list[dict[str, Any]] = []
    for path in args.traces:
        with open(path, "rb") as fh:
            records += pickle.load(fh)
    now = verdicts(records)
    changes = [parse_set(s) for s in args.sets]
    kept = [(module, attr, getattr(module, attr)) for module, attr, _ in changes]
    try:
        for module, attr, value in changes:
            setattr(module, attr, value)
        before = verdicts(records)
    finally:
        for module, attr, value in kept:
            setattr(module, attr, value)
    moved = [(key, before[key], now[key]) for key in sorted(now) if before[key] != now[key]]
    groups: dict[str, int] = {}
    for r in records:
        groups[str(r.get("group", "?"))] = groups.get(str(r.get("group", "?")), 0) + 1
    lines = [
        f"Judged {len(records)} stored runs ({', '.join(f'{n} {g}' for g, n in sorted(groups.items()))}) as the code"
        f" is, and with {', '.join(args.sets)}: {len(moved)} verdict(s) moved.",
        "",
    ]
    if moved:
        lines += ["| backend | scenario | seed | with the setting | as the code is |", "|---|---|---|---|---|"]
        lines += [f"| {k[0]} | {k[1]} | {k[2]} | {b} | {a} |" for k, b, a in moved]
        lines.append("")
    if args.warmup_updates:
        from pytest_stability.checks import Thresholds

        warm = Thresholds().warmup_steps
        lines += [f"Largest global |dw|/|w| over the first {warm} steps:", "", "| group | scenario | largest |"]
        lines.append("|---|---|---|")
        table = warmup_updates(records, warm)
        lines += [f"| {g} | {name} | {v:.3g} |" for (g, name), v in sorted(table.items(), key=lambda kv: -kv[1])]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        print(f"written to {write_results(args.out, text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
