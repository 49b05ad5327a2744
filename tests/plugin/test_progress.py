"""Long stability runs show steps done, steps/s and ETA with -v or -s; nothing in quiet runs."""

from __future__ import annotations

import pytest

DRIVEN = """
from pytest_stability.integrations.progress import Progress


def test_drives_progress(request):
    progress = Progress(request.config, request.node.nodeid, 200)
    progress.update(100)
    progress.update(200)
    progress.close()
    print("captured output of the test")
"""


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("-v",), True),
        (("-s",), True),
        (("-v", "-s"), True),
        ((), False),
        (("-q",), False),
        (("-q", "-s"), False),
    ],
)
def test_progress_line_on_the_terminal(pytester, args, shown):
    """Progress driven with the real config: through capture with -v, with -s; never at -q or by default."""
    pytester.makepyfile(DRIVEN)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-progress-after=0", *args)
    result.assert_outcomes(passed=1)
    lines = [line for line in result.stdout.lines if line.startswith("stability test_")]
    if shown:
        assert lines == [
            "stability test_progress_line_on_the_terminal.py::test_drives_progress: 100/200 steps (50%), "
            f"{lines[0].split(', ')[1]}, {lines[0].split(', ')[2]}",
            lines[1],
        ]
        assert lines[1].endswith(", done") and "200/200 steps in " in lines[1]
    else:
        assert lines == []
    # captured output stays captured
    assert ("captured output of the test" in result.stdout.str()) == ("-s" in args)


def test_default_threshold_keeps_short_tests_silent(pytester):
    pytester.makepyfile(DRIVEN)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("stability test_")]


def test_bad_threshold_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nstability_progress_after = soon\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--stability-progress-after=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stability-progress-after: expected a number of seconds >= 0, received '-1'"])


def test_real_stability_run_shows_progress(pytester, scenario):
    scenario("healthy", module="test_long")
    verbose = pytester.runpytest("-p", "no:cacheprovider", "-v", "--stability-progress-after=0")
    verbose.assert_outcomes(passed=1)
    verbose.stdout.fnmatch_lines(
        [
            "stability test_long.py::test_healthy: */40 steps*steps/s, ETA *",
            "stability test_long.py::test_healthy: 40/40 steps in *, done",
        ]
    )
    quiet = pytester.runpytest("-p", "no:cacheprovider", "-q", "--stability-progress-after=0")
    quiet.assert_outcomes(passed=1)
    quiet.stdout.no_fnmatch_line("stability test_long.py::test_healthy: *")
