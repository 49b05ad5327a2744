"""The HTML report's renderer, on records written by hand: charts, findings, escaping, every kind of test."""

from __future__ import annotations

import dataclasses
import re

from pytest_stability.record import BaselineComparison, FindingRecord, StabilityRecord
from pytest_stability.report import html


def _run(curves: dict, findings: list | None = None, **extra) -> dict:
    run = {
        "seed": 0,
        "verdict": "unstable" if findings else "stable",
        "device": "CPU",
        "steps_planned": 6,
        "steps_run": 6,
        "wall_time": 1.5,
        "replay": "pytest t.py::test_x --stability-replay=0",
        "findings": findings or [],
        "summary": {"final_loss": 0.5, "largest_spike": "nan", "spikes": 0},
        "model": {"backend": "jax", "optimizer": "SGD", "optimizer_config": {"learning_rate": 0.1}},
        "curves": {name: {"step": list(steps), "value": list(values)} for name, (steps, values) in curves.items()},
    }
    run.update(extra)
    return run


def _record(nodeid: str, *runs: dict, **extra) -> StabilityRecord:
    verdict = "stable" if all(r["verdict"] == "stable" for r in runs) else "unstable"
    record = {
        "nodeid": nodeid,
        "verdict": verdict,
        "outcome": "passed",
        "error": None,
        "skip_reason": None,
        "settings": {},
        "calls": [{"verdict": verdict, "seeds": [r["seed"] for r in runs], "runs": list(runs)}],
    }
    record.update(extra)
    return StabilityRecord.from_dict(record)


STEPS = range(6)
SPIKE = {
    "check": "loss_spike",
    "kind": "spike",
    "step": 3,
    "value": 3.0,
    "limit": 2.0,
    "message": "loss 3 at step 3 is 5x its trailing median",
    "cause": "the learning rate jumped to 7",
    "confidence": "likely",
    "fix": "learning_rate=0.1",
    "evidence": {"whatif": {"resolved": True, "text": "replayed steps 0-5 with SGD(learning_rate x 0.1): no finding"}},
}


def test_a_test_panel_has_a_chart_per_curve_with_its_finding_marked_and_cause_fix_whatif():
    run = _run(
        {
            "loss": (STEPS, [1.0, 0.8, 0.6, 3.0, 2.5, 2.4]),
            "grad_norm": (STEPS, [1, 1, 1, 5, 4, 3]),
            "lr": (STEPS, [0.1, 0.1, 0.1, 7.0, 7.0, 7.0]),
            "g_loss": (STEPS, [2, 1.5, 1.2, 1.1, 1, 0.9]),
        },
        [SPIKE],
    )
    panel = html.render_panel(_record("t.py::test_x", run))
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", panel)
    assert captions == ["training loss", "gradient norm", "learning rate", "g loss"]  # no validation data, no chart
    assert panel.count("loss_spike @ 3</text>") == 1  # on the loss chart only
    assert panel.count('class="ps-find"') == 4  # the finding's step, dashed on every chart
    for text in (
        "the learning rate jumped to 7",
        "learning_rate=0.1",
        "the fix worked",
        "cause (likely)",
        "pytest t.py::test_x --stability-replay=0",
        "backend <b>jax</b>",
        "SGD (learning rate 0.1)",
    ):
        assert text in panel, text
    assert "xnan" not in panel and "<td>-</td>" in panel  # a spike ratio that was not measured


def test_non_finite_values_break_the_line_and_are_marked_and_non_positive_data_is_drawn_linear():
    run = _run({"loss": (STEPS, [1.0, 0.5, "nan", "inf", 0.2, 0.1]), "grad_norm": (STEPS, [-1, 0, 1, 2, 3, 4])})
    panel = html.render_panel(_record("t.py::test_nan", run))
    loss, grad = panel.split("<figcaption>gradient norm</figcaption>")
    assert "non-finite from step 2" in loss and loss.count("<polyline") == 2  # one line before, one after
    assert "log scale" in loss and "log scale" not in grad


