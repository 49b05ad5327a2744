"""Recorded training runs: report tests replay real training instead of training again.

A report test (JSON, JUnit, GitHub, TensorBoard, plots, baseline, terminal, xdist merging) checks what the
plugin makes of a run, not the run itself; training its models afresh in each of its pytester runs would be
most of the suite's time.  Here the training engine's result for such a test is recorded once, from real
training of the very test source the test runs, committed (``recorded/GROUP.json``), and replayed::

    pytester.runpytest("-p", "recorded_runs", "--recorded-runs=scenarios", ...)   # recorded.args("scenarios")

replaces :func:`pytest_stability.training.engine.train` (the call that trains with Keras' own ``fit`` and
returns a :class:`~pytest_stability.training.engine.RunResult`) by the recorded result of the same test, train()
call and seed.  Everything after it runs as in a user's run: the checks and the diagnosis of the recorded trace,
the fixture's verdict (an unstable run fails the test), the ``pytest_stability_run_finished`` hooks (the baseline
gate, the TensorBoard writer), the test's record, the session and every report.  Before it replays a call, the
plugin checks that the test asked for the recorded steps and seed, built the recorded model (its name, its
variables' names, its optimizer) and gave it the recorded data (each array's shape, dtype and mean absolute
value, the batch size), and fails the test naming the difference otherwise: a test and its recording cannot
drift apart silently.  A test that no named group recorded trains for real.  The terminal summary of a
serial run says how many engine calls were replayed and trained (``recorded runs: 5 replayed, 0 trained``).

A group is one pytester module of stability tests (``named_problem`` plus the sources in ``RECORDED_GROUPS``,
tests/plugin/conftest.py); its recording holds, per test name, one entry per train() call, with one run per seed.
``test_recorded_runs.py`` trains the shared scenarios afresh, checks that replaying the fresh recording reports
what the training reported, and compares it with the committed one (and the other groups' fields with a fresh
run's); with an environment variable it does so for every group and rewrites the committed recordings, after a
change to the engine, the trace or a recorded test's source::

    STABILITY_REWRITE_RECORDINGS=1 python -m pytest tests/plugin/test_recorded_runs.py

Recordings are JSON (NaN and Infinity as Python's json writes them): float64 values round-trip exactly.

PYTEST_DONT_REWRITE: the test process imports this module before an in-process run loads it with ``-p``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RECORDINGS_DIR = Path(__file__).resolve().parent / "recorded"
#: the directory holding this module: on PYTHONPATH, ``-p recorded_runs`` loads it in a subprocess or xdist worker
HERE = str(Path(__file__).resolve().parent)


# -- RunResult <-> builtins ------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # the BatchPlan
        return {"dataclass": type(value).__name__, "fields": _encode(dataclasses.asdict(value))}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"dataclass", "fields"} and value["dataclass"] == "BatchPlan":
            from pytest_stability.training.batches import BatchPlan

            return BatchPlan(**_decode(value["fields"]))
        if set(value) == {"ndarray", "dtype"}:
            return np.asarray(value["ndarray"], dtype=value["dtype"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def result_to_dict(result: Any) -> dict[str, Any]:
    """A RunResult as builtins (its trace field by field); the what-if replay's initial state is not kept."""
    trace = {f.name: _encode(getattr(result.trace, f.name)) for f in dataclasses.fields(result.trace)}
    out = {
        f.name: _encode(getattr(result, f.name))
        for f in dataclasses.fields(result)
        if f.name not in ("trace", "initial_state")
    }
    out["trace"] = trace
    return out


def result_from_dict(data: dict[str, Any]) -> Any:
    """Inverse of :func:`result_to_dict` (a recording's ``inputs`` are not part of the result)."""
    from pytest_stability.trace import Trace
    from pytest_stability.training.engine import RunResult

    trace = Trace(**{k: _decode(v) for k, v in data["trace"].items()})
    return RunResult(trace=trace, **{k: _decode(v) for k, v in data.items() if k not in ("trace", "inputs")})


