"""Long stability runs show steps done, steps/s and ETA with -v or -s; nothing in quiet runs."""

from __future__ import annotations

import pytest

from pytest_stability.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttled_lines_with_rate_and_eta():
    clock, lines = FakeClock(), []
    progress = Progress(None, "t.py::test_long", 1000, clock=clock, after=3.0, every=2.0, write=lines.append)
    for t, done in ((0.5, 10), (1.0, 50), (2.9, 100)):
        clock.now = 100.0 + t
        progress.update(done)
    assert lines == []  # nothing in the first 3 seconds
    clock.now = 103.0
    progress.update(150)
    assert lines == ["stability t.py::test_long: 150/1000 steps (15%), 50 steps/s, ETA 17s"]
    clock.now = 104.9
    progress.update(250)
    assert len(lines) == 1  # at most one line every 2 seconds
    clock.now = 105.0
    progress.update(350)  # 200 steps in the 2 s since the last line: the recent rate predicts the rest
    assert lines[-1] == "stability t.py::test_long: 350/1000 steps (35%), 100 steps/s, ETA 6s"
    clock.now = 108.0
    progress.update(1000)
    progress.close()
    progress.close()  # idempotent
    assert lines[-1] == "stability t.py::test_long: 1000/1000 steps in 8s, 125 steps/s, done"
    assert len(lines) == 4


def test_short_run_prints_nothing_not_even_on_close():
    clock, lines = FakeClock(), []
    with Progress(None, "t.py::test_short", 100, clock=clock, after=3.0, write=lines.append) as progress:
        clock.now += 1.0
        progress.update(100)
    assert lines == []


def test_without_a_config_or_writer_it_is_silent():
    progress = Progress(None, "t.py::test_x", 10, after=0.0)
    progress.update(5)
    progress.close()
    assert progress.enabled is False and progress.lines == []


def test_format_duration():
    assert [format_duration(s) for s in (0, 9.4, 59.6, 125, 3725, float("nan"))] == ["0s", "9s", "1m00s", "2m05s",
                                                                                       "1h02m", "?"]


DRIVEN = '''
from pytest_stability.progress import Progress


def test_drives_progress(request):
    progress = Progress(request.config, request.node.nodeid, 200)
    progress.update(100)
    progress.update(200)
    progress.close()
    print("captured output of the test")
'''


@pytest.mark.parametrize(("args", "shown"), [
    (("-v",), True),
    (("-s",), True),
    (("-v", "-s"), True),
    ((), False),
    (("-q",), False),
    (("-q", "-s"), False),
])
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
    verbose.stdout.fnmatch_lines(["stability test_long.py::test_healthy: */40 steps*steps/s, ETA *",
                                  "stability test_long.py::test_healthy: 40/40 steps in *, done"])
    quiet = pytester.runpytest("-p", "no:cacheprovider", "-q", "--stability-progress-after=0")
    quiet.assert_outcomes(passed=1)
    quiet.stdout.no_fnmatch_line("stability test_long.py::test_healthy: *")
