"""pandas DataFrames and Series reach fit as their arrays; every other object reaches it unchanged."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from pytest_stability.training.fitsetup import frames_as_arrays

pd = pytest.importorskip("pandas")  # in [test]: the suite always has it


def test_frames_become_their_arrays_at_any_depth():
    x = np.arange(12, dtype="float32").reshape(6, 2)
    frame, series = pd.DataFrame(x, columns=["a", "b"]), pd.Series(x[:, 0])
    kwargs = {"sample_weight": pd.Series(np.ones(6)), "validation_data": (frame[:2], series[:2]), "epochs": 2}
    got_x, got_y = frames_as_arrays({"features": frame, "extra": [frame]}, series, kwargs)
    np.testing.assert_array_equal(got_x["features"], x)
    assert isinstance(got_x["extra"], list) and isinstance(got_x["extra"][0], np.ndarray)
    assert isinstance(got_y, np.ndarray) and got_y.dtype == np.float32
    vx, vy = kwargs["validation_data"]
    assert isinstance(kwargs["validation_data"], tuple) and vx.shape == (2, 2) and isinstance(vy, np.ndarray)
    assert isinstance(kwargs["sample_weight"], np.ndarray) and kwargs["epochs"] == 2


def test_data_without_frames_is_passed_on_as_the_same_objects():
    x, y = [np.zeros((4, 2))], {"out": np.ones(4)}
    val = (x, y)
    kwargs = {"validation_data": val}
    got_x, got_y = frames_as_arrays(x, y, kwargs)
    assert got_x is x and got_y is y and kwargs["validation_data"] is val


def test_a_namedtuple_keeps_its_type():
    Pair = namedtuple("Pair", "left right")
    got, _ = frames_as_arrays(Pair(pd.DataFrame(np.zeros((3, 1))), np.ones(3)), None, {})
    assert type(got) is Pair and isinstance(got.left, np.ndarray) and got.right.shape == (3,)