def test_text_from_records_is_escaped():
    evil = "<script>alert(1)</script>"
    finding = dict(SPIKE, message=evil, cause=evil, fix=evil, evidence={})
    page = html.render_report([_record(f"t.py::test_x[{evil}]", _run({"loss": (STEPS, [1] * 6)}, [finding]))])
    assert page.count("<script>") == 1  # the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_report_has_a_summary_row_and_panel_per_test_and_says_why_a_test_has_no_curves():
    records = [
        _record("t.py::test_b_stable", _run({"loss": (STEPS, [1, 0.9, 0.8, 0.7, 0.6, 0.5])})),
        _record("t.py::test_a_unstable", _run({"loss": (STEPS, [1.0, 0.8, 0.6, 3.0, 2.5, 2.4])}, [SPIKE])),
        StabilityRecord(
            "t.py::test_c_error",
            "error",
            outcome="error",
            error="the test errored before the stability fixture was set up",
        ),
        StabilityRecord("t.py::test_d_skipped", "skipped", outcome="skipped", skip_reason="Skipped: no GPU"),
    ]
    page = html.render_report(records, meta={"pytest-stability": "9.9", "finished": None})
    rows = re.findall(r'<tr data-verdict="(\w+)".*?<a href="#([\w-]+)">', page)
    assert rows == [
        ("unstable", "t-t-py-test_a_unstable"),
        ("stable", "t-t-py-test_b_stable"),
        ("error", "t-t-py-test_c_error"),
        ("skipped", "t-t-py-test_d_skipped"),
    ]
    assert [m for m in re.findall(r'<details class="ps-test" id="([\w-]+)"', page)] == [a for _, a in rows]
    assert "the test errored before the stability fixture was set up" in page and "Skipped: no GPU" in page
    buttons = re.findall(r'data-filter="(\w+)"><b>(\d+)</b>', page)
    assert buttons == [("all", "4"), ("stable", "1"), ("unstable", "1"), ("error", "1"), ("skipped", "1")]
    assert "pytest-stability: 9.9" in page and "finished" not in page.split("</div>")[0]


def test_seeds_are_overlaid_and_a_baseline_comparison_is_shown_with_its_status():
    runs = [_run({"loss": (STEPS, [1, 0.9, 0.8, 0.7, 0.6, 0.5])}), dict(_run({"loss": (STEPS, [1] * 6)}), seed=1)]
    record = _record("t.py::test_seeds", *runs)
    baseline = BaselineComparison.from_dict(
        {
            "status": "regressed",
            "failed": True,
            "path": "base.json",
            "lines": [],
            "regressions": ["seed 1: loss spikes: baseline 0, now 2 (tolerance: +0)"],
            "seeds": {
                "1": {
                    "status": "regressed",
                    "metrics": {"spikes": {"baseline": 0, "now": 2, "limit": 0, "regressed": True}},
                }
            },
        }
    )
    record = record.with_(calls=(dataclasses.replace(record.calls[0], baseline=baseline),))
    page = html.render_report([record])
    assert page.count("<polyline") == 2 and "seed 0" in page and "seed 1" in page
    assert '<span class="ps-badge ps-regressed">REGR</span>' in page
    assert "loss spikes: baseline 0, now 2" in page and 'data-filter="regressed"><b>1</b>' in page
    assert html.baseline_status(record) == "regressed"


def test_a_panel_for_pytest_html_carries_its_own_styles():
    panel = html.render_panel(_record("t.py::test_x", _run({"loss": (STEPS, [1] * 6)})), with_style=True)
    assert panel.startswith('<div class="ps-report"><style>') and "<script" not in panel


