"""A steps value beyond the ceiling (max_steps, default 100000) is an error naming both values.

The collection error and the usage error a pytest run shows are in tests/plugin/test_max_steps.py.
"""

from __future__ import annotations

import pytest

from pytest_stability.options import DEFAULT_MAX_STEPS, OptionValueError, merge_marker, resolve_config_defaults


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
    with pytest.raises(
        OptionValueError, match=r"--stability-steps / --stability-max-steps .*steps=500 is above max_steps=100"
    ):
        _defaults(steps="500", max_steps="100")
