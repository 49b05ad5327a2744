"""pytest11 entry point: options, marker, fixture, and hook wiring.  Only delegates.

Loaded by pytest on every run of every project that installs pytest-stability,
so it imports nothing heavy: TensorFlow is imported by the ``stability``
fixture, and only by a test that uses it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from . import hookspecs
from .fixtures import SeededFixtures, make_fixture
from .integrations import baseline_gate, ci
from .integrations.session import (
    PLOTS_MISSING_MESSAGE,
    RECORD_KEY,
    SESSION_KEY,
    StabilitySession,
    check_outputs,
    is_stability_item,
    is_worker,
    runs_no_test,
)
from .marker import MARKER_NAME, spec_for_node, validate_markers
from .options import (
    BASELINE_STRICT_HELP,
    MARKER_SIGNATURE,
    OPTIONS,
    PATH_SETTINGS,
    REPLAY_BATCH_HELP,
    REPLAY_HELP,
    OptionValueError,
    RunSpec,
    cli_name,
    ini_name,
    parse_replay,
    resolve_config_defaults,
    resolve_run_files,
    usage_message,
)
from .record import FAILED_AFTER, NO_TRAIN, STABLE, StabilityRecord
from .report.junit import junit_properties

if TYPE_CHECKING:
    from .fixtures import Stability

T = TypeVar("T")

DEFAULTS_KEY = pytest.StashKey[RunSpec]()
CLI_VALUES_KEY = pytest.StashKey[dict[str, Any]]()
#: "ExceptionType: message" of a stability test's failed call phase (for its record's ``error``)
CALL_FAILURE_KEY = pytest.StashKey[str]()
#: why the test skipped itself while it ran (``pytest.skip()``, ``pytest.importorskip()`` in its body)
CALL_SKIP_KEY = pytest.StashKey[str]()
NEVER_TRAINED = "is marked stable_training but never called stability.fit(model, x, y)"
NEVER_TRAINED_UNMARKED = "uses the `stability` fixture but never called stability.fit(model, x, y)"
#: a test that uses the `stability` fixture and was not marked: the marker was added at collection
AUTO_MARKED_KEY = pytest.StashKey[bool]()
#: the global random states as the stability test's setup left them (see pytest_pyfunc_call)
SEEDED_STATE_KEY = pytest.StashKey[dict[str, object]]()

MARKER_HELP = (
    MARKER_SIGNATURE + ": train a Keras model through the `stability` fixture for `steps` optimizer steps "
    "and fail the test on a loss spike, NaN/Inf, unbounded gradient norms or a rising validation loss. "
    "Every setting can also be given as --stability-NAME or the ini key stability_NAME."
)


def _replay(text: str) -> int:
    problem = None
    try:
        return parse_replay(text)
    except OptionValueError as exc:
        problem = str(exc)
    raise pytest.UsageError(problem)  # outside the except block: the message once, not chained


def _replay_batch(text: str) -> int:
    problem = None
    try:
        return parse_replay(text, "--stability-replay-batch", "a step")
    except OptionValueError as exc:
        problem = str(exc)
    raise pytest.UsageError(problem)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stability", "training-stability checks (pytest-stability)")
    for opt in OPTIONS:
        default = ",".join(opt.default) if isinstance(opt.default, tuple) else opt.default
        group.addoption(
            opt.cli,
            dest="stability_" + opt.name,
            default=None,
            metavar=opt.name.upper(),
            help=f"{opt.help}; {opt.expects} (default: {default}; ini: {opt.ini})",
        )
        parser.addini(opt.ini, help=f"{opt.help} (default: {default})", default=None)
    for name, metavar, help_text in PATH_SETTINGS:
        group.addoption(
            cli_name(name),
            dest="stability_" + name,
            default=None,
            metavar=metavar,
            help=f"{help_text} (ini: {ini_name(name)})",
        )
        parser.addini(ini_name(name), help=help_text + " (a relative path is relative to the rootdir)", default=None)
    group.addoption(
        cli_name("baseline_strict"),
        dest="stability_baseline_strict",
        action="store_true",
        default=None,
        help=f"{BASELINE_STRICT_HELP} (ini: {ini_name('baseline_strict')})",
    )
    parser.addini(ini_name("baseline_strict"), help=BASELINE_STRICT_HELP, type="bool", default=False)
    group.addoption(
        "--stability-replay", dest="stability_replay", type=_replay, default=None, metavar="SEED", help=REPLAY_HELP
    )
    group.addoption(
        "--stability-replay-batch",
        dest="stability_replay_batch",
        type=_replay_batch,
        default=None,
        metavar="STEP",
        help=REPLAY_BATCH_HELP,
    )
    ci.addoption(parser, group)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    cli_raw = {opt.name: config.getoption("stability_" + opt.name) for opt in OPTIONS}
    problems: list[str] = []
    try:
        defaults = resolve_config_defaults(lambda name: cli_raw[name], config.getini)
    except OptionValueError as exc:
        defaults = None
        problems.extend(str(exc).splitlines())
    files, found = resolve_run_files(
        lambda name: config.getoption("stability_" + name),
        config.getini,
        invocation_dir=config.invocation_params.dir,
        rootdir=config.rootpath,
    )
    problems.extend(found)
    baseline, found = baseline_gate.load_for(files)
    problems.extend(found)
    previous, found = check_outputs(files, worker=is_worker(config))
    problems.extend(found)
    ci_settings, ci_problems = ci.prepare(config)
    problems.extend(ci_problems)
    # One usage error (exit 4) for every bad setting of the run.
    if problems == [PLOTS_MISSING_MESSAGE]:
        raise pytest.UsageError(PLOTS_MISSING_MESSAGE)
    if problems:
        raise pytest.UsageError(usage_message(problems))
    assert defaults is not None  # settings that do not parse are among the problems
    config.stash[DEFAULTS_KEY] = defaults
    config.stash[CLI_VALUES_KEY] = {name: getattr(defaults, name) for name, raw in cli_raw.items() if raw is not None}
    session = StabilitySession(config, files, previous)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "stability-session")
    if baseline is not None:
        gate = baseline_gate.BaselineGate(baseline, files, defaults)
        config.stash[baseline_gate.GATE_KEY] = gate
        config.pluginmanager.register(gate, "stability-baseline-gate")
    ci.register(config, ci_settings, plots_dir=files.plots)
    config.pluginmanager.register(SeededFixtures(defaults), "stability-seeded-fixtures")
    if not is_worker(config) and config.pluginmanager.hasplugin("html"):
        # pytest-html is installed: each stability test's panel goes into its report too
        from .integrations import html_panels

        html_panels.register(config)


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before any conftest.py is imported (one may import TensorFlow at its top):
    # an xdist worker's GPU environment (--stability-xdist-gpus, --stability-gpu-lock).
    ci.early_worker_setup(early_config)


def pytest_unconfigure(config: pytest.Config) -> None:
    keys: tuple[pytest.StashKey[Any], ...] = (SESSION_KEY, baseline_gate.GATE_KEY)
    for key in keys:
        plugin = config.stash.get(key, None)
        if plugin is not None and config.pluginmanager.is_registered(plugin):
            config.pluginmanager.unregister(plugin)
    seeded = config.pluginmanager.get_plugin("stability-seeded-fixtures")
    if seeded is not None:
        config.pluginmanager.unregister(seeded)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``stable_training`` each test that uses the `stability` fixture without the marker, before pytest's
    own selection by marker: ``-m stable_training`` then selects every stability test, and ``-m "not
    stable_training"`` leaves every one out (a quick local run), marked or not.  The marker added has no settings:
    the test runs with the defaults as before."""
    for item in items:
        if item.get_closest_marker(MARKER_NAME) is None and "stability" in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER_NAME)
            item.stash[AUTO_MARKED_KEY] = True


