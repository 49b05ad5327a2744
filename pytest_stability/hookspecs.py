"""Hook specifications of pytest-stability (``pytest_stability_*``).

Implement them in a ``conftest.py`` or a plugin.  Every hook is called with
keyword arguments; an implementation may accept fewer arguments than the spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .report.runs import StabilityReport


@pytest.hookspec
def pytest_stability_run_finished(nodeid: str, report: StabilityReport) -> None:
    """Called after each ``stability.train()`` call that trained, before its verdict is raised.

    Called once per ``train()`` call, after every seed of it has trained, stable
    or not (also with ``check=False``), and before ``train()`` raises for an
    unstable run; not called when ``train()`` rejected its model or data.  It
    runs in the process that trains the test: under pytest-xdist, a worker.
    Raising fails the test.  The built-in baseline comparison
    (``--stability-baseline``) is an implementation of this hook that fails a
    test that regressed; it is registered ``trylast``, so your implementation
    sees every run, also one that regressed.

    Args:
        nodeid: the test's node id.
        report: the :class:`~pytest_stability.report.StabilityReport`
            (one run per seed: trace as numpy arrays, findings, summary).

    Returns:
        Nothing; return values are ignored.

    Example (conftest.py)::

        def pytest_stability_run_finished(nodeid, report):
            for run in report.runs:
                np.save(f"traces/{nodeid.replace('/', '_')}-{run.seed}.npy", run.trace.loss)
    """


@pytest.hookspec
def pytest_stability_run_stopped(nodeid: str, report: StabilityReport, error: str) -> None:
    """Called when an exception stopped a ``stability.train()`` call inside ``fit`` after it recorded steps.

    The exception is the user's own (a callback's, the model's code) or one from outside ``fit``: Ctrl-C,
    pytest-timeout, ``pytest.fail()`` in a callback (not ``pytest.skip()``, a skip).  It is called while that
    exception is on its way to the test, which it then ends unchanged; ``pytest_stability_run_finished`` is not
    called for such a call.  The last run of ``report`` is the stopped one: its trace holds the steps recorded
    before the exception, no check judged them, and its verdict is ``error`` (``run.stopped`` says what stopped
    it); the runs before it are the call's seeds that completed.  An exception raised here is shown as a
    :class:`~pytest_stability.StabilityWarning` and does not replace the one that stopped training.  The
    built-in TensorBoard writer (``--stability-tensorboard``) implements it.

    Args:
        nodeid: the test's node id.
        report: the :class:`~pytest_stability.report.StabilityReport` of the call so far.
        error: what stopped training, where and after how many steps (the report's ``error``).

    Returns:
        Nothing; return values are ignored.

    Example (conftest.py)::

        def pytest_stability_run_stopped(nodeid, report, error):
            stopped = report.runs[-1]
            print(f"{nodeid}: {error}; loss so far {stopped.trace.loss[-5:]}")
    """


@pytest.hookspec(firstresult=True)
def pytest_stability_generate_json(config: pytest.Config, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Build the JSON report document from the per-test records.

    Called only with ``--stability-report`` (or ini ``stability_report``), and
    only in the controller process (never in a pytest-xdist worker), each time
    the report is written:

    * while the run goes on, after the result of a stability test arrives (its
      teardown, or its setup when it was skipped or errored); such a write is
      skipped when the previous one was recent relative to what writing costs,
      so that writing takes at most ~10% of the run's time.  The default
      document then has ``"complete": false`` and ``"finished_at"`` and
      ``"exitstatus"`` null;
    * once at the end of the session, also after Ctrl-C (``"interrupted":
      true``): ``"complete": true``.

    Args:
        config: the pytest config.
        records: one builtins-only dict per stability test so far, sorted by
            node id: :meth:`pytest_stability.record.StabilityRecord.to_dict`
            (``nodeid``, ``verdict``, ``outcome``, ``error``, ``skip_reason``,
            ``settings``, ``calls``, ``worker``).

    Returns:
        A dict to write instead of the default document (the first non-None
        result wins; the default implementation is registered ``trylast``),
        or None.  ``pytest_stability_update_json`` then sees that dict.

    Example (conftest.py)::

        def pytest_stability_generate_json(config, records):
            return {"verdicts": {r["nodeid"]: r["verdict"] for r in records}}
    """


@pytest.hookspec
def pytest_stability_update_json(config: pytest.Config, document: dict[str, Any]) -> None:
    """Mutate the JSON report document in place before it is written.

    Called right after ``pytest_stability_generate_json``, every time the
    report is written (see there: after stability tests with
    ``document["complete"] == False``, and at the end of the session with
    ``document["complete"] == True``).  numpy scalars and NaN/Inf you add are
    encoded like the plugin's own values (NaN as ``"nan"``).  A value JSON
    cannot hold, or an exception raised here, leaves the file as it was (it
    is written atomically) and, at the end, fails the run with a message
    naming the problem.

    Args:
        config: the pytest config.
        document: the document about to be written.

    Returns:
        Nothing; change ``document`` in place.

    Example (conftest.py)::

        def pytest_stability_update_json(document):
            document["commit"] = os.environ.get("GITHUB_SHA")
    """
