"""``validation_split`` on labels sorted by class: Keras splits off the last samples before it shuffles, so the
validation set can hold one class while training holds all (``fitsetup.split_one_class``, a note on the run).
A pure function: no framework."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.training.fitsetup import split_one_class

Y = np.array([0] * 50 + [1] * 50)  # sorted by class: the last 20 % are all 1, the first 80 % both classes


def test_sorted_labels_leave_the_validation_split_one_class_and_the_note_says_so():
    note = split_one_class(Y, {"validation_split": 0.2})
    assert note == (
        "validation_split=0.2 takes the last 20 samples, before Keras shuffles, and every one of them has the label 1, "
        "while the training part holds 2 classes: the validation loss measures one class; shuffle x and y together "
        "before fit (the labels look sorted)"
    )
    assert split_one_class(Y.astype("float32")[:, None], {"validation_split": 0.2}) == note  # (n, 1) float labels


@pytest.mark.parametrize(
    ("y", "kwargs"),
    [
        (np.random.default_rng(0).permutation(Y), {"validation_split": 0.2}),  # shuffled: both classes
        (Y, {}),  # no split
        (Y, {"validation_split": 0.0}),
        (np.linspace(0, 1, 100), {"validation_split": 0.2}),  # regression targets
        (np.eye(2)[Y], {"validation_split": 0.2}),  # one-hot: not one column of labels
        (np.ones(100), {"validation_split": 0.2}),  # one class throughout: nothing the split did
    ],
)
def test_nothing_to_say(y, kwargs):
    assert split_one_class(y, kwargs) is None