def _forget(item: pytest.Item, key: pytest.StashKey[T]) -> None:
    if key in item.stash:
        del item.stash[key]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A test run again in the same session (pytest-rerunfailures' --reruns) starts from nothing of its earlier
    # attempt: the record, the failure and the skip of that attempt would otherwise be the new one's.
    _forget(item, RECORD_KEY)
    _forget(item, CALL_FAILURE_KEY)
    _forget(item, CALL_SKIP_KEY)
    _forget(item, SEEDED_STATE_KEY)
    # A bad stable_training marker errors its own test at setup, with a one-line message, and every other
    # test still runs (raised at collection, it would take the whole module down with it).
    if item.get_closest_marker(MARKER_NAME) is None:
        return
    problem = validate_markers(item, item.config.stash[DEFAULTS_KEY])
    if problem is None and "stability" not in getattr(item, "fixturenames", ()):
        problem = (
            "is marked stable_training but does not use the `stability` fixture: add a `stability` "
            "argument and call stability.fit(model, x, y)"
        )
    if problem:
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)


@pytest.fixture
def stability(request: pytest.FixtureRequest) -> Iterator[Stability]:
    """Train a compiled Keras model and fail the test if training is unstable.

    ``stability.fit(model, x, y, validation_data=(xv, yv))`` trains for the
    marker's ``steps`` and returns a report; see ``pytest --markers`` for the
    settings of ``@pytest.mark.stable_training``.
    """
    config = request.config

    def spec_for(node: Any) -> tuple[RunSpec, dict[str, Any]]:
        return spec_for_node(node, config.stash[DEFAULTS_KEY]), config.stash[CLI_VALUES_KEY]

    yield from make_fixture(request, spec_for)


