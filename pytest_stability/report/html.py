"""The HTML stability report: one self-contained file a browser opens offline (``--stability-html=PATH``).

A summary table of the stability tests (verdict, steps, device, headline,
baseline), then one panel per test: its curves drawn as inline SVG (training
loss, gradient norm, learning rate, validation loss, edge-of-stability ratio and
every other recorded curve, seeds overlaid), each finding marked on them, and
the finding's cause, fix, what-if replay, the margins and the baseline
comparison.  No network access, no external file: the CSS, the charts and a
little script (filters, the value under the pointer) are inline, and the page
reads fine with scripts off.

:func:`render_panel` is one test's panel on its own (with its styles), which
the pytest-html integration (:mod:`~pytest_stability.report.pytest_html`) puts
into pytest-html's report.

Pure builtins: it reads the session's records (:class:`~pytest_stability.record.StabilityRecord`)
and imports no framework, no numpy and no matplotlib.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._floats import decode_float, fmt
from ..record import (
    EXPECTED_LABEL,
    VERDICT_LABELS,
    BaselineComparison,
    Curve,
    FindingRecord,
    RunRecord,
    StabilityRecord,
)
from .render import batch_text, run_notes, val_change

#: The known curves and their titles, in drawing order (as in the PNG plots); any other curve follows by name.
PANELS = (
    ("loss", "training loss"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
    ("val_loss", "validation loss"),
    ("eos_ratio", "edge-of-stability ratio"),
)
#: the chart a finding of each check is marked on (its value is a value of that curve)
CHART_OF_CHECK = {
    "loss_spike": "loss",
    "nonfinite": "loss",
    "stuck": "loss",
    "grad_norm": "grad_norm",
    "val_loss": "val_loss",
    "curvature": "eos_ratio",
}
#: curves measured at a few steps: drawn with a dot at each measurement
POINT_CURVES = ("val_loss", "eos_ratio")
#: one colour per seed (or train() call) overlaid on a chart
SERIES_COLOURS = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#64748b")

#: above this many tests, the panels of stable tests start collapsed
COLLAPSE_STABLE_ABOVE = 12

_VERDICT_LABEL = VERDICT_LABELS

CSS = """
.ps-report{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2937;
  max-width:1180px;margin:0 auto;padding:20px 24px 48px}
