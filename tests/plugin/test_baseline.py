"""--stability-save-baseline / --stability-baseline: pass, regression, missing tests, tolerances."""

from __future__ import annotations

import json
import types

import keras
import pytest

from pytest_stability.report import baseline as baseline_mod
from pytest_stability.report.render import fmt

#: Records every pytest_stability_run_finished call: the built-in comparison is trylast, so this
#: conftest sees also the runs the comparison fails.
RUN_FINISHED_CONFTEST = """
def pytest_stability_run_finished(nodeid, report):
    with open("run_finished.txt", "a") as out:
        out.write(f"{nodeid} {report.verdict}\\n")
"""


@pytest.fixture
def gate(pytester, named_problem, recorded):
    """Writes test_gate.py and runs pytest on it, replaying the training recorded for that module.

    ``gate.write(variant, seeds_b, new)``: conftest.py's GATE_TESTS (test_a in ``variant``: "same", "grad", "val"
    or "nan"; test_b with ``seeds_b`` seeds), and GATE_NEW_TEST (test_c) when ``new``.
    ``gate.run(*args)``: ``pytester.runpytest`` with the recorded training of that variant (tests/plugin/recorded).
    """
    groups = ["gate"]

    def write(variant="same", seeds_b=1, new=False):
        source = recorded.GATE_TESTS.format(variant=variant, seeds_b=seeds_b)
        pytester.makepyfile(test_gate=named_problem + source + (recorded.GATE_NEW_TEST if new else ""))
        groups[:] = ["gate"] if variant == "same" else [f"gate_{variant}", "gate"]

    def run(*args, **kwargs):
        return pytester.runpytest("-p", "no:cacheprovider", *recorded.args(*groups), *args, **kwargs)

    return types.SimpleNamespace(write=write, run=run)


#: base.json and saved.json of the unchanged scenario: made by the first test that needs them (every test
#: would save the same baseline; once keeps the module fast).
_SAVED: dict[str, str] = {}


def _section(doc):
    """The section of the backend this suite runs on (a baseline holds one per Keras backend)."""
    return doc["backends"][keras.backend.backend()]


@pytest.fixture
def saved(pytester, gate, gating):
    """A baseline of the unchanged scenario in base.json (and its JSON report, saved.json); returns its section."""
    gate.write()
    if not _SAVED:
        result = gate.run("--stability-save-baseline=base.json", "--stability-report=saved.json")
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["*- stability baseline saved to */base.json (2 tests) -*"])
        _SAVED.update({name: (pytester.path / name).read_text() for name in ("base.json", "saved.json")})
    else:
        for name, text in _SAVED.items():
            (pytester.path / name).write_text(text)
    return _section(gating.load_strict(pytester.path / "base.json"))


def _base_summary(doc, test):
    return doc["tests"][f"test_gate.py::{test}"]["calls"][0]["runs"]["0"]["summary"]


def test_saved_baseline_holds_summary_metrics_per_seed(pytester, saved, gating):
    doc = gating.load_strict(pytester.path / "base.json")
    assert (doc["kind"], doc["schema_version"]) == ("pytest-stability-baseline", 2)
    assert list(doc["backends"]) == [keras.backend.backend()]  # one section: the backend the run trained on
    assert sorted(saved["tests"]) == ["test_gate.py::test_a", "test_gate.py::test_b"]
    report = gating.tests_by_id(gating.load_strict(pytester.path / "saved.json"))
    for name in ("test_a", "test_b"):
        entry = saved["tests"][f"test_gate.py::{name}"]
        (call,) = entry["calls"]
        assert list(call["runs"]) == ["0"]
        run = call["runs"]["0"]
        (reported,) = report[f"test_gate.py::{name}"]["calls"][0]["runs"]
        assert run["summary"] == {
            k: reported["summary"][k] for k in baseline_mod.BASELINE_METRICS if k in reported["summary"]
        }
        assert "lr_margin" not in run["summary"]  # measured only with margin=True
        assert (run["verdict"], run["findings"]) == ("stable", [])
        assert reported["model"]["backend"] == keras.backend.backend()


