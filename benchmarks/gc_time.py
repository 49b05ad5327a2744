"""A pytest plugin that times Python's cyclic garbage collector in a test run, per process.

The figures behind docs/development.md's account of the TensorFlow pass (full collections took 176 to 200 s of
each xdist worker's ~490 s before the epoch iterators were closed) come from this plugin.  Load it with ``-p``
from the repository's root; it works with pytest-xdist (one summary per worker)::

    python -m pytest tests -q -p no:cacheprovider -n 2 -p benchmarks.gc_time

At the end of the session each process writes ``gc_time-<worker>.json`` into ``$GC_TIME_DIR`` (default: the
current directory), with the run's totals and the tests whose collections took longest, and prints one line
per process (the controller prints the workers' files as a table).  It times collections with
``gc.callbacks``, which costs a clock read per collection and nothing else; ``GC_TIME_SLOW=SECONDS`` (default
2) also dumps every thread's stack into ``gc_time-<worker>-stacks.txt`` while a full collection has run that
long, which is how the stall inside TensorFlow's iterator destructor was seen.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_OUT = Path(os.environ.get("GC_TIME_DIR", "."))
_SLOW = float(os.environ.get("GC_TIME_SLOW", "2"))

_now: dict[str, Any] = {"start": 0.0, "test": 0.0, "test_full": 0.0}
_totals = {"seconds": 0.0, "full": 0, "full_seconds": 0.0, "longest_full": 0.0}
_tests: list[dict[str, Any]] = []
_stacks: Any = None


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _stacks
    full = info["generation"] == 2
    if phase == "start":
        _now["start"] = time.perf_counter()
        if full and _SLOW > 0:
            if _stacks is None:
                _stacks = open(_OUT / f"gc_time-{_WORKER}-stacks.txt", "w")  # noqa: SIM115 (open for the session)
            _stacks.write(f"=== full collection started at {time.time():.1f}\n")
            _stacks.flush()
            faulthandler.dump_traceback_later(_SLOW, repeat=True, file=_stacks)
        return
    took = time.perf_counter() - _now["start"]
    _totals["seconds"] += took
    _now["test"] += took
    if full:
        if _SLOW > 0:
            faulthandler.cancel_dump_traceback_later()
        _totals["full"] += 1
        _totals["full_seconds"] += took
        _totals["longest_full"] = max(_totals["longest_full"], took)
        _now["test_full"] += took


def pytest_configure(config: pytest.Config) -> None:
    _OUT.mkdir(parents=True, exist_ok=True)
    if _WORKER == "main":  # the controller (or a run without xdist): no figures of an earlier run
        for old in _OUT.glob("gc_time-*"):
            old.unlink()
    gc.callbacks.append(_on_gc)
    _now["session"] = time.perf_counter()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _now.update(test=0.0, test_full=0.0)
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        _tests.append(
            {
                "test": item.nodeid,
                "wall": round(time.perf_counter() - started, 2),
                "gc": round(_now["test"], 2),
                "full_gc": round(_now["test_full"], 2),
            }
        )


def _summary() -> dict[str, Any]:
    return {
        "worker": _WORKER,
        "wall": round(time.perf_counter() - _now["session"], 1),
        "gc_seconds": round(_totals["seconds"], 1),
        "full_collections": _totals["full"],
        "full_seconds": round(_totals["full_seconds"], 1),
        "longest_full": round(_totals["longest_full"], 2),
        "slowest_tests": sorted(_tests, key=lambda t: -t["full_gc"])[:10],
    }


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # a worker's session finishes before the controller writes its summary
    (_OUT / f"gc_time-{_WORKER}.json").write_text(json.dumps(_summary(), indent=1) + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)
    if _stacks is not None:
        faulthandler.cancel_dump_traceback_later()
        _stacks.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = []
    for path in sorted(_OUT.glob("gc_time-gw*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    rows.append(_summary())
    terminalreporter.section("garbage collection time (benchmarks/gc_time.py)")
    terminalreporter.write_line(
        "process | wall (s) | all collections (s) | full collections | their time (s) | longest (s)"
    )
    for r in rows:
        terminalreporter.write_line(
            f"{r['worker']} | {r['wall']} | {r['gc_seconds']} | {r['full_collections']} | {r['full_seconds']} | "
            f"{r['longest_full']}"
        )