.ps-report h1{font-size:22px;margin:0 0 4px}
.ps-report .ps-meta{color:#6b7280;font-size:12.5px;margin-bottom:14px}
.ps-counts{display:flex;gap:10px;flex-wrap:wrap;margin:10px 0 16px}
.ps-count{border:1px solid #e5e7eb;border-radius:8px;padding:6px 12px;background:#fff;cursor:pointer;font:inherit}
.ps-count b{font-size:18px;margin-right:6px}
.ps-count.ps-on{outline:2px solid #2563eb}
.ps-table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
.ps-table th{text-align:left;color:#6b7280;font-weight:600;border-bottom:2px solid #e5e7eb;padding:6px 8px}
.ps-table td{border-bottom:1px solid #f1f5f9;padding:6px 8px;vertical-align:top}
.ps-table td.ps-num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.ps-table a{color:#1d4ed8;text-decoration:none}
.ps-table a:hover{text-decoration:underline}
.ps-badge{display:inline-block;min-width:44px;text-align:center;border-radius:5px;padding:1px 6px;font-size:12px;
  font-weight:700;letter-spacing:.02em;color:#fff}
.ps-stable{background:#16a34a}.ps-unstable{background:#dc2626}.ps-error{background:#9333ea}
.ps-skipped{background:#9ca3af}.ps-regressed{background:#ea580c}
.ps-test{background:#fff;border:1px solid #e5e7eb;border-radius:10px;margin:18px 0;padding:0}
.ps-test>summary{list-style:none;cursor:pointer;padding:12px 16px;display:flex;gap:10px;align-items:baseline}
.ps-test>summary::-webkit-details-marker{display:none}
.ps-test>summary .ps-nodeid{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13.5px;
  font-weight:600;word-break:break-all}
.ps-test>summary .ps-headline{color:#4b5563;font-size:13px;margin-left:auto;text-align:right;max-width:48%}
.ps-body{padding:0 16px 14px;border-top:1px solid #f1f5f9}
.ps-facts{display:flex;flex-wrap:wrap;gap:4px 18px;color:#4b5563;font-size:12.5px;margin:10px 0}
.ps-facts b{color:#111827;font-weight:600}
.ps-charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:8px 16px;margin:8px 0}
.ps-chart{margin:0}
.ps-chart figcaption{font-size:12.5px;font-weight:600;color:#374151;margin:2px 0 0 4px}
.ps-chart svg{width:100%;height:auto;display:block;overflow:visible}
.ps-chart .ps-axis{stroke:#cbd5e1;stroke-width:1}
.ps-chart .ps-grid{stroke:#f1f5f9;stroke-width:1}
.ps-chart text{font:10.5px system-ui,sans-serif;fill:#6b7280}
.ps-chart .ps-find{stroke:#dc2626;stroke-width:1;stroke-dasharray:4 3}
.ps-chart text.ps-find-label{fill:#dc2626;font-weight:600}
.ps-chart .ps-nonfinite{stroke:#111827;stroke-width:1;stroke-dasharray:2 2}
.ps-chart .ps-tip{pointer-events:none}
.ps-chart .ps-tip text{fill:#111827;font-weight:600}
.ps-legend{font-size:12px;color:#4b5563;margin:2px 0 6px}
.ps-legend i{display:inline-block;width:14px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
.ps-finding{border-left:4px solid #dc2626;background:#fef2f2;border-radius:6px;padding:8px 12px;margin:10px 0}
.ps-finding h4{margin:0 0 4px;font-size:13.5px}
.ps-finding p{margin:3px 0}
.ps-finding .ps-k{display:inline-block;min-width:86px;color:#6b7280;font-size:12px;text-transform:uppercase;
  letter-spacing:.04em}
.ps-ok{color:#15803d;font-weight:600}.ps-bad{color:#b91c1c;font-weight:600}
.ps-note{background:#f8fafc;border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px;margin:10px 0;font-size:13px}
.ps-note h4{margin:0 0 4px;font-size:13px}
.ps-small{font-size:12.5px;color:#4b5563}
.ps-code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;background:#f1f5f9;
  border-radius:4px;padding:1px 5px;word-break:break-all}
.ps-metrics{border-collapse:collapse;font-size:12.5px;margin:6px 0}
.ps-metrics th,.ps-metrics td{padding:2px 10px 2px 0;text-align:left}
.ps-metrics th{color:#6b7280;font-weight:600}
.ps-metrics td{font-variant-numeric:tabular-nums}
.ps-hidden{display:none}
"""

#: Filters (summary buttons), the value under the pointer on a chart, and an error flag for tests of the page.
SCRIPT = r"""
(function(){
  "use strict";
  var root=document.querySelector(".ps-report");
  if(!root){return;}
  var buttons=root.querySelectorAll(".ps-count[data-filter]");
  function apply(filter){
    root.querySelectorAll("[data-verdict]").forEach(function(el){
      var show=filter==="all"||el.getAttribute("data-verdict")===filter||
        (filter==="regressed"&&el.getAttribute("data-regressed")==="1");
      el.classList.toggle("ps-hidden",!show);
    });
    buttons.forEach(function(b){b.classList.toggle("ps-on",b.getAttribute("data-filter")===filter);});
  }
  buttons.forEach(function(b){b.addEventListener("click",function(){apply(b.getAttribute("data-filter"));});});
  root.querySelectorAll("svg[data-chart]").forEach(function(svg){
    var spec=JSON.parse(svg.getAttribute("data-chart"));
    var tip=svg.querySelector(".ps-tip"),line=tip.querySelector("line"),label=tip.querySelector("text");
    svg.addEventListener("mousemove",function(ev){
      var box=svg.getBoundingClientRect();
      var x=(ev.clientX-box.left)*spec.w/box.width;
      if(x<spec.x0||x>spec.x1){tip.setAttribute("visibility","hidden");return;}
      var step=spec.s0+(x-spec.x0)/(spec.x1-spec.x0)*(spec.s1-spec.s0),best=null;
      spec.series.forEach(function(s){
        for(var i=0;i<s.steps.length;i++){
          var d=Math.abs(s.steps[i]-step);
          if(best===null||d<best.d){best={d:d,step:s.steps[i],value:s.values[i],name:s.name};}
        }
      });
      if(best===null){return;}
      var px=spec.x0+(best.step-spec.s0)/((spec.s1-spec.s0)||1)*(spec.x1-spec.x0);
      line.setAttribute("x1",px);line.setAttribute("x2",px);
      label.textContent="step "+best.step+": "+best.value+(spec.series.length>1?" ("+best.name+")":"");
      label.setAttribute("x",Math.min(px+6,spec.x1-150));
      tip.setAttribute("visibility","visible");
    });
    svg.addEventListener("mouseleave",function(){tip.setAttribute("visibility","hidden");});
  });
  root.setAttribute("data-ready","1");
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any) -> float:
    """A record value as a float (NaN for None or a non-number)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return decode_float(value)
    except (TypeError, ValueError):
        return math.nan


def anchor(nodeid: str) -> str:
    """The element id of a test's panel (stable, valid in a URL fragment)."""
    return "t-" + re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")


# -- reading a record ---------------------------------------------------------------------------------------


def regressed(record: StabilityRecord) -> bool:
    """Whether a ``train()`` call of the test failed its ``--stability-baseline`` comparison."""
    return record.regressed


def baseline_status(record: StabilityRecord) -> str | None:
    """The worst baseline status of the test's calls (regressed > missing > ok), as in the JSON report."""
    return record.worst_baseline


def headline(record: StabilityRecord) -> str:
    """One line saying how the test went: its first finding, its regression, its error, or its key numbers."""
    if record.error:
        return str(record.error).splitlines()[0]
    if record.skip_reason:
        return str(record.skip_reason)
    for call in record.calls:
        base = call.baseline
        if base is not None and base.failed and base.regressions:
            return "baseline: " + base.regressions[0]
    run = record.primary
    if run is None:
        return ""
    if run.findings:
        f = run.findings[0]
        return f"[{f.check}] step {f.step}: {f.message}"
    s = run.summary
    parts = [
        f"final loss {_metric(s.final_loss, 3)}",
        f"largest spike {_metric(s.largest_spike, 3, 'x')}",
        f"max |g| {_metric(s.max_grad_norm, 3)}",
    ]
    change = val_change(s)
    if change is not None:
        parts.append(f"validation {change}")
    return ", ".join(parts)


# -- charts -------------------------------------------------------------------------------------------------


def panels_of(runs: Iterable[RunRecord]) -> list[tuple[str, str]]:
    """(curve, title) of the charts for ``runs``: every curve some run recorded, known ones first.

    A curve with no point gets no chart (no validation data, no validation chart); the loss always has one,
    unless no run recorded it (a ``train_step`` that neither updates the model's loss tracker nor returns a
    loss).
    """
    runs = list(runs)
    present = {name for run in runs for name, curve in run.curves.items() if curve.step}
    unrecorded = any((run.model or {}).get("loss_recorded") is False for run in runs) and "loss" not in present
    known = [(key, title) for key, title in PANELS if key in present or (key == "loss" and not unrecorded)]
    others = sorted(present - {key for key, _ in PANELS})
    return known + [(name, name.replace("_", " ")) for name in others]


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round values spanning [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out: list[float] = []
    v = first
    while v <= hi + step * 1e-9 and len(out) < 12:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if abs(value) >= 1 and float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def _metric(value: Any, digits: int = 4, prefix: str = "") -> str:
    """A summary value for a table: ``-`` when not measured or not finite."""
    v = _num(value)
    return prefix + fmt(v, digits) if math.isfinite(v) else "-"


def svg_chart(
    name: str,
    title: str,
    series: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    findings: Sequence[FindingRecord],
    *,
    span: tuple[int, int],
    all_findings: Sequence[int] = (),
    width: int = 560,
    height: int = 168,
) -> str:
    """One chart as an inline ``<figure>`` with an SVG: the series against the step, the findings marked.

    Args:
        name: the curve's name (``loss``...), which decides the drawing (dots for measurements, steps for
            the learning rate, the limit 1 for the edge-of-stability ratio).
        title: the caption.
        series: (label, steps, values) per seed; values may hold NaN.
        findings: the findings drawn on this chart (check, step, value): a marker at their value.
        span: the steps the x axis covers (shared by a test's charts).
        all_findings: steps of every finding of the run, drawn as dashed lines on every chart.
    """
    left, right, top, bottom = 58, 12, 10, 24
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    s0, s1 = span
    s1 = max(s1, s0 + 1)
    finite = [v for _, _, values in series for v in values if math.isfinite(v)]
    log = bool(finite) and all(v > 0 for v in finite)
    if name == "eos_ratio":
        finite = finite + [1.0]  # the limit is always in view
    if finite:
        lo, hi = min(finite), max(finite)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            pad = 0.5 if log else (abs(hi) * 0.1 or 1.0)
            lo, hi = lo - pad, hi + pad
        else:
            pad = (hi - lo) * 0.06
            lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.0, 1.0

    def X(step: float) -> float:
        return x0 + (step - s0) / (s1 - s0) * (x1 - x0)

    def Y(value: float) -> float:
        v = math.log10(value) if log else value
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    out = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" data-chart=\'{{}}\'>']
    # grid and axes
    if log:
        decades = list(range(math.floor(lo), math.ceil(hi) + 1))
        step = max(1, math.ceil(len(decades) / 5))
        yticks = [10.0**d for d in decades[::step]]
        if len([t for t in yticks if lo <= math.log10(t) <= hi]) < 3:  # a narrow range: 1, 2, 5 per decade
            yticks = [m * 10.0**d for d in decades for m in (1, 2, 5)]
            inside = [t for t in yticks if lo <= math.log10(t) <= hi]
            if len(inside) > 6:
                yticks = [t for t in inside if str(_tick_label(t))[0] in "15"]
    else:
        yticks = _ticks(lo, hi)
    for t in yticks:
        y = Y(t)
        if y0 - 0.5 <= y <= y1 + 0.5:
            out.append(f'<line class="ps-grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 3.5:.1f}" text-anchor="end">{_e(_tick_label(t))}</text>')
    for t in _ticks(s0, s1, 6):
        x = X(t)
        out.append(f'<line class="ps-axis" x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y1 + 4}"/>')
        out.append(f'<text x="{x:.1f}" y="{y1 + 16}" text-anchor="middle">{int(t)}</text>')
    out.append(f'<line class="ps-axis" x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/>')
    out.append(f'<line class="ps-axis" x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}"/>')
    if log:
        out.append(f'<text x="{x1}" y="{y0 + 2}" text-anchor="end">log scale</text>')
    if name == "eos_ratio":
        y = Y(1.0)
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#6b7280" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{x0 + 4}" y="{y - 4:.1f}">edge (ratio 1)</text>')
    # finding lines across the chart
    for step in sorted(set(all_findings)):
        x = X(step)
        out.append(f'<line class="ps-find" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}"/>')
    # the series
    tip_series = []
    for k, (label, steps, values) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        segments: list[list[str]] = [[]]
        first_bad = None
        for s, v in zip(steps, values, strict=True):
            if not math.isfinite(v) or (log and v <= 0):
                if first_bad is None and not math.isfinite(v):
                    first_bad = s
                if segments[-1]:
                    segments.append([])
                continue
            if name == "lr" and segments[-1]:  # the rate in effect until the next step: a step line
                segments[-1].append(f"{X(s):.1f},{float(segments[-1][-1].split(',')[1]):.1f}")
            segments[-1].append(f"{X(s):.1f},{Y(v):.1f}")
        for seg in segments:
            if len(seg) > 1:
                out.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.4" '
                    f'stroke-linejoin="round" points="{" ".join(seg)}"/>'
                )
            if name in POINT_CURVES or len(seg) == 1:
                out.extend(
                    f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.4" fill="{colour}"/>' for p in seg
                )
        if first_bad is not None:
            x = X(first_bad)
            side, dx = ("start", 4) if x < (x0 + x1) / 2 else ("end", -4)
            out.append(f'<line class="ps-nonfinite" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}"/>')
            out.append(
                f'<text x="{x + dx:.1f}" y="{y1 - 5}" text-anchor="{side}">non-finite from step {first_bad}</text>'
            )
        tip_series.append({"name": label, "steps": list(steps), "values": [fmt(v, 4) for v in values]})
    # finding markers at their value, labelled with the check
    for f in findings:
        step, value = int(f.step), _num(f.value)
        x = X(step)
        if math.isfinite(value) and (value > 0 or not log) and lo <= (math.log10(value) if log else value) <= hi:
            y = Y(value)
            out.append(
                f'<path d="M{x - 5:.1f},{y - 9:.1f} L{x + 5:.1f},{y - 9:.1f} L{x:.1f},{y - 1:.1f} Z" fill="#dc2626"/>'
            )
        else:
            y = y0 + 12
        anchor_side = "end" if x > (x0 + x1) / 2 else "start"
        dx = -7 if anchor_side == "end" else 7
        out.append(
            f'<text class="ps-find-label" x="{x + dx:.1f}" y="{max(y - 8, y0 + 10):.1f}" '
            f'text-anchor="{anchor_side}">{_e(f.check)} @ {step}</text>'
        )
    out.append(
        f'<g class="ps-tip" visibility="hidden"><line x1="0" x2="0" y1="{y0}" y2="{y1}" stroke="#9ca3af"/>'
        f'<text x="0" y="{y0 + 24}"></text></g>'
    )
    out.append("</svg>")
    spec = {"w": width, "x0": x0, "x1": x1, "s0": s0, "s1": s1, "series": tip_series}
    out[0] = out[0].replace("data-chart='{}'", f"data-chart='{_e(json.dumps(spec, separators=(',', ':')))}'")
    return f'<figure class="ps-chart"><figcaption>{_e(title)}</figcaption>{"".join(out)}</figure>'


def _series(curve: Curve | None) -> tuple[list[int], list[float]]:
    if curve is None:
        return [], []
    return [int(s) for s in curve.step], [_num(v) for v in curve.value]


def _charts(call_runs: Sequence[RunRecord], label_of: Callable[[RunRecord], str]) -> str:
    charts = panels_of(call_runs)
    steps_planned = max([int(r.steps_planned or r.steps_run or 1) for r in call_runs] + [1])
    last_step = max([s for r in call_runs for c in r.curves.values() for s in c.step] + [0])
    span = (0, max(steps_planned - 1, last_step, 1))
    finding_steps = [int(f.step) for r in call_runs for f in r.findings]
    out = []
    for key, title in charts:
        series = []
        for run in call_runs:
            steps, values = _series(run.curves.get(key))
            if steps:
                series.append((label_of(run), steps, values))
        marked = [f for r in call_runs for f in r.findings if CHART_OF_CHECK.get(f.check, "loss") == key]
        out.append(svg_chart(key, title, series, marked, span=span, all_findings=finding_steps))
    legend = ""
    if len(call_runs) > 1:
        legend = (
            '<div class="ps-legend">'
            + "".join(
                f'<i style="background:{SERIES_COLOURS[k % len(SERIES_COLOURS)]}"></i>{_e(label_of(r))}'
                for k, r in enumerate(call_runs)
            )
            + "</div>"
        )
    return legend + '<div class="ps-charts">' + "".join(out) + "</div>"


# -- the panel of one test ------------------------------------------------------------------------------


def _finding_html(f: FindingRecord, seed_label: str) -> str:
    rows = [f"<h4>[{_e(f.check)}] step {_e(f.step)}{_e(seed_label)}</h4>", f"<p>{_e(f.message)}</p>"]
    where = f.evidence.get("batch")
    if isinstance(where, Mapping):
        rows.append(f'<p class="ps-small">{_e(batch_text(where))}</p>')
    if f.cause:
        conf = f" ({_e(f.confidence)})" if f.confidence else ""
        rows.append(f'<p><span class="ps-k">cause{conf}</span> {_e(f.cause)}</p>')
    if f.fix:
        rows.append(f'<p><span class="ps-k">fix to try</span> {_e(f.fix)}</p>')
    whatif = f.evidence.get("whatif")
    if isinstance(whatif, Mapping) and whatif.get("text"):
        resolved = whatif.get("resolved")
        mark = (
            '<span class="ps-ok">the fix worked</span>: '
            if resolved is True
            else '<span class="ps-bad">not resolved</span>: '
            if resolved is False
            else ""
        )
        rows.append(f'<p><span class="ps-k">what-if</span> {mark}{_e(whatif["text"])}</p>')
    return '<div class="ps-finding">' + "".join(rows) + "</div>"


def _summary_html(run: RunRecord) -> str:
    s = run.summary
    cells: list[tuple[str, str | int]] = [
        ("final loss", _metric(s.final_loss)),
        ("min loss", _metric(s.min_loss)),
        ("largest spike", _metric(s.largest_spike, 3, "x")),
        ("spikes", s.spikes),
        ("max |g|", _metric(s.max_grad_norm)),
        ("p99 |g|", _metric(s.p99_grad_norm)),
    ]
    change = val_change(s)
    if change is not None:
        cells.append(("validation", change))
    if s.lr_margin is not None:
        cells.append(("lr margin", fmt(_num(s.lr_margin), 3) + "x"))
    if s.eos_ratio is not None:
        cells.append(("eos ratio", fmt(_num(s.eos_ratio), 3)))
    head = "".join(f"<th>{_e(k)}</th>" for k, _ in cells)
    body = "".join(f"<td>{_e(v)}</td>" for _, v in cells)
    return f'<table class="ps-metrics"><tr>{head}</tr><tr>{body}</tr></table>'


def _baseline_html(comparison: BaselineComparison) -> str:
    status = comparison.status
    cls = {"ok": "ps-ok", "regressed": "ps-bad"}.get(status, "")
    rows = [
        f'<h4>Baseline: <span class="{cls}">{_e(status)}</span>'
        + (f' <span class="ps-small">({_e(comparison.path)})</span>' if comparison.path else "")
        + "</h4>"
    ]
    metrics_rows = []
    for seed, result in sorted(comparison.seeds.items()):
        for metric, m in sorted((result.metrics or {}).items()):
            mark = '<span class="ps-bad">regressed</span>' if m.regressed else "ok"
            metrics_rows.append(
                f"<tr><td>{_e(seed)}</td><td>{_e(metric)}</td><td>{_e(fmt(_num(m.baseline), 4))}"
                f"</td><td>{_e(fmt(_num(m.now), 4))}</td>"
                f"<td>{_e(fmt(_num(m.limit), 4)) if m.limit is not None else '-'}</td>"
                f"<td>{mark}</td></tr>"
            )
    if metrics_rows:
        rows.append(
            '<table class="ps-metrics"><tr><th>seed</th><th>metric</th><th>baseline</th><th>now</th>'
            "<th>limit</th><th></th></tr>" + "".join(metrics_rows) + "</table>"
        )
    for line in comparison.regressions:
        rows.append(f'<p class="ps-bad">{_e(line)}</p>')
    if not metrics_rows:
        rows.extend(f'<p class="ps-small">{_e(line)}</p>' for line in comparison.lines)
    return '<div class="ps-note">' + "".join(rows) + "</div>"


def _verdict_class(record: StabilityRecord) -> tuple[str, str]:
    verdict = record.verdict
    if verdict == "stable" and record.regressed:
        return "REGR", "ps-regressed"
    if record.expected_unstable:
        return EXPECTED_LABEL, "ps-skipped"
    return _VERDICT_LABEL.get(verdict, "?"), f"ps-{verdict}" if verdict in _VERDICT_LABEL else "ps-error"


def _facts(record: StabilityRecord) -> str:
    run = record.primary
    facts: list[tuple[str, Any]] = []
    if run is not None:
        model = run.model or {}
        facts.append(("steps", f"{run.steps_run}/{run.steps_planned}"))
        seeds = sorted({int(r.seed) for r in record.runs})
        facts.append(("seed" if len(seeds) == 1 else "seeds", ", ".join(map(str, seeds))))
        facts.append(("device", run.device))
        if model.get("backend"):
            facts.append(("backend", model["backend"]))
        if model.get("model"):
            facts.append(("model", f"{model['model']} ({model.get('parameters', '?')} parameters)"))
        if model.get("optimizer"):
            lr = (model.get("optimizer_config") or {}).get("learning_rate")
            opt = model["optimizer"] + (f" (learning rate {fmt(_num(lr), 3)})" if isinstance(lr, (int, float)) else "")
            facts.append(("optimizer", opt))
        if run.data:
            facts.append(("data", run.data))
        wall = sum(float(r.wall_time or 0.0) for r in record.runs)
        facts.append(("time", f"{wall:.1f} s"))
    if record.outcome:
        facts.append(("pytest outcome", record.outcome))
    return '<div class="ps-facts">' + "".join(f"<span>{_e(k)} <b>{_e(v)}</b></span>" for k, v in facts) + "</div>"


def render_panel(
    record: StabilityRecord, *, with_style: bool = False, open_: bool | None = None, collapse_stable: bool = False
) -> str:
    """One test's panel: header, facts, charts, findings (cause, fix, what-if), margins, baseline, replay.

    Args:
        record: the test's record.
        with_style: include the styles (for a panel shown outside :func:`render_report`, e.g. in pytest-html).
        open_: whether the panel starts expanded (default: yes, unless ``collapse_stable`` and the test is
            stable and did not regress).
        collapse_stable: start the panels of stable tests collapsed (a long run's report).
    """
    label, cls = _verdict_class(record)
    nodeid = record.nodeid
    if open_ is None:
        open_ = cls != "ps-stable" or not collapse_stable
    calls = record.calls
    body = [_facts(record)]
    if record.error:
        body.append(f'<div class="ps-finding"><h4>error</h4><p>{_e(record.error)}</p></div>')
    if record.skip_reason:
        body.append(f'<div class="ps-note">skipped: {_e(record.skip_reason)}</div>')
    for i, call in enumerate(calls):
        runs = call.runs
        if not runs:
            continue
        if len(calls) > 1:
            body.append(f"<h3>stability.fit() call {i + 1}: {_e(call.verdict)}</h3>")
        body.append(_charts(runs, lambda r: f"seed {r.seed}"))
        for run in runs:
            seed_label = f" (seed {run.seed})" if len(runs) > 1 else ""
            body.extend(_finding_html(f, seed_label) for f in run.findings)
            model = run.model or {}
            notes = []
            for key, what in (("margin", "Learning-rate margin"), ("curvature", "Curvature margin")):
                info = model.get(key)
                if isinstance(info, Mapping) and info.get("text"):
                    notes.append(f"<p><b>{what}</b>{_e(seed_label)}: {_e(info['text'])}</p>")
            notes.extend(f"<p><b>Note</b>{_e(seed_label)}: {_e(note)}</p>" for note in run_notes(run, speed=True))
            if notes:
                body.append('<div class="ps-note">' + "".join(notes) + "</div>")
            if len(runs) > 1:
                body.append(f'<div class="ps-small">seed {_e(run.seed)}: {_summary_html(run)}</div>')
            else:
                body.append(_summary_html(run))
            if run.replay and run.verdict != "stable":
                body.append(f'<p class="ps-small">replay: <span class="ps-code">{_e(run.replay)}</span></p>')
            probe = model.get("batch_replay")
            if isinstance(probe, Mapping):  # --stability-replay-batch: a bad sample or a bad update
                body.append(
                    "".join(f'<p class="ps-small">batch replay: {_e(line)}</p>' for line in probe.get("text") or ())
                )
        if call.baseline is not None:
            body.append(_baseline_html(call.baseline))
    reg = "1" if record.regressed else "0"
    panel = (
        f'<details class="ps-test" id="{anchor(nodeid)}" data-verdict="{_e(record.verdict)}" '
        f'data-regressed="{reg}"{" open" if open_ else ""}>'
        f'<summary><span class="ps-badge {cls}">{label}</span><span class="ps-nodeid">{_e(nodeid)}</span>'
        f'<span class="ps-headline">{_e(headline(record))}</span></summary>'
        f'<div class="ps-body">{"".join(body)}</div></details>'
    )
    if with_style:
        return f'<div class="ps-report"><style>{CSS}</style>{panel}</div>'
    return panel


# -- the whole document -------------------------------------------------------------------------------------


def _summary_table(records: Sequence[StabilityRecord]) -> str:
    rows = []
    for record in records:
        label, cls = _verdict_class(record)
        run = record.primary
        steps = f"{run.steps_run}/{run.steps_planned}" if run else "-"
        device = run.device if run else "-"
        base = record.worst_baseline or ""
        base_cls = {"regressed": "ps-bad", "ok": "ps-ok"}.get(base, "")
        wall = sum(float(r.wall_time or 0.0) for r in record.runs)
        reg = "1" if record.regressed else "0"
        rows.append(
            f'<tr data-verdict="{_e(record.verdict)}" data-regressed="{reg}">'
            f'<td><span class="ps-badge {cls}">{label}</span></td>'
            f'<td><a href="#{anchor(record.nodeid)}">{_e(record.nodeid)}</a></td>'
            f'<td class="ps-num">{_e(steps)}</td><td>{_e(device)}</td><td>{_e(headline(record))}</td>'
            f'<td class="{base_cls}">{_e(base)}</td><td class="ps-num">{wall:.1f} s</td></tr>'
        )
    return (
        '<table class="ps-table"><thead><tr><th>verdict</th><th>test</th><th>steps</th><th>device</th>'
        "<th>headline</th><th>baseline</th><th>time</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_report(
    records: Iterable[StabilityRecord],
    *,
    title: str = "pytest-stability report",
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The whole HTML document for a run's records (sorted by node id).

    Args:
        records: the session's records.
        title: the page title.
        meta: facts shown under the title (``{"plugin": "pytest-stability 0.1.0", "finished": "..."}``).
    """
    records = sorted(records, key=lambda r: r.nodeid)
    counts = {v: sum(r.verdict == v for r in records) for v in ("stable", "unstable", "error", "skipped")}
    n_regressed = sum(r.regressed for r in records)
    buttons = (
        [("all", len(records), "tests")]
        + [(v, n, v) for v, n in counts.items() if n]
        + ([("regressed", n_regressed, "regressed against the baseline")] if n_regressed else [])
    )
    counts_html = "".join(
        f'<button type="button" class="ps-count{" ps-on" if key == "all" else ""}" '
        f'data-filter="{key}"><b>{n}</b>{_e(what)}</button>'
        for key, n, what in buttons
    )
    meta_html = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in (meta or {}).items() if v is not None)
    # every panel open, so the curves are in view; in a run of many tests only those that did not pass
    collapse = len(records) > COLLAPSE_STABLE_ABOVE
    panels = "".join(render_panel(r, collapse_stable=collapse) for r in records) or "<p>No stability test ran.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>body{{margin:0;background:#f8fafc}}{CSS}</style></head>"
        f'<body><main class="ps-report"><h1>{_e(title)}</h1><div class="ps-meta">{meta_html}</div>'
        f'<div class="ps-counts">{counts_html}</div>{_summary_table(records)}{panels}</main>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


__all__ = [
    "CSS",
    "PANELS",
    "anchor",
    "baseline_status",
    "headline",
    "panels_of",
    "regressed",
    "render_panel",
    "render_report",
    "svg_chart",
]
