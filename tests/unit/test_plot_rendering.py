"""Plots are drawn per test: data that cannot be log-scaled gets a linear axis, and one bad figure spares the rest."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from pytest_stability.record import StabilityRecord  # noqa: E402
from pytest_stability.report import plots  # noqa: E402
from pytest_stability.report.plots import plot_filename  # noqa: E402


def _data(nodeid: str, loss: list, val: list | None = None, grad: list | None = None) -> dict:
    curves = {"loss": {"step": list(range(len(loss))), "value": loss}}
    if grad is not None:
        curves["grad_norm"] = {"step": list(range(len(grad))), "value": grad}
    if val is not None:
        curves["val_loss"] = {"step": [10 * i for i in range(len(val))], "value": val}
    run = {"seed": 0, "verdict": "stable", "curves": curves, "findings": []}
    return {"nodeid": nodeid, "verdict": "stable", "calls": [{"verdict": "stable", "runs": [run]}]}


def _record(nodeid: str, loss: list, val: list | None = None, grad: list | None = None) -> StabilityRecord:
    return StabilityRecord.from_dict(_data(nodeid, loss, val, grad))


def _scales(monkeypatch) -> list[tuple[str, str]]:
    """(panel label, y scale) of every panel drawn, captured from the figure before it is saved."""
    seen: list[tuple[str, str]] = []
    from matplotlib.figure import Figure

    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.extend((ax.get_ylabel(), ax.get_yscale()) for ax in fig.axes)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_nan_and_nonpositive_losses_are_drawn_linear_and_do_not_stop_the_others(tmp_path, monkeypatch):
    scales = _scales(monkeypatch)
    records = [
        _record("t.py::test_a_nan_from_step_0", ["nan"] * 5, val=["nan", "nan"], grad=["nan"] * 5),
        _record("t.py::test_b_negative", [-1.0, -2.0, 0.0], val=[-1.0, 0.5], grad=[1.0, 2.0, 3.0]),
        _record("t.py::test_c_healthy", [1.0, 0.5, 0.25], val=[0.9, 0.4], grad=[1.0, 2.0, 3.0]),
    ]
    written, failures = plots.write_plots(records, tmp_path)
    assert failures == []
    assert [p.name for p in written] == [
        "t.py__test_a_nan_from_step_0.png",
        "t.py__test_b_negative.png",
        "t.py__test_c_healthy.png",
    ]
    nan_run, negative, healthy = scales[0:3], scales[3:6], scales[6:9]
    assert [s for _, s in nan_run] == ["linear", "linear", "linear"]
    assert [s for _, s in negative] == ["linear", "log", "linear"]
    # the validation panel is log-scaled like the loss when its data is positive
    assert healthy == [("training loss (log)", "log"), ("gradient norm (log)", "log"), ("validation loss (log)", "log")]


def test_a_failing_plot_names_its_test_and_the_others_are_written(tmp_path, monkeypatch):
    render = plots.render_png

    def flaky(record):
        if record.nodeid.endswith("bad"):
            raise ValueError("cannot draw this one")
        return render(record)

    monkeypatch.setattr(plots, "render_png", flaky)
    records = [_record("t.py::test_bad", [1.0, 0.5]), _record("t.py::test_good", [1.0, 0.5])]
    written, failures = plots.write_plots(records, tmp_path)
    assert [p.name for p in written] == ["t.py__test_good.png"]
    assert failures == [("t.py::test_bad", "ValueError: cannot draw this one")]


def test_a_run_with_curvature_gets_an_edge_of_stability_panel_and_its_finding_is_drawn_there(tmp_path, monkeypatch):
    scales = _scales(monkeypatch)
    data = _data("t.py::test_curvature", [1.0, 0.5, 0.25, 0.2], grad=[1.0, 2.0, 3.0, 3.0])
    run = data["calls"][0]["runs"][0]
    run["curves"]["eos_ratio"] = {"step": [2, 4], "value": [0.4, 1.2]}
    run["findings"] = [{"check": "curvature", "kind": "above_max", "step": 3, "value": 1.2, "limit": 1.0}]
    record = StabilityRecord.from_dict(data)
    labels: list[str] = []
    from matplotlib.axes import Axes

    original = Axes.annotate

    def annotate(ax, text, *args, **kwargs):
        labels.append((ax.get_ylabel() or "?") + ": " + text)
        return original(ax, text, *args, **kwargs)

    monkeypatch.setattr(Axes, "annotate", annotate)
    written, failures = plots.write_plots([record, _record("t.py::test_plain", [1.0, 0.5])], tmp_path)
    assert failures == [] and len(written) == 2
    assert [label for label, _ in scales[:3]] == [
        "training loss (log)",
        "gradient norm (log)",
        "edge-of-stability ratio (log)",
    ]
    assert len(scales) == 3 + 1  # no validation data, no panel; the run with only a loss gets one panel
    assert "edge-of-stability ratio (log): curvature @ 3" in labels


def test_plot_file_names_are_safe_and_unique():
    taken: set[str] = set()
    assert plot_filename("tests/test_a.py::TestX::test_y[a/b c]", taken) == "tests_test_a.py__TestX__test_y[a_b_c].png"
    second = plot_filename("tests/test_a.py::TestX::test_y[a b/c]", taken)  # same sanitised stem
    assert second.startswith("tests_test_a.py__TestX__test_y[a_b_c]-") and second.endswith(".png")
    assert len(plot_filename("t.py::test_" + "x" * 300, taken)) < 130
