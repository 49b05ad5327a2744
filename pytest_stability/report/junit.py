"""Flat stability properties for ``--junitxml`` (``<property name=... value=...>``)."""

from __future__ import annotations

from ..record import StabilityRecord
from .render import run_notes

_KEYS = (
    "final_loss",
    "largest_spike",
    "max_grad_norm",
    "p99_grad_norm",
    "val_trend",
    "steps_run",
    "lr_margin",
    "eos_ratio",
    "curvature_margin",
)


def junit_properties(record: StabilityRecord) -> list[tuple[str, str]]:
    """``stability_verdict``, the seed(s), finding checks, the headline metrics and the notes of the first call."""
    props = [("stability_verdict", record.verdict)]
    calls = record.calls
    if calls:
        call = calls[0]
        run = call.primary
        props.append(("stability_seeds", ",".join(str(s) for s in call.seeds)))
        props.append(("stability_device", run.device))
        for key in _KEYS:
            value = getattr(run.summary, key)
            if value is not None:
                props.append((f"stability_{key}", str(value)))
        if run.findings:
            f = run.findings[0]
            props.append(("stability_finding", f"{f.check} at step {f.step}: {f.message}"))
        # what qualifies the verdict (a check not judged, a run that ended early): one property per note
        props.extend(("stability_note", note) for note in run_notes(run))
    if record.error:
        props.append(("stability_error", str(record.error)))
    return props
