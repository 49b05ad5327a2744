"""The options of the benchmarks that time whole ``fit`` runs: a count below one is refused with the value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._results import check_fit_timing, fit_timing_parser  # noqa: E402


def test_defaults_are_the_benchmarks_own():
    args = fit_timing_parser("Doc.\n\nmore", reps=7, models="mlp,conv").parse_args([])
    assert (args.steps, args.reps, args.readback, args.models) == (512, 7, 64, "mlp,conv")


@pytest.mark.parametrize("option", ["--steps", "--reps", "--readback"])
def test_a_count_below_one_is_refused_naming_the_value(option, capsys):
    parser = fit_timing_parser("Doc.", reps=3, models="mlp")
    args = parser.parse_args([option, "0"])
    with pytest.raises(SystemExit) as exc:
        check_fit_timing(parser, args)
    assert exc.value.code == 2
    assert f"{option} must be >= 1, received 0" in capsys.readouterr().err


def test_counts_of_one_or_more_pass():
    parser = fit_timing_parser("Doc.", reps=3, models="mlp")
    assert check_fit_timing(parser, parser.parse_args(["--steps", "1", "--reps", "1", "--readback", "1"])) is None
