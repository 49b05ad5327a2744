"""The ``stability report`` section of pytest's terminal summary."""

from __future__ import annotations

from typing import Any

from ..trace import decode_float
from .render import fmt, sparkline

_VERDICT_STYLE = {
    "stable": ("PASS", {"green": True}),
    "unstable": ("FAIL", {"red": True, "bold": True}),
    "error": ("ERROR", {"red": True}),
    "skipped": ("SKIP", {"yellow": True}),
}


def _curve(call: dict[str, Any], name: str) -> list[float]:
    curve = call.get("curves", {}).get(name)
    return [decode_float(v) for v in curve["value"]] if curve else []


def _row(record: dict[str, Any]) -> tuple[str, dict[str, bool], str]:
    verdict = record.get("verdict", "error")
    label, style = _VERDICT_STYLE.get(verdict, ("?", {}))
    calls = record.get("calls") or []
    if not calls:
        reason = record.get("error") or record.get("skip_reason") or ""
        return label, style, f"{record['nodeid']}  {reason}"
    parts = []
    for call in calls:
        runs = call["runs"]
        run = next((r for r in runs if r["verdict"] != "stable"), runs[0])
        s = run["summary"]
        seeds = f" seeds={len(runs)}" + (f" failed={call['failed_seeds']}" if call["failed_seeds"] else "") if len(runs) > 1 else f" seed={run['seed']}"
        trend = s.get("val_trend")
        val = f"val {trend:+.0%}" if isinstance(trend, float) else "val -"
        text = (f"steps={s['steps_run']}/{s['steps_planned']}{seeds} {run['device']}  "
                f"loss {fmt(s['final_loss'], 3)} {sparkline(_curve(run, 'loss'), 16)}  "
                f"spike x{fmt(s['largest_spike'], 3)}  |g|max {fmt(s['max_grad_norm'], 3)}  {val}")
        if run["findings"]:
            f = run["findings"][0]
            text += f"\n      [{f['check']}] step {f['step']}: {f['message']}"
        if "baseline" in call:
            text += "\n      " + call["baseline"].get("line", "")
        parts.append(text)
    return label, style, f"{record['nodeid']}  " + "\n    ".join(parts)


def write_summary(tr: Any, records: list[dict[str, Any]], footer: list[str]) -> None:
    """Write the section: one heading, sorted rows, red/green, file paths last."""
    if not records:
        return
    unstable = sum(r.get("verdict") == "unstable" for r in records)
    errors = sum(r.get("verdict") == "error" for r in records)
    title = f"stability report: {len(records)} test{'s' if len(records) != 1 else ''}, {unstable} unstable"
    if errors:
        title += f", {errors} error{'s' if errors != 1 else ''}"
    tr.write_sep("=", title, red=bool(unstable or errors), green=not (unstable or errors))
    for record in sorted(records, key=lambda r: r["nodeid"]):
        label, style, text = _row(record)
        tr.write(f"{label:<5} ", **style)
        tr.write_line(text)
    for line in footer:
        tr.write_sep("-", line)


__all__ = ["write_summary"]
