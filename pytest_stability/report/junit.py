"""Flat stability properties for ``--junitxml`` (``<property name=... value=...>``)."""

from __future__ import annotations

from ..record import StabilityRecord, primary_run
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
    """``stability_verdict``, the seed(s), finding checks, the headline metrics and the notes of the call the
    verdict comes from: the first that is not stable, else the first (``stability_call`` says which, of a test's
    several ``stability.fit()`` calls)."""
    props = [("stability_verdict", record.verdict)]
    calls = record.calls
    call = primary_run(calls)
    if call is not None:
        run = call.primary
        if len(calls) > 1:
            which = next(k for k, c in enumerate(calls, 1) if c is call)
            props.append(("stability_call", f"{which} of {len(calls)}"))
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
