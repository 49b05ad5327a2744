"""Stability baselines: record each test's summary metrics, and compare a run against them.

A baseline file (``--stability-save-baseline=PATH``) holds, for every test that
trained, one entry per ``stability.train()`` call and per seed: the run's
summary metrics and the (check, kind) of each finding.  A later run
(``--stability-baseline=PATH``) compares each seed's run with its entry and
names every regression beyond the tolerances:

* a new finding: a (check, kind) the baseline run did not have;
* more loss spikes than the baseline's count plus ``baseline_extra_spikes``;
* a 99th-percentile gradient norm above ``baseline_grad_factor`` x the baseline's;
* a final smoothed validation loss above the baseline's by more than
  ``baseline_val_tolerance`` (relative: ``now > base + tol * |base|``);
* a learning-rate margin (``margin=True``) or a curvature margin (``curvature=True``: 1 / the
  edge-of-stability ratio) below the baseline's divided by ``baseline_margin_factor``.

A non-finite value where the baseline had a finite one is a regression.

Saving into an existing baseline merges (:func:`merge_baseline`): the tests
that trained in this run replace their entries, the others are kept, so
``pytest -k one_test --stability-save-baseline=PATH`` updates one entry.

Pure builtins/numpy; no pytest, no TensorFlow.  Baseline documents are
builtins-only dicts: :func:`pytest_stability.report.json_report.dumps` writes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from .._floats import decode_float, encode_float
from .._floats import fmt

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "pytest-stability-baseline"

#: The summary metrics kept per seed (the keys of RunReport.summary()).
BASELINE_METRICS = ("steps_run", "steps_planned", "final_loss", "min_loss", "largest_spike", "spikes",
                    "max_grad_norm", "p99_grad_norm", "val_trend", "final_val_loss", "findings", "lr_margin",
                    "eos_ratio", "curvature_margin")

#: Tolerance names (also the option names) and their built-in defaults.
TOLERANCE_DEFAULTS: dict[str, float | int] = {
    "baseline_grad_factor": 2.0,
    "baseline_val_tolerance": 0.10,
    "baseline_extra_spikes": 0,
    "baseline_margin_factor": 2.0,
}

OK, REGRESSED, MISSING = "ok", "regressed", "missing"


class BaselineFileError(ValueError):
    """A baseline file is not a pytest-stability baseline; the message says why and what to do.

    ``problem`` is the message without the advice, for callers that give their own.
    """

    def __init__(self, problem: str, advice: str = "") -> None:
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem


# -- building -------------------------------------------------------------------


def _run_entry(run: Mapping[str, Any]) -> dict[str, Any]:
    summary = run.get("summary") or {}
    return {
        "verdict": run.get("verdict"),
        # the Keras backend it trained on: another backend's numerics give another trajectory
        "backend": (run.get("model") or {}).get("backend"),
        "summary": {k: summary.get(k) for k in BASELINE_METRICS if k in summary},  # margins only when measured
        "findings": [{"check": f["check"], "kind": f["kind"], "step": f["step"]} for f in run.get("findings") or ()],
    }


def build_baseline(records: Iterable[Mapping[str, Any]], *, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline document for a run's records (tests that never trained are left out).

    Args:
        records: the session's per-test records (builtins).
        meta: run facts to keep alongside (plugin version, environment, time).
    """
    tests: dict[str, Any] = {}
    for record in records:
        calls = record.get("calls") or []
        if not calls:
            continue
        tests[record["nodeid"]] = {
            "verdict": record.get("verdict"),
            "calls": [{"runs": {str(run["seed"]): _run_entry(run) for run in call["runs"]}} for call in calls],
        }
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND, **dict(meta), "tests": tests}


