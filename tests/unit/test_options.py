"""Settings: every option's explicit text parser, the typed frozen RunSpec, and the run-wide file settings."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_stability.options import (
    OPTIONS,
    OPTIONS_BY_NAME,
    OptionValueError,
    RunSpec,
    merge_marker,
    parse_replay,
    resolve_config_defaults,
    resolve_run_files,
)
from pytest_stability.thresholds import CHECK_NAMES


def _defaults(cli=None, ini=None) -> RunSpec:
    cli, ini = cli or {}, ini or {}
    return resolve_config_defaults(cli.get, lambda key: ini.get(key))


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("steps", " 7 ", 7),
        ("seed", "0", 0),
        ("spike_zscore", "6.5", 6.5),
        ("val_smoothing", "0", 0.0),
        ("max_grad_norm", "none", None),
        ("max_grad_norm", "2", 2.0),
        ("device", "CPU", "cpu"),
        ("checks", "val_loss, loss_spike", ("loss_spike", "val_loss")),
        ("diagnostics", "yes", True),
        ("shuffle", "off", False),
        ("baseline_extra_spikes", "2", 2),
    ],
)
def test_text_parsers(name, text, value):
    assert OPTIONS_BY_NAME[name].text(text) == value
    assert getattr(_defaults(cli={name: text}), name) == value


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("steps", "3.0", "an int >= 1, received '3.0'"),
        ("steps", "0", "an int >= 1, received '0'"),
        ("spike_ratio", "nan", "a finite number > 1, received 'nan'"),
        ("max_grad_norm", "x", "None or a finite number > 0, received 'x'"),
        ("device", "tpu", "one of 'auto', 'cpu', 'gpu', received 'tpu' (str)"),
        ("checks", "foo", "received unknown check 'foo'"),
        ("whatif", "maybe", "true or false, received 'maybe'"),
    ],
)
def test_text_parser_errors_name_the_value(name, text, message):
    with pytest.raises(OptionValueError) as info:
        OPTIONS_BY_NAME[name].text(text)
    assert str(info.value).endswith(message)


def test_every_option_has_its_own_text_parser_and_a_runspec_field():
    names = [f.name for f in dataclasses.fields(RunSpec) if f.name != "from_marker"]
    assert names == [o.name for o in OPTIONS]
    for opt in OPTIONS:
        assert callable(opt.text) and callable(opt.parse), opt.name
        # the default survives its own text form (what --help shows)
        text = ",".join(opt.default) if isinstance(opt.default, tuple) else str(opt.default)
        assert opt.text(text) == opt.default, opt.name


def test_runspec_is_typed_frozen_and_keeps_values():
    spec = _defaults(cli={"steps": "9"}, ini={"stability_seed": "3"})
    assert (spec.steps, spec.seed, spec.checks) == (9, 3, CHECK_NAMES)
    assert spec.values["steps"] == 9 and list(spec.values) == [o.name for o in OPTIONS]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 1  # type: ignore[misc]
    changed = spec.replace(whatif=True)
    assert (changed.whatif, spec.whatif, changed.steps) == (True, False, 9)
    with pytest.raises(TypeError, match="unknown setting"):
        spec.replace(stepz=1)
    with pytest.raises(AttributeError):
        spec.no_such_setting  # noqa: B018
    marked = merge_marker(spec, (20,), {"spike_ratio": 4})
    assert (marked.steps, marked.spike_ratio, marked.from_marker) == (20, 4.0, frozenset({"steps", "spike_ratio"}))


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"step": 100}, " (did you mean steps?);"),
        ({"val_tolerence": 0.2}, " (did you mean val_tolerance?);"),
        ({"epochs": 3}, " (epochs is an argument of model.fit: pass it to stability.fit(), which passes it on);"),
        ({"lr": 0.1}, " (lr belongs to the model's optimizer: set it where you compile the model);"),
        ({"colour": "red"}, ";"),  # nothing close: the list alone
    ],
)
def test_an_unknown_marker_keyword_is_told_where_it_belongs(kwargs, hint):
    ((key, value),) = kwargs.items()
    with pytest.raises(OptionValueError) as info:
        merge_marker(_defaults(), (), kwargs)
    message = str(info.value)
    assert message.startswith(f"unknown argument {key}={value!r}{hint} known arguments: steps, max_steps, ")
    assert message.endswith(", ".join(o.name for o in OPTIONS[-2:]))


@pytest.mark.parametrize("seeds", [[0, 1], (3, 4, 5), range(3)])
def test_seeds_given_as_a_list_is_told_it_is_a_count(seeds):
    with pytest.raises(OptionValueError) as info:
        merge_marker(_defaults(), (), {"seeds": seeds})
    assert str(info.value) == (
        f"seeds must be an int >= 1, received {seeds!r} ({type(seeds).__name__}) (a count, from seed= on: "
        "seed=5, seeds=2 trains under seeds 5 and 6)"
    )
    with pytest.raises(OptionValueError) as info:  # a number that is not a count gets no such hint
        merge_marker(_defaults(), (), {"seeds": 0})
    assert str(info.value) == "seeds must be an int >= 1, received 0"


def test_precedence_cli_over_ini_over_default():
    assert _defaults().steps == 200
    assert _defaults(ini={"stability_steps": "50"}).steps == 50
    assert _defaults(cli={"steps": "10"}, ini={"stability_steps": "50"}).steps == 10


def test_run_files(tmp_path):
    cli = {"report": "out/r.json", "baseline_strict": None}
    files, problems = resolve_run_files(
        cli.get, {"stability_plots": "figs"}.get, invocation_dir=tmp_path / "cwd", rootdir=tmp_path
    )
    assert problems == []
    assert (files.report, files.plots, files.baseline, files.baseline_strict) == (
        tmp_path / "cwd/out/r.json",
        tmp_path / "figs",
        None,
        False,
    )
    files, problems = resolve_run_files(
        {"baseline_strict": True, "report": ""}.get, {}.get, invocation_dir=tmp_path, rootdir=tmp_path
    )
    assert problems == [
        "--stability-report: expected a path, received an empty string",
        "--stability-baseline-strict needs --stability-baseline=PATH (or ini stability_baseline)",
    ]


def test_replay_seed():
    assert parse_replay("3") == 3
    with pytest.raises(OptionValueError, match=r"expects a seed \(an int >= 0\), received '-1'"):
        parse_replay("-1")


def test_check_names_have_one_source():
    from pytest_stability.checks import CHECKS

    assert tuple(CHECKS) == CHECK_NAMES == OPTIONS_BY_NAME["checks"].default


def test_offending_batches_go_to_their_dir_else_beside_a_report(tmp_path):
    from pytest_stability.options import RunFiles, resolve_run_files

    assert RunFiles().batches_dir is None  # no report written: nothing saved
    assert RunFiles(report=tmp_path / "out" / "r.json").batches_dir == tmp_path / "out" / "stability-batches"
    assert RunFiles(html=tmp_path / "h.html").batches_dir == tmp_path / "stability-batches"
    assert RunFiles(report=tmp_path / "r.json", batches=tmp_path / "b").batches_dir == tmp_path / "b"
    (tmp_path / "afile").write_text("x")
    files, problems = resolve_run_files(
        lambda name: "afile" if name == "batches" else None, lambda key: None, invocation_dir=tmp_path, rootdir=tmp_path
    )
    assert problems == [f"--stability-batches: {tmp_path / 'afile'} exists and is not a directory"]


def test_the_findings_that_name_their_batch():
    from pytest_stability.checks.base import Finding
    from pytest_stability.pipeline import names_batch

    def finding(check, kind, **evidence):
        return Finding(check, kind, 5, 1.0, 1.0, "m", evidence)

    assert names_batch(finding("loss_spike", "spike")) and names_batch(finding("loss_spike", "spike_no_recovery"))
    assert names_batch(finding("nonfinite", "input"))
    assert names_batch(finding("nonfinite", "training", quantities=["loss", "gradients"]))
    assert not names_batch(finding("nonfinite", "training", quantities=["weights"]))  # the update's, not the batch's
    assert not names_batch(finding("grad_norm", "growth")) and not names_batch(finding("val_loss", "rise"))


def test_a_file_where_a_settings_folder_must_go_is_a_usage_error_before_the_run(tmp_path):
    """A report, baseline, HTML, plots or batches path below a file cannot be written: said at the start, naming
    the file in the way, not after the run has trained (the JSON report said "NOT written" at the end)."""
    from pytest_stability.options import resolve_run_files

    (tmp_path / "afile").write_text("x")
    cli = {
        "report": "afile/r.json",
        "save_baseline": "afile/deeper/b.json",
        "html": "ok/h.html",
        "plots": "afile/plots",
        "batches": "fine/batches",
    }
    _, problems = resolve_run_files(cli.get, lambda key: None, invocation_dir=tmp_path, rootdir=tmp_path)
    blocked = f"{tmp_path / 'afile'} is a file, not a directory"
    assert problems == [
        f"--stability-report: cannot write {tmp_path / 'afile' / 'r.json'}: {blocked}",
        f"--stability-save-baseline: cannot write {tmp_path / 'afile' / 'deeper' / 'b.json'}: {blocked}",
        f"--stability-plots: cannot write {tmp_path / 'afile' / 'plots'}: {blocked}",
    ]
    assert not (tmp_path / "ok").exists() and not (tmp_path / "fine").exists()  # nothing created to find out
