"""Which panels a test's plot has: the learning rate in effect, no empty panel, every recorded curve."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from pytest_stability.record import CallRecord, RunRecord, StabilityRecord  # noqa: E402
from pytest_stability.report import plots  # noqa: E402


def _run(curves: dict, findings: list | None = None) -> RunRecord:
    return RunRecord.from_dict(
        {
            "seed": 0,
            "verdict": "unstable" if findings else "stable",
            "findings": findings or [],
            "curves": {name: {"step": list(steps), "value": list(values)} for name, (steps, values) in curves.items()},
        }
    )


def _record(nodeid: str, *runs: RunRecord) -> StabilityRecord:
    return StabilityRecord(nodeid, runs[0].verdict, calls=(CallRecord(runs[0].verdict, runs=runs),))


def _panels(monkeypatch) -> list[list[str]]:
    """The y labels of each figure's panels, captured as each figure is saved."""
    from matplotlib.figure import Figure

    seen: list[list[str]] = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.append([ax.get_ylabel() for ax in fig.axes])
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


STEPS = range(6)
LOSS = (STEPS, [1.0, 0.8, 0.6, 3.0, 2.5, 2.4])
GRAD = (STEPS, [1.0, 1.1, 0.9, 5.0, 4.0, 3.0])
LR = (STEPS, [1e-3, 1e-3, 1e-3, 7.0, 7.0, 7.0])  # the jump that caused the spike


def test_the_learning_rate_gets_a_panel_and_a_run_without_validation_gets_no_validation_panel(tmp_path, monkeypatch):
    seen = _panels(monkeypatch)
    spike = {"check": "loss_spike", "kind": "spike", "step": 3, "value": 3.0, "limit": 2.0}
    record = _record("t.py::test_jump", _run({"loss": LOSS, "grad_norm": GRAD, "lr": LR}, [spike]))
    written, failures = plots.write_plots([record], tmp_path)
    assert failures == [] and len(written) == 1
    assert seen == [["training loss (log)", "gradient norm (log)", "learning rate (log)"]]


def test_validation_and_curvature_panels_appear_when_measured_in_their_order(tmp_path, monkeypatch):
    seen = _panels(monkeypatch)
    run = _run(
        {"loss": LOSS, "grad_norm": GRAD, "lr": LR, "val_loss": ([0, 5], [1.0, 0.5]), "eos_ratio": ([2, 5], [0.5, 0.8])}
    )
    plots.write_plots([_record("t.py::test_all", run)], tmp_path)
    assert seen == [
        [
            "training loss (log)",
            "gradient norm (log)",
            "learning rate (log)",
            "validation loss (log)",
            "edge-of-stability ratio (log)",
        ]
    ]


def test_every_other_recorded_curve_gets_its_own_panel_by_name(tmp_path, monkeypatch):
    """A GAN's generator and discriminator losses, recorded as curves of their own, are drawn after the known ones."""
    seen = _panels(monkeypatch)
    run = _run(
        {
            "loss": LOSS,
            "g_loss": (STEPS, [2.0, 1.5, 1.2, 1.1, 1.0, 0.9]),
            "d_loss": (STEPS, [0.7, 0.69, 0.68, 0.7, 0.71, 0.69]),
            "empty": ([], []),
        }
    )
    plots.write_plots([_record("t.py::test_gan", run)], tmp_path)
    assert seen == [["training loss (log)", "d loss (log)", "g loss (log)"]]


def test_panels_of_lists_a_curve_any_run_recorded():
    first = _run({"loss": LOSS})
    second = _run({"loss": LOSS, "val_loss": ([0, 5], [1.0, 0.5])})
    assert plots.panels_of([first, second]) == [("loss", "training loss"), ("val_loss", "validation loss")]
    assert plots.panels_of([_run({})]) == [("loss", "training loss")]
