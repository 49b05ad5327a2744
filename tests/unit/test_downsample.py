"""The curves the reports keep (JSON, plots, xdist records) are downsampled; what survives matters."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.report import downsample


@pytest.mark.parametrize("n", [301, 1000, 1664, 20000])
def test_a_long_curve_keeps_its_first_and_last_step_and_its_spikes(n):
    rng = np.random.default_rng(n)
    values = 1.0 + 0.01 * rng.normal(size=n)
    values[1] = 2.0  # the first bin's extreme is not its first point
    values[n // 3] = 50.0  # a spike
    values[n // 2] = np.nan
    steps, kept = downsample(values, max_points=300)
    assert len(steps) == len(kept) <= 300
    assert steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == n - 1  # where the curve starts, and where training stopped
    assert kept[0] == pytest.approx(values[0]) and kept[-1] == pytest.approx(values[-1])
    assert n // 3 in steps and 1 in steps and n // 2 in steps


def test_a_short_curve_is_kept_whole():
    steps, kept = downsample(np.arange(5.0), max_points=300)
    assert steps == [0, 1, 2, 3, 4] and kept == [0.0, 1.0, 2.0, 3.0, 4.0]
