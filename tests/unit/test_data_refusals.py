"""Data that ``fit`` would refuse, refused before the plugin reads it, with a message that says what to pass."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_stability.errors import StabilityUsageError
from pytest_stability.training.fitsetup import (
    _same_lengths,
    check_finite,
    few_samples_far,
    few_samples_note,
    refuse_python_values,
)


@pytest.mark.parametrize(
    ("name", "obj", "said", "convert"),
    [
        ("y", [0.0, 1.0, 1.0], "y is a Python list holding float values (the first: 0.0)", "np.asarray(y)"),
        ("x", [[1, 2], [3, 4]], "x is a Python list holding int values (the first: 1)", "np.asarray(x)"),
        # inputs by name, or a tuple of inputs: the lists among them are converted, not the structure
        (
            "x",
            {"text": ["a cat", "a dog"]},
            "x is a Python dict holding str values (the first: 'a cat')",
            "np.asarray on each list in it",
        ),
        (
            "validation y_val",
            (np.zeros(3), [True]),
            "validation y_val is a Python tuple holding bool values",
            "np.asarray on each list in it",
        ),
    ],
)
def test_python_values_are_refused_with_what_to_pass(name, obj, said, convert):
    with pytest.raises(StabilityUsageError) as info:
        refuse_python_values(name, obj)
    message = str(info.value)
    assert message.startswith(said), message
    assert message.endswith(f"convert it with {convert}"), message


@pytest.mark.parametrize(
    "obj",
    [None, np.zeros((3, 2)), [np.zeros(3), np.ones(3)], {"a": np.zeros(3), "b": (np.ones(3), None)}, "not a list"],
)
def test_arrays_and_what_is_not_a_structure_pass(obj):
    refuse_python_values("x", obj)  # a bare string or object is data_kind's to judge, not this check's


def test_a_list_of_samples_is_told_to_stack_them():
    x, y = list(np.zeros((512, 10), np.float32)), np.zeros(512)
    with pytest.raises(StabilityUsageError) as info:
        _same_lengths(x, y, None)
    assert str(info.value) == (
        "x and y have different numbers of samples: x has 10 (512 arrays of shape (10,)), y has 512 (shape (512,)); "
        "fit reads a list of 512 arrays as 512 inputs: to pass 512 samples, stack them (np.stack(x))"
    )


def test_a_few_inputs_keep_their_shapes_listed():
    with pytest.raises(StabilityUsageError) as info:
        _same_lengths([np.zeros((8, 2)), np.zeros((8, 3))], np.zeros(5), None)
    assert str(info.value) == (
        "x and y have different numbers of samples: x has 8 (shape [(8, 2), (8, 3)]), y has 5 (shape (5,))"
    )


@pytest.mark.parametrize(
    ("verbose", "batches", "epochs"),
    [(0, False, False), (None, False, False), (False, False, False), (1, True, True), (True, True, True)]
    + [("auto", True, True), (2, False, True), (np.int64(1), True, True), (3, False, False)],
)
def test_keras_progress_output_observes_batches_at_verbose_1_and_epochs_at_1_or_2(verbose, batches, epochs):
    # verbose=1 had shown Keras' bar at each chunk's last step ("50/20"): the progress output observes the run
    from pytest_stability.training.fitsetup import progress_observers

    assert bool(progress_observers(verbose, batches=True)) is batches
    assert bool(progress_observers(verbose, batches=False)) is epochs
    if epochs:  # named as the user wrote it, a numpy integer as its number
        (name,) = progress_observers(verbose, batches=False)
        assert name == f"Keras' progress output (verbose={verbose!r})".replace("np.int64(1)", "1"), name


def test_the_few_samples_that_make_data_far_from_unit_scale_are_found():
    rng = np.random.default_rng(0)
    y = (2 * rng.normal(size=(512, 1))).astype("float32")
    y[77] = 1e4  # one wrong target
    few = few_samples_far(y, check_finite("y", y))
    assert few is not None and (few["samples"], few["values"], few["count"], few["n"]) == ([77], [1e4], 1, 512)
    assert 1.5 < few["rms_rest"] < 2.5
    x = rng.normal(size=(512, 8)).astype("float32")
    x[5, 3], x[9, 0] = -9999.0, 5000.0  # a sentinel for "missing", a unit mix-up
    few = few_samples_far({"features": x}, check_finite("x", {"features": x}))
    assert few is not None and (few["samples"], few["values"]) == ([5, 9], [-9999.0, 5000.0])
    # data far from unit scale as a whole (prices, raw pixels) is not a few samples' doing
    prices = (1e5 * rng.lognormal(size=(512, 1))).astype("float32")
    pixels = rng.integers(0, 256, size=(64, 8, 8)).astype("float32")
    assert few_samples_far(prices, check_finite("y", prices)) is None
    assert few_samples_far(pixels, check_finite("x", pixels)) is None
    assert few_samples_far(y, 50.0) is None  # near unit scale: not looked for
    # of several arrays, the one of the largest scale, whatever rounding the quoted figure carries (check_finite
    # sums float32 squares in one BLAS pass, these per sample)
    both = {"scaled": rng.normal(size=(512, 4)).astype("float32"), "raw": x}
    few = few_samples_far(both, 1.03 * check_finite("x", both))
    assert few is not None and few["samples"] == [5, 9]

    few = {"samples": [5, 9], "values": [-9999.0, 5000.0], "count": 3, "rms_rest": 0.99, "n": 512}
    assert few_samples_note("input", few, 156.0) == (
        "the inputs' root mean square, 156, is made by a few of the 512: samples 5 (-9999), 9 (5000) and 1 more; "
        "the others' is 0.99. Check them (a wrong value, a unit mix-up, a sentinel for a missing value)"
    )


def test_integer_arrays_are_measured_only_where_the_model_takes_them_as_values():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5000, size=(512, 8))  # int64 counts: values, or ids and labels, as the model says
    assert check_finite("x", counts) is None
    expected = float(np.sqrt(np.mean(counts.astype(np.float64) ** 2)))
    assert check_finite("x", counts, integers=True) == pytest.approx(expected, rel=1e-12)
    # squares past the integer type (int32 at 2**20), unsigned bytes: measured in float64
    assert check_finite("x", np.full((4, 2), 2**20, np.int32), integers=True) == pytest.approx(2.0**20)
    assert check_finite("x", np.full((4, 2), 255, np.uint8), integers=True) == pytest.approx(255.0)
    # beside floating-point inputs: the largest of them
    both = {"scaled": rng.normal(size=(512, 4)).astype("float32"), "counts": counts}
    assert check_finite("x", both, integers=True) == pytest.approx(expected, rel=1e-12)
    # a sentinel among small counts: the sample is named, as for floats
    small = rng.integers(0, 5, size=(512, 4))
    small[7, 1] = -9999
    rms = check_finite("x", small, integers=True)
    few = few_samples_far(small, rms, integers=True)
    assert few is not None and (few["samples"], few["values"], few["count"]) == ([7], [-9999.0], 1)
    assert few_samples_far(small, rms) is None  # integers not taken as values: not looked at


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "float32"])
def test_row_squares_widen_a_block_of_rows_at_a_time_with_the_whole_arrays_result(dtype, monkeypatch):
    # uint8 pixels are the commonest integer data: widened whole, 60,000 MNIST images took 376 MB in float64
    from pytest_stability.training import fitsetup

    rng = np.random.default_rng(0)
    per = rng.integers(0, 250, size=(37, 11)).astype(dtype)
    wide = np.float32 if dtype == "float16" else np.float64
    whole = np.einsum("ij,ij->i", per.astype(wide), per.astype(wide)).astype(np.float64)
    monkeypatch.setattr(fitsetup, "SQUARES_BLOCK", 30)  # two rows a block, the last block shorter
    np.testing.assert_array_equal(fitsetup.row_squares(per), whole)
    assert fitsetup.row_squares(per).dtype == np.float64
