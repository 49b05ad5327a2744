"""The progress line of a long stability run: throttled, with rate and ETA; silent for short runs.

What a pytest run shows with -v / -s / -q is in tests/plugin/test_progress.py.
"""

from __future__ import annotations

from pytest_stability.integrations.progress import Progress, format_duration


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
    assert [format_duration(s) for s in (0, 9.4, 59.6, 125, 3725, float("nan"))] == [
        "0s",
        "9s",
        "1m00s",
        "2m05s",
        "1h02m",
        "?",
    ]
