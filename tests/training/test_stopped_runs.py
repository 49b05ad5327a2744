"""A run stopped from outside ``fit`` (a timeout's signal, ``pytest.fail()`` or ``pytest.skip()`` in a callback),
on each backend: the exception ends the test unchanged, and the report says how far training got and shows the
curves of the steps recorded before it (the steps done are read back after the exception, which JAX's donated
buffers and PyTorch's read after each call make backend-dependent)."""

from __future__ import annotations

import json

import pytest

STOPPED_FROM_OUTSIDE = """
import signal


class FailsAtEpoch1(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            pytest.fail("accuracy too low at epoch 1")


class SkipsAtEpoch1(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            pytest.skip("no GPU memory left")


@pytest.mark.stable_training(steps=40)
def test_fails_in_a_callback(stability):
    stability.fit(build(), X, Y, batch_size=32, callbacks=[FailsAtEpoch1()])


@pytest.mark.stable_training(steps=40)
def test_skips_in_a_callback(stability):
    stability.fit(build(), X, Y, batch_size=32, callbacks=[SkipsAtEpoch1()])


class ArmsTheTimer(keras.callbacks.Callback):
    \"\"\"Starts the timer once training runs (its first epoch ended), however long tracing took.\"\"\"

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            # again every 0.5 s until the test disarms it: a handler's exception can still be lost (inside an
            # object's finaliser, say, in any fit); once, on PyTorch, the run trained on for minutes
            signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)


@pytest.mark.stable_training(steps=100000)
def test_timed_out(stability):
    # what pytest-timeout's default method does: a SIGALRM handler that fails the test wherever it runs
    def handler(signum, frame):
        pytest.fail("Timeout (>1.0s) from the test's timer")

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        stability.fit(build(), X, Y, batch_size=32, callbacks=[ArmsTheTimer()])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="a POSIX interval timer")
def test_a_run_stopped_from_outside_fit_says_by_what_where_and_after_how_many_steps(pytester, tiny_problem):
    """``pytest.fail()`` in a callback, or a timeout's signal handler (pytest-timeout) while ``fit`` runs: the
    exception ends the test unchanged, and the row and the JSON say what stopped training, where and after how
    many of the planned steps (they said "the test did not complete a stability.fit() call"), with the curves
    of the steps recorded before it (a run no check judged: its verdict is error, and it is no baseline); a
    ``pytest.skip()`` there is a skip.  ``pytest_stability_run_stopped`` gets the stopped call (TensorBoard's
    writer is one); an implementation that raises is a warning, and the exception that stopped training still
    ends the test."""
    pytester.makepyfile(test_stopped=tiny_problem + STOPPED_FROM_OUTSIDE)
    pytester.makeconftest(
        """
import json


def pytest_stability_run_stopped(nodeid, report, error):
    with open("stopped.jsonl", "a") as out:
        out.write(json.dumps([nodeid, [r.verdict for r in report.runs], report.runs[-1].trace.steps, error]) + "\\n")
    if nodeid.endswith("test_fails_in_a_callback"):
        raise RuntimeError("the user's logger is down")
"""
    )
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "--stability-report=r.json",
        "--stability-save-baseline=b.json",
        "--stability-tensorboard=tb",
    )
    result.assert_outcomes(failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*StabilityWarning: pytest-stability: a pytest_stability_run_stopped implementation raised RuntimeError: "
            "the user's logger is down (for test_stopped.py::test_fails_in_a_callback: training raised Failed: *"
        ]
    )
    stopped = [json.loads(line) for line in (pytester.path / "stopped.jsonl").read_text().splitlines()]
    assert [(n.rsplit("::", 1)[1], v) for n, v, _, _ in stopped] == [
        ("test_fails_in_a_callback", ["error"]),
        ("test_timed_out", ["error"]),
    ]
    for (_, _, steps, error), planned in zip(stopped, (40, 100000), strict=True):
        assert error.endswith(f"after {steps} of {planned} steps)"), (steps, error)
    for name in ("test_fails_in_a_callback", "test_timed_out"):  # its events, as a call's that finished
        assert list((pytester.path / "tb" / f"test_stopped.py__{name}-seed0").glob("events.out.tfevents.*")), name
    assert not (pytester.path / "tb" / "test_stopped.py__test_skips_in_a_callback-seed0").exists()
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "r.json").read_text())["tests"]}
    assert [(t["outcome"], t["verdict"]) for t in tests.values()] == [
        ("failed", "error"),
        ("skipped", "skipped"),
        ("failed", "error"),
    ]
    timed_out = tests["test_stopped.py::test_timed_out"]["error"]
    done = int(timed_out.rsplit("after ", 1)[1].split(" of ")[0])
    assert 8 <= done < 100000, timed_out  # (the timer starts after the first epoch's 8 steps)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_stopped.py::test_fails_in_a_callback  steps=16/40 seed=0 *  loss * |g|max *",
            "      error: training raised Failed: accuracy too low at epoch 1 (in FailsAtEpoch1.on_epoch_end, "
            "after 16 of 40 steps)",
            "SKIP  test_stopped.py::test_skips_in_a_callback  Skipped: no GPU memory left",
            f"ERROR test_stopped.py::test_timed_out  steps={done}/100000 seed=0 *",
            "      error: training raised Failed: Timeout (>1.0s) from the test's timer "
            f"(during fit, after {done} of 100000 steps)",
            "*stability baseline not saved to *b.json: no stability test trained in this run*",
        ]
    )
    for name, steps, planned in (("test_fails_in_a_callback", 16, 40), ("test_timed_out", done, 100000)):
        test = tests[f"test_stopped.py::{name}"]
        assert (test["steps_run"], test["steps_planned"], test["failed_seeds"]) == (steps, planned, [0])
        ((call,),) = [test["calls"]]
        ((run,),) = [call["runs"]]
        assert (call["verdict"], run["verdict"], run["checks"], run["findings"]) == ("error", "error", [], [])
        assert run["replay"].startswith(f"pytest test_stopped.py::{name} --stability-replay=0")
        loss = run["curves"]["loss"]
        # from the first step to the last recorded (a long curve is downsampled to a few hundred points, which
        # keep both ends: the first bin's extreme was step 1 in a JAX run, and the curve then started there)
        assert loss["step"][0] == 0 and loss["step"][-1] == steps - 1, (loss["step"][:3], loss["step"][-3:])
        assert all(isinstance(v, float) and 0 <= v < 10 for v in loss["value"]), loss["value"][:5]  # finite
        assert len(run["curves"]["grad_norm"]["step"]) == len(loss["step"])
    assert not (pytester.path / "b.json").exists()
