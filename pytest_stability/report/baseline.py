"""Stability baselines: record each test's summary metrics, and compare a run against them.

A baseline file (``--stability-save-baseline=PATH``) holds one section per Keras
backend, and in it, for every test that trained on that backend, one entry per
``stability.train()`` call and per seed: the run's summary metrics and the
(check, kind) of each finding.  Another backend trains the same model and seed
along another trajectory (other kernels, other random streams), so its numbers
are no baseline for this one: a later run (``--stability-baseline=PATH``)
compares each seed's run with its entry in the section of the backend it trains
on, and names every regression beyond the tolerances:

* a new finding: a (check, kind) the baseline run did not have;
* more loss spikes than the baseline's count plus ``baseline_extra_spikes``;
* a 99th-percentile gradient norm above ``baseline_grad_factor`` x the baseline's;
* a final smoothed validation loss above the baseline's by more than
  ``baseline_val_tolerance`` (relative: ``now > base + tol * |base|``);
* a learning-rate margin (``margin=True``) or a curvature margin (``curvature=True``: 1 / the
  edge-of-stability ratio) below the baseline's divided by ``baseline_margin_factor``.

A non-finite value where the baseline had a finite one is a regression.

A test (or seed) with no entry in its backend's section is ``missing``: reported
as "not in the baseline", failed only under ``--stability-baseline-strict``.

Saving into an existing baseline merges (:func:`merge_baseline`): the tests
that trained in this run replace their entries in their backend's section; the
other tests, and the other backends' sections, are kept.  So
``pytest -k one_test --stability-save-baseline=PATH`` updates one entry, and
``KERAS_BACKEND=jax pytest --stability-save-baseline=PATH`` adds (or renews) the
JAX section of a file that already holds TensorFlow's.

Document (``schema_version`` 2)::

    {"kind": "pytest-stability-baseline", "schema_version": 2,
     "backends": {"tensorflow": {"created_at", "environment", "plugin_version",
                                 "tests": {nodeid: {"verdict", "calls": [{"runs": {seed: {
                                     "verdict", "summary": {...}, "findings": [...]}}}]}}},
                  "jax": {...}}}

A version-1 file (one ``tests`` table, each run naming its backend) is read as
the same sections (:func:`upgrade`); saving writes version 2.

Pure builtins/numpy; no pytest, no TensorFlow.  Baseline documents are
builtins-only dicts: :func:`pytest_stability.report.json_report.dumps` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from .._floats import decode_float, encode_float, fmt
from ..record import ERROR, BaselineComparison, RunRecord, StabilityRecord

BASELINE_SCHEMA_VERSION = 2
BASELINE_KIND = "pytest-stability-baseline"
#: The section of runs whose backend was not recorded.
UNKNOWN_BACKEND = "unknown"

#: The summary metrics kept per seed (the keys of RunReport.summary()).
BASELINE_METRICS = (
    "steps_run",
    "steps_planned",
    "final_loss",
    "min_loss",
    "largest_spike",
    "spikes",
    "max_grad_norm",
    "p99_grad_norm",
    "val_trend",
    "final_val_loss",
    "findings",
    "lr_margin",
    "eos_ratio",
    "curvature_margin",
)

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


def run_backend(run: RunRecord) -> str:
    """The Keras backend a run (of a record) trained on, as its trace recorded it."""
    return run.backend or UNKNOWN_BACKEND


def _run_entry(run: RunRecord) -> dict[str, Any]:
    summary = run.summary.to_dict()
    return {
        "verdict": run.verdict,
        "summary": {k: summary[k] for k in BASELINE_METRICS if k in summary},  # margins only when measured
        "findings": [{"check": f.check, "kind": f.kind, "step": f.step} for f in run.findings],
    }


def build_baseline(records: Iterable[StabilityRecord], *, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline document for a run's records (tests that never trained are left out).

    Each test goes into the section of the backend it trained on (one process trains on one backend, so a
    run's records normally fill one section).

    Args:
        records: the session's per-test records.
        meta: run facts to keep in each section (plugin version, environment, time).
    """
    backends: dict[str, dict[str, Any]] = {}
    for record in records:
        # a run that an exception stopped (its verdict error) is no baseline: its steps were never judged
        runs = [run for run in record.runs if run.verdict != ERROR]
        if not runs:
            continue
        for backend in sorted({run_backend(run) for run in runs}):
            section = backends.setdefault(backend, {**dict(meta), "tests": {}})
            calls = [
                {
                    "runs": {
                        str(run.seed): _run_entry(run)
                        for run in call.runs
                        if run_backend(run) == backend and run.verdict != ERROR
                    }
                }
                for call in record.calls
            ]
            while calls and not calls[-1]["runs"]:  # the call the exception stopped
                calls.pop()
            section["tests"][record.nodeid] = {"verdict": record.verdict, "calls": calls}
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND, "backends": backends}


