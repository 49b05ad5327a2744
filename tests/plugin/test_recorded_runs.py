"""The training the report tests replay (recorded_runs.py, recorded/GROUP.json) is what training records now.

The shared scenarios (the group most replaying tests read, with every kind of run: validation, divergence, a crash
after training, NaN from step 0, two seeds) are trained afresh in a pytester run that records what the engine
returns.  Replayed, the fresh recording gives the same JSON report entries as that training (apart from timings):
replaying changes nothing a report shows.  It must match the committed recording in everything the replaying
tests read: the same tests, train() calls and seeds; the same result and trace fields, with the same array
shapes, the same steps recorded and the same non-finite values where they are; the same facts about the run
(model, optimizer, backend, ...).  Numbers may move a little with another TensorFlow or CPU (5 %); more than
that, or any other difference, fails and names it.  Every other group's runs must have the fields a fresh run
has.  To re-record every group (each trained afresh and checked the same way) after a change to the engine, the
trace or a recorded test:

    STABILITY_REWRITE_RECORDINGS=1 python -m pytest tests/plugin/test_recorded_runs.py
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import numpy as np
from recorded_runs import RECORDINGS_DIR, load_group, result_from_dict

#: relative tolerance for recorded numbers (another TensorFlow version or CPU rounds differently)
RTOL = 0.05
#: fields that differ from run to run
TIMINGS = {"wall_time"}


def _differences(fresh: Any, stored: Any, where: str) -> list[str]:
    """Where ``fresh`` and ``stored`` (builtins or numpy arrays) differ beyond :data:`RTOL`."""
    if isinstance(stored, np.ndarray) or isinstance(fresh, np.ndarray):
        if not (isinstance(stored, np.ndarray) and isinstance(fresh, np.ndarray)):
            return [f"{where}: {type(fresh).__name__} now, {type(stored).__name__} recorded"]
        if (fresh.shape, fresh.dtype) != (stored.shape, stored.dtype):
            return [f"{where}: shape {fresh.shape} {fresh.dtype} now, {stored.shape} {stored.dtype} recorded"]
        if fresh.dtype.kind != "f":
            same = np.array_equal(fresh, stored)
            return [] if same else [f"{where}: {fresh.tolist()} now, {stored.tolist()} recorded"]
        if not np.array_equal(np.isfinite(fresh), np.isfinite(stored)):
            return [
                f"{where}: non-finite at {np.flatnonzero(~np.isfinite(fresh)).tolist()} now, at "
                f"{np.flatnonzero(~np.isfinite(stored)).tolist()} recorded"
            ]
        ok = np.isclose(fresh, stored, rtol=RTOL, atol=1e-12, equal_nan=True) | (fresh == stored)
        return [] if ok.all() else [f"{where}: {int((~ok).sum())} of {ok.size} values differ by more than {RTOL:.0%}"]
    if isinstance(stored, dict) and isinstance(fresh, dict):
        if set(fresh) != set(stored):
            return [
                f"{where}: keys {sorted(set(fresh) - set(stored))} only now, {sorted(set(stored) - set(fresh))} "
                "only recorded"
            ]
        return [
            d for k in sorted(stored) if k not in TIMINGS for d in _differences(fresh[k], stored[k], f"{where}.{k}")
        ]
    if isinstance(stored, (list, tuple)) and isinstance(fresh, (list, tuple)):
        if len(fresh) != len(stored):
            return [f"{where}: {len(fresh)} items now, {len(stored)} recorded"]
        return [
            d for i, (a, b) in enumerate(zip(fresh, stored, strict=True)) for d in _differences(a, b, f"{where}[{i}]")
        ]
    if isinstance(stored, float) and isinstance(fresh, float) and not isinstance(stored, bool):
        same = (
            fresh == stored
            or (math.isnan(fresh) and math.isnan(stored))
            or math.isclose(fresh, stored, rel_tol=RTOL, abs_tol=1e-12)
        )
        return [] if same else [f"{where}: {fresh} now, {stored} recorded"]
    return [] if fresh == stored and type(fresh) is type(stored) else [f"{where}: {fresh!r} now, {stored!r} recorded"]


def _runs(recording: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """test -> call -> seed -> the decoded RunResult's fields (trace fields flattened in as ``trace.NAME``) and the
    recorded inputs."""
    out: dict[str, Any] = {}
    for test, calls in recording.items():
        out[test] = []
        for call in calls:
            seeds = {}
            for seed, data in call.items():
                result = result_from_dict(data)
                fields = {k: v for k, v in vars(result).items() if k not in ("trace", "initial_state")}
                fields.update({f"trace.{k}": v for k, v in vars(result.trace).items()})
                fields["inputs"] = data["inputs"]
                seeds[seed] = fields
            out[test].append(seeds)
    return out


def test_differences_names_what_moved():
    a = {"loss": np.array([1.0, np.nan]), "steps": 2, "info": {"model": "mlp", "lr": 0.01}}
    assert _differences(a, a, "r") == []
    assert _differences({**a, "loss": np.array([1.01, np.nan])}, a, "r") == []  # within 5 %
    assert _differences({**a, "loss": np.array([2.0, np.nan])}, a, "r") == [
        "r.loss: 1 of 2 values differ by more than 5%"
    ]
    assert _differences({**a, "loss": np.array([1.0, 1.0])}, a, "r") == [
        "r.loss: non-finite at [] now, at [1] recorded"
    ]
    assert _differences({**a, "loss": np.array([1.0])}, a, "r") == [
        "r.loss: shape (1,) float64 now, (2,) float64 recorded"
    ]
    assert _differences({**a, "info": {"model": "mlp_2", "lr": 0.01}}, a, "r") == [
        "r.info.model: 'mlp_2' now, 'mlp' recorded"
    ]
    assert _differences({**a, "extra": 1}, a, "r") == ["r: keys ['extra'] only now, [] only recorded"]
    assert _differences({"x": float("nan")}, {"x": float("nan")}, "r") == []
    assert _differences({"x": 1.0}, {"x": float("nan")}, "r") == ["r.x: 1.0 now, nan recorded"]


def _structure(recording: dict[str, list[dict[str, Any]]]) -> set[tuple[str, ...]]:
    """The field names of every run: the result's, its trace's and its trace.info's."""
    runs = [run for calls in recording.values() for call in calls for run in call.values()]
    return (
        {("result", *sorted(run)) for run in runs}
        | {("trace", *sorted(run["trace"])) for run in runs}
        | {("info", *sorted(run["trace"]["info"])) for run in runs}
    )


