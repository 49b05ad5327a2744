"""A steps value beyond the ceiling (max_steps, default 100000) is a usage error naming it, not an hours-long run."""

from __future__ import annotations

import pytest


def test_marker_steps_beyond_ceiling_errors_that_test_at_setup(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.stable_training(steps=10**9)
        def test_forever(stability):
            raise AssertionError("must not run")


        def test_other():
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_forever*",
            "*test_forever: stable_training: steps=1000000000 is above max_steps=100000*",
        ]
    )
    result.stdout.no_fnmatch_line("*must not run*")
    result.assert_outcomes(passed=1, errors=1)  # the other tests still run


def test_cli_steps_beyond_ini_ceiling_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nstability_max_steps = 1000\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-steps=5000")
    result.stderr.fnmatch_lines(["*steps=5000 is above max_steps=1000*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_fit_steps_beyond_the_ceiling_are_refused_in_the_same_words(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.stable_training(steps=50, max_steps=100)
        def test_long(stability):
            stability.fit(lambda: 1 / 0, None, steps=500)  # refused before anything is built or trained
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*stability.fit(): steps=500 is above max_steps=100 *--stability-max-steps*"])
    result.stdout.no_fnmatch_line("*ZeroDivisionError*")
    result.assert_outcomes(failed=1)
