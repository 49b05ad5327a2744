"""The ``stability report`` section of pytest's terminal summary.

One row per stability test, labelled by its stability verdict (PASS / FAIL /
ERROR / SKIP), except: REGR when it regressed against ``--stability-baseline``,
FAIL / ERROR when its training was stable but the test itself then failed
(the row then ends with ``test failed after training: <exception>``), and XFAIL
when its training was unstable and the test passed: it expected that
(``check=False`` and an assertion, or ``pytest.raises(StabilityError)``).
"""

from __future__ import annotations

from typing import Any

from .._floats import decode_float
from ..record import EXPECTED_LABEL, FAILED_AFTER, VERDICT_LABELS, RunRecord, StabilityRecord
from .render import batch_text, expected_clause, fmt, run_notes, sparkline, val_change

_STYLE: dict[str, dict[str, bool]] = {
    "stable": {"green": True},
    "unstable": {"red": True, "bold": True},
    "error": {"red": True},
    "skipped": {"yellow": True},
}
_VERDICT_STYLE = {verdict: (label, _STYLE[verdict]) for verdict, label in VERDICT_LABELS.items()}


def _curve(run: RunRecord, name: str) -> list[float]:
    curve = run.curves.get(name)
    return [decode_float(v) for v in curve.value] if curve else []


def _last_finite(values: list[float]) -> float | None:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return finite[-1] if finite else None


def _row(record: StabilityRecord, *, verbose: bool = False) -> tuple[str, dict[str, bool], str]:
    verdict = record.verdict
    label, style = _VERDICT_STYLE.get(verdict, ("?", {}))
    if verdict == "stable" and record.regressed:
        label, style = "REGR", {"red": True, "bold": True}
    elif record.failed_otherwise:
        label, style = ("FAIL" if record.outcome == "failed" else "ERROR"), {"red": True, "bold": True}
    elif record.expected_unstable:
        label, style = EXPECTED_LABEL, {"yellow": True}
    calls = record.calls
    if not calls:
        reason = record.error or record.skip_reason or ""
        return label, style, f"{record.nodeid}  {reason}"
    parts = []
    for k, call in enumerate(calls, 1):
        runs = call.runs
        run = call.primary
        s = run.summary
        seeds = (
            f" seeds={len(runs)}" + (f" failed={list(call.failed_seeds)}" if call.failed_seeds else "")
            if len(runs) > 1
            else f" seed={run.seed}"
        )
        val = f"val {val_change(s) or '-'}"
        losses = f"loss {fmt(s.final_loss, 3)} {sparkline(_curve(run, 'loss'), 16)}"
        if s.final_loss is None:  # no loss of its own (a GAN): each loss curve its train_step reports
            named = [
                name
                for name in run.curves
                if name.endswith("loss") and name != "val_loss" and "/" not in name and name != "loss"
            ]
            if named:
                losses = "  ".join(
                    f"{name} {fmt(_last_finite(_curve(run, name)), 3)} {sparkline(_curve(run, name), 12)}"
                    for name in named
                )
            elif (run.model or {}).get("loss_recorded") is False:
                losses = "loss not recorded"
        text = (
            # several stability.fit() calls in one test: each row says which call it is
            (f"call {k} of {len(calls)}: " if len(calls) > 1 else "")
            + f"steps={s.steps_run}/{s.steps_planned}{seeds} {run.device}  {losses}  "
            f"spike x{fmt(s.largest_spike, 3)}  |g|max {fmt(s.max_grad_norm, 3)}  {val}"
        )
        if s.lr_margin is not None:
            text += f"  margin {fmt(s.lr_margin, 3)}x"
        if s.eos_ratio is not None:
            text += f"  eos ratio {fmt(s.eos_ratio, 3)}"
        if run.findings:
            f = run.findings[0]
            text += f"\n      [{f.check}] step {f.step}: {f.message}"
            where = f.evidence.get("batch")
            if isinstance(where, dict):
                text += f"\n      {batch_text(where)}"
            whatif = f.evidence.get("whatif")
            if isinstance(whatif, dict) and whatif.get("text"):
                text += f"\n      what-if: {whatif['text']}"
        probe = (run.model or {}).get("batch_replay")
        if isinstance(probe, dict):
            for line in probe.get("text") or ():
                text += f"\n      batch replay: {line}"
        # what qualifies the verdict (a check not judged, a run that ended early): shown with a pass too, where a
        # green row would otherwise hide it; with -v, also how the epochs were presented for speed
        for note in run_notes(run, speed=verbose):
            text += f"\n      note: {note}"
        if call.baseline is not None:
            # baseline against now, one line per seed (report.baseline.compare_call)
            for line in call.baseline.lines:
                text += "\n      " + line
        parts.append(text)
    if record.outcome == "interrupted":
        parts[-1] += "  (interrupted)"
    if record.failed_otherwise and record.error:
        # the first line of the exception: the test's own failure section has the rest
        what = record.error.removeprefix(FAILED_AFTER + ": ").splitlines()[0]
        parts[-1] += f"\n      test failed after training: {what}"
    elif record.verdict == "error" and record.error:
        # a stability.fit() call raised: the rows above are the test's calls (the last one's steps up to the
        # exception, when it recorded any), and the error (what, where, after how many steps) made it an error
        parts[-1] += f"\n      error: {record.error.splitlines()[0]}"
    return label, style, f"{record.nodeid}  " + "\n    ".join(parts)


def write_summary(tr: Any, records: list[StabilityRecord], footer: list[str]) -> None:
    """Write the section: one heading, sorted rows, red/green, file paths last."""
    if not records:
        _write_footer(tr, footer)  # e.g. the JSON report of a run without stability tests
        return
    unstable = sum(r.verdict == "unstable" for r in records)
    expected = sum(r.expected_unstable for r in records)
    errors = sum(r.verdict == "error" for r in records)
    title = f"stability report: {len(records)} test{'s' if len(records) != 1 else ''}, {unstable} unstable"
    title += expected_clause(expected)
    if errors:
        title += f", {errors} error{'s' if errors != 1 else ''}"
    regressed = sum(r.regressed for r in records)
    if regressed:
        title += f", {regressed} regressed against the baseline"
    failed_after = sum(r.failed_otherwise for r in records)
    if failed_after:
        title += f", {failed_after} failed after training"
    bad = bool(unstable - expected or errors or regressed or failed_after)
    tr.write_sep("=", title, red=bad, green=not bad)
    verbose = getattr(tr, "verbosity", 0) > 0
    for record in sorted(records, key=lambda r: r.nodeid):
        label, style, text = _row(record, verbose=verbose)
        tr.write(f"{label:<5} ", **style)
        tr.write_line(text)
    _write_footer(tr, footer)


def _write_footer(tr: Any, footer: list[str]) -> None:
    for line in footer:
        # a failed side effect (file NOT written) is red
        tr.write_sep("-", line, **({"red": True, "bold": True} if " NOT " in line else {}))


__all__ = ["write_summary"]
