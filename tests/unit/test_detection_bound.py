"""The detection benchmark's false-positive bound (benchmarks/detection.py), on known values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.detection import upper_bound  # noqa: E402


def test_zero_failures_match_the_closed_form():
    assert upper_bound(0, 308) == pytest.approx(1 - 0.05 ** (1 / 308), rel=1e-6)


def test_one_failure_in_a_hundred_matches_the_textbook_value():
    assert upper_bound(1, 100) == pytest.approx(0.0466, abs=5e-5)


def test_edges():
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0
    assert upper_bound(1, 308) > upper_bound(0, 308)
