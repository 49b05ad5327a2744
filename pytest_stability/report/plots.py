"""One PNG per stability test: its curves against the step, with the findings marked.

The panels, in this order, each drawn only when some run of the test recorded it: the training loss, the
gradient norm, the learning rate in effect (a jump in it is a common cause of a spike), the validation loss,
the edge-of-stability ratio (``curvature=True``, with the limit 1 drawn), then every other curve the record
holds (for example the separate losses of a model trained with several losses), by name.  A test without
validation data gets no validation panel.

Each panel is log-scaled when its data is positive (some finite value, all finite values > 0), else linear.

Drawn on the controller from the downsampled curves in the session records,
so it works the same under pytest-xdist.  Each finding is marked where it
happened: a dashed line across the panels at its step and, on the panel of
its quantity, a marker at its value labelled with the check.

matplotlib is an optional extra (``pip install 'pytest-stability[plots]'``):
it is imported by :func:`write_plots` only, and drawn through the Agg canvas
directly, never through ``pyplot``, so the run's global matplotlib backend
and figure state are left alone.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Iterable
from pathlib import Path

from .._floats import decode_float
from ..record import Curve, StabilityRecord
from .html import PANELS, panels_of  # the same charts, in the same order, as the HTML report (pure, light)
from .json_report import write_atomic

PLOTS_INSTALL_HINT = "pip install 'pytest-stability[plots]'"

_EOS_PANEL = ("eos_ratio", "edge-of-stability ratio")
#: which panel a finding of each check is drawn on
_PANEL_OF_CHECK = {
    "loss_spike": "loss",
    "nonfinite": "loss",
    "grad_norm": "grad_norm",
    "val_loss": "val_loss",
    "curvature": "eos_ratio",
}
#: panels whose points are measurements at a few steps (drawn with markers)
_POINT_PANELS = ("val_loss", "eos_ratio")


def plot_filename(nodeid: str, taken: set[str]) -> str:
    """A file name for ``nodeid``: readable, safe on every OS, unique within ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid.replace("::", "__")).strip("._") or "test"
    digest = hashlib.sha1(nodeid.encode("utf-8")).hexdigest()[:8]
    if len(stem) > 120:
        stem = f"{stem[:110]}-{digest}"
    name = f"{stem}.png"
    if name.lower() in taken:
        name = f"{stem}-{digest}.png"
    taken.add(name.lower())
    return name


def _series(curve: Curve | None) -> tuple[list[int], list[float]]:
    if curve is None:
        return [], []
    values = [decode_float(v) for v in curve.value]
    return list(curve.step), [v if math.isfinite(v) else math.nan for v in values]


def render_png(record: StabilityRecord) -> bytes:
    """The PNG bytes of one test's figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    calls = record.calls
    runs = [(i, run) for i, call in enumerate(calls) for run in call.runs]
    panels = panels_of(run for _, run in runs)
    fig = Figure(figsize=(8, 1.2 + 2.0 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    multi_call = len(calls) > 1
    for ax, (key, title) in zip(axes, panels, strict=True):
        series = []
        for i, run in runs:
            steps, values = _series(run.curves.get(key))
            if steps:
                series.append((i, run, steps, values))
        # Log scale only for data that can take it: some finite value, and every finite value > 0
        # (matplotlib refuses to log-scale a loss that is NaN or <= 0 from step 0: "Data cannot be log-scaled").
        finite = [v for _, _, _, values in series for v in values if not math.isnan(v)]
        log = bool(finite) and all(v > 0 for v in finite)
        for i, run, steps, values in series:
            label = (f"call {i + 1} " if multi_call else "") + f"seed {run.seed}"
            ax.plot(
                steps,
                values,
                lw=1.0,
                marker="o" if key in _POINT_PANELS else None,
                ms=3,
                label=label,
                drawstyle="steps-post" if key == "lr" else "default",
            )
            bad = [
                s
                for s, v in zip(steps, (decode_float(x) for x in run.curves[key].value), strict=True)
                if not math.isfinite(v)
            ]
            if bad:
                ax.axvline(bad[0], color="black", lw=0.8, ls=":")
                ax.annotate(
                    "non-finite",
                    xy=(bad[0], 0.5),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=90,
                    va="center",
                    ha="right",
                )
        if log:
            ax.set_yscale("log")
        if key == _EOS_PANEL[0]:
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
            ax.annotate(
                "edge (ratio 1)",
                xy=(0.01, 1.0),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color="gray",
                va="bottom",
            )
        if not series:
            ax.text(0.5, 0.5, f"no {title} recorded", transform=ax.transAxes, ha="center", va="center", color="gray")
        elif not finite:
            ax.text(0.5, 0.5, f"no finite {title}", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_ylabel(title + (" (log)" if log else ""))
        ax.grid(True, alpha=0.3)
        if series and len(runs) > 1:
            ax.legend(fontsize=7, loc="best")
    # Findings: a dashed line across all panels; a labelled marker on the panel of its quantity.
    panel = dict(zip((k for k, _ in panels), axes, strict=True))
    for _, run in runs:
        for f in run.findings:
            for ax in axes:
                ax.axvline(f.step, color="red", lw=0.8, ls="--", alpha=0.7)
            ax = panel.get(_PANEL_OF_CHECK.get(f.check, "loss"), axes[0])
            value = decode_float(f.value)
            coords: str | tuple[str, str]
            if math.isfinite(value) and (value > 0 or ax.get_yscale() != "log"):
                ax.plot([f.step], [value], marker="v", color="red", ms=8)
                xy, coords = (f.step, value), "data"
            else:
                xy, coords = (f.step, 0.95), ("data", "axes fraction")
            ax.annotate(
                f"{f.check} @ {f.step}",
                xy=xy,
                xycoords=coords,
                xytext=(-4, -12),
                textcoords="offset points",
                color="red",
                fontsize=8,
                ha="right",
            )
    axes[-1].set_xlabel("optimizer step")
    verdict = record.verdict
    fig.suptitle(
        f"{record.nodeid}  [{verdict}]", fontsize=9, color="firebrick" if verdict == "unstable" else "black"
    )  # pure red marks findings only
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_plots(records: Iterable[StabilityRecord], directory: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write one PNG per test that trained, in node id order.

    A test whose figure cannot be drawn or written does not stop the others.

    Returns:
        The paths written, and ``(nodeid, "ExceptionType: message")`` for each test whose plot failed.

    Raises:
        OSError: when ``directory`` cannot be created.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    for record in sorted(records, key=lambda r: r.nodeid):
        if not record.calls:
            continue
        path = directory / plot_filename(record.nodeid, taken)
        try:
            write_atomic(path, render_png(record))
        except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the others theirs
            failures.append((record.nodeid, f"{type(exc).__name__}: {exc}"))
            continue
        written.append(path)
    return written, failures


__all__ = ["PANELS", "PLOTS_INSTALL_HINT", "panels_of", "plot_filename", "render_png", "write_plots"]
