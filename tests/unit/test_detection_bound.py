"""The detection benchmark's false-positive bound (benchmarks/detection.py), on known values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.detection import _pct, upper_bound  # noqa: E402


def test_zero_failures_match_the_closed_form():
    assert upper_bound(0, 308) == pytest.approx(1 - 0.05 ** (1 / 308), rel=1e-6)


def test_one_failure_in_a_hundred_matches_the_textbook_value():
    assert upper_bound(1, 100) == pytest.approx(0.0466, abs=5e-5)


def test_edges():
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0
    assert upper_bound(1, 308) > upper_bound(0, 308)


def test_a_share_never_reads_as_none_or_all_when_it_is_not():
    assert _pct(1, 312) == "0.3 % (1/312)"  # a whole percent printed this "0 % (1/312)"
    assert _pct(500, 502) == "99.6 % (500/502)"
    assert (_pct(0, 312), _pct(312, 312), _pct(9, 10)) == ("0 % (0/312)", "100 % (312/312)", "90 % (9/10)")
    assert _pct(0, 0) == "n/a"
