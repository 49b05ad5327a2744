"""pytest11 entry point: options, marker, fixture, and hook wiring.  Only delegates.

Loaded by pytest on every run of every project that installs pytest-stability,
so it imports nothing heavy: TensorFlow is imported by the ``stability``
fixture, and only by a test that uses it.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import ci
from . import hookspecs
from . import gating
from .fixtures import RECORD_KEY, make_fixture
from .marker import MARKER_NAME, spec_for_node, validate_markers
from .options import MARKER_SIGNATURE, OPTIONS, OptionValueError, resolve_config_defaults, usage_message
from .report.junit import junit_properties
from .session import SESSION_KEY, StabilitySession

DEFAULTS_KEY = pytest.StashKey[Any]()
CLI_VALUES_KEY = pytest.StashKey[dict]()

MARKER_HELP = (
    MARKER_SIGNATURE + ": train a Keras model through the `stability` fixture for `steps` optimizer steps "
    "and fail the test on a loss spike, NaN/Inf, unbounded gradient norms or a rising validation loss. "
    "Every setting can also be given as --stability-NAME or the ini key stability_NAME."
)


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"--stability-replay expects a seed (an int >= 0), received {text!r}") from None
    if value < 0:
        raise pytest.UsageError(f"--stability-replay expects a seed (an int >= 0), received {text!r}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stability", "training-stability checks (pytest-stability)")
    for opt in OPTIONS:
        default = ",".join(opt.default) if isinstance(opt.default, tuple) else opt.default
        group.addoption(opt.cli, dest="stability_" + opt.name, default=None, metavar=opt.name.upper(),
                        help=f"{opt.help}; {opt.expects} (default: {default}; ini: {opt.ini})")
        parser.addini(opt.ini, help=f"{opt.help} (default: {default})", default=None)
    gating.addoption(parser, group)
    ci.addoption(parser, group)
    group.addoption("--stability-replay", dest="stability_replay", type=_nonneg_int, default=None, metavar="SEED",
                    help="re-run stability tests with exactly this seed's run (printed in each failure)")


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
    prepared = gating.prepare(config)
    problems.extend(prepared.problems)
    ci_settings, ci_problems = ci.prepare(config)
    problems.extend(ci_problems)
    # One usage error (exit 4) for every bad setting of the run.
    if problems == [gating.PLOTS_MISSING_MESSAGE]:
        raise pytest.UsageError(gating.PLOTS_MISSING_MESSAGE)
    if problems:
        raise pytest.UsageError(usage_message(problems))
    config.stash[DEFAULTS_KEY] = defaults
    config.stash[CLI_VALUES_KEY] = {name: defaults.values[name] for name, raw in cli_raw.items() if raw is not None}
    session = StabilitySession(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "stability-session")
    gating.register(config, prepared, defaults)
    ci.register(config, ci_settings, plots_dir=prepared.settings.plots)


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Before any conftest.py is imported (one may import TensorFlow at its top):
    # an xdist worker's GPU environment (--stability-xdist-gpus, --stability-gpu-lock).
    ci.early_worker_setup(early_config)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and config.pluginmanager.is_registered(session):
        config.pluginmanager.unregister(session)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Validate at collection, like pytest does for bad parametrize values:
    # "ERROR collecting ..." with a one-line message, never an INTERNALERROR.
    if metafunc.definition.get_closest_marker(MARKER_NAME) is None:
        return
    problem = validate_markers(metafunc.definition, metafunc.config.stash[DEFAULTS_KEY])
    if problem is None and "stability" not in metafunc.fixturenames:
        problem = ("is marked stable_training but does not use the `stability` fixture: add a `stability` "
                   "argument and call stability.train(model, x, y)")
    if problem:
        pytest.fail(f"{metafunc.definition.nodeid}: {problem}", pytrace=False)


@pytest.fixture
def stability(request: pytest.FixtureRequest) -> Any:
    """Train a compiled Keras model and fail the test if training is unstable.

    ``stability.train(model, x, y, validation_data=(xv, yv))`` trains for the
    marker's ``steps`` and returns a report; see ``pytest --markers`` for the
    settings of ``@pytest.mark.stable_training``.
    """
    config = request.config

    def spec_for(node: Any) -> Any:
        return spec_for_node(node, config.stash[DEFAULTS_KEY]), config.stash[CLI_VALUES_KEY]

    yield from make_fixture(request, spec_for)


def pytest_report_header(config: pytest.Config) -> str | None:
    defaults = config.stash.get(DEFAULTS_KEY, None)
    if defaults is None or config.get_verbosity() < 0:
        return None
    return (f"stability: steps={defaults.steps} seed={defaults.seed} device={defaults.device} "
            f"(replay a failure with the --stability-replay=SEED it prints)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    # Reached only when the test body returned normally.
    if item.get_closest_marker(MARKER_NAME) is not None:
        fixture = getattr(item, "funcargs", {}).get("stability")
        if fixture is not None and not fixture.reports and fixture.error is None:
            pytest.fail(f"{item.nodeid} is marked stable_training but never called stability.train(model, x, y)",
                        pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when == "teardown":
        record = item.stash.get(RECORD_KEY, None)
        if record is not None:
            # A builtins-only attribute on the report travels to the xdist
            # controller with it (TestReport keeps extra attributes).
            report.stability = record
            # Flat key metrics as test properties, so --junitxml shows them.
            report.user_properties.extend(junit_properties(record))
    return report
