"""The marker and the settings: registration, validation at collection, precedence."""

import pytest

from pytest_stability.options import OPTIONS

pytestmark = []


def test_markers_lists_full_signature(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.stable_training(steps=200, *, batch_size=32, seed=0, *"
            "baseline_grad_factor=2.0, baseline_val_tolerance=0.1, baseline_extra_spikes=0, "
            "baseline_margin_factor=2.0)*"
        ]
    )
    assert result.ret == 0


def test_help_lists_every_option_with_ini_twin(pytester):
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    for opt in OPTIONS:
        assert opt.cli in text, opt.cli
        assert opt.ini in text, opt.ini


def test_strict_markers_accepts_the_marker(pytester, tiny_problem):
    pytester.makepyfile(
        tiny_problem
        + """
@pytest.mark.stable_training(steps=30)
def test_ok(stability):
    stability.train(build(), X, Y)
"""
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "marker, expected",
    [
        ("steps='ten'", "stable_training: steps must be an int >= 1, received 'ten' (str)"),
        ("steps=0", "stable_training: steps must be an int >= 1, received 0"),
        ("stepz=10", "stable_training: unknown argument stepz=10 (did you mean steps?); known arguments: steps, *"),
        ("device='tpu'", "stable_training: device must be one of 'auto', 'cpu', 'gpu', received 'tpu' (str)"),
        ("10, steps=20", "stable_training: steps given both positionally (10) and as a keyword (20)"),
        ("max_grad_norm=-1.0", "stable_training: max_grad_norm must be None or a finite number > 0, received -1.0"),
        (
            "checks=['loss_spike', 'nan']",
            "stable_training: checks must be a list of check names from *, received unknown check 'nan'",
        ),
        ("spike_ratio=1", "stable_training: spike_ratio must be a finite number > 1, received 1"),
        ("batch_size=2.5", "stable_training: batch_size must be an int >= 1, received 2.5 (float)"),
        (
            "baseline_grad_factor=0.5",
            "stable_training: baseline_grad_factor must be a finite number >= 1, received 0.5",
        ),
        (
            "baseline_extra_spikes=1.5",
            "stable_training: baseline_extra_spikes must be an int >= 0, received 1.5 (float)",
        ),
    ],
)
def test_bad_marker_argument_errors_its_test_at_setup_and_the_others_run(pytester, marker, expected):
    pytester.makepyfile(f"""
import pytest

@pytest.mark.stable_training({marker})
def test_model(stability):
    pass


def test_other():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    name = "test_bad_marker_argument_errors_its_test_at_setup_and_the_others_run.py::test_model"
    result.stdout.fnmatch_lines(["*ERROR at setup of test_model*", f"{name}: {expected}"])
    # the stability report's row says the same
    result.stdout.fnmatch_lines([f"ERROR {name}  the test errored before the stability fixture was set up: {expected}"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_marker_without_fixture_errors_at_setup(pytester):
    pytester.makepyfile("""
import pytest

@pytest.mark.stable_training(steps=10)
def test_model():
    pass


def test_other():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_model: is marked stable_training but does not use the `stability` fixture*"])
    result.assert_outcomes(passed=1, errors=1)


def test_marked_test_that_never_trains_fails(pytester):
    pytester.makepyfile("""
import pytest

@pytest.mark.stable_training(steps=10)
def test_model(stability):
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_model is marked stable_training but never called stability.fit(model, x, y)*"])


def test_every_stability_test_is_selected_by_the_marker_whether_marked_or_using_the_fixture(pytester):
    # `-m "not stable_training"` is how a quick local run leaves the training tests out: a test that uses the
    # `stability` fixture without the marker (it runs with the defaults) must be left out too
    pytester.makepyfile("""
import pytest

@pytest.mark.stable_training(steps=10)
def test_marked(stability):
    pass

def test_fixture_only(stability):
    pass

@pytest.fixture
def trained(stability):
    return stability

def test_through_a_fixture(trained):
    pass

def test_plain():
    pass
""")
    selected = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "-m", "stable_training")
    selected.stdout.fnmatch_lines(["*::test_marked", "*::test_fixture_only", "*::test_through_a_fixture"])
    selected.stdout.no_fnmatch_line("*test_plain*")
    left_out = pytester.runpytest("-p", "no:cacheprovider", "-m", "not stable_training")
    left_out.assert_outcomes(passed=1, deselected=3)
    # the marker added carries no settings, and a test that asks for the fixture without training fails as a
    # marked one does, in its own words
    ran = pytester.runpytest("-p", "no:cacheprovider", "-k", "fixture_only")
    ran.assert_outcomes(failed=1, deselected=3)
    ran.stdout.fnmatch_lines(["*test_fixture_only uses the `stability` fixture but never called stability.fit(*"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--stability-steps=abc"], "*--stability-steps: expected an int >= 1, received 'abc'*"),
        (["--stability-device=cuda"], "*--stability-device: expected one of 'auto', 'cpu', 'gpu', received 'cuda'*"),
        (["--stability-diagnostics=maybe"], "*--stability-diagnostics: expected true or false, received 'maybe'*"),
        (["--stability-replay=-3"], "*--stability-replay expects a seed (an int >= 0), received '-3'*"),
    ],
)
def test_bad_command_line_value_is_a_usage_error(pytester, args, expected):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_all_bad_settings_reported_together(pytester):
    pytester.makeini("[pytest]\nstability_seed = -1\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--stability-steps=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid settings:*",
            "*--stability-steps: expected an int >= 1, received '0'*",
            "*ini stability_seed: expected an int >= 0, received '-1'*",
        ]
    )


PRECEDENCE_TEST = """
@pytest.mark.stable_training({marker})
def test_settings(stability):
    report = stability.train(build(), X, Y, batch_size=64)
    print("STEPS=%d SEED=%d DEVICE=%s" % (report.trace.steps, report.seeds[0], stability.spec.device))
"""


@pytest.mark.parametrize(
    "ini, cli, marker, expected",
    [
        ("", ["--stability-steps=30"], "", "STEPS=30 SEED=0 DEVICE=auto"),
        ("stability_steps = 50\nstability_seed = 4\n", [], "", "STEPS=50 SEED=4 DEVICE=auto"),
        (
            "stability_steps = 50\n",
            ["--stability-steps=70", "--stability-device=cpu"],
            "",
            "STEPS=70 SEED=0 DEVICE=cpu",
        ),
        ("stability_steps = 50\n", ["--stability-steps=70"], "steps=90", "STEPS=90 SEED=0 DEVICE=auto"),
        ("stability_seed = 4\n", ["--stability-seed=0"], "steps=20", "STEPS=20 SEED=0 DEVICE=auto"),
    ],
)
def test_precedence_marker_cli_ini_default(pytester, tiny_problem, ini, cli, marker, expected):
    if ini:
        pytester.makeini("[pytest]\n" + ini)
    pytester.makepyfile(tiny_problem + PRECEDENCE_TEST.format(marker=marker))
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", *cli)
    result.stdout.fnmatch_lines([f"*{expected}*"])
    result.assert_outcomes(passed=1)


def test_class_and_function_markers_merge(pytester):
    pytester.makepyfile("""
import pytest

@pytest.mark.stable_training(steps=40, seed=3)
class TestModel:
    @pytest.mark.stable_training(seed=5)
    def test_settings(self, stability):
        print("STEPS=%d SEED=%d" % (stability.spec.steps, stability.spec.seed))
        pytest.skip("settings only")
""")
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*STEPS=40 SEED=5*"])


def test_report_header_shows_effective_settings(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("--stability-steps=123", "--stability-seed=7")
    result.stdout.fnmatch_lines(["stability: steps=123 seed=7 device=auto*"])