def test_the_offending_batch_is_named_in_words():
    from pytest_stability.report.render import batch_text

    where = {"step": 93, "batch": 5, "epoch": 3, "batches_per_epoch": 25, "indices": list(range(20)), "file": "b.npz"}
    assert batch_text(where) == (
        "batch: step 93 trained on batch 5 of 25 (from 0) in epoch 3: samples [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "
        "... 20 in all]; saved to b.npz"
    )
    stream = {"step": 7, "batch": 7}
    assert batch_text(stream) == "batch: step 7 trained on batch 7 of the data pipeline (from 0)"
    lost = {"step": 7, "batch": 1, "epoch": 0, "batches_per_epoch": 4, "why": "its epoch's random state was not kept"}
    assert batch_text(lost).endswith("in epoch 0 (its epoch's random state was not kept)")
    full = {"step": 7, "batch": 7, "full_batch": True, "indices": [0, 1, 2], "not_saved": "OSError: disk full"}
    assert batch_text(full) == "batch: every step trained on the full batch (3 samples); not saved: OSError: disk full"
    assert "batch: step 93" in render_finding_html(where)


def render_finding_html(where):
    from pytest_stability.report.html import _finding_html

    finding = FindingRecord.from_dict({"check": "loss_spike", "step": 93, "message": "m", "evidence": {"batch": where}})
    return _finding_html(finding, "")


def test_a_passing_runs_notes_are_shown_in_the_panel_the_terminal_row_and_junit():
    # a check not judged, a run that ended before its planned steps: a green row must not hide either
    from pytest_stability.report.terminal import _row

    notes = [
        "the raw loss was not recorded: this model's train_step neither updates the model's loss tracker "
        "(self._loss_tracker / the 'loss' metric) nor returns a 'loss', so loss_spike is not judged; gradient "
        "norms, non-finite values and updates are",
        "the run ended after 80 of 200 steps: epochs=5 ended it",
    ]
    model = {"backend": "tensorflow", "optimizer": "Adam", "notes": notes}
    record = _record("t.py::test_x", _run({"grad_norm": (STEPS, [1.0] * 6)}, model=model))
    label, _, text = _row(record)
    assert label == "PASS"
    assert [line.strip() for line in text.splitlines()[1:]] == [f"note: {n}" for n in notes]
    page = html.render_report([record])
    for note in notes:
        assert html._e(note) in page
    # and in JUnit, one property per note (a CI dashboard shows why a green test judged less)
    from pytest_stability.report.junit import junit_properties

    assert [v for k, v in junit_properties(record) if k == "stability_note"] == notes
    # what made the run slower (short epochs kept for a callback): in the row with -v only, and in the panel
    speed = "short epochs (13 step(s) each) kept for TensorBoard.on_epoch_begin, which sees them: ..."
    slow = _record("t.py::test_s", _run({"grad_norm": (STEPS, [1.0] * 6)}, model={**model, "speed_notes": [speed]}))
    assert f"note: {speed}" not in _row(slow)[2] and f"note: {speed}" in _row(slow, verbose=True)[2]
    assert _row(slow, verbose=True)[2].index(notes[-1]) < _row(slow, verbose=True)[2].index(speed)
    assert html._e(speed) in html.render_report([slow])
    # a run without notes gets no note line
    label, _, text = _row(_record("t.py::test_y", _run({"loss": (STEPS, [1.0] * 6)})))
    assert "note:" not in text and "Note</b>" not in html.render_report([_record("t.py::test_y", _run({}))])


def test_an_error_after_a_completed_call_is_said_in_the_row_under_that_calls_numbers():
    # a second stability.fit() whose callback raised: the first call's numbers alone, under ERROR, read as if
    # that run had errored; the row says the error, as the HTML panel and the JSON entry do
    from pytest_stability.report.terminal import _row

    error = "training raised RuntimeError: boom (in Boom.on_train_batch_end, after 6 of 30 steps)"
    record = _record("t.py::test_x", _run({"loss": (STEPS, [1.0] * 6)}), verdict="error", outcome="failed", error=error)
    label, _, text = _row(record)
    assert label == "ERROR"
    assert text.splitlines()[-1].strip() == f"error: {error}"
    # without calls the error is the row itself, once
    bare = _row(StabilityRecord.errored("t.py::test_y", error))[2]
    assert bare == f"t.py::test_y  {error}"


