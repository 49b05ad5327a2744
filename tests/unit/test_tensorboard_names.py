"""TensorBoard run directories: one per test, seed and call, with safe and distinct names."""

from __future__ import annotations

from pytest_stability.report.tensorboard import run_dir_name


def test_run_dir_names_are_safe_and_distinct():
    assert run_dir_name("tests/test_x.py::test_y[a/b c]", 3) == "tests_test_x.py__test_y[a_b_c]-seed3"
    assert run_dir_name("t.py::test", 0, call_index=1) == "t.py__test-seed0-call1"
    long_a, long_b = "t.py::test_" + "a" * 200 + "[1]", "t.py::test_" + "a" * 200 + "[2]"
    assert run_dir_name(long_a, 0) != run_dir_name(long_b, 0)
    assert len(run_dir_name(long_a, 0)) < 140