def test_unchanged_run_passes_and_shows_baseline_against_now(pytester, gate, saved, gating):
    result = gate.run("--stability-baseline=base.json", "--stability-report=now.json")
    result.assert_outcomes(passed=2)
    a = _base_summary(saved, "test_a")
    result.stdout.fnmatch_lines(
        [
            "stability JSON report: */now.json",
            "stability baseline: */base.json; baseline_extra_spikes=0, baseline_grad_factor=2.0, "
            "baseline_margin_factor=2.0, baseline_val_tolerance=0.1",
            "*stability report: 2 tests, 0 unstable*",
            "PASS  test_gate.py::test_a  *",
            "      baseline -> now: spikes 0 -> 0, "
            f"p99|g| {fmt(a['p99_grad_norm'], 3)} -> {fmt(a['p99_grad_norm'], 3)}, "
            f"val {fmt(a['final_val_loss'], 3)} -> {fmt(a['final_val_loss'], 3)}, findings 0 -> 0  ok",
            "PASS  test_gate.py::test_b  *",
            "      baseline -> now: *  ok",
            "*- stability baseline */base.json: 2 compared, 0 regressed, 0 not in the baseline -*",
            "*- stability JSON written to */now.json -*",
        ]
    )
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "now.json"))
    comparison = tests["test_gate.py::test_a"]["calls"][0]["baseline"]
    assert (comparison["status"], comparison["failed"], tests["test_gate.py::test_a"]["baseline"]) == (
        "ok",
        False,
        "ok",
    )
    metrics = comparison["seeds"]["0"]["metrics"]
    assert metrics["p99_grad_norm"] == {
        "baseline": a["p99_grad_norm"],
        "now": a["p99_grad_norm"],
        "limit": 2 * a["p99_grad_norm"],
        "regressed": False,
    }
    assert metrics["spikes"] == {"baseline": 0, "now": 0, "limit": 0, "regressed": False}


def test_regression_fails_the_test_naming_metric_values_and_tolerance(pytester, gate, saved, gating):
    gate.write("grad")
    result = gate.run("--stability-baseline=base.json", "--stability-report=now.json")
    result.assert_outcomes(passed=1, failed=1)
    a = _base_summary(saved, "test_a")
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "now.json"))
    (now,) = tests["test_gate.py::test_a"]["calls"][0]["runs"]
    g_b, g_n = a["p99_grad_norm"], now["summary"]["p99_grad_norm"]
    v_b, v_n = a["final_val_loss"], now["summary"]["final_val_loss"]
    assert g_n > 2 * g_b and v_n > 1.1 * v_b  # the variant does regress (else this test proves nothing)
    result.stdout.fnmatch_lines(
        [
            "*_ test_a _*",
            "test_gate.py::test_a: training stability regressed against the baseline */base.json:",
            f"  seed 0: 99th-percentile gradient norm: baseline {fmt(g_b, 4)}, now {fmt(g_n, 4)} "
            f"(tolerance: x2, limit {fmt(2 * g_b, 4)})",
            f"  seed 0: final smoothed validation loss: baseline {fmt(v_b, 4)}, now {fmt(v_n, 4)} "
            f"(tolerance: +10%, limit {fmt(v_b * 1.1, 4)})",
            "  tolerances: baseline_grad_factor=2, baseline_val_tolerance=0.1, baseline_extra_spikes=0",
            "*stability report: 2 tests, 0 unstable, 1 regressed against the baseline*",
            "REGR  test_gate.py::test_a  *",
            "      baseline -> now: spikes 0 -> 0, p99|g| * -> * !, val * -> * !, findings 0 -> 0  REGRESSED",
            "PASS  test_gate.py::test_b  *",
            "*- stability baseline */base.json: 2 compared, 1 regressed, 0 not in the baseline -*",
            "FAILED test_gate.py::test_a - Failed: test_gate.py::test_a: training stabilit*",
        ]
    )
    result.stdout.no_fnmatch_line("*pluggy/_*.py*")  # no traceback through the hook machinery
    result.stdout.no_fnmatch_line("*saved in another environment*")  # saved here, by this run's libraries

    # A baseline saved on another CPU: the message says so (its numbers move with the CPU's rounding).
    doc = json.loads((pytester.path / "base.json").read_text())
    env = doc["backends"][keras.backend.backend()]["environment"]
    here = env["cpu"]
    assert here  # this machine's CPU is recorded
    env["cpu"] = "Another CPU (x86_64, AVX-512)"
    (pytester.path / "other.json").write_text(json.dumps(doc))
    result = gate.run("--stability-baseline=other.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "  tolerances: *",
            f"  the baseline was saved in another environment (cpu: 'Another CPU (x86_64, AVX-512)' -> {here!r}): "
            "another CPU or other library versions round differently*",
        ]
    )

    # Tolerances from the command line, then the ini file (the command line wins).
    result = gate.run("--stability-baseline=base.json", "--stability-baseline-grad-factor=100")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*99th-percentile gradient norm*")
    result.stdout.fnmatch_lines(
        [
            "  seed 0: final smoothed validation loss: *(tolerance: +10%*",
            "  tolerances: baseline_grad_factor=100, baseline_val_tolerance=0.1, *",
        ]
    )
    pytester.makeini("[pytest]\nstability_baseline_val_tolerance = 5\nstability_baseline_grad_factor = 1.5\n")
    result = gate.run("--stability-baseline=base.json", "--stability-baseline-grad-factor=100")
    result.assert_outcomes(passed=2)