def _arrays(obj: Any) -> list[Any]:
    """The numpy arrays in ``obj`` (nested tuples, lists, dicts), in order; anything else by its type's name."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [a for item in obj for a in _arrays(item)]
    if isinstance(obj, dict):
        return [a for key in sorted(obj) for a in _arrays(obj[key])]
    return [] if obj is None else [type(obj).__name__]


def describe_inputs(x: Any, y: Any, fit_kwargs: dict[str, Any] | None, batch_size: Any) -> dict[str, Any]:
    """What a train() call was given, as far as a recording can tell it: each array's shape, dtype and mean absolute
    value (training data, validation data, sample weights), and the batch size."""
    fit_kwargs = fit_kwargs or {}
    data = _arrays([x, y, fit_kwargs.get("sample_weight"), fit_kwargs.get("validation_data")])
    return {
        "batch_size": fit_kwargs.get("batch_size", batch_size),
        "arrays": [
            [list(a.shape), str(a.dtype), float(np.mean(np.abs(a))) if a.size else 0.0]
            if isinstance(a, np.ndarray)
            else a
            for a in data
        ],
    }


def same_inputs(now: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """Shapes, dtypes and batch size equal; mean absolute values within 1 % (another numpy may draw other data)."""
    if now["batch_size"] != recorded["batch_size"] or len(now["arrays"]) != len(recorded["arrays"]):
        return False
    for a, b in zip(now["arrays"], recorded["arrays"], strict=True):
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                return False
        elif a[:2] != b[:2] or not np.isclose(a[2], b[2], rtol=0.01, atol=1e-6):
            return False
    return True


def load_group(name: str, directory: Path = RECORDINGS_DIR) -> dict[str, list[dict[str, Any]]]:
    """A group's recording: test name -> one ``{seed (str): RunResult dict}`` per train() call."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise pytest.UsageError(f"--recorded-runs: no recording named {name!r} ({path} does not exist)")
    return json.loads(path.read_text(encoding="utf-8"))["tests"]


