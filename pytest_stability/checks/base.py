"""Result types shared by the checks, and the thresholds they read.

Every check is a pure function ``(Trace, Thresholds) -> CheckResult``: numpy in,
frozen dataclasses out, no pytest and no TensorFlow.  The plugin decides how to
fail; a user's own script can call the same functions on its own trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# Re-exported: the checks' limits (defined in pytest_stability/thresholds.py).
from ..thresholds import Thresholds as Thresholds

PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """One instability found in a trace.

    Attributes:
        check: the check that found it (``loss_spike``, ``nonfinite``, ...).
        kind: what exactly, e.g. ``spike``, ``spike_no_recovery``, ``growth``.
        step: 0-based optimizer step where it happened.
        value: the offending value (loss, norm, ...).
        limit: the limit it crossed.
        message: one line saying the above in words.
        evidence: numbers supporting the finding (builtins only).
        cause / fix / confidence: filled in by :mod:`pytest_stability.diagnosis`.
    """

    check: str
    kind: str
    step: int
    value: float
    limit: float
    message: str
    #: (left out of the repr: the quotes, a batch's sample indices, a window of the curve)
    evidence: Mapping[str, Any] = field(default_factory=dict, repr=False)
    cause: str = ""
    fix: str = ""
    confidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        from ..trace import encode_float

        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["value"] = encode_float(self.value)
        out["limit"] = encode_float(self.limit)
        out["evidence"] = _builtins(dict(self.evidence))
        return out


def _builtins(obj: Any) -> Any:
    from ..trace import encode_float

    if isinstance(obj, dict):
        return {str(k): _builtins(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_builtins(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    try:
        return encode_float(float(obj))
    except (TypeError, ValueError):
        return str(obj)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check over one trace."""

    name: str
    status: str  # PASSED, FAILED or SKIPPED
    findings: tuple[Finding, ...] = ()
    #: why the check was skipped, or a short note on what it measured
    detail: str = ""
    #: the headline statistic of the check (largest spike factor, max norm...)
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "stats": _builtins(dict(self.stats)),
            "findings": [f.to_dict() for f in self.findings],
        }