def merge_baseline(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The baseline to save when ``previous`` (a valid baseline, or None) is already at the path.

    Each test of ``current`` replaces its whole entry (every call and seed);
    the entries of tests that did not train in this run are kept as they were.

    Returns:
        The merged document (``current``'s metadata, tests sorted by node id)
        and the counts ``{"updated", "added", "kept"}``.
    """
    old = dict((previous or {}).get("tests") or {})
    new = current["tests"]
    counts = {"updated": sum(n in old for n in new), "added": sum(n not in old for n in new),
              "kept": sum(n not in new for n in old)}
    old.update(new)
    return dict(current, tests={n: old[n] for n in sorted(old)}), counts


def validate_baseline(document: Any, where: str) -> dict[str, Any]:
    """Check a loaded baseline document's shape; raise :class:`BaselineFileError` naming the problem."""
    if not isinstance(document, dict) or document.get("kind") != BASELINE_KIND:
        raise BaselineFileError(f"{where} is not a pytest-stability baseline (no \"kind\": \"{BASELINE_KIND}\")",
                                "write one with --stability-save-baseline=PATH")
    version = document.get("schema_version")
    if version != BASELINE_SCHEMA_VERSION:
        raise BaselineFileError(f"{where} has baseline schema_version {version!r}, and this pytest-stability reads "
                                f"version {BASELINE_SCHEMA_VERSION}", "save the baseline again")
    tests = document.get("tests")
    if not isinstance(tests, dict):
        raise BaselineFileError(f"{where}: \"tests\" must be an object mapping node ids to entries")
    for nodeid, entry in tests.items():
        calls = entry.get("calls") if isinstance(entry, dict) else None
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("runs"), dict)
                                                  for c in calls):
            raise BaselineFileError(f"{where}: the entry of {nodeid!r} has no valid \"calls\" list")
    return document


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a baseline file; raises :class:`BaselineFileError` with a message naming the problem."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineFileError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None

    def no_constants(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    try:
        document = json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise BaselineFileError(f"the baseline {path} is not valid JSON: {exc}") from None
    return validate_baseline(document, str(path))


# -- comparing ------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A summary value as a float (NaN/Inf decoded), or None when it was not measured."""
    if value is None or isinstance(value, bool):
        return None
    return decode_float(value)


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%" if x * 100 == round(x * 100) else f"{x * 100:.3g}%"


def compare_run(base: Mapping[str, Any], now_summary: Mapping[str, Any], now_findings: Iterable[Mapping[str, Any]],
                tolerances: Mapping[str, Any]) -> dict[str, Any]:
    """Compare one seed's run with its baseline entry.

    Args:
        base: the baseline entry (``{"summary": {...}, "findings": [...]}``).
        now_summary: the run's ``RunReport.summary()`` (builtins, NaN encoded).
        now_findings: the run's findings (``Finding.to_dict()`` forms).
        tolerances: values for every key of :data:`TOLERANCE_DEFAULTS`.

    Returns:
        ``{"status": "ok"|"regressed", "metrics": {...}, "regressions": [str, ...]}``
        where ``metrics`` holds ``baseline``, ``now``, ``limit`` and ``regressed``
        for ``spikes``, ``p99_grad_norm``, ``final_val_loss`` and ``findings``.
    """
    bsum = base.get("summary") or {}
    metrics: dict[str, dict[str, Any]] = {}
    regressions: list[str] = []

    # New findings: a (check, kind) the baseline did not have.
    known = {(f["check"], f["kind"]) for f in base.get("findings") or ()}
    now_findings = list(now_findings)
    new = [f for f in now_findings if (f["check"], f["kind"]) not in known]
    metrics["findings"] = {"baseline": len(base.get("findings") or ()), "now": len(now_findings), "limit": None,
                           "regressed": bool(new)}
    seen: set[tuple[str, str]] = set()
    for f in new:
        if (f["check"], f["kind"]) in seen:
            continue
        seen.add((f["check"], f["kind"]))
        regressions.append(f"new finding [{f['check']}] {f['kind']} at step {f['step']} (not in the baseline): "
                           f"{f['message']}")

    # Loss spikes.
    extra = int(tolerances["baseline_extra_spikes"])
    b_sp, n_sp = int(bsum.get("spikes") or 0), int(now_summary.get("spikes") or 0)
    bad = n_sp > b_sp + extra
    metrics["spikes"] = {"baseline": b_sp, "now": n_sp, "limit": b_sp + extra, "regressed": bad}
    if bad:
        regressions.append(f"loss spikes: baseline {b_sp}, now {n_sp} (tolerance: +{extra})")

    # 99th-percentile gradient norm.
    factor = float(tolerances["baseline_grad_factor"])
    b_g, n_g = _num(bsum.get("p99_grad_norm")), _num(now_summary.get("p99_grad_norm"))
    if b_g is not None and n_g is not None:
        limit = factor * b_g if math.isfinite(b_g) else None
        bad = limit is not None and not (n_g <= limit)  # NaN now counts as worse
        metrics["p99_grad_norm"] = {"baseline": b_g, "now": n_g, "limit": limit, "regressed": bad}
        if bad:
            regressions.append(f"99th-percentile gradient norm: baseline {fmt(b_g, 4)}, now {fmt(n_g, 4)} "
                               f"(tolerance: x{factor:g}, limit {fmt(limit, 4)})")

    # Final smoothed validation loss.
    tol = float(tolerances["baseline_val_tolerance"])
    b_v, n_v = _num(bsum.get("final_val_loss")), _num(now_summary.get("final_val_loss"))
    if b_v is not None and n_v is not None:
        limit = b_v + tol * abs(b_v) if math.isfinite(b_v) else None
        bad = limit is not None and not (n_v <= limit)
        metrics["final_val_loss"] = {"baseline": b_v, "now": n_v, "limit": limit, "regressed": bad}
        if bad:
            regressions.append(f"final smoothed validation loss: baseline {fmt(b_v, 4)}, now {fmt(n_v, 4)} "
                               f"(tolerance: +{_pct(tol)}, limit {fmt(limit, 4)})")
    # The stability margins (margin=True: learning rate; curvature=True: 1 / the edge-of-stability ratio):
    # fail when one shrank by more than the factor.
    mfactor = float(tolerances.get("baseline_margin_factor", TOLERANCE_DEFAULTS["baseline_margin_factor"]))
    for key, what in (("lr_margin", "learning-rate stability margin"),
                      ("curvature_margin", "curvature margin (1 / edge-of-stability ratio)")):
        b_m, n_m = _num(bsum.get(key)), _num(now_summary.get(key))
        if b_m is None or n_m is None:
            continue
        limit = b_m / mfactor if math.isfinite(b_m) else None
        bad = limit is not None and not (n_m >= limit)
        metrics[key] = {"baseline": b_m, "now": n_m, "limit": limit, "regressed": bad}
        if bad:
            regressions.append(f"{what}: baseline {fmt(b_m, 3)}x, now {fmt(n_m, 3)}x "
                               f"(tolerance: /{mfactor:g}, limit {fmt(limit, 3)}x)")
    # Builtins with NaN/Inf encoded, like every other record value (strict JSON, xdist).
    metrics = {k: {kk: encode_float(v) if isinstance(v, float) else v for kk, v in m.items()}
               for k, m in metrics.items()}
    return {"status": REGRESSED if regressions else OK, "metrics": metrics, "regressions": regressions}


def _metrics_line(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    labels = (("spikes", "spikes"), ("p99_grad_norm", "p99|g|"), ("final_val_loss", "val"), ("lr_margin", "margin"),
              ("curvature_margin", "curv. margin"),
              ("findings", "findings"))
    for key, label in labels:
        m = metrics.get(key)
        if m is None:
            continue
        mark = " !" if m["regressed"] else ""
        parts.append(f"{label} {fmt(m['baseline'], 3)} -> {fmt(m['now'], 3)}{mark}")
    return ", ".join(parts)


def compare_call(entry: Mapping[str, Any] | None, call_index: int, runs: Iterable[Mapping[str, Any]],
                 tolerances: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """Compare every seed's run of one ``train()`` call with the baseline.

    Args:
        entry: the test's baseline entry, or None when the test is not in the baseline.
        call_index: which ``train()`` call of the test this is (0-based).
        runs: ``{"seed", "summary", "findings"}`` mappings, one per seed.
        tolerances: see :func:`compare_run`.
        strict: whether a missing test or seed counts as a failure.

    Returns:
        Builtins: ``status`` (ok / regressed / missing), ``failed`` (whether the
        test must fail), ``tolerances``, ``seeds`` (per-seed comparisons),
        ``regressions`` (messages, prefixed with the seed) and ``lines`` (for
        the terminal: baseline against now).
    """
    runs = list(runs)
    out: dict[str, Any] = {"status": OK, "failed": False, "strict": strict, "tolerances": dict(tolerances),
                           "seeds": {}, "regressions": [], "lines": []}
    calls = (entry or {}).get("calls") or []
    if entry is None or call_index >= len(calls):
        what = "test" if entry is None else f"train() call #{call_index + 1}"
        out.update(status=MISSING, failed=strict)
        out["lines"].append(f"baseline: {what} not in the baseline"
                            + (" (failed: --stability-baseline-strict)" if strict else " (not compared)"))
        if strict:
            out["regressions"].append(f"{what} not in the baseline (--stability-baseline-strict)")
        return out
    base_runs = calls[call_index]["runs"]
    multi = len(runs) > 1
    for run in runs:
        seed = str(run["seed"])
        prefix = f"seed {seed}: " if multi else ""
        base = base_runs.get(seed)
        if base is None:
            out["seeds"][seed] = {"status": MISSING}
            if out["status"] == OK:
                out["status"] = MISSING
            out["lines"].append(f"baseline: seed {seed} not in the baseline"
                                + (" (failed: --stability-baseline-strict)" if strict else " (not compared)"))
            if strict:
                out["failed"] = True
                out["regressions"].append(f"seed {seed} not in the baseline (--stability-baseline-strict)")
            continue
        base_backend, now_backend = base.get("backend"), run.get("backend")
        if base_backend and now_backend and base_backend != now_backend:
            # not comparable: the same model and seed train along another trajectory on another backend
            out["seeds"][seed] = {"status": MISSING, "backend": {"baseline": base_backend, "now": now_backend}}
            if out["status"] == OK:
                out["status"] = MISSING
            out["lines"].append(f"baseline: {prefix}recorded on the {base_backend} backend, this run trains on "
                                f"{now_backend}: not comparable"
                                + (" (failed: --stability-baseline-strict)" if strict else " (not compared; save "
                                   "a baseline per backend, e.g. --stability-save-baseline=stability-baseline-"
                                   f"{now_backend}.json)"))
            if strict:
                out["failed"] = True
                out["regressions"].append(f"seed {seed}: the baseline was recorded on the {base_backend} backend, "
                                          f"this run trains on {now_backend} (--stability-baseline-strict)")
            continue
        result = compare_run(base, run.get("summary") or {}, run.get("findings") or (), tolerances)
        out["seeds"][seed] = result
        verdict = "REGRESSED" if result["regressions"] else "ok"
        out["lines"].append(f"baseline -> now: {prefix}{_metrics_line(result['metrics'])}  {verdict}")
        if result["regressions"]:
            out["status"] = REGRESSED
            out["failed"] = True
            out["regressions"].extend(f"seed {seed}: {r}" for r in result["regressions"])
    return out


def explain_regression(nodeid: str, path: str, comparison: Mapping[str, Any]) -> str:
    """The failure message of a test whose stability regressed against the baseline."""
    if comparison["status"] == MISSING:
        lines = [f"{nodeid}: missing from the baseline {path}, and --stability-baseline-strict fails what the "
                 "baseline does not cover (save a new baseline with --stability-save-baseline=PATH):"]
        lines.extend(f"  {r}" for r in comparison["regressions"])
        return "\n".join(lines)
    lines = [f"{nodeid}: training stability regressed against the baseline {path}:"]
    lines.extend(f"  {r}" for r in comparison["regressions"])
    tol = comparison["tolerances"]
    lines.append(f"  tolerances: baseline_grad_factor={tol['baseline_grad_factor']:g}, "
                 f"baseline_val_tolerance={tol['baseline_val_tolerance']:g}, "
                 f"baseline_extra_spikes={tol['baseline_extra_spikes']}")
    return "\n".join(lines)


__all__ = [
    "BASELINE_KIND",
    "BASELINE_SCHEMA_VERSION",
    "BaselineFileError",
    "TOLERANCE_DEFAULTS",
    "build_baseline",
    "compare_call",
    "compare_run",
    "explain_regression",
    "load_baseline",
    "merge_baseline",
    "validate_baseline",
]
