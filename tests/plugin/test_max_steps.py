"""A steps value beyond the ceiling (max_steps, default 100000) is a usage error naming it, not an hours-long run."""

from __future__ import annotations

from pytest_stability.options import DEFAULT_MAX_STEPS, OptionValueError, merge_marker, resolve_config_defaults

import pytest


def _defaults(**cli):
    return resolve_config_defaults(lambda name: cli.get(name), lambda key: None)


def test_default_ceiling_is_100000():
    assert DEFAULT_MAX_STEPS == 100_000
    assert _defaults().max_steps == 100_000


def test_marker_steps_above_the_ceiling_names_both_values():
    with pytest.raises(OptionValueError, match=r"steps=1000000000 is above max_steps=100000 .*--stability-max-steps"):
        merge_marker(_defaults(), (10**9,), {})


def test_marker_can_raise_its_own_ceiling():
    spec = merge_marker(_defaults(), (), {"steps": 200_000, "max_steps": 200_000})
    assert spec.steps == 200_000


def test_cli_steps_above_the_cli_ceiling():
    with pytest.raises(OptionValueError, match=r"--stability-steps / --stability-max-steps .*steps=500 is above max_steps=100"):
        _defaults(steps="500", max_steps="100")


def test_marker_steps_beyond_ceiling_errors_that_test_at_setup(pytester):
    pytester.makepyfile('''
        import pytest

        @pytest.mark.stable_training(steps=10**9)
        def test_forever(stability):
            raise AssertionError("must not run")


        def test_other():
            pass
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_forever*",
        "*test_forever: stable_training: steps=1000000000 is above max_steps=100000*",
    ])
    result.stdout.no_fnmatch_line("*must not run*")
    result.assert_outcomes(passed=1, errors=1)  # the other tests still run


def test_cli_steps_beyond_ini_ceiling_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nstability_max_steps = 1000\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-steps=5000")
    result.stderr.fnmatch_lines(["*steps=5000 is above max_steps=1000*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