def test_validation_loss_regression(pytester, gate, saved):
    gate.write("val")
    result = gate.run("--stability-baseline=base.json")
    result.assert_outcomes(passed=1, failed=1)
    v_b = _base_summary(saved, "test_a")["final_val_loss"]
    result.stdout.fnmatch_lines(
        [
            "test_gate.py::test_a: training stability regressed against the baseline */base.json:",
            f"  seed 0: final smoothed validation loss: baseline {fmt(v_b, 4)}, now * "
            f"(tolerance: +10%, limit {fmt(v_b * 1.1, 4)})",
            "  tolerances: *",
        ]
    )
    result.stdout.no_fnmatch_line("*99th-percentile gradient norm*")


def test_new_finding_is_a_regression_and_keeps_the_explanation(pytester, gate, saved):
    gate.write("nan")
    pytester.makeconftest(RUN_FINISHED_CONFTEST)
    result = gate.run("--stability-baseline=base.json")
    result.assert_outcomes(passed=1, failed=1)
    assert (pytester.path / "run_finished.txt").read_text().splitlines() == [
        "test_gate.py::test_a unstable",
        "test_gate.py::test_b stable",
    ]
    result.stdout.fnmatch_lines(
        [
            "test_gate.py::test_a: training stability regressed against the baseline */base.json:",
            "  seed 0: new finding [[]nonfinite[]] training at step 2 (not in the baseline): non-finite *",
            "*test_gate.py::test_a: stable_training: * checks failed (*nonfinite*) - seed 0, 3/60 steps on CPU",
            "*replay: pytest test_gate.py::test_a --stability-replay=0",
        ]
    )