def pytest_report_header(config: pytest.Config) -> str | None:
    defaults = config.stash.get(DEFAULTS_KEY, None)
    if defaults is None or config.get_verbosity() < 0:
        return None
    return (
        f"stability: steps={defaults.steps} seed={defaults.seed} device={defaults.device} "
        f"(replay a failure with the --stability-replay=SEED it prints)"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # the random states the fixture seeded, taken before any other plugin's pytest_runtest_call runs (a wrapper's
    # code before its yield runs before every plain hook; tryfirst: before the other wrappers' too)
    if "stability" in getattr(item, "funcargs", {}):
        from .training.isolation import random_state

        item.stash[SEEDED_STATE_KEY] = random_state()
    result = yield
    # Reached only when the test body returned normally.
    if item.get_closest_marker(MARKER_NAME) is not None:
        fixture = getattr(item, "funcargs", {}).get("stability")
        if fixture is not None and not fixture.reports and fixture.error is None:
            never = NEVER_TRAINED_UNMARKED if item.stash.get(AUTO_MARKED_KEY, False) else NEVER_TRAINED
            pytest.fail(f"{item.nodeid} {never}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """The test body starts from the random states the `stability` fixture seeded.

    A plugin that reseeds the global generators for each test's call phase (pytest-randomly's
    ``pytest_runtest_call`` seeds Python's and numpy's with its own per-session seed) would otherwise choose the
    initial weights of the model the test builds (Keras draws an unseeded layer's seed from Python's
    generator), and the same stability seed would train another model in each session.  The states taken when
    the call phase began, before any plugin's ``pytest_runtest_call``, are put back right before the body runs."""
    seeded = pyfuncitem.stash.get(SEEDED_STATE_KEY, None)
    if seeded is not None:
        from .training.isolation import set_random_state

        del pyfuncitem.stash[SEEDED_STATE_KEY]
        set_random_state(seeded)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """The plugin's one report wrapper: the test's record rides on its teardown report.

    Worker side (or a plain run); the session collects on the controller from
    ``pytest_runtest_logreport``.  Every report of a stability test is flagged
    (the xdist controller collects no items), and the teardown report gets the
    record the fixture left, completed with the baseline comparisons and with
    what failed the test when its training was stable.
    """
    report = yield
    if not is_stability_item(item):
        return report
    # A builtin: it travels with the report to the xdist controller.
    report.stability_marked = True
    if call.when == "call" and report.failed and call.excinfo is not None:
        failure = call.excinfo.exconly()
        if not failure.endswith(NEVER_TRAINED):  # the record says so already
            item.stash[CALL_FAILURE_KEY] = failure
    if call.when == "call" and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        item.stash[CALL_SKIP_KEY] = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    if call.when == "teardown" and not runs_no_test(item.config):  # --setup-only sets the fixture up: no test ran
        record = item.stash.get(RECORD_KEY, None)
        if record is not None:
            record = _complete(item, record)
            item.stash[RECORD_KEY] = record
            # Builtins on the report travel to the xdist controller with it (TestReport keeps extra attributes).
            report.stability = record.to_dict()
            # Flat key metrics as test properties, so --junitxml shows them.
            report.user_properties.extend(junit_properties(record))
            worst = record.worst_baseline
            if worst is not None:
                report.user_properties.append(("stability_baseline", worst))
    return report


def _complete(item: pytest.Item, record: StabilityRecord) -> StabilityRecord:
    """The fixture's record plus the baseline comparisons and what failed a test whose training was stable."""
    gate = item.config.stash.get(baseline_gate.GATE_KEY, None)
    comparisons = gate.pop_comparisons(item.nodeid) if gate is not None else []
    if comparisons:
        # a call that ended before its run finished has no comparison: the calls past the last one are kept
        calls = tuple(replace(c, baseline=cmp) for c, cmp in zip(record.calls, comparisons, strict=False))
        record = record.with_(calls=calls + record.calls[len(calls) :])
    failure = item.stash.get(CALL_FAILURE_KEY, None)
    if failure is not None and record.error is None and record.verdict == STABLE and not record.regressed:
        record = record.with_(error=f"{FAILED_AFTER}: {failure}")
    elif failure is not None and record.error == NO_TRAIN:
        record = record.with_(error=f"{NO_TRAIN}: {failure}")
    skipped = item.stash.get(CALL_SKIP_KEY, None)
    if skipped is not None and record.error == NO_TRAIN:  # it skipped itself before training: a skip, no error
        record = StabilityRecord.skipped(record.nodeid, skipped).with_(settings=record.settings)
    return record