def write_group(name: str, tests: dict[str, list[dict[str, Any]]], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    doc = {
        "about": f"recorded by tests/plugin/test_recorded_runs.py from the tests of group {name!r} "
        "(tests/plugin/conftest.py RECORDED_GROUPS); see tests/plugin/recorded_runs.py",
        "tests": {k: tests[k] for k in sorted(tests)},
    }
    path.write_text(json.dumps(doc, indent=None, sort_keys=True) + "\n", encoding="utf-8")
    return path


# -- the plugin --------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("recorded_runs", "replayed training (pytest-stability's own tests)")
    group.addoption(
        "--recorded-runs",
        default=None,
        metavar="GROUP[,GROUP]",
        help="replay the recorded training of these groups (the first that has a test wins)",
    )
    group.addoption(
        "--recorded-runs-from",
        default=None,
        metavar="DIR",
        help="read the recordings from DIR instead of tests/plugin/recorded",
    )
    group.addoption(
        "--record-runs-to",
        default=None,
        metavar="DIR",
        help="train for real and write the runs of each module test_recorded_GROUP.py to DIR/GROUP.json",
    )


class _Replay:
    """Registered for a run that replays or records: the recordings, the running test, its train() calls so far."""

    def __init__(self, groups: list[str], directory: Path, record_to: Path | None, real_train: Any) -> None:
        self.recordings = [load_group(name, directory) for name in groups]
        self.record_to = record_to
        self.real_train = real_train
        #: record mode: group -> test name -> one {seed: RunResult dict} per train() call
        self.recorded: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.item: Any = None
        self.calls = 0
        #: engine.train() calls replayed and trained for real in this process (a worker's own under xdist)
        self.replayed = self.trained = 0

    def lookup(self, name: str) -> list[dict[str, Any]] | None:
        for recording in self.recordings:
            if name in recording:
                return recording[name]
        return None

    def train(self, model: Any, x: Any, y: Any = None, **kwargs: Any) -> Any:
        """Stands in for engine.train: called once per seed of a train() call."""
        item = self.item
        runs = self.lookup(item.name) if item is not None and self.record_to is None else None
        if runs is not None:
            self.replayed += 1
            return replayed(item.name, runs, self.calls, model, x, y, **kwargs)
        self.trained += 1
        result = self.real_train(model, x, y, **kwargs)
        if self.record_to is not None:
            group = Path(str(item.path)).stem.removeprefix("test_recorded_")
            calls = self.recorded.setdefault(group, {}).setdefault(item.name, [])
            while len(calls) <= self.calls:
                calls.append({})
            entry = result_to_dict(result)
            entry["inputs"] = describe_inputs(x, y, kwargs.get("fit_kwargs"), kwargs.get("batch_size"))
            calls[self.calls][str(kwargs["seed"])] = entry
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.item, self.calls = item, 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_stability_run_finished(self) -> None:
        self.calls += 1  # the train() call is over: every seed has trained

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.replayed or self.trained:
            terminalreporter.write_line(f"recorded runs: {self.replayed} replayed, {self.trained} trained")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        from pytest_stability.training import engine

        engine.train = self.real_train
        if self.record_to is not None and not hasattr(config, "workerinput"):
            for group, tests in self.recorded.items():
                write_group(group, tests, self.record_to)


def replayed(
    name: str,
    runs: list[dict[str, Any]],
    call: int,
    model: Any,
    x: Any,
    y: Any,
    *,
    steps: int,
    seed: int,
    fit_kwargs: Any = None,
    batch_size: Any = None,
    progress: Any = None,
    fix_at: Any = None,
    stop_after: Any = None,
    **_: Any,
) -> Any:
    """The recorded RunResult of train() call ``call`` under ``seed``, once the model and data are the recorded ones."""
    where = f"recorded run of {name}, train() call {call}, seed {seed}"
    if fix_at is not None or stop_after is not None:
        raise RuntimeError(f"{where}: a what-if replay trains from the model's state; it cannot be replayed")
    if call >= len(runs) or str(seed) not in runs[call]:
        raise RuntimeError(f"{where}: not recorded (recorded: {[sorted(c, key=int) for c in runs]})")
    entry = runs[call][str(seed)]
    result = result_from_dict(entry)
    trace = result.trace
    info = trace.info or {}
    inputs = describe_inputs(x, y, fit_kwargs, batch_size)
    expected = {
        "steps": trace.steps_planned,
        "model": info.get("model"),
        "optimizer": info.get("optimizer"),
        "variables": list(trace.var_names),
        "inputs": entry["inputs"],
    }
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    got = {
        "steps": steps,
        "model": model.name,
        "optimizer": type(optimizer).__name__,
        "variables": [str(getattr(v, "path", v.name)) for v in model.trainable_variables],
        "inputs": entry["inputs"] if same_inputs(inputs, entry["inputs"]) else inputs,
    }
    if not trace.var_names:  # nothing recorded per variable: nothing to compare
        got["variables"] = []
    if got != expected:
        diff = {k: f"recorded {expected[k]!r}, this test {got[k]!r}" for k in expected if expected[k] != got[k]}
        raise RuntimeError(
            f"{where}: the test does not train what was recorded ({diff}); re-record: "
            "STABILITY_REWRITE_RECORDINGS=1 python -m pytest tests/plugin/test_recorded_runs.py"
        )
    if progress is not None:
        progress(trace.steps)
    return result


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    groups = config.getoption("recorded_runs")
    record_to = config.getoption("record_runs_to")
    if groups is None and record_to is None:
        return
    from pytest_stability.training import engine

    directory = config.getoption("recorded_runs_from")
    state = _Replay(
        [g for g in (groups or "").split(",") if g],
        Path(directory) if directory else RECORDINGS_DIR,
        Path(record_to) if record_to else None,
        engine.train,
    )
    engine.train = state.train
    config.pluginmanager.register(state, "recorded-runs")


def pythonpath_with_this_directory() -> str:
    """PYTHONPATH for a subprocess or xdist worker that loads this module with ``-p recorded_runs``."""
    return os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