def test_missing_test_and_seed_are_reported_not_failed_unless_strict(pytester, gate, saved, gating):
    gate.write(seeds_b=2, new=True)
    result = gate.run("--stability-baseline=base.json", "--stability-report=now.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_gate.py::test_b  *seeds=2*",
            "      baseline -> now: seed 0: spikes 0 -> 0, * ok",
            "      baseline: seed 1 not in the baseline (not compared)",
            "PASS  test_gate.py::test_c  *",
            "      baseline: test not in the baseline (not compared)",
            "*- stability baseline */base.json: 1 compared, 0 regressed, 2 not in the baseline -*",
        ]
    )
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "now.json"))
    assert [tests[f"test_gate.py::test_{n}"]["baseline"] for n in "abc"] == ["ok", "missing", "missing"]

    result = gate.run("--stability-baseline=base.json", "--stability-baseline-strict")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "test_gate.py::test_b: missing from the baseline */base.json, and --stability-baseline-strict fails what "
            "the baseline does not cover (save a new baseline with --stability-save-baseline=PATH):",
            "  seed 1 not in the baseline (--stability-baseline-strict)",
            "*_ test_c _*",
            "test_gate.py::test_c: missing from the baseline */base.json, *",
            "  test not in the baseline (--stability-baseline-strict)",
            "*stability report: 3 tests, 0 unstable, 2 regressed against the baseline*",
            "PASS  test_gate.py::test_a  *",
            "REGR  test_gate.py::test_b  *",
            "      baseline: seed 1 not in the baseline (failed: --stability-baseline-strict)",
            "REGR  test_gate.py::test_c  *",
            "      baseline: test not in the baseline (failed: --stability-baseline-strict)",
        ]
    )

    pytester.makeini("[pytest]\nstability_baseline_strict = true\nstability_baseline = base.json\n")
    result = gate.run()
    result.assert_outcomes(passed=1, failed=2)


def test_a_baseline_without_runs_on_this_backend_reports_every_test_missing_and_says_so(pytester, gate, saved, gating):
    """Another Keras backend trains the same model and seed along another trajectory: its numbers are not a
    baseline for this one, so a run is compared only with its own backend's section; with none, the rows, the
    summary line and the JSON all say the same thing: not in the baseline (missing)."""
    doc = gating.load_strict(pytester.path / "base.json")
    here = keras.backend.backend()
    other = "jax" if here != "jax" else "torch"
    doc["backends"] = {other: doc["backends"][here]}
    doc["backends"][other]["tests"]["test_gate.py::test_a"]["calls"][0]["runs"]["0"]["summary"]["final_val_loss"] = (
        1e-9  # would be a regression if it were compared
    )
    (pytester.path / "base.json").write_text(json.dumps(doc))
    note = f"it has no runs on the {here} backend; KERAS_BACKEND={here} pytest --stability-save-baseline=PATH adds them"
    # test_a alone: the comparison is per test, and each run here trains only what it checks
    result = gate.run("-k", "test_a", "--stability-baseline=base.json", "--stability-report=now.json")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "PASS  test_gate.py::test_a  *",
            f"      baseline: test not in the baseline (not compared): {note}",
            f"*- stability baseline */base.json: 0 compared, 0 regressed, 1 not in the baseline ({note}) -*",
        ]
    )
    (test_a,) = gating.load_strict(pytester.path / "now.json")["tests"]
    assert test_a["baseline"] == "missing"
    comparison = test_a["calls"][0]["baseline"]
    assert (comparison["status"], comparison["backend"], comparison["backend_in_baseline"]) == ("missing", here, False)

    result = gate.run("-k", "test_a", "--stability-baseline=base.json", "--stability-baseline-strict")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines([f"  test not in the baseline (--stability-baseline-strict): {note}"])

    # saving on this backend adds its section and keeps the other one
    result = gate.run("-k", "test_a", "--stability-save-baseline=base.json")
    result.stdout.fnmatch_lines(
        [
            f"*- stability baseline saved to */base.json (1 tests: 0 updated, 1 added, 0 kept, "
            f"in the {here} section; the {other} section kept) -*"
        ]
    )
    merged = baseline_mod.load_baseline(pytester.path / "base.json")
    assert sorted(merged["backends"]) == sorted([here, other])
    assert merged["backends"][other] == doc["backends"][other]
    assert list(merged["backends"][here]["tests"]) == ["test_gate.py::test_a"]


