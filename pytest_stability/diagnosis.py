"""Name the likely cause of each finding, the evidence for it, and the fix to try.

Pure: reads findings and a :class:`~pytest_stability.trace.Trace` (including
``trace.info``, the optimizer and model facts the engine records); knows
nothing of pytest or TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from .checks.base import Finding
from .trace import Trace


def diagnose(findings: Sequence[Finding], trace: Trace) -> list[Finding]:
    """Return ``findings`` with ``cause``, ``fix`` and ``confidence`` filled in."""
    return [_diagnose_one(f, trace) for f in findings]


def _diagnose_one(f: Finding, trace: Trace) -> Finding:
    info = trace.info or {}
    opt = info.get("optimizer", "")
    cfg = info.get("optimizer_config", {}) or {}
    if f.check == "nonfinite":
        if f.evidence.get("input_nonfinite"):
            cause, fix = "NaN/Inf in the input data, not produced by training", "clean the input pipeline (check for NaN/Inf before batching)"
        else:
            cause = "training produced NaN/Inf: learning rate too high, or a numerically unsafe op in the loss (log(0), division by zero)"
            fix = f"lower the learning rate (now {cfg.get('learning_rate')}), add clipnorm, or guard log/division with an epsilon"
        return dataclasses.replace(f, cause=cause, fix=fix, confidence="uncertain")
    if f.check == "loss_spike":
        if opt.startswith("Adam") or opt in ("Nadam", "Adamax"):
            cause = "Adam second-moment collapse: a tiny v makes m/(sqrt(v)+epsilon) explode"
            fix = f"Adam(epsilon=1e-4) or larger (now {cfg.get('epsilon')}), or Adam(amsgrad=True)"
        else:
            cause = "gradient explosion / learning rate too high"
            fix = "clipnorm on the optimizer, or a lower learning rate"
        return dataclasses.replace(f, cause=cause, fix=fix, confidence="uncertain")
    if f.check == "grad_norm":
        p90 = f.evidence.get("p90_before")
        clip = f"clipnorm={p90:.3g}" if p90 else "clipnorm"
        return dataclasses.replace(f, cause="gradient explosion", fix=f"{clip} on the optimizer, or a lower learning rate", confidence="uncertain")
    if f.check == "val_loss":
        if info.get("batchnorm_layers"):
            cause = "BatchNorm train/inference mismatch (moving statistics lag the weights)"
            fix = "lower BatchNorm momentum (e.g. 0.9) or use larger batches"
        else:
            cause = "overfitting or a learning rate too high for late training"
            fix = "a lower or decaying learning rate, regularisation, or early stopping"
        return dataclasses.replace(f, cause=cause, fix=fix, confidence="uncertain")
    return f