def test_recordings_match_fresh_training(pytester, named_problem, recorded, gating):
    rewrite = bool(os.environ.get("STABILITY_REWRITE_RECORDINGS"))
    # every group when rewriting; else the shared scenarios (most replayed tests read them, and every kind of run
    # is in them: validation, divergence, a crash after training, NaN from step 0, two seeds, a parametrized test)
    groups = sorted(recorded.groups) if rewrite else ["scenarios"]
    for group in groups:
        # test_recorded_GROUP.py: a name no module of tests/plugin has (the test process imported those)
        pytester.makepyfile(**{f"test_recorded_{group}": named_problem + recorded.groups[group]})
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "-p", "recorded_runs", "--record-runs-to=fresh", "--stability-report=trained.json"
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    # unstable by design: scenarios' test_diverges and test_crashes, gate_nan's test_a, seeds' test_three_seeds
    result.assert_outcomes(**({"passed": 20, "failed": 4} if rewrite else {"passed": 5, "failed": 2}))
    fresh = pytester.path / "fresh"
    assert sorted(p.stem for p in fresh.iterdir()) == groups

    # Replayed, the fresh recordings give the report the training gave, apart from timings.
    trained = gating.tests_by_id(gating.load_strict(pytester.path / "trained.json"))
    for group in groups:
        result = pytester.runpytest(
            f"test_recorded_{group}.py",
            "-p",
            "no:cacheprovider",
            *recorded.args(group),
            "--recorded-runs-from=fresh",
            f"--stability-report={group}.json",
        )
        result.stdout.fnmatch_lines(["recorded runs: * replayed, 0 trained"])
        replayed = gating.tests_by_id(gating.load_strict(pytester.path / f"{group}.json"))
        assert sorted(replayed) == sorted(t for t in trained if t.startswith(f"test_recorded_{group}.py::"))
        for nodeid, entry in replayed.items():
            assert gating.without_timings(entry) == gating.without_timings(trained[nodeid]), nodeid

    if rewrite:
        for group in groups:
            shutil.copyfile(fresh / f"{group}.json", RECORDINGS_DIR / f"{group}.json")
    assert sorted(p.stem for p in RECORDINGS_DIR.glob("*.json")) == sorted(recorded.groups)  # none left over
    stale = [
        d for group in groups for d in _differences(_runs(load_group(group, fresh)), _runs(load_group(group)), group)
    ]
    # the groups not trained here: runs with the fields a run has now
    now = set().union(*(_structure(load_group(group, fresh)) for group in groups))
    stale += [
        f"{group}: a run whose {fields[0]} has the fields {list(fields[1:])}, which no fresh run has"
        for group in sorted(recorded.groups)
        for fields in sorted(_structure(load_group(group)) - now)
    ]
    assert stale == [], (
        "the recorded runs are stale; re-record them with STABILITY_REWRITE_RECORDINGS=1 "
        "python -m pytest tests/plugin/test_recorded_runs.py\n" + "\n".join(stale)
    )