def _section(document: Mapping[str, Any] | None, backend: str) -> Mapping[str, Any] | None:
    """``backend``'s section of a baseline document, or None when it holds none."""
    section = ((document or {}).get("backends") or {}).get(backend)
    return section if isinstance(section, Mapping) else None


def section_tests(document: Mapping[str, Any] | None, backend: str) -> dict[str, Any] | None:
    """The ``tests`` table of ``backend``'s section, or None when the baseline holds no run on that backend."""
    section = _section(document, backend)
    return None if section is None else section["tests"]


def merge_baseline(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """The baseline to save when ``previous`` (a valid baseline, or None) is already at the path.

    In each backend section of ``current``, each test replaces its whole entry
    (every call and seed); the entries of tests that did not train in this run,
    and the sections of the other backends, are kept as they were.

    Returns:
        The merged document (tests sorted by node id; a section that this run
        wrote takes this run's metadata) and the counts ``{"updated", "added",
        "kept"}`` of the tests in the sections this run wrote.
    """
    merged = {name: dict(section) for name, section in ((previous or {}).get("backends") or {}).items()}
    counts = {"updated": 0, "added": 0, "kept": 0}
    for backend, section in current["backends"].items():
        old = dict((merged.get(backend) or {}).get("tests") or {})
        new = section["tests"]
        counts["updated"] += sum(n in old for n in new)
        counts["added"] += sum(n not in old for n in new)
        counts["kept"] += sum(n not in new for n in old)
        old.update(new)
        merged[backend] = dict(section, tests={n: old[n] for n in sorted(old)})
    return dict(current, backends={b: merged[b] for b in sorted(merged)}), counts


def upgrade(document: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 baseline (one ``tests`` table, each run naming its backend) as a version-2 document."""
    meta = {k: v for k, v in document.items() if k not in ("tests", "schema_version", "kind")}
    backends: dict[str, dict[str, Any]] = {}
    for nodeid, entry in (document.get("tests") or {}).items():
        calls = entry["calls"]
        names = sorted({run.get("backend") or UNKNOWN_BACKEND for call in calls for run in call["runs"].values()})
        for backend in names:
            section = backends.setdefault(backend, {**meta, "tests": {}})
            section["tests"][nodeid] = {
                "verdict": entry.get("verdict"),
                "calls": [
                    {
                        "runs": {
                            seed: {k: v for k, v in run.items() if k != "backend"}
                            for seed, run in call["runs"].items()
                            if (run.get("backend") or UNKNOWN_BACKEND) == backend
                        }
                    }
                    for call in calls
                ],
            }
    return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND, "backends": backends}


def _check_tests(tests: Any, where: str) -> None:
    if not isinstance(tests, dict):
        raise BaselineFileError(f'{where}: "tests" must be an object mapping node ids to entries')
    for nodeid, entry in tests.items():
        calls = entry.get("calls") if isinstance(entry, dict) else None
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("runs"), dict) for c in calls
        ):
            raise BaselineFileError(f'{where}: the entry of {nodeid!r} has no valid "calls" list')


def validate_baseline(document: Any, where: str) -> dict[str, Any]:
    """Check a loaded baseline document's shape (a version-1 one is upgraded); raise :class:`BaselineFileError`."""
    if not isinstance(document, dict) or document.get("kind") != BASELINE_KIND:
        raise BaselineFileError(
            f'{where} is not a pytest-stability baseline (no "kind": "{BASELINE_KIND}")',
            "write one with --stability-save-baseline=PATH",
        )
    version = document.get("schema_version")
    if version == 1:
        _check_tests(document.get("tests"), where)
        return upgrade(document)
    if version != BASELINE_SCHEMA_VERSION:
        raise BaselineFileError(
            f"{where} has baseline schema_version {version!r}, and this pytest-stability reads "
            f"versions 1 and {BASELINE_SCHEMA_VERSION}",
            "save the baseline again",
        )
    backends = document.get("backends")
    if not isinstance(backends, dict) or not all(isinstance(s, dict) for s in backends.values()):
        raise BaselineFileError(f'{where}: "backends" must be an object mapping Keras backends to sections')
    for backend, section in backends.items():
        _check_tests(section.get("tests"), f"{where} (backend {backend})")
    return document


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read and validate a baseline file; raises :class:`BaselineFileError` with a message naming the problem."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineFileError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None

    def no_constants(token: str) -> NoReturn:
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


def compare_run(
    base: Mapping[str, Any],
    now_summary: Mapping[str, Any],
    now_findings: Iterable[Mapping[str, Any]],
    tolerances: Mapping[str, Any],
) -> dict[str, Any]:
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
    metrics["findings"] = {
        "baseline": len(base.get("findings") or ()),
        "now": len(now_findings),
        "limit": None,
        "regressed": bool(new),
    }
    seen: set[tuple[str, str]] = set()
    for f in new:
        if (f["check"], f["kind"]) in seen:
            continue
        seen.add((f["check"], f["kind"]))
        regressions.append(
            f"new finding [{f['check']}] {f['kind']} at step {f['step']} (not in the baseline): {f['message']}"
        )

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
            regressions.append(
                f"99th-percentile gradient norm: baseline {fmt(b_g, 4)}, now {fmt(n_g, 4)} "
                f"(tolerance: x{factor:g}, limit {fmt(limit, 4)})"
            )

    # Final smoothed validation loss.
    tol = float(tolerances["baseline_val_tolerance"])
    b_v, n_v = _num(bsum.get("final_val_loss")), _num(now_summary.get("final_val_loss"))
    if b_v is not None and n_v is not None:
        limit = b_v + tol * abs(b_v) if math.isfinite(b_v) else None
        bad = limit is not None and not (n_v <= limit)
        metrics["final_val_loss"] = {"baseline": b_v, "now": n_v, "limit": limit, "regressed": bad}
        if bad:
            regressions.append(
                f"final smoothed validation loss: baseline {fmt(b_v, 4)}, now {fmt(n_v, 4)} "
                f"(tolerance: +{_pct(tol)}, limit {fmt(limit, 4)})"
            )
    # The stability margins (margin=True: learning rate; curvature=True: 1 / the edge-of-stability ratio):
    # fail when one shrank by more than the factor.
    mfactor = float(tolerances.get("baseline_margin_factor", TOLERANCE_DEFAULTS["baseline_margin_factor"]))
    for key, what in (
        ("lr_margin", "learning-rate stability margin"),
        ("curvature_margin", "curvature margin (1 / edge-of-stability ratio)"),
    ):
        b_m, n_m = _num(bsum.get(key)), _num(now_summary.get(key))
        if b_m is None or n_m is None:
            continue
        limit = b_m / mfactor if math.isfinite(b_m) else None
        bad = limit is not None and not (n_m >= limit)
        metrics[key] = {"baseline": b_m, "now": n_m, "limit": limit, "regressed": bad}
        if bad:
            regressions.append(
                f"{what}: baseline {fmt(b_m, 3)}x, now {fmt(n_m, 3)}x (tolerance: /{mfactor:g}, limit {fmt(limit, 3)}x)"
            )
    # Builtins with NaN/Inf encoded, like every other record value (strict JSON, xdist).
    metrics = {
        k: {kk: encode_float(v) if isinstance(v, float) else v for kk, v in m.items()} for k, m in metrics.items()
    }
    return {"status": REGRESSED if regressions else OK, "metrics": metrics, "regressions": regressions}


def _metrics_line(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    labels = (
        ("spikes", "spikes"),
        ("p99_grad_norm", "p99|g|"),
        ("final_val_loss", "val"),
        ("lr_margin", "margin"),
        ("curvature_margin", "curv. margin"),
        ("findings", "findings"),
    )
    for key, label in labels:
        m = metrics.get(key)
        if m is None:
            continue
        mark = " !" if m["regressed"] else ""
        parts.append(f"{label} {fmt(m['baseline'], 3)} -> {fmt(m['now'], 3)}{mark}")
    return ", ".join(parts)


def no_backend_note(backend: str) -> str:
    """Why nothing of a run on ``backend`` is in a baseline that holds no run on it, and how to add them."""
    return (
        f"it has no runs on the {backend} backend; KERAS_BACKEND={backend} pytest "
        "--stability-save-baseline=PATH adds them"
    )


def compare_call(
    entry: Mapping[str, Any] | None,
    call_index: int,
    runs: Iterable[Mapping[str, Any]],
    tolerances: Mapping[str, Any],
    *,
    strict: bool,
    backend: str | None = None,
    backend_in_baseline: bool = True,
    path: str | None = None,
) -> BaselineComparison:
    """Compare every seed's run of one ``train()`` call with the baseline.

    Args:
        entry: the test's entry in the section of the backend it trains on, or None when it has none.
        call_index: which ``train()`` call of the test this is (0-based).
        runs: ``{"seed", "summary", "findings"}`` mappings, one per seed.
        tolerances: see :func:`compare_run`.
        strict: whether a missing test or seed counts as a failure.
        backend: the Keras backend the runs trained on (recorded in the comparison).
        backend_in_baseline: False when the baseline holds no run on ``backend`` at all (the lines say so).
        path: the baseline file (recorded in the comparison).

    Returns:
        The comparison: ``status`` (ok / regressed / missing), ``failed`` (whether the
        test must fail), ``backend``, ``tolerances``, ``seeds`` (per-seed
        comparisons), ``regressions`` (messages, prefixed with the seed) and
        ``lines`` (for the terminal: baseline against now).
    """
    runs = list(runs)
    out: dict[str, Any] = {
        "status": OK,
        "failed": False,
        "strict": strict,
        "backend": backend,
        "tolerances": dict(tolerances),
        "seeds": {},
        "regressions": [],
        "lines": [],
    }
    calls = (entry or {}).get("calls") or []
    if entry is None or call_index >= len(calls):
        what = "test" if entry is None else f"train() call #{call_index + 1}"
        why = "" if backend_in_baseline or backend is None else f": {no_backend_note(backend)}"
        out.update(status=MISSING, failed=strict, backend_in_baseline=backend_in_baseline)
        out["lines"].append(
            f"baseline: {what} not in the baseline"
            + (" (failed: --stability-baseline-strict)" if strict else " (not compared)")
            + why
        )
        if strict:
            out["regressions"].append(f"{what} not in the baseline (--stability-baseline-strict){why}")
        return BaselineComparison.from_dict(dict(out, path=path))
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
            out["lines"].append(
                f"baseline: seed {seed} not in the baseline"
                + (" (failed: --stability-baseline-strict)" if strict else " (not compared)")
            )
            if strict:
                out["failed"] = True
                out["regressions"].append(f"seed {seed} not in the baseline (--stability-baseline-strict)")
            continue
        result = compare_run(base, run.get("summary") or {}, run.get("findings") or (), tolerances)
        out["seeds"][seed] = result
        verdict = "REGRESSED" if result["regressions"] else "ok"
        out["lines"].append(f"baseline -> now: {prefix}{_metrics_line(result['metrics'])}  {verdict}")
        if result["regressions"]:
            out["status"] = REGRESSED
            out["failed"] = True
            out["regressions"].extend(f"seed {seed}: {r}" for r in result["regressions"])
    return BaselineComparison.from_dict(dict(out, path=path))


#: the parts of a run's environment that move its numbers (the JSON report's ``environment``): the CPU's rounding
#: and the libraries' kernels
NUMERIC_ENVIRONMENT = ("cpu", "python", "numpy", "tensorflow", "keras", "jax", "torch")


def section_environment(document: Mapping[str, Any] | None, backend: str) -> Mapping[str, Any] | None:
    """The ``environment`` that ``backend``'s section of a baseline was saved in (None where it holds none)."""
    env = (_section(document, backend) or {}).get("environment")
    return env if isinstance(env, Mapping) else None


def environment_changes(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[str]:
    """What differs between the environment a baseline was saved in and this run's, among
    :data:`NUMERIC_ENVIRONMENT` (``"cpu: 'A' -> 'B'"``, ``"tensorflow 2.20.0 -> 2.21.0"``); a part either side
    did not record (an older baseline has no ``cpu``) is not compared."""
    changes = []
    for key in NUMERIC_ENVIRONMENT:
        before, after = (saved or {}).get(key), now.get(key)
        if before is None or after is None or before == after:
            continue
        changes.append(f"cpu: {before!r} -> {after!r}" if key == "cpu" else f"{key} {before} -> {after}")
    return changes


def explain_regression(
    nodeid: str, path: str, comparison: BaselineComparison, environment_changed: Iterable[str] = ()
) -> str:
    """The failure message of a test whose stability regressed against the baseline; ``environment_changed``:
    what differs between the environment the baseline was saved in and this run's (:func:`environment_changes`)."""
    if comparison.status == MISSING:
        lines = [
            f"{nodeid}: missing from the baseline {path}, and --stability-baseline-strict fails what the "
            "baseline does not cover (save a new baseline with --stability-save-baseline=PATH):"
        ]
        lines.extend(f"  {r}" for r in comparison.regressions)
        return "\n".join(lines)
    lines = [f"{nodeid}: training stability regressed against the baseline {path}:"]
    lines.extend(f"  {r}" for r in comparison.regressions)
    tol = comparison.tolerances
    lines.append(
        f"  tolerances: baseline_grad_factor={tol['baseline_grad_factor']:g}, "
        f"baseline_val_tolerance={tol['baseline_val_tolerance']:g}, "
        f"baseline_extra_spikes={tol['baseline_extra_spikes']}"
    )
    changed = list(environment_changed)
    if changed:
        lines.append(
            f"  the baseline was saved in another environment ({'; '.join(changed)}): another CPU or other library "
            "versions round differently and move every number, a chaotic run's most; if nothing else changed, "
            "save the baseline where this runs (--stability-save-baseline=PATH)"
        )
    return "\n".join(lines)


__all__ = [
    "BASELINE_KIND",
    "BASELINE_SCHEMA_VERSION",
    "BaselineFileError",
    "TOLERANCE_DEFAULTS",
    "UNKNOWN_BACKEND",
    "build_baseline",
    "compare_call",
    "compare_run",
    "environment_changes",
    "explain_regression",
    "load_baseline",
    "merge_baseline",
    "no_backend_note",
    "run_backend",
    "section_environment",
    "section_tests",
    "upgrade",
    "validate_baseline",
]