def test_bad_baseline_settings_are_one_usage_error(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    (pytester.path / "notjson.json").write_text("{not json")
    result = pytester.runpytest(
        "--stability-baseline=notjson.json",
        "--stability-baseline-grad-factor=0.5",
        "--stability-baseline-extra-spikes=-1",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*pytest-stability: invalid settings:",
            "*--stability-baseline-grad-factor: expected a finite number >= 1, received '0.5'",
            "*--stability-baseline-extra-spikes: expected an int >= 0, received '-1'",
            "*--stability-baseline: the baseline */notjson.json is not valid JSON: *",
        ]
    )

    (pytester.path / "report.json").write_text(json.dumps({"schema_version": 1, "tests": []}))
    result = pytester.runpytest("--stability-baseline=report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--stability-baseline: */report.json is not a pytest-stability baseline "
            '(no "kind": "pytest-stability-baseline"); '
            "write one with --stability-save-baseline=PATH"
        ]
    )

    result = pytester.runpytest("--stability-baseline=absent.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--stability-baseline: cannot read the baseline */absent.json: No such file or directory"]
    )

    result = pytester.runpytest("--stability-baseline-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--stability-baseline-strict needs --stability-baseline=PATH (or ini stability_baseline)"]
    )

    # saving updates the baseline at the path, so what is there must be one (not, say, the report)
    result = pytester.runpytest("--stability-save-baseline=report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--stability-save-baseline: */report.json is not a pytest-stability baseline "
            '(no "kind": "pytest-stability-baseline"); saving updates the baseline already at '
            "PATH, so remove that file (or give another PATH) to start a new baseline"
        ]
    )
    assert json.loads((pytester.path / "report.json").read_text()) == {"schema_version": 1, "tests": []}


def test_interrupted_run_does_not_overwrite_the_baseline(pytester, named_problem, recorded):
    previous = json.dumps({"kind": baseline_mod.BASELINE_KIND, "schema_version": 1, "tests": {}})
    (pytester.path / "base.json").write_text(previous)
    # test_one trains what the scenario "one" trains (its recording is replayed), then Ctrl-C
    pytester.makepyfile(
        named_problem
        + """
@pytest.mark.stable_training(steps=20)
def test_one(stability):
    stability.train(build(), X, Y, batch_size=16)
    raise KeyboardInterrupt
"""
    )
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        *recorded.args("scenarios"),
        "--stability-save-baseline=base.json",
        no_reraise_ctrlc=True,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*stability baseline NOT saved to */base.json: the run was interrupted*"])
    assert (pytester.path / "base.json").read_text() == previous


@pytest.mark.parametrize("option", ["--collect-only", "--setup-only", "--setup-plan"])
def test_a_run_of_no_test_body_neither_reports_nor_compares_with_nor_saves_the_baseline(pytester, gate, saved, option):
    # pytest --co runs no test: no "0 compared" footer, and the baseline file is left as it was (it had been
    # written again with "0 tests ... in the  section", no backend having run); --setup-only sets the stability
    # fixture up and tears it down, --setup-plan reports both phases: neither is a test that errored ("the test did
    # not complete a stability.fit() call" had been each test's row, JSON entry and JUnit properties)
    before = (pytester.path / "base.json").read_text()
    result = gate.run(
        option,
        "--stability-baseline=base.json",
        "--stability-save-baseline=base.json",
        "--stability-report=r.json",
        "--junitxml=j.xml",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"*stability baseline not saved to */base.json: {option} ran no test*"])
    result.stdout.no_fnmatch_line("*compared*")
    result.stdout.no_fnmatch_line("*ERROR*")
    assert (pytester.path / "base.json").read_text() == before
    assert json.loads((pytester.path / "r.json").read_text())["tests"] == []
    assert "stability_" not in (pytester.path / "j.xml").read_text()  # no test case's properties


def test_a_run_that_trains_no_stability_test_neither_writes_nor_rewrites_a_baseline(pytester, gate, saved):
    # `-m "not stable_training"` (a quick local run) with the save option left in a script or an ini file: no new
    # file of 0 tests (a later comparison against it would find every test missing), and one already there is
    # left as it was
    before = (pytester.path / "base.json").read_text()
    result = gate.run("-m", "not stable_training", "--stability-save-baseline=new.json")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # every test of the module deselected
    result.stdout.fnmatch_lines(["*stability baseline not saved to */new.json: no stability test trained in this run*"])
    assert not (pytester.path / "new.json").exists()
    result = gate.run("-m", "not stable_training", "--stability-save-baseline=base.json")
    result.stdout.fnmatch_lines(["*stability baseline */base.json left as it was: no stability test trained*"])
    assert (pytester.path / "base.json").read_text() == before