def test_a_loss_that_was_never_recorded_gets_no_chart_and_the_row_says_so():
    # a train_step that does not update the loss tracker: its record holds no loss curve, and no chart of NaN
    # ("non-finite from step 0") or row of x marks suggests the loss went NaN
    from pytest_stability.report.terminal import _row

    model = {"backend": "tensorflow", "optimizer": "Adam", "loss_recorded": False, "notes": ["the raw loss ..."]}
    summary = {"final_loss": None, "largest_spike": None, "spikes": 0}
    record = _record("t.py::test_x", _run({"grad_norm": (STEPS, [1.0] * 6)}, model=model, summary=summary))
    assert html.panels_of(record.calls[0].runs)[0] == ("grad_norm", "gradient norm")
    page = html.render_report([record])
    assert "training loss" not in page and "non-finite from step" not in page
    assert "loss not recorded" in _row(record)[2]
    # a recorded loss, or a run that recorded nothing yet, keeps its loss chart
    recorded = _record("t.py::test_y", _run({"grad_norm": (STEPS, [1.0] * 6)}))
    assert html.panels_of(recorded.calls[0].runs)[0] == ("loss", "training loss")


def test_a_test_with_several_fit_calls_names_each_row_and_junit_reports_the_failing_call():
    # two stability.fit() calls in one test (two learning rates, say): the second row must not be anonymous,
    # and JUnit's finding is the failing call's, not the first call's (which passed)
    from pytest_stability.report.junit import junit_properties
    from pytest_stability.report.terminal import _row

    good = _record("t.py::test_x", _run({"loss": (STEPS, [1.0] * 6)})).calls[0]
    bad = _record("t.py::test_x", _run({"loss": (STEPS, [1.0] * 6)}, [SPIKE])).calls[0]
    record = StabilityRecord.trained("t.py::test_x", settings={}, calls=[good, bad])
    label, _, text = _row(record)
    assert label == "FAIL"
    rows = [line for line in text.splitlines() if "steps=" in line]
    assert [row.split("steps=")[0].strip() for row in rows] == ["t.py::test_x  call 1 of 2:", "call 2 of 2:"]
    props = junit_properties(record)
    assert ("stability_call", "2 of 2") in props
    # and GitHub's annotation / step summary line
    from pytest_stability.report.github import headline

    assert headline(record) == f"call 2 of 2: [loss_spike] step 3: {SPIKE['message']}"
    assert ("stability_finding", f"loss_spike at step 3: {SPIKE['message']}") in props
    # one call: no call label, no stability_call
    one = StabilityRecord.trained("t.py::test_y", settings={}, calls=[bad])
    assert "call 1" not in _row(one)[2] and "stability_call" not in dict(junit_properties(one))
    assert headline(one).startswith("[loss_spike]")


def test_the_validation_change_is_a_percentage_a_factor_from_10x_or_the_final_value_of_a_loss_at_or_below_0():
    from pytest_stability.record import RunSummary
    from pytest_stability.report.render import val_change

    # a cosine-similarity loss from -0.15 to -0.97 (tried as a new user would) read "val -547%"
    assert val_change(RunSummary(val_trend=-5.47, final_val_loss=-0.97)) == "-0.97 at the end"
    assert val_change(RunSummary(val_trend=-0.57, final_val_loss=0.31)) == "-57%"
    assert val_change(RunSummary(val_trend=2.11, final_val_loss=3.1)) == "+211%"
    # SGD at 2 (tried as a new user would): a loss that ended 4e15 x its start read "val +434561560391018240%"
    assert val_change(RunSummary(val_trend=4.3456156039101824e15, final_val_loss=3.66e15)) == "x4.35e+15"
    assert val_change(RunSummary(val_trend="nan", final_val_loss="nan")) is None
    assert val_change(RunSummary()) is None
