"""Progress of a long stability test: steps done, steps/s and ETA, on pytest's terminal.

The training loop creates one :class:`Progress` per ``train()`` run and calls
:meth:`Progress.update` at each read-back (it is cheap: one clock call and a
comparison until a line is due) and :meth:`Progress.close` at the end::

    progress = Progress(config, nodeid, total_steps=steps)
    for chunk in chunks:
        ...                                 # train one chunk, read it back
        progress.update(done_steps)
    progress.close()

A line appears only once the run has taken ``--stability-progress-after``
seconds (ini ``stability_progress_after``, default 3), then at most every 2
seconds, and only where the user watches the terminal: with ``-v`` (pytest's
live output, between the test's name and its result), or with ``-s`` (output
not captured).  A default or ``-q`` run with capture on prints nothing, and
neither does a pytest-xdist worker (its stdout carries execnet traffic).

Lines go through pytest's terminal reporter with capture suspended (like
pytest's own live logging), so they reach the terminal even while the test's
output is captured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

#: Seconds a run must take before its first progress line (the option's default).
DEFAULT_AFTER = 3.0
#: Seconds between two progress lines.
DEFAULT_EVERY = 2.0

PROGRESS_AFTER_HELP = (
    "show a stability test's progress (steps, steps/s, ETA) once it has trained for this many "
    f"seconds; shown with -v or -s only (default: {DEFAULT_AFTER:g})"
)


class ProgressSettingError(ValueError):
    """A bad --stability-progress-after value."""


def parse_after(text: Any) -> float:
    """A ``--stability-progress-after`` value: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ProgressSettingError(f"a number of seconds >= 0, received {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ProgressSettingError(f"a number of seconds >= 0, received {text!r}")
    return value


def progress_after(config: pytest.Config) -> float:
    """The resolved threshold: command line > ini > :data:`DEFAULT_AFTER` (validated at configure)."""
    raw = config.getoption("stability_progress_after", None)
    if raw is None:
        raw = config.getini("stability_progress_after") or None
    return DEFAULT_AFTER if raw is None else parse_after(raw)


def validate(config: pytest.Config) -> list[str]:
    """Problems with the progress setting (for the run's one usage error)."""
    try:
        progress_after(config)
    except ProgressSettingError as exc:
        return [f"--stability-progress-after: expected {exc}"]
    return []


def shown(config: pytest.Config | None) -> bool:
    """Whether progress lines are shown in this process: ``-v``, or ``-s`` without ``-q``; never in a worker."""
    if config is None or hasattr(config, "workerinput"):
        return False
    if config.pluginmanager.get_plugin("terminalreporter") is None:
        return False
    verbosity = config.get_verbosity()
    not_captured: bool = config.getoption("capture", None) == "no"
    return verbosity >= 1 or (not_captured and verbosity >= 0)


def format_duration(seconds: float) -> str:
    """``9s``, ``2m05s``, ``1h02m``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(rate: float) -> str:
    if not math.isfinite(rate) or rate <= 0:
        return "?"
    return f"{rate:.3g}" if rate < 100 else f"{rate:.0f}"


class Progress:
    """Prints a stability run's progress; see the module docstring.

    Args:
        config: the pytest config (None: print nothing).
        nodeid: the test's node id, shown in the line.
        total_steps: the steps the run will train for.
        clock: a monotonic clock in seconds (tests inject a fake one).
        after: seconds before the first line (default: the run's ``--stability-progress-after``).
        every: seconds between lines.
        write: where lines go (default: pytest's terminal reporter, capture suspended).
    """

    def __init__(
        self,
        config: Any,
        nodeid: str,
        total_steps: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        after: float | None = None,
        every: float = DEFAULT_EVERY,
        write: Callable[[str], None] | None = None,
    ) -> None:
        self.nodeid = nodeid
        self.total_steps = int(total_steps)
        self._clock = clock
        self._write = write
        self.enabled = write is not None or shown(config)
        self._config = config
        if self.enabled and after is None:
            after = progress_after(config)
        self._every = float(every)
        self._start = clock()
        self._next = self._start + (DEFAULT_AFTER if after is None else float(after))
        #: (time, steps) of the previous line, for the recent rate
        self._last: tuple[float, int] = (self._start, 0)
        self._done = 0
        self._closed = False
        #: the lines printed so far
        self.lines: list[str] = []

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, done_steps: int) -> None:
        """Record that ``done_steps`` steps are done; prints a line when one is due."""
        self._done = int(done_steps)
        if not self.enabled:
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._every
        elapsed = now - self._start
        last_t, last_steps = self._last
        # The rate since the previous line predicts the rest best (the first chunk includes compiling).
        rate = (
            (self._done - last_steps) / (now - last_t)
            if now > last_t and self._done > last_steps
            else (self._done / elapsed if elapsed > 0 else math.nan)
        )
        self._last = (now, self._done)
        left = self.total_steps - self._done
        eta = left / rate if rate > 0 and math.isfinite(rate) else math.nan
        pct = f" ({self._done / self.total_steps:.0%})" if self.total_steps > 0 else ""
        self._emit(
            f"stability {self.nodeid}: {self._done}/{self.total_steps} steps{pct}, "
            f"{format_rate(rate)} steps/s, ETA {format_duration(eta)}"
        )

    def close(self) -> None:
        """A last line when progress was shown (so the final state is visible); idempotent."""
        if self._closed or not self.lines:
            return
        self._closed = True
        elapsed = self._clock() - self._start
        rate = self._done / elapsed if elapsed > 0 else math.nan
        self._emit(
            f"stability {self.nodeid}: {self._done}/{self.total_steps} steps in {format_duration(elapsed)}, "
            f"{format_rate(rate)} steps/s, done"
        )

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        if self._write is not None:
            self._write(line)
            return
        plugins = self._config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capman = plugins.get_plugin("capturemanager")
        if reporter is None:
            return
        if capman is None:
            reporter.ensure_newline()
            reporter.write_line(line)
            return
        # Like pytest's live logging: write to the real terminal while the test's output is captured.
        with capman.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)


__all__ = [
    "DEFAULT_AFTER",
    "DEFAULT_EVERY",
    "PROGRESS_AFTER_HELP",
    "Progress",
    "ProgressSettingError",
    "format_duration",
    "parse_after",
    "progress_after",
    "shown",
    "validate",
]