# -- the comparison itself (pure) ---------------------------------------------------------------


def test_marker_tolerance_overrides_cli_and_ini(pytester, gate, saved, gating):
    gate.write("grad")  # test_a regresses: see the test above
    src = (
        (pytester.path / "test_gate.py")
        .read_text()
        .replace("val_tolerance=5.0)", "val_tolerance=5.0, baseline_grad_factor=100.0, baseline_val_tolerance=5.0)")
    )
    (pytester.path / "test_gate.py").write_text(src)
    pytester.makeini("[pytest]\nstability_baseline_grad_factor = 1.2\nstability_baseline_extra_spikes = 2\n")
    result = gate.run(
        "--stability-baseline=base.json", "--stability-baseline-grad-factor=1.5", "--stability-report=now.json"
    )
    result.assert_outcomes(passed=2)
    # the header shows the run-wide values (command line > ini > default)
    result.stdout.fnmatch_lines(
        [
            "stability baseline: */base.json; baseline_extra_spikes=2, baseline_grad_factor=1.5, "
            "baseline_margin_factor=2.0, baseline_val_tolerance=0.1"
        ]
    )
    tests = gating.tests_by_id(gating.load_strict(pytester.path / "now.json"))
    a, b = tests["test_gate.py::test_a"], tests["test_gate.py::test_b"]
    # each test was compared with its own resolved values: marker > command line > ini > default
    assert a["calls"][0]["baseline"]["tolerances"] == {
        "baseline_grad_factor": 100.0,
        "baseline_val_tolerance": 5.0,
        "baseline_extra_spikes": 2,
        "baseline_margin_factor": 2.0,
    }
    assert b["calls"][0]["baseline"]["tolerances"] == {
        "baseline_grad_factor": 1.5,
        "baseline_val_tolerance": 0.1,
        "baseline_extra_spikes": 2,
        "baseline_margin_factor": 2.0,
    }
    assert a["settings"]["baseline_grad_factor"] == 100.0 and b["settings"]["baseline_grad_factor"] == 1.5
    metrics = a["calls"][0]["baseline"]["seeds"]["0"]["metrics"]
    assert metrics["p99_grad_norm"]["now"] > 2 * metrics["p99_grad_norm"]["baseline"]  # it did regress


def test_save_baseline_of_a_partial_run_keeps_the_other_tests(pytester, gate, saved, gating):
    # test_b now trains two seeds and test_c is new; only they run: test_a's entry must survive as it was.
    gate.write(seeds_b=2, new=True)
    result = gate.run("-k", "test_b or test_c", "--stability-save-baseline=base.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "stability baseline to save: */base.json (updated: tests not run keep their entries)",
            "*- stability baseline saved to */base.json (3 tests: 1 updated, 1 added, 1 kept) -*",
        ]
    )
    merged = _section(gating.load_strict(pytester.path / "base.json"))
    assert sorted(merged["tests"]) == ["test_gate.py::test_a", "test_gate.py::test_b", "test_gate.py::test_c"]
    assert merged["tests"]["test_gate.py::test_a"] == saved["tests"]["test_gate.py::test_a"]
    assert sorted(merged["tests"]["test_gate.py::test_b"]["calls"][0]["runs"]) == ["0", "1"]  # replaced, not mixed
    assert (
        merged["tests"]["test_gate.py::test_b"]["calls"][0]["runs"]["0"]
        == (saved["tests"]["test_gate.py::test_b"]["calls"][0]["runs"]["0"])
    )  # the same seed trains the same
    assert merged["created_at"] >= saved["created_at"]

    # the merged baseline gates a full run: every test is compared
    result = gate.run("--stability-baseline=base.json", "--stability-baseline-strict")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*- stability baseline */base.json: 3 compared, 0 regressed, 0 not in the baseline -*"]
    )
