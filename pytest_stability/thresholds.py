"""The limits the checks apply, with their calibrated defaults.

Numpy-free on purpose: options.py reads these defaults on every pytest run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: The five checks, in report order: the one list of their names (options, marker ``checks=``,
#: messages, JSON).  ``pytest_stability.checks.CHECKS`` maps these names to their functions.
CHECK_NAMES: tuple[str, ...] = ("loss_spike", "nonfinite", "grad_norm", "val_loss", "stuck")


@dataclass(frozen=True)
class Thresholds:
    """The limits the checks apply.  Defaults are the calibrated ones (docs/detection.md: how they were chosen)."""

    spike_window: int = 50
    spike_zscore: float = 8.0
    spike_ratio: float = 3.0
    spike_min_rise: float = 0.001
    warmup_steps: int = 10
    max_grad_norm: float | None = None
    grad_growth: float = 100.0
    val_smoothing: float = 0.6
    val_tolerance: float = 0.10
    val_min_delta: float = 0.0
    max_skipped_fraction: float = 0.25

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Thresholds:
        """Pick this class's fields out of a larger mapping (e.g. a RunSpec's values)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
