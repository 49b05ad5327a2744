"""What ``--stability-replay-batch`` concludes from the losses it measured (``batch_replay.conclude``): the
previous batch and this one at the same weights, the previous one after the step's update.  A pure function:
no framework."""

from __future__ import annotations

import math

import pytest

from pytest_stability.training.batch_replay import conclude

NAN, INF = math.nan, math.inf


def test_a_batch_far_above_the_previous_one_is_a_bad_sample_and_its_update_damaged_the_model():
    verdict, damaged, lines = conclude(93, 5625.0, 4.797e-16, 77.47)
    assert (verdict, damaged) == ("bad_sample", True)
    assert "1.17e+19x the previous batch's" in lines[0] and "grew 1.61e+17x across step 93" in lines[1]


def test_a_batch_as_high_as_the_previous_one_blames_the_weights():
    verdict, damaged, lines = conclude(12, 2.0, 1.5, 1.6)
    assert (verdict, damaged) == ("bad_weights", False)
    assert lines == [
        "-> not this batch: the previous batch's loss is as high at these weights, so the updates before step 12 did it"
    ]


@pytest.mark.parametrize("loss", [NAN, INF])
def test_both_batches_non_finite_at_these_weights_is_the_weights_not_a_bad_sample(loss):
    # a sigmoid saturated by inputs of scale 20, and a custom loss taking log(1 - p): NaN on every batch at the
    # weights step 1 started from; this read "a bad sample: ... infx the previous batch's" and, in the same
    # breath, "its update damaged the model: ... grew infx"
    verdict, damaged, lines = conclude(1, loss, NAN, NAN)
    assert (verdict, damaged) == ("bad_weights", False)
    assert len(lines) == 1 and "the batch of step 0 is nan at these weights too" in lines[0]
    assert "inf" not in lines[0].replace("nan", "")


def test_a_non_finite_batch_where_the_previous_one_is_finite_is_a_bad_sample_quoted_as_both_values():
    verdict, damaged, lines = conclude(5, NAN, 0.31, 0.35)
    assert (verdict, damaged) == ("bad_sample", False)
    assert "this batch's loss is nan where the previous batch's is 0.31" in lines[0]


def test_an_update_that_makes_the_previous_batch_non_finite_damaged_the_model():
    verdict, damaged, lines = conclude(7, 0.4, 0.3, NAN)
    assert (verdict, damaged) == ("bad_weights", True)
    assert "the previous batch's loss went from 0.3 to nan across step 7" in lines[1]
